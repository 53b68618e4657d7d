-- Bound how long this migration may wait for locks or run (squawk: require-*-timeout).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

-- Dispute cases and the signed corrections (credits) they may end in (issue 15,
-- kernel/disputes). A case is mutable (its state moves open → investigating → resolved →
-- closed, every move written to audit_log); a correction is evidence: append-only like
-- invoice_snapshot, and it never edits the snapshot it corrects.

CREATE TABLE dispute_cases (
    case_id uuid PRIMARY KEY,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    -- The disputed keys, or none with whole_month: the customer disputes the whole month.
    whole_month boolean NOT NULL,
    disputed_keys text[] NOT NULL DEFAULT '{}',
    reason text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    customer_reference text NOT NULL CHECK (length(customer_reference) BETWEEN 1 AND 200),
    state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'investigating', 'resolved', 'closed')),
    outcome text CHECK (outcome IN ('upheld', 'partially_upheld', 'rejected')),
    opened_by text NOT NULL,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    resolved_at timestamptz,
    closed_at timestamptz,
    CONSTRAINT dispute_case_scope CHECK (whole_month = (cardinality(disputed_keys) = 0)),
    CONSTRAINT dispute_case_outcome CHECK ((state IN ('resolved', 'closed')) = (outcome IS NOT NULL)),
    -- Lets a correction name its case together with the case's site-month (composite FK below).
    CONSTRAINT dispute_cases_scope_key UNIQUE (case_id, site_id, year_month)
);
CREATE INDEX dispute_cases_site_month_idx ON dispute_cases (site_id, year_month);
CREATE INDEX dispute_cases_month_idx ON dispute_cases (year_month);

-- A correction: a signed document (canonical JSON, Ed25519, kernel.disputes.document) chained to
-- the month's snapshot and to the site's previous correction. One per case at most.
CREATE TABLE invoice_corrections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correction_hash text NOT NULL UNIQUE CHECK (correction_hash ~ '^[0-9a-f]{64}$'),
    case_id uuid NOT NULL UNIQUE,
    site_id uuid NOT NULL REFERENCES sites (id),
    year_month text NOT NULL CHECK (year_month ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    -- The corrected snapshot's hash. Not a foreign key: invoice_snapshot must keep refusing a
    -- TRUNCATE with its own append-only trigger, not with a foreign-key error.
    snapshot_hash text NOT NULL CHECK (snapshot_hash ~ '^[0-9a-f]{64}$'),
    prev_correction_hash text REFERENCES invoice_corrections (correction_hash),
    outcome text NOT NULL CHECK (outcome IN ('upheld', 'partially_upheld')),
    credited_count bigint NOT NULL CHECK (credited_count > 0),
    document text NOT NULL,   -- the canonical JSON whose SHA-256 is correction_hash
    signature text NOT NULL CHECK (signature ~ '^[0-9a-f]{128}$'),
    key_id text NOT NULL REFERENCES signing_keys (key_id),
    issued_at timestamptz NOT NULL,
    FOREIGN KEY (case_id, site_id, year_month) REFERENCES dispute_cases (case_id, site_id, year_month),
    -- One chain per site, never a fork: no two corrections name the same predecessor, and only
    -- one can be the first (NULLS NOT DISTINCT, PostgreSQL 15+).
    CONSTRAINT invoice_corrections_one_chain UNIQUE NULLS NOT DISTINCT (site_id, prev_correction_hash),
    CONSTRAINT invoice_corrections_scope_key UNIQUE (correction_hash, site_id, year_month)
);
CREATE INDEX invoice_corrections_month_idx ON invoice_corrections (year_month, site_id);

-- The events a correction credits by key. The primary key is the rule "a credited key can never
-- be credited twice" (idempotency keys are unique per site), whatever the application checks.
CREATE TABLE correction_credits (
    site_id uuid NOT NULL REFERENCES sites (id),
    idempotency_key text NOT NULL,
    year_month text NOT NULL,
    billing_state text NOT NULL CHECK (billing_state IN ('ACCEPTED', 'OVERAGE')),
    correction_hash text NOT NULL,
    PRIMARY KEY (site_id, idempotency_key),
    FOREIGN KEY (correction_hash, site_id, year_month)
        REFERENCES invoice_corrections (correction_hash, site_id, year_month)
);
CREATE INDEX correction_credits_month_idx ON correction_credits (site_id, year_month);

-- Append-only evidence, as invoice_snapshot: reject every change, whoever asks (sql/roles.sql
-- revokes UPDATE/DELETE/TRUNCATE from the app role as the second line).
CREATE TRIGGER invoice_corrections_no_update_delete
    BEFORE UPDATE OR DELETE ON invoice_corrections
    FOR EACH ROW EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER invoice_corrections_no_truncate
    BEFORE TRUNCATE ON invoice_corrections
    FOR EACH STATEMENT EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER correction_credits_no_update_delete
    BEFORE UPDATE OR DELETE ON correction_credits
    FOR EACH ROW EXECUTE FUNCTION reject_evidence_change();
CREATE TRIGGER correction_credits_no_truncate
    BEFORE TRUNCATE ON correction_credits
    FOR EACH STATEMENT EXECUTE FUNCTION reject_evidence_change();
