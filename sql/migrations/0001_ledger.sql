-- Bound how long this migration may wait for locks or run (squawk: require-*-timeout).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

-- The store of record (SPEC §3). Golden rule 3: the invoice's source of truth is
-- ingest_idempotency WHERE billable = true; every other table is a cache, a queue or evidence.

CREATE TABLE sites (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    public_id text NOT NULL UNIQUE CHECK (public_id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{1,63}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    billing_mode text NOT NULL DEFAULT 'enforce'
        CHECK (billing_mode IN ('enforce', 'shadow', 'off')),
    -- 'key': Bearer ingest key required. 'public': deployed browser trackers without a key,
    -- accepted only from an Origin on allowed_origins (SPEC §4.1).
    ingest_auth text NOT NULL DEFAULT 'key' CHECK (ingest_auth IN ('key', 'public')),
    allowed_origins text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE site_plans (
    site_id uuid PRIMARY KEY REFERENCES sites (id),
    monthly_limit bigint NOT NULL CHECK (monthly_limit >= 0),
    soft_limit_enabled boolean NOT NULL DEFAULT false,
    hard_cap_multiplier numeric(8, 4) NOT NULL DEFAULT 1 CHECK (hard_cap_multiplier >= 1),
    rate_limit_per_minute integer NOT NULL DEFAULT 2000 CHECK (rate_limit_per_minute > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id uuid REFERENCES sites (id),  -- null = platform-wide token
    role text NOT NULL CHECK (role IN ('ingest', 'viewer', 'billing', 'admin')),
    key_hash text NOT NULL UNIQUE,       -- lowercase hex SHA-256 of the secret; the secret is never stored
    key_prefix text NOT NULL,            -- first characters, to recognise a key in lists and logs
    label text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT ingest_key_has_site CHECK (role <> 'ingest' OR site_id IS NOT NULL)
);
CREATE INDEX api_keys_site_idx ON api_keys (site_id);

-- The ledger. One row per (site, idempotency key), billable or not; a duplicate never makes a row.
CREATE TABLE ingest_idempotency (
    site_id uuid NOT NULL REFERENCES sites (id),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    idempotency_version smallint NOT NULL CHECK (idempotency_version IN (1, 2)),
    created_at timestamptz NOT NULL,  -- server receive time; decides the month
    year_month text GENERATED ALWAYS AS (
        lpad(extract(year FROM (created_at AT TIME ZONE 'UTC'))::int::text, 4, '0')
        || '-'
        || lpad(extract(month FROM (created_at AT TIME ZONE 'UTC'))::int::text, 2, '0')
    ) STORED,
    billable boolean NOT NULL,
    billing_state text NOT NULL CHECK (billing_state IN ('ACCEPTED', 'OVERAGE', 'REJECTED_QUOTA')),
    billing_reason text NOT NULL,
    event_category text,
    event_action text,
    event_label text,
    event_url text,
    fingerprint text,
    payload_hash text NOT NULL,
    occurred_at timestamptz,  -- client time: informational only
    response_status smallint NOT NULL DEFAULT 200,  -- replayed to duplicates
    quota_remaining bigint,                         -- replayed to duplicates
    request_id text,
    PRIMARY KEY (site_id, idempotency_key),
    CONSTRAINT rejected_is_not_billable CHECK (billing_state <> 'REJECTED_QUOTA' OR NOT billable),
    CONSTRAINT overage_is_billable CHECK (billing_state <> 'OVERAGE' OR billable)
);
-- Export, freeze and audit read a site-month in (created_at, idempotency_key) order.
CREATE INDEX ingest_idempotency_month_idx
    ON ingest_idempotency (site_id, year_month, created_at, idempotency_key);
CREATE INDEX ingest_idempotency_created_idx ON ingest_idempotency (created_at);

-- Live counters per site-month: caches of the ledger, updated in the ledger's transaction.
-- event_count is the month's billable count (runbook §5 reads it under that name).
CREATE TABLE site_usage_monthly (
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    event_count bigint NOT NULL DEFAULT 0,
    overage_count bigint NOT NULL DEFAULT 0,
    rejected_count bigint NOT NULL DEFAULT 0,
    non_billable_count bigint NOT NULL DEFAULT 0,
    dedup_count bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, year_month)
);

-- Golden rule 2: a published event is an outbox row written in the ledger transaction.
CREATE TABLE ingest_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    idempotency_key text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error text,
    published_at timestamptz,
    UNIQUE (site_id, idempotency_key)
);
CREATE INDEX ingest_outbox_pending_idx ON ingest_outbox (site_id, id) WHERE published_at IS NULL;

CREATE TABLE ingest_publish_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id bigint REFERENCES ingest_outbox (id),
    site_id uuid REFERENCES sites (id),
    sink text NOT NULL,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_publish_failures_at_idx ON ingest_publish_failures (failed_at);

CREATE TABLE billing_reconciliation_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    status text NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    UNIQUE (site_id, year_month)
);
CREATE INDEX billing_reconciliation_jobs_status_idx ON billing_reconciliation_jobs (status, updated_at);

