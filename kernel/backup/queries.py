"""The SQL of backup and restore: what the manifest records, read in the dump's own snapshot."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "ARCHIVES",
    "LATEST_SNAPSHOTS",
    "MIGRATIONS",
    "TABLES",
    "USER_OBJECTS",
    "archives",
    "latest_snapshots",
    "migrations_applied",
    "table_counts",
    "user_objects",
]

# Every ordinary or partitioned table of the kernel's schema (partitions are counted in their parent).
TABLES = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname COLLATE "C"
"""

# Every site and its latest invoice snapshot (null when it has none).
LATEST_SNAPSHOTS = """
SELECT s.id::text, s.public_id, latest.year_month, latest.snapshot_hash
FROM sites s
LEFT JOIN LATERAL (
    SELECT i.year_month, i.snapshot_hash FROM invoice_snapshot i
    WHERE i.site_id = s.id ORDER BY i.year_month DESC LIMIT 1
) latest ON true
ORDER BY s.id
"""

ARCHIVES = """
SELECT site_id::text, year_month, file_path, sha256, row_count, merkle_root
FROM ledger_archive
ORDER BY site_id, year_month
"""

MIGRATIONS = 'SELECT name, sha256 FROM schema_migrations ORDER BY name COLLATE "C"'

# Anything a restore would collide with: relations, functions and types outside the system schemas.
USER_OBJECTS = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%')
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
"""


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every table of schema public."""
    counts: dict[str, int] = {}
    for (name,) in conn.execute(TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(name))
        row = conn.execute(query).fetchone()
        counts[str(name)] = int(row[0]) if row else 0
    return counts


def latest_snapshots(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [
        {"site_id": sid, "public_id": pid, "year_month": ym, "snapshot_hash": digest}
        for sid, pid, ym, digest in conn.execute(LATEST_SNAPSHOTS).fetchall()
    ]


def archives(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [
        {
            "site_id": sid,
            "year_month": ym,
            "file_path": path,
            "sha256": digest,
            "row_count": int(rows),
            "merkle_root": root,
        }
        for sid, ym, path, digest, rows, root in conn.execute(ARCHIVES).fetchall()
    ]


def migrations_applied(conn: psycopg.Connection[Any]) -> list[dict[str, str]]:
    exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [{"name": name, "sha256": digest} for name, digest in conn.execute(MIGRATIONS).fetchall()]


def user_objects(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(USER_OBJECTS).fetchone()
    return int(row[0]) if row else 0
