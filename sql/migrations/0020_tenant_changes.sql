-- Bound how long this migration may wait for locks or run (squawk: require-*-timeout).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

-- Tenant changes that support and the runbook need (issue 15), as the only sanctioned ways to
-- change a credential or a plan (issue 12 §2): the app role loses UPDATE and DELETE on api_keys,
-- sites and site_plans (sql/roles.sql) and calls these SECURITY DEFINER functions instead. Each
-- checks its own preconditions, changes what it may, and writes one audit_log row with the
-- values before and after, in the caller's transaction. EXECUTE is revoked from PUBLIC here and
-- granted to the app role only (sql/roles.sql): the read-only analyst role can never call them.

-- Public-mode (keyless browser) sites are also limited per client address (issue 12 §3), in
-- events per minute; the site-wide rate_limit_per_minute counts events too.
ALTER TABLE site_plans
    ADD COLUMN client_rate_limit_per_minute integer NOT NULL DEFAULT 300
        CONSTRAINT site_plans_client_rate_limit_positive CHECK (client_rate_limit_per_minute > 0);

-- A rotation's overlap: the old key keeps working until expires_at, then stops, as if revoked.
-- revoked_at stays "revoked now, whatever any clock says"; expires_at is checked against both
-- the service's clock and the database's (a key is live only while neither has passed it).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