CREATE TABLE reconciliation_drift_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL,
    ledger_billable bigint NOT NULL,
    counter_billable bigint,
    redis_billable bigint,
    counter_drift bigint NOT NULL DEFAULT 0,  -- counter - ledger, before correction
    redis_drift bigint,                       -- redis - ledger, before correction (null: no Redis)
    ledger_overage bigint NOT NULL DEFAULT 0,
    ledger_rejected bigint NOT NULL DEFAULT 0,
    ledger_non_billable bigint NOT NULL DEFAULT 0,
    corrected boolean NOT NULL DEFAULT false,
    checked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconciliation_drift_log_site_idx
    ON reconciliation_drift_log (site_id, year_month, checked_at);
CREATE INDEX reconciliation_drift_log_at_idx ON reconciliation_drift_log (checked_at);

-- Golden rule 7: invoice finality. Never updated, deleted or truncated (triggers below, grants).
CREATE TABLE invoice_snapshot (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    hash_version smallint NOT NULL DEFAULT 1,
    billable_count bigint NOT NULL,
    overage_count bigint NOT NULL,
    rejected_count bigint NOT NULL,
    non_billable_count bigint NOT NULL,
    merkle_root text NOT NULL CHECK (merkle_root ~ '^[0-9a-f]{64}$'),
    prev_snapshot_hash text CHECK (prev_snapshot_hash ~ '^[0-9a-f]{64}$'),
    snapshot_hash text NOT NULL UNIQUE CHECK (snapshot_hash ~ '^[0-9a-f]{64}$'),
    document text NOT NULL,   -- the canonical JSON whose SHA-256 is snapshot_hash (SPEC §5)
    signature text NOT NULL,  -- Ed25519 over document, lowercase hex
    key_id text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    frozen_at timestamptz NOT NULL,
    UNIQUE (site_id, year_month)
);

-- Public halves of the snapshot signing keys, served to verifiers.
CREATE TABLE signing_keys (
    key_id text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    public_key text NOT NULL UNIQUE,  -- raw 32-byte Ed25519 public key, lowercase hex
    algorithm text NOT NULL DEFAULT 'ed25519',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_archive (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL,
    file_path text NOT NULL,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    row_count bigint NOT NULL,
    merkle_root text NOT NULL CHECK (merkle_root ~ '^[0-9a-f]{64}$'),
    archived_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, year_month)
);

CREATE TABLE dispute_holds (
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    PRIMARY KEY (site_id, year_month)
);

CREATE TABLE cron_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    trigger text NOT NULL DEFAULT 'http',  -- http | cli | scheduler
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'ok', 'failed', 'skipped')),
    counts jsonb NOT NULL DEFAULT '{}',
    error text
);
CREATE INDEX cron_runs_name_idx ON cron_runs (name, started_at);

CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    site_id uuid,
    year_month text,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_site_idx ON audit_log (site_id, at);

-- Append-only evidence: reject every change, whoever asks (grants are the second line).
CREATE FUNCTION reject_evidence_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER invoice_snapshot_no_update_delete
    BEFORE UPDATE OR DELETE ON invoice_snapshot
    FOR EACH ROW EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER invoice_snapshot_no_truncate
    BEFORE TRUNCATE ON invoice_snapshot
    FOR EACH STATEMENT EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION reject_evidence_change();
