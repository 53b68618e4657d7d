-- Bound how long this migration may wait for locks or run (squawk: require-*-timeout).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

-- Issue 11: exactly-once under faults (README "Exactly-once under faults").
--
-- §3 Nothing lands in a frozen month, whatever a host clock says. The freeze closes a site-month
--    (site_usage_monthly.closed_at, set only by close_site_month under the row lock ingest takes)
--    before it reads the month; ingest_write refuses a closed site-month and attributes the
--    events to the first open month by the database's clock. closed_months closes a month for
--    site-month rows that do not exist yet (a site's first event of that month).
-- §2 Keys re-sent after their month was cleaned up. ingest_cleaned_keys remembers each cleaned
--    client (v2) key for the dedup horizon (no payload); ingest_write answers such a key as an
--    archived duplicate with one index probe. Cleanup deletes only through ledger_cleanup_month,
--    which re-checks every precondition in the deleting statement and writes audit_log.
-- §4 Cron locks that the read-only analyst cannot take: rows of cron_locks, locked FOR UPDATE
--    NOWAIT (needs UPDATE privilege), and the scheduler's leader lease.

ALTER TABLE site_usage_monthly ADD COLUMN closed_at timestamptz;

CREATE TABLE closed_months (
    year_month text PRIMARY KEY CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    closed_at timestamptz NOT NULL
);

CREATE TABLE ingest_cleaned_keys (
    site_id uuid NOT NULL REFERENCES sites (id),
    idempotency_key text NOT NULL,
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    cleaned_at timestamptz NOT NULL,
    PRIMARY KEY (site_id, idempotency_key)
);
-- Pruning after the dedup horizon walks the oldest months first.
CREATE INDEX ingest_cleaned_keys_month_idx ON ingest_cleaned_keys (year_month);

CREATE TABLE cron_locks (
    name text PRIMARY KEY,
    holder text,            -- the scheduler leader lease only: who holds it
    expires_at timestamptz  -- and until when (database clock)
);
INSERT INTO cron_locks (name) VALUES
    ('watchtower'), ('reconcile-usage'), ('invoice-freeze'), ('idempotency-cleanup'), ('publish-outbox'),
    ('scheduler-leader');

-- Months frozen before this migration are closed now (they were frozen, so nothing may enter).
INSERT INTO site_usage_monthly AS u (site_id, year_month, updated_at, closed_at)
SELECT s.site_id, s.year_month, s.frozen_at, s.frozen_at FROM invoice_snapshot s
ON CONFLICT (site_id, year_month) DO UPDATE SET closed_at = coalesce(u.closed_at, EXCLUDED.closed_at);

-- Keys cleaned before this migration: their outbox rows outlived the ledger rows (the old cleanup
-- left them). Remember them so that a re-sent key is a duplicate instead of a 500.
INSERT INTO ingest_cleaned_keys (site_id, idempotency_key, year_month, cleaned_at)
SELECT o.site_id, o.idempotency_key, to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM'), now()
FROM ingest_outbox o
WHERE NOT EXISTS (SELECT 1 FROM ingest_idempotency i
                  WHERE i.site_id = o.site_id AND i.idempotency_key = o.idempotency_key)
ON CONFLICT (site_id, idempotency_key) DO NOTHING;

-- The first instant after a UTC month (independent of the session time zone).
CREATE FUNCTION month_end_utc(p_year_month text) RETURNS timestamptz
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT ((p_year_month || '-01')::date + interval '1 month')::timestamp AT TIME ZONE 'UTC'
$$;

-- Raise RK003 (month_open) unless the *database* clock is past the month's end plus the grace.
-- A host whose clock runs ahead can therefore never close a month early.
CREATE FUNCTION require_month_ended(p_year_month text, p_grace interval) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF p_year_month IS NULL OR p_year_month !~ '^\d{4}-(0[1-9]|1[0-2])$' THEN
        RAISE EXCEPTION 'year_month must be YYYY-MM, got %', p_year_month USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF clock_timestamp() < month_end_utc(p_year_month) + greatest(coalesce(p_grace, interval '0'), interval '0') THEN
        RAISE EXCEPTION 'month % is not closed by the database clock (%)', p_year_month, clock_timestamp()
            USING ERRCODE = 'RK003';
    END IF;
END;
$$;

-- Close a month for the whole fleet: a site-month row created from now on starts closed.
CREATE FUNCTION close_month(p_year_month text, p_grace interval) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_closed timestamptz;
BEGIN
    PERFORM require_month_ended(p_year_month, p_grace);
    INSERT INTO closed_months (year_month, closed_at) VALUES (p_year_month, clock_timestamp())
    ON CONFLICT (year_month) DO NOTHING;
    SELECT m.closed_at INTO v_closed FROM closed_months m WHERE m.year_month = p_year_month;
    RETURN v_closed;
END;
$$;

-- Close one site-month under the row lock that ingest_write takes (created if the month had no
-- events): every ledger transaction of that site-month that got the lock first has committed,
-- every later one sees closed_at and writes elsewhere. Idempotent; returns when it was closed.
CREATE FUNCTION close_site_month(p_site_id uuid, p_year_month text, p_grace interval) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    v_closed timestamptz;
BEGIN
    PERFORM require_month_ended(p_year_month, p_grace);
    INSERT INTO site_usage_monthly AS u (site_id, year_month, updated_at, closed_at)
    VALUES (p_site_id, p_year_month, clock_timestamp(), clock_timestamp())
    ON CONFLICT (site_id, year_month) DO UPDATE SET closed_at = coalesce(u.closed_at, EXCLUDED.closed_at)
    RETURNING u.closed_at INTO v_closed;
    RETURN v_closed;
END;
$$;

-- A dispute hold and a cleanup of the same site-month serialise on its site_usage_monthly row:
-- a hold being created makes the cleanup wait and then see it; a cleanup running makes the hold
-- wait until the deletion is over. (The cleanup re-checks holds after taking this lock.)
CREATE FUNCTION dispute_hold_lock_site_month() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO site_usage_monthly (site_id, year_month, updated_at)
    VALUES (NEW.site_id, NEW.year_month, now()) ON CONFLICT (site_id, year_month) DO NOTHING;
    PERFORM 1 FROM site_usage_monthly u
     WHERE u.site_id = NEW.site_id AND u.year_month = NEW.year_month FOR NO KEY UPDATE;
    RETURN NEW;
END;
$$;
CREATE TRIGGER dispute_holds_lock_site_month
    BEFORE INSERT OR UPDATE ON dispute_holds
    FOR EACH ROW EXECUTE FUNCTION dispute_hold_lock_site_month();

-- The only way ledger rows are deleted (SPEC §4.2 cleanup). Every precondition is re-checked
-- here, by the database, whatever the caller planned:
--   the site-month is frozen (invoice_snapshot) and closed;
--   it was archived (ledger_archive) with the SHA-256 the caller just re-hashed from the file and
--   the snapshot's Merkle root;
--   no active dispute hold, checked in the deleting statement after taking the site-month lock
--   that hold creation also takes;
--   only rows older than p_cutoff *and* than 90 days by the database clock (SPEC retention).
-- In the same statement: the deleted client (v2) keys are recorded in ingest_cleaned_keys, and
-- the deleted keys' outbox rows are removed once delivered (or, with no sink, at once: the outbox
-- table was the queue and the archive holds the month). Writes audit_log when it deleted.
-- Returns the counts and, when nothing could go, the reason.
CREATE FUNCTION ledger_cleanup_month(
    p_site_id uuid,
    p_year_month text,
    p_cutoff timestamptz,
    p_max_rows integer,
    p_archive_sha256 text,
    p_drop_unpublished boolean,
    p_actor text,
    p_details jsonb
)
RETURNS TABLE (deleted bigint, keys_recorded bigint, outbox_removed bigint, outbox_kept bigint, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '5s'
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz := least(p_cutoff, clock_timestamp() - interval '90 days');
    v_deleted bigint;
    v_recorded bigint;
    v_removed bigint;
    v_kept bigint;
BEGIN
    INSERT INTO site_usage_monthly (site_id, year_month, updated_at)
    VALUES (p_site_id, p_year_month, now()) ON CONFLICT (site_id, year_month) DO NOTHING;
    PERFORM 1 FROM site_usage_monthly u
     WHERE u.site_id = p_site_id AND u.year_month = p_year_month FOR NO KEY UPDATE;

    IF NOT EXISTS (SELECT 1 FROM invoice_snapshot s WHERE s.site_id = p_site_id AND s.year_month = p_year_month) THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 'not_frozen'::text;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ledger_archive a JOIN invoice_snapshot s USING (site_id, year_month)
                   WHERE a.site_id = p_site_id AND a.year_month = p_year_month
                     AND a.sha256 = p_archive_sha256 AND a.merkle_root = s.merkle_root) THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 'archive_mismatch'::text;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM dispute_holds h
               WHERE h.site_id = p_site_id AND h.year_month = p_year_month AND h.released_at IS NULL) THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, 'on_hold'::text;
        RETURN;
    END IF;

    WITH eligible AS (
        SELECT i.site_id, i.idempotency_key
        FROM ingest_idempotency i
        JOIN invoice_snapshot s ON s.site_id = i.site_id AND s.year_month = i.year_month
        JOIN ledger_archive a ON a.site_id = i.site_id AND a.year_month = i.year_month
        WHERE i.site_id = p_site_id AND i.year_month = p_year_month AND i.created_at < v_cutoff
          AND a.sha256 = p_archive_sha256 AND a.merkle_root = s.merkle_root
          AND NOT EXISTS (SELECT 1 FROM dispute_holds h
                          WHERE h.site_id = i.site_id AND h.year_month = i.year_month AND h.released_at IS NULL)
        ORDER BY i.created_at, i.idempotency_key COLLATE "C"
        LIMIT greatest(p_max_rows, 0)
    ), gone AS (
        DELETE FROM ingest_idempotency d USING eligible e
        WHERE d.site_id = e.site_id AND d.idempotency_key = e.idempotency_key
        RETURNING d.site_id, d.idempotency_key, d.year_month, d.idempotency_version
    ), recorded AS (
        INSERT INTO ingest_cleaned_keys (site_id, idempotency_key, year_month, cleaned_at)
        SELECT g.site_id, g.idempotency_key, g.year_month, clock_timestamp() FROM gone g
        WHERE g.idempotency_version = 2
        ON CONFLICT (site_id, idempotency_key) DO NOTHING
        RETURNING 1
    ), outbox_gone AS (
        DELETE FROM ingest_outbox o USING gone g
        WHERE o.site_id = g.site_id AND o.idempotency_key = g.idempotency_key
          AND (o.published_at IS NOT NULL OR p_drop_unpublished)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM recorded), (SELECT count(*) FROM outbox_gone),
           (SELECT count(*) FROM ingest_outbox o JOIN gone g
               ON o.site_id = g.site_id AND o.idempotency_key = g.idempotency_key
             WHERE o.published_at IS NULL AND NOT p_drop_unpublished)
      INTO v_deleted, v_recorded, v_removed, v_kept;

    IF v_deleted > 0 THEN
        INSERT INTO audit_log (at, actor, action, site_id, year_month, details)
        VALUES (clock_timestamp(), p_actor, 'idempotency_cleanup', p_site_id, p_year_month,
                coalesce(p_details, '{}'::jsonb) || jsonb_build_object(
                    'deleted', v_deleted, 'cutoff', v_cutoff, 'archive_sha256', p_archive_sha256,
                    'keys_recorded', v_recorded, 'outbox_removed', v_removed, 'outbox_kept', v_kept));
    END IF;
    RETURN QUERY SELECT v_deleted, v_recorded, v_removed, v_kept,
                        CASE WHEN v_deleted = 0 THEN 'nothing_expired' END;
