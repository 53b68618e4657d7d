from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from kernel.db import migrations
from kernel.db.connect import Database
from kernel.errors import MigrationChecksumMismatch, MigrationError, SchemaBehind
from tests.conftest import clone_database


@pytest.fixture
def empty_db(pg_server: str) -> str:
    # template1 is an empty database: nothing of ours in it.
    return clone_database(pg_server, "template1")


def test_migrations_apply_on_an_empty_server_and_second_run_is_a_noop(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:
        first = migrations.migrate(conn)
        second = migrations.migrate(conn)
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        recorded = conn.execute("SELECT name, sha256 FROM schema_migrations").fetchall()
    assert first == [m.name for m in migrations.discover()]
    assert second == []
    for table in (
        "sites",
        "site_plans",
        "api_keys",
        "ingest_idempotency",
        "site_usage_monthly",
        "ingest_outbox",
        "ingest_publish_failures",
        "billing_reconciliation_jobs",
        "reconciliation_drift_log",
        "invoice_snapshot",
        "ledger_archive",
        "dispute_holds",
        "cron_runs",
        "audit_log",
    ):
        assert table in tables
    assert {(m.name, m.sha256) for m in migrations.discover()} == set(recorded)


def test_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    mig_dir = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, mig_dir)
    with psycopg.connect(empty_db) as conn:
        migrations.migrate(conn, mig_dir)
        first = sorted(mig_dir.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after the fact\n")
        with pytest.raises(MigrationChecksumMismatch, match="edited after it was applied"):
            migrations.migrate(conn, mig_dir)
        with pytest.raises(MigrationChecksumMismatch):
            migrations.require_current(conn, mig_dir)


def test_database_behind_the_code_is_refused_and_a_failed_migration_leaves_nothing(
    empty_db: str, tmp_path: Path
) -> None:
    mig_dir = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, mig_dir)
    with psycopg.connect(empty_db) as conn:
        migrations.migrate(conn, mig_dir)
        (mig_dir / "9998_add_note.sql").write_text("ALTER TABLE sites ADD COLUMN note text;\n")
        with pytest.raises(SchemaBehind, match="behind the code"):
            migrations.require_current(conn, mig_dir)
        (mig_dir / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_fn();\n")
        with pytest.raises(MigrationError, match="9999_broken failed"):
            migrations.migrate(conn, mig_dir)
        # 9998 landed, 9999 rolled back entirely.
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        names = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
    assert "9998_add_note" in names and "9999_broken" not in names


def test_year_month_is_generated_from_created_at_in_utc(app_conn: psycopg.Connection) -> None:
    from kernel.tenants import create_site

    site = create_site(app_conn, name="s", monthly_limit=10).site
    # 23:30 on Jan 31 in UTC-05 is Feb 1 04:30 UTC: the month is February.
    app_conn.execute(
        """INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at,
               billable, billing_state, billing_reason, payload_hash)
           VALUES (%s, 'k1', 2, '2026-01-31 23:30:00-05', true, 'ACCEPTED', 'within_quota', 'h')""",
        (site.id,),
    )
    row = app_conn.execute("SELECT year_month FROM ingest_idempotency").fetchone()
    assert row == ("2026-02",)


def test_service_database_check_uses_code_migrations(database: Database) -> None:
    with database.connect("owner") as conn:
        migrations.require_current(conn)
