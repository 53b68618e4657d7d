-- Bound how long this migration may wait for locks or run (squawk: require-*-timeout).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

-- ingest_write as it stands after both changes made to it in parallel: the closed-month redirect
-- and the archived-key answer of 0010 (issue 11 §2, §3) and the salted client-address hash of
-- 0021 (issue 12 §3), which was written over the 0005 body. This body is 0010's plus 0021's two
-- INSERT lines; tests/ingest/test_ingest_write_current.py checks that the function in the
-- database has both behaviours.
CREATE OR REPLACE FUNCTION ingest_write(
    p_site_id uuid,
    p_now timestamptz,
    p_billing_enabled boolean,
    p_request_id text,
    p_events jsonb
)
RETURNS TABLE (
    idx integer,
    inserted boolean,
    billable boolean,
    billing_state text,
    billing_reason text,
    response_status smallint,
    quota_remaining bigint,
    payload_hash text,
    idempotency_version smallint,
    created_at timestamptz,
    request_id text
)
LANGUAGE plpgsql
SET lock_timeout = '3s'
AS $$
#variable_conflict use_column
DECLARE
    v_year_month text := to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM');
    v_mode text;
    v_limit bigint;
    v_cap bigint;
    v_count bigint;
    v_position bigint;
    v_reason text;
    v_state text;
    v_billable boolean;
    v_status smallint;
    v_remaining bigint;
    v_add_billable bigint := 0;
    v_add_overage bigint := 0;
    v_add_rejected bigint := 0;
    v_add_non_billable bigint := 0;
    v_add_dedup bigint := 0;
    i integer;
    e jsonb;
    v_key text;
    v_class text;
    v_closed timestamptz;
    v_archived text;
    v_archived_at timestamptz;
