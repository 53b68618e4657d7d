"""The SQL of the export context: the only place it lives. Sync and async twins share the text."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from kernel.ledger import SnapshotDocument

__all__ = [
    "SnapshotRecord",
    "cleaned_up_rows_async",
    "load_snapshot",
    "load_snapshot_async",
    "record_audit",
    "record_audit_async",
    "site_exists_async",
]

_SNAPSHOT_SQL = """
    SELECT s.document, s.snapshot_hash, s.signature, s.key_id, k.public_key
    FROM invoice_snapshot s
    LEFT JOIN signing_keys k ON k.key_id = s.key_id
    WHERE s.site_id = %s AND s.year_month = %s
"""
_AUDIT_SQL = """
    INSERT INTO audit_log (at, actor, action, site_id, year_month, details)
    VALUES (%s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class SnapshotRecord:
    """A frozen month's signed snapshot as stored: the document bytes and how they were signed."""

    document: bytes
    snapshot_hash: str
    signature: str
    key_id: str
    public_key: str | None  # lowercase hex of the raw Ed25519 key; None if signing_keys lacks it

    @property
    def parsed(self) -> SnapshotDocument:
        return SnapshotDocument.from_bytes(self.document)

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "ed25519",
            "document": self.document.decode("utf-8"),
            "key_id": self.key_id,
            "public_key": self.public_key,
            "signature": self.signature,
            "snapshot_hash": self.snapshot_hash,
        }


def _snapshot(row: tuple[Any, ...] | None) -> SnapshotRecord | None:
    if row is None:
        return None
    document, snapshot_hash, signature, key_id, public_key = row
    return SnapshotRecord(str(document).encode("utf-8"), snapshot_hash, signature, key_id, public_key)


def load_snapshot(conn: psycopg.Connection[Any], site_id: uuid.UUID, year_month: str) -> SnapshotRecord | None:
    """The month's snapshot, or None while the month is open."""
    return _snapshot(conn.execute(_SNAPSHOT_SQL, (site_id, year_month)).fetchone())


async def load_snapshot_async(
    conn: psycopg.AsyncConnection[Any], site_id: uuid.UUID, year_month: str
) -> SnapshotRecord | None:
    cur = await conn.execute(_SNAPSHOT_SQL, (site_id, year_month))
    return _snapshot(await cur.fetchone())


def record_audit(
    conn: psycopg.Connection[Any],
    *,
    at: datetime,
    actor: str,
    action: str,
    site_id: uuid.UUID,
    year_month: str,
    details: dict[str, Any],
) -> None:
    """Append one ``audit_log`` row (the table is append-only)."""
    conn.execute(_AUDIT_SQL, (at, actor, action, site_id, year_month, Jsonb(details)))


async def record_audit_async(
    conn: psycopg.AsyncConnection[Any],
    *,
    at: datetime,
    actor: str,
    action: str,
    site_id: uuid.UUID,
    year_month: str,
    details: dict[str, Any],
) -> None:
    await conn.execute(_AUDIT_SQL, (at, actor, action, site_id, year_month, Jsonb(details)))


async def cleaned_up_rows_async(
    conn: psycopg.AsyncConnection[Any], site_id: uuid.UUID, year_month: str, snapshot: SnapshotRecord
) -> int:
    """How many of the snapshot's rows the ledger no longer holds (0 unless the month was archived).

    Cleanup deletes rows only from archived months, so the count is only taken for those.
    """
    cur = await conn.execute(
        "SELECT 1 FROM ledger_archive WHERE site_id = %s AND year_month = %s", (site_id, year_month)
    )
    if await cur.fetchone() is None:
        return 0
    cur = await conn.execute(
        "SELECT count(*) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s", (site_id, year_month)
    )
    row = await cur.fetchone()
    document = snapshot.parsed
    expected = document.billable_count + document.rejected_count + document.non_billable_count
    return max(0, expected - int(row[0] if row is not None else 0))


async def site_exists_async(conn: psycopg.AsyncConnection[Any], site_id: uuid.UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM sites WHERE id = %s", (site_id,))
    return await cur.fetchone() is not None