END;
$$;

-- Forget cleaned keys whose month ended more than the dedup horizon ago (at least 13 months by
-- the database clock, whatever the caller asks), oldest months first, at most p_max_rows.
CREATE FUNCTION prune_cleaned_keys(p_horizon_months integer, p_max_rows integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_before text := to_char(date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC')
                             - make_interval(months => greatest(coalesce(p_horizon_months, 13), 13)), 'YYYY-MM');
    v_pruned bigint;
BEGIN
    WITH old AS (
        SELECT c.site_id, c.idempotency_key FROM ingest_cleaned_keys c
        WHERE c.year_month < v_before
        ORDER BY c.year_month
        LIMIT greatest(p_max_rows, 0)
    ), gone AS (
        DELETE FROM ingest_cleaned_keys d USING old o
        WHERE d.site_id = o.site_id AND d.idempotency_key = o.idempotency_key
        RETURNING 1
    )
    SELECT count(*) INTO v_pruned FROM gone;
    RETURN v_pruned;
END;
$$;

REVOKE ALL ON FUNCTION close_month(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION close_site_month(uuid, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ledger_cleanup_month(uuid, text, timestamptz, integer, text, boolean, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION prune_cleaned_keys(integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION dispute_hold_lock_site_month() FROM PUBLIC;

-- The ledger transaction, unchanged except for §3 (closed site-months) and §2 (archived keys);
-- see 0005_ingest_write.sql for the rest. An archived key returns billing_state 'ARCHIVED' with
-- its month in billing_reason and nothing written. Errors: RK001 (a key was cleaned up during
-- this write: retry once), RK002 (the site-month is closed and so is the database's month).
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
            payload_hash, occurred_at, response_status, quota_remaining, request_id)
        VALUES (
            p_site_id, v_key, (e->>'v')::smallint, p_now, v_billable, v_state,
            v_reason, e->>'ec', e->>'ea', e->>'el', e->>'url', e->>'fp',
            e->>'h', (e->>'at')::timestamptz, v_status, v_remaining, p_request_id)
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
