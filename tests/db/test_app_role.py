"""Least privilege (issue 12 §2): connected as the app role, every forbidden change is refused.

The service's role appends to the ledger and the evidence; it changes a credential or a plan only
through the SECURITY DEFINER functions of migration 0020, which check their preconditions and
write ``audit_log``. Each case below is what someone holding the app role's connection (a bug, an
SQL injection, a stolen ``APP_DATABASE_URL``) would try.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from kernel.db.connect import Database
from kernel.tenants import create_site, issue_key

NOW = datetime(2026, 3, 1, tzinfo=UTC)

FORBIDDEN = [
    # Credentials and plans: only through revkernel_revoke_key / revkernel_update_site.
    "UPDATE api_keys SET revoked_at = NULL",
    "UPDATE api_keys SET role = 'admin', site_id = NULL",
    "UPDATE api_keys SET key_hash = repeat('0', 64)",
    "DELETE FROM api_keys",
    "TRUNCATE api_keys CASCADE",
    "UPDATE sites SET billing_mode = 'off'",
    "UPDATE sites SET allowed_origins = '{https://evil.example}'",
    "DELETE FROM sites",
    "TRUNCATE sites CASCADE",
    "UPDATE site_plans SET monthly_limit = 1000000",
    "DELETE FROM site_plans",
    "TRUNCATE site_plans CASCADE",
    # The ledger is append-only: no row is rewritten.
    "UPDATE ingest_idempotency SET billable = false",
    "UPDATE ingest_idempotency SET billing_state = 'ACCEPTED', billable = true",
    "TRUNCATE ingest_idempotency",
    "DELETE FROM ingest_idempotency",
    # The closure of a month and the record of cleaned keys: only through their functions.
    "UPDATE site_usage_monthly SET closed_at = NULL",
    "DELETE FROM ingest_cleaned_keys",
    "INSERT INTO closed_months (year_month, closed_at) VALUES ('2030-01', now())",
    # Evidence: snapshots, the audit log, signing keys.
    "UPDATE invoice_snapshot SET billable_count = 0",
    "DELETE FROM invoice_snapshot",
    "TRUNCATE invoice_snapshot",
    "UPDATE audit_log SET actor = 'nobody'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "UPDATE signing_keys SET public_key = repeat('0', 64)",
    "DELETE FROM signing_keys",
    # Schema history and the schema itself.
    "INSERT INTO schema_migrations (name, sha256) VALUES ('9999_x.sql', 'x')",
    "UPDATE schema_migrations SET sha256 = 'x'",
    "DELETE FROM schema_migrations",
    "ALTER TABLE invoice_snapshot DISABLE TRIGGER invoice_snapshot_no_update_delete",
    "ALTER TABLE api_keys DROP CONSTRAINT ingest_key_has_site",
    "DROP TABLE audit_log",
    "CREATE TABLE sneaky (id int)",
    "CREATE OR REPLACE FUNCTION ingest_write(uuid, timestamptz, boolean, text, jsonb) RETURNS int"
    " LANGUAGE sql AS 'SELECT 1'",
    "ALTER FUNCTION revkernel_update_site(uuid, jsonb, text, timestamptz) SECURITY INVOKER",
]


def _seed(conn: psycopg.Connection[Any]) -> uuid.UUID:
    site = create_site(conn, name="victim", monthly_limit=10, public_id="victim").site
    issue_key(conn, site_id=site.id, role="billing")
    conn.execute(
        "INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,"
        " billing_state, billing_reason, payload_hash) VALUES (%s, 'k1', 2, %s, true, 'ACCEPTED', 'within_quota', 'h')",
        (site.id, NOW),
    )
    conn.execute(
        """INSERT INTO invoice_snapshot (site_id, year_month, billable_count, overage_count, rejected_count,
               non_billable_count, merkle_root, snapshot_hash, document, signature, key_id, frozen_at)
           VALUES (%s, '2026-02', 1, 0, 0, 0, repeat('a', 64), repeat('b', 64), '{}', '00',
                   '0123456789abcdef', now())""",
        (site.id,),
    )
    conn.execute("INSERT INTO signing_keys (key_id, public_key) VALUES ('0123456789abcdef', repeat('c', 64))")
    conn.execute("INSERT INTO audit_log (actor, action) VALUES ('t', 'export')")
    return site.id


def _fingerprint(owner: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = owner.execute(
        """SELECT (SELECT string_agg(concat_ws('|', id, role, site_id, key_hash, revoked_at, expires_at), ','
                           ORDER BY id) FROM api_keys),
                  (SELECT string_agg(concat_ws('|', id, billing_mode, allowed_origins, ingest_auth), ',') FROM sites),
                  (SELECT string_agg(concat_ws('|', monthly_limit, rate_limit_per_minute), ',') FROM site_plans),
                  (SELECT string_agg(concat_ws('|', idempotency_key, billable, billing_state), ',')
                   FROM ingest_idempotency),
                  (SELECT count(*) FROM invoice_snapshot), (SELECT count(*) FROM audit_log),
                  (SELECT count(*) FROM signing_keys), (SELECT count(*) FROM schema_migrations)"""
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_app_role_cannot_make_a_forbidden_change(database: Database, statement: str) -> None:
    with database.connect("app", autocommit=True) as app, database.connect("owner", autocommit=True) as owner:
        assert app.execute("SELECT current_user").fetchone() == ("revkernel_app",)
        _seed(app)
        before = _fingerprint(owner)
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.WrongObjectType)):
            app.execute(statement)
        assert _fingerprint(owner) == before


def test_app_role_cannot_become_the_owner(database: Database) -> None:
    with database.connect("app", autocommit=True) as app:
        for statement in (
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "ALTER ROLE revkernel_app SUPERUSER",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)


def test_sanctioned_changes_go_through_functions_that_audit(database: Database) -> None:
    with database.connect("app", autocommit=True) as app, database.connect("owner", autocommit=True) as owner:
        site_id = _seed(app)
        key, _ = issue_key(app, site_id=site_id, role="viewer")
        changed = app.execute(
            "SELECT revkernel_update_site(%s, %s, 'test', %s)", (site_id, Jsonb({"monthly_limit": 20}), NOW)
        ).fetchone()
        assert changed == ({"before": {"monthly_limit": 10}, "after": {"monthly_limit": 20}},)
        # Preconditions are the function's own: unknown fields, invalid values, unknown sites.
        for changes, error in (
            ({"key_hash": "x"}, psycopg.errors.InvalidParameterValue),
            ({"monthly_limit": -1}, psycopg.errors.CheckViolation),
            ({"billing_mode": "free"}, psycopg.errors.CheckViolation),
            ({"monthly_limit": None}, psycopg.errors.InvalidParameterValue),
        ):
            with pytest.raises(error):
                app.execute("SELECT revkernel_update_site(%s, %s, 'test', %s)", (site_id, Jsonb(changes), NOW))
        with pytest.raises(psycopg.errors.NoDataFound):
            app.execute("SELECT revkernel_update_site(%s, '{}', 'test', %s)", (uuid.uuid4(), NOW))
        # A revocation only ever moves a key's end earlier: no un-revoking, no extending.
        app.execute("SELECT * FROM revkernel_revoke_key(%s, %s, NULL, 'test', 'leak')", (key.id, NOW))
        app.execute(
            "SELECT * FROM revkernel_revoke_key(%s, %s, %s, 'test', 'undo?')", (key.id, NOW, NOW + timedelta(days=9))
        )
        row = owner.execute("SELECT revoked_at, expires_at FROM api_keys WHERE id = %s", (key.id,)).fetchone()
        assert row == (NOW, None)
        actions = owner.execute("SELECT action, actor FROM audit_log WHERE actor = 'test' ORDER BY id").fetchall()
        assert actions == [("site_updated", "test"), ("key_revoked", "test")]


def test_a_temp_table_cannot_capture_the_functions_audit_rows(database: Database) -> None:
    """search_path is pinned in the SECURITY DEFINER functions: pg_temp shadows nothing."""
    with database.connect("app", autocommit=True) as app, database.connect("owner", autocommit=True) as owner:
        site_id = _seed(app)
        app.execute("CREATE TEMP TABLE audit_log (LIKE public.audit_log INCLUDING ALL)")
        app.execute("CREATE TEMP TABLE site_plans (LIKE public.site_plans INCLUDING ALL)")
        app.execute("SELECT revkernel_update_site(%s, %s, 'temp', %s)", (site_id, Jsonb({"monthly_limit": 77}), NOW))
        assert app.execute("SELECT count(*) FROM pg_temp.audit_log").fetchone() == (0,)
        assert owner.execute("SELECT count(*) FROM audit_log WHERE actor = 'temp'").fetchone() == (1,)
        assert owner.execute("SELECT monthly_limit FROM site_plans").fetchone() == (77,)


def test_the_analyst_role_cannot_call_the_functions(database: Database) -> None:
    with database.connect("app", autocommit=True) as app:
        site_id = _seed(app)
    with database.connect("analyst", autocommit=True) as analyst:
        analyst.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT revkernel_update_site(%s, '{\"monthly_limit\": 1}', 'a', now())", (site_id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT * FROM revkernel_revoke_key(gen_random_uuid(), now(), NULL, 'a', 'a')")
