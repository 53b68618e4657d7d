-- Roles the kernel connects as (SPEC §3). Idempotent: re-run after every migration so that new
-- tables are covered. Run as the schema owner.
--   revkernel_app      the service: appends to the ledger and the evidence; changes credentials and
--                      plans only through the SECURITY DEFINER functions of migration 0020
--   revkernel_analyst  notebooks and reports: read-only
-- Roles are created without a password (the embedded server trusts its Unix socket). In
-- production, give each role its own password (ALTER ROLE ... PASSWORD) and its own URL
-- (APP_DATABASE_URL, ANALYST_DATABASE_URL): this script never sets or clears a password.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'revkernel_app') THEN
        CREATE ROLE revkernel_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'revkernel_analyst') THEN
        CREATE ROLE revkernel_analyst LOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO revkernel_app, revkernel_analyst;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO revkernel_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO revkernel_app;
-- Evidence is append-only for the service: no UPDATE, DELETE or TRUNCATE.
REVOKE UPDATE, DELETE, TRUNCATE ON invoice_snapshot, audit_log, signing_keys FROM revkernel_app;
-- Credentials and plans: created with INSERT, changed only by revkernel_revoke_key and
-- revkernel_update_site, which check their preconditions and write audit_log (issue 12 §2).
REVOKE UPDATE, DELETE, TRUNCATE ON api_keys, sites, site_plans FROM revkernel_app;
-- The ledger is append-only for the service: no row is ever rewritten.
REVOKE UPDATE, DELETE, TRUNCATE ON ingest_idempotency FROM revkernel_app;
REVOKE ALL ON FUNCTION revkernel_revoke_key(uuid, timestamptz, timestamptz, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION revkernel_update_site(uuid, jsonb, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION revkernel_revoke_key(uuid, timestamptz, timestamptz, text, text) TO revkernel_app;
GRANT EXECUTE ON FUNCTION revkernel_update_site(uuid, jsonb, text, timestamptz) TO revkernel_app;
-- Only the owner changes the schema history.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM revkernel_app;

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM revkernel_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO revkernel_analyst;
-- Analysts read the ledger, never the hashed credentials.
REVOKE SELECT ON api_keys FROM revkernel_analyst;
ALTER ROLE revkernel_analyst SET default_transaction_read_only = on;
-- Corrections are evidence too (issue 15, kernel/disputes): append-only for the service.
REVOKE UPDATE, DELETE, TRUNCATE ON invoice_corrections, correction_credits FROM revkernel_app;

-- Issue 11 (exactly-once under faults): the closure of a site-month, the cleaned-key record and
-- the month closures change only through their SECURITY DEFINER functions (migration 0010).
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ingest_cleaned_keys, closed_months FROM revkernel_app;
REVOKE UPDATE ON site_usage_monthly FROM revkernel_app;
GRANT UPDATE (event_count, overage_count, rejected_count, non_billable_count, dedup_count, updated_at)
    ON site_usage_monthly TO revkernel_app;
GRANT EXECUTE ON FUNCTION close_month(text, interval), close_site_month(uuid, text, interval),
    ledger_cleanup_month(uuid, text, timestamptz, integer, text, boolean, text, jsonb),
    prune_cleaned_keys(integer, integer) TO revkernel_app;
