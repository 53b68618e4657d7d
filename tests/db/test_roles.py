"""Immutability and roles hold as the roles the kernel really connects as."""

from __future__ import annotations

import psycopg
import pytest

from kernel.db.connect import Database
from kernel.tenants import create_site


def _snapshot(conn: psycopg.Connection, site_id: object) -> None:
    conn.execute(
        """INSERT INTO invoice_snapshot (site_id, year_month, billable_count, overage_count,
               rejected_count, non_billable_count, merkle_root, snapshot_hash, document,
               signature, key_id, frozen_at)
           VALUES (%s, '2026-01', 1, 0, 0, 0, repeat('a', 64), repeat('b', 64), '{}', '00',
                   '0123456789abcdef', now())""",
        (site_id,),
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE invoice_snapshot SET billable_count = 2",
        "DELETE FROM invoice_snapshot",
        "TRUNCATE invoice_snapshot",
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
def test_evidence_is_immutable_for_the_app_role(database: Database, statement: str) -> None:
    with database.connect("app", autocommit=True) as conn:
        site = create_site(conn, name="s", monthly_limit=1).site
        _snapshot(conn, site.id)
        conn.execute("INSERT INTO audit_log (actor, action) VALUES ('t', 'export')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        assert conn.execute("SELECT billable_count FROM invoice_snapshot").fetchone() == (1,)


@pytest.mark.parametrize("statement", ["UPDATE invoice_snapshot SET billable_count = 2", "TRUNCATE invoice_snapshot"])
def test_evidence_is_immutable_even_for_the_owner(database: Database, statement: str) -> None:
    with database.connect("owner", autocommit=True) as conn:
        site = create_site(conn, name="s", monthly_limit=1).site
        _snapshot(conn, site.id)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)


def test_analyst_role_reads_and_cannot_write(database: Database) -> None:
    with database.connect("app", autocommit=True) as conn:
        create_site(conn, name="visible", monthly_limit=5)
    with database.connect("analyst", autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("revkernel_analyst",)
        assert conn.execute("SELECT name FROM sites").fetchall() == [("visible",)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO audit_log (actor, action) VALUES ('a', 'b')")
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM sites")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT key_hash FROM api_keys")
