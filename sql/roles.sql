-- Roles the kernel connects as (SPEC §3). Idempotent: re-run after every migration so that new
-- tables are covered. Run as the schema owner.
--   revkernel_app      the service: reads and writes the ledger, may only INSERT evidence
--   revkernel_analyst  notebooks and reports: read-only
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
-- Only the owner changes the schema history.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM revkernel_app;

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM revkernel_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO revkernel_analyst;
-- Analysts read the ledger, never the hashed credentials.
REVOKE SELECT ON api_keys FROM revkernel_analyst;
ALTER ROLE revkernel_analyst SET default_transaction_read_only = on;
-- Corrections are evidence too (issue 15, kernel/disputes): append-only for the service.
REVOKE UPDATE, DELETE, TRUNCATE ON invoice_corrections, correction_credits FROM revkernel_app;