-- End a key. With p_expires_at NULL it is revoked at p_at; otherwise it expires at p_expires_at
-- (a rotation). An end only ever moves earlier: this never extends, restores or un-revokes a
-- key, and nothing changes (or is logged) when the key already ends at least as early.
CREATE FUNCTION revkernel_revoke_key(
    p_key_id uuid,
    p_at timestamptz,
    p_expires_at timestamptz,
    p_actor text,
    p_reason text
)
RETURNS TABLE (
    id uuid,
    site_id uuid,
    role text,
    key_prefix text,
    revoked_at timestamptz,
    expires_at timestamptz,
    changed boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_key api_keys%ROWTYPE;
    v_revoked timestamptz;
    v_expires timestamptz;
    v_changed boolean;
BEGIN
    IF p_at IS NULL THEN
        RAISE EXCEPTION 'a revocation needs the instant it is made' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_actor IS NULL OR length(p_actor) = 0 THEN
        RAISE EXCEPTION 'a revocation needs an actor' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_key FROM api_keys k WHERE k.id = p_key_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown key %', p_key_id USING ERRCODE = 'no_data_found';
    END IF;
    v_revoked := v_key.revoked_at;
    v_expires := v_key.expires_at;
    IF p_expires_at IS NULL THEN
        v_revoked := coalesce(v_key.revoked_at, p_at);
    ELSIF v_key.revoked_at IS NULL THEN
        v_expires := least(coalesce(v_key.expires_at, p_expires_at), p_expires_at);
    END IF;
    v_changed := v_revoked IS DISTINCT FROM v_key.revoked_at OR v_expires IS DISTINCT FROM v_key.expires_at;
    IF v_changed THEN
        UPDATE api_keys k SET revoked_at = v_revoked, expires_at = v_expires WHERE k.id = p_key_id;
        INSERT INTO audit_log (at, actor, action, site_id, details)
        VALUES (p_at, p_actor, CASE WHEN p_expires_at IS NULL THEN 'key_revoked' ELSE 'key_expiry_set' END,
                v_key.site_id, jsonb_build_object(
                    'key_id', p_key_id, 'role', v_key.role, 'key_prefix', v_key.key_prefix, 'reason', p_reason,
                    'before', jsonb_build_object('revoked_at', v_key.revoked_at, 'expires_at', v_key.expires_at),
                    'after', jsonb_build_object('revoked_at', v_revoked, 'expires_at', v_expires)));
    END IF;
    RETURN QUERY SELECT p_key_id, v_key.site_id, v_key.role, v_key.key_prefix, v_revoked, v_expires, v_changed;
END;
$$;

-- Change a site and its plan. p_changes is a JSON object of the fields to change (any of the
-- keys below); the table CHECK constraints refuse invalid values. Returns
-- {"before": {...}, "after": {...}} with the fields that really changed, which is also what the
-- audit_log row records. The ledger function reads the plan inside its own transaction, so a
-- quota or billing-mode change applies to the next event at once and re-decides nothing.
CREATE FUNCTION revkernel_update_site(
    p_site_id uuid,
    p_changes jsonb,
    p_actor text,
    p_at timestamptz
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_unknown text;
    v_before jsonb;
    v_after jsonb;
    v_old jsonb := '{}';
    v_new jsonb := '{}';
    v_key text;
BEGIN
    IF p_actor IS NULL OR length(p_actor) = 0 THEN
        RAISE EXCEPTION 'a site change needs an actor' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'object' THEN
        RAISE EXCEPTION 'the changes must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(c.key, ', ' ORDER BY c.key) INTO v_unknown
      FROM jsonb_each(p_changes) AS c
     WHERE c.key NOT IN ('name', 'billing_mode', 'ingest_auth', 'allowed_origins', 'monthly_limit',
                         'soft_limit_enabled', 'hard_cap_multiplier', 'rate_limit_per_minute',
                         'client_rate_limit_per_minute')
        OR jsonb_typeof(c.value) = 'null';
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown or null site fields: %', v_unknown USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_changes ? 'allowed_origins' AND jsonb_typeof(p_changes->'allowed_origins') <> 'array' THEN
        RAISE EXCEPTION 'allowed_origins must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT jsonb_build_object(
               'name', s.name, 'billing_mode', s.billing_mode, 'ingest_auth', s.ingest_auth,
               'allowed_origins', to_jsonb(s.allowed_origins), 'monthly_limit', p.monthly_limit,
               'soft_limit_enabled', p.soft_limit_enabled, 'hard_cap_multiplier', p.hard_cap_multiplier,
               'rate_limit_per_minute', p.rate_limit_per_minute,
               'client_rate_limit_per_minute', p.client_rate_limit_per_minute)
      INTO v_before
      FROM sites s JOIN site_plans p ON p.site_id = s.id
     WHERE s.id = p_site_id
       FOR UPDATE OF s, p;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown site %', p_site_id USING ERRCODE = 'no_data_found';
    END IF;

    UPDATE sites s SET
        name = coalesce(p_changes->>'name', s.name),
        billing_mode = coalesce(p_changes->>'billing_mode', s.billing_mode),
        ingest_auth = coalesce(p_changes->>'ingest_auth', s.ingest_auth),
        allowed_origins = CASE WHEN p_changes ? 'allowed_origins'
                               THEN ARRAY(SELECT jsonb_array_elements_text(p_changes->'allowed_origins'))
                               ELSE s.allowed_origins END
     WHERE s.id = p_site_id;
    UPDATE site_plans p SET
        monthly_limit = coalesce((p_changes->>'monthly_limit')::bigint, p.monthly_limit),
        soft_limit_enabled = coalesce((p_changes->>'soft_limit_enabled')::boolean, p.soft_limit_enabled),
        hard_cap_multiplier = coalesce((p_changes->>'hard_cap_multiplier')::numeric, p.hard_cap_multiplier),
        rate_limit_per_minute = coalesce((p_changes->>'rate_limit_per_minute')::integer, p.rate_limit_per_minute),
        client_rate_limit_per_minute = coalesce(
            (p_changes->>'client_rate_limit_per_minute')::integer, p.client_rate_limit_per_minute)
     WHERE p.site_id = p_site_id;

    SELECT jsonb_build_object(
               'name', s.name, 'billing_mode', s.billing_mode, 'ingest_auth', s.ingest_auth,
               'allowed_origins', to_jsonb(s.allowed_origins), 'monthly_limit', p.monthly_limit,
               'soft_limit_enabled', p.soft_limit_enabled, 'hard_cap_multiplier', p.hard_cap_multiplier,
               'rate_limit_per_minute', p.rate_limit_per_minute,
               'client_rate_limit_per_minute', p.client_rate_limit_per_minute)
      INTO v_after
      FROM sites s JOIN site_plans p ON p.site_id = s.id
     WHERE s.id = p_site_id;

    FOR v_key IN SELECT jsonb_object_keys(v_before) LOOP
        IF v_before->v_key IS DISTINCT FROM v_after->v_key THEN
            v_old := v_old || jsonb_build_object(v_key, v_before->v_key);
            v_new := v_new || jsonb_build_object(v_key, v_after->v_key);
        END IF;
    END LOOP;
    IF v_new <> '{}'::jsonb THEN
        UPDATE site_plans p SET updated_at = p_at WHERE p.site_id = p_site_id;
        INSERT INTO audit_log (at, actor, action, site_id, details)
        VALUES (p_at, p_actor, 'site_updated', p_site_id, jsonb_build_object('before', v_old, 'after', v_new));
    END IF;
    RETURN jsonb_build_object('before', v_old, 'after', v_new);
END;
$$;

REVOKE ALL ON FUNCTION revkernel_revoke_key(uuid, timestamptz, timestamptz, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION revkernel_update_site(uuid, jsonb, text, timestamptz) FROM PUBLIC;