BEGIN
    SELECT s.billing_mode, p.monthly_limit,
           CASE WHEN p.soft_limit_enabled
                THEN floor(p.monthly_limit * p.hard_cap_multiplier)::bigint
                ELSE p.monthly_limit END
      INTO v_mode, v_limit, v_cap
      FROM sites s JOIN site_plans p ON p.site_id = s.id
     WHERE s.id = p_site_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown site %', p_site_id USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- Issue 11 §3: a closed site-month (the freeze closes it under this same lock) takes no new
    -- row, whatever the host clock said. The events go to the first open month by the
    -- database's clock, created_at = the database's time; if even that month is closed (or is
    -- not later), the statement fails with RK002 and writes nothing (retryable).
    LOOP
        SELECT u.event_count, u.closed_at INTO v_count, v_closed FROM site_usage_monthly u
         WHERE u.site_id = p_site_id AND u.year_month = v_year_month FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            -- A month closed for the whole fleet stays closed for a site-month row made later.
            INSERT INTO site_usage_monthly (site_id, year_month, updated_at, closed_at)
            VALUES (p_site_id, v_year_month, p_now,
                    (SELECT m.closed_at FROM closed_months m WHERE m.year_month = v_year_month))
            ON CONFLICT (site_id, year_month) DO NOTHING;
            SELECT u.event_count, u.closed_at INTO v_count, v_closed FROM site_usage_monthly u
             WHERE u.site_id = p_site_id AND u.year_month = v_year_month FOR NO KEY UPDATE;
        END IF;
        EXIT WHEN v_closed IS NULL;
        IF to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM') <= v_year_month THEN
            RAISE EXCEPTION 'site-month % of site % is closed and the database clock is not past it',
                v_year_month, p_site_id USING ERRCODE = 'RK002';
        END IF;
        p_now := clock_timestamp();
        v_year_month := to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM');
    END LOOP;

    FOR i, e IN SELECT t.ord::integer, t.value
                  FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(value, ord) LOOP
        v_key := e->>'k';
        v_class := e->>'c';
        v_position := v_count + 1;
        v_remaining := NULL;
        IF NOT p_billing_enabled OR v_mode = 'off' THEN
            v_reason := 'billing_disabled';
        ELSIF v_class IS NOT NULL THEN
            v_reason := v_class;
            v_remaining := greatest(v_limit - (v_position - 1), 0);
        ELSE
            v_reason := CASE WHEN v_position <= v_limit THEN 'within_quota'
                             WHEN v_position <= v_cap THEN 'overage'
                             ELSE 'rejected_quota' END;
            IF v_mode = 'shadow' THEN
                v_reason := 'shadow_' || v_reason;
                v_remaining := greatest(v_limit - v_position, 0);
            ELSIF v_reason = 'within_quota' THEN
                v_remaining := v_limit - v_position;
            ELSE
                v_remaining := 0;
            END IF;
        END IF;
        v_billable := v_reason IN ('within_quota', 'overage') OR v_reason LIKE 'shadow\_%';
        v_state := CASE v_reason WHEN 'overage' THEN 'OVERAGE'
                                 WHEN 'rejected_quota' THEN 'REJECTED_QUOTA'
                                 ELSE 'ACCEPTED' END;
        v_status := CASE WHEN v_state = 'REJECTED_QUOTA' THEN 429 ELSE 200 END;

        -- Issue 11 §2: a client key whose month was archived and cleaned up is a duplicate for
        -- the dedup horizon (ingest_cleaned_keys, one index probe); it is never billed again.
        -- Derived (v1) keys name a 5 s server-time bucket, so only client keys can come back.
        v_archived := NULL;
        IF (e->>'v') = '2' THEN
            SELECT c.year_month, c.cleaned_at INTO v_archived, v_archived_at FROM ingest_cleaned_keys c
             WHERE c.site_id = p_site_id AND c.idempotency_key = v_key;
        END IF;
        IF v_archived IS NOT NULL THEN
            v_add_dedup := v_add_dedup + 1;
            RETURN QUERY SELECT i, false, false, 'ARCHIVED'::text, v_archived, 200::smallint, NULL::bigint,
                                NULL::text, (e->>'v')::smallint, v_archived_at, NULL::text;
            CONTINUE;
        END IF;

        INSERT INTO ingest_idempotency (
            site_id, idempotency_key, idempotency_version, created_at, billable, billing_state,
            billing_reason, event_category, event_action, event_label, event_url, fingerprint,
            payload_hash, occurred_at, response_status, quota_remaining, request_id, client_hash)
        VALUES (
            p_site_id, v_key, (e->>'v')::smallint, p_now, v_billable, v_state,
            v_reason, e->>'ec', e->>'ea', e->>'el', e->>'url', e->>'fp',
            e->>'h', (e->>'at')::timestamptz, v_status, v_remaining, p_request_id, e->>'a')
        ON CONFLICT (site_id, idempotency_key) DO NOTHING;

        IF FOUND THEN
            -- The cleanup deleting this key's old row committed while the insert waited on it:
            -- the key is archived, so this row must not exist. RK001: the caller retries once.
            IF (e->>'v') = '2' AND EXISTS (SELECT 1 FROM ingest_cleaned_keys c
                                           WHERE c.site_id = p_site_id AND c.idempotency_key = v_key) THEN
                RAISE EXCEPTION 'key % of site % was cleaned up during this write', v_key, p_site_id
                    USING ERRCODE = 'RK001';
            END IF;
            IF v_billable THEN
                v_count := v_count + 1;
                v_add_billable := v_add_billable + 1;
            END IF;
            IF v_state = 'OVERAGE' THEN
                v_add_overage := v_add_overage + 1;
            ELSIF v_state = 'REJECTED_QUOTA' THEN
                v_add_rejected := v_add_rejected + 1;
            ELSIF NOT v_billable THEN
                v_add_non_billable := v_add_non_billable + 1;
            END IF;
            IF v_state <> 'REJECTED_QUOTA' THEN
                INSERT INTO ingest_outbox (site_id, idempotency_key, payload, created_at)
                VALUES (p_site_id, v_key,
                        (e->'p') || jsonb_build_object(
                            'billable', v_billable, 'billing_state', v_state,
                            'billing_reason', v_reason, 'created_at', p_now),
                        p_now);
            END IF;
            RETURN QUERY SELECT i, true, v_billable, v_state, v_reason, v_status, v_remaining,
                                e->>'h', (e->>'v')::smallint, p_now, p_request_id;
        ELSE
            v_add_dedup := v_add_dedup + 1;
            -- A new snapshot per statement: the original is visible even if it committed
            -- while this transaction waited on the conflict.
            RETURN QUERY SELECT i, false, o.billable, o.billing_state, o.billing_reason,
                                o.response_status, o.quota_remaining, o.payload_hash,
                                o.idempotency_version, o.created_at, o.request_id
                           FROM ingest_idempotency o
                          WHERE o.site_id = p_site_id AND o.idempotency_key = v_key;
        END IF;
    END LOOP;

    UPDATE site_usage_monthly u SET
        event_count = u.event_count + v_add_billable,
        overage_count = u.overage_count + v_add_overage,
        rejected_count = u.rejected_count + v_add_rejected,
        non_billable_count = u.non_billable_count + v_add_non_billable,
        dedup_count = u.dedup_count + v_add_dedup,
        updated_at = p_now
    WHERE u.site_id = p_site_id AND u.year_month = v_year_month;
END;
$$;
