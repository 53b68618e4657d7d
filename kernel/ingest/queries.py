"""The SQL of ingest: the ledger transaction (the only place ingest SQL lives; site and key
lookups are in ``kernel.tenants``).

The ledger transaction is the ``ingest_write`` function of ``sql/migrations/0005_ingest_write.sql``:
one statement per request (a single event or a batch of up to 100), so one network round trip,
run on an autocommit connection where the statement *is* the transaction. It locks the site-month
counter row, decides each event in order (quota position ``n`` = billable events so far + 1),
inserts the ledger rows with ``ON CONFLICT DO NOTHING`` (a conflict is a duplicate and returns the
original row), writes the outbox rows of accepted events and updates the counters, all or nothing.
A round-trip sketch: the earlier design sent BEGIN, the lock, one statement per event and COMMIT
in a pipeline; the client-side cost of that (about 1.4 ms of CPU per request in psycopg) was
four times the cost of one prepared statement.

Issue 11 (migration 0010): a key whose month was archived and cleaned up comes back as a result
with ``billing_state = 'ARCHIVED'`` and its month in ``billing_reason`` (``LedgerResult.archived``);
``LOOKUP_KEYS`` reads what the ledger holds for a request's keys when the outcome of its ledger
call is unknown (``kernel.ingest.outcome``), in the same shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection

from kernel.ingest.keys import KeyedEvent

__all__ = [
    "ARCHIVED_STATE",
    "LOOKUP_KEYS",
    "WRITE_EVENTS",
    "LedgerResult",
    "lookup_keys",
    "read_original",
    "write_events",
]

# The function waits at most 3 s for the site-month lock (its own SET lock_timeout); the caller
# bounds the whole call with Settings.ledger_timeout_s (REVKERNEL_LEDGER_TIMEOUT_S) and resolves an
# unknown outcome (kernel.ingest.outcome); the pool bounds every statement server-side below it.

WRITE_EVENTS = """
SELECT * FROM ingest_write(%(site_id)s::uuid, %(now)s::timestamptz, %(billing_enabled)s::boolean,
                           %(request_id)s::text, %(events)s::jsonb)
"""

ARCHIVED_STATE = "ARCHIVED"  # ingest_write's billing_state of a key cleaned up with its month

# What the ledger holds for some keys of one site: the ledger row, else the cleaned-key record in
# the shape ingest_write returns for an archived key. One statement, one snapshot.
LOOKUP_KEYS = """
SELECT i.idempotency_key, false, i.billable, i.billing_state, i.billing_reason, i.response_status,
       i.quota_remaining, i.payload_hash, i.idempotency_version, i.created_at, i.request_id
FROM ingest_idempotency i WHERE i.site_id = %(site_id)s AND i.idempotency_key = ANY(%(keys)s)
UNION ALL
SELECT c.idempotency_key, false, false, 'ARCHIVED', c.year_month, 200::smallint, NULL::bigint, NULL::text,
       2::smallint, c.cleaned_at, NULL::text
FROM ingest_cleaned_keys c WHERE c.site_id = %(site_id)s AND c.idempotency_key = ANY(%(keys)s)
  AND NOT EXISTS (SELECT 1 FROM ingest_idempotency i
                  WHERE i.site_id = c.site_id AND i.idempotency_key = c.idempotency_key)
"""


@dataclass(frozen=True)
class LedgerResult:
    """What the ledger holds for one event after the transaction: the new row or the original."""

    inserted: bool
    billable: bool
    billing_state: str
    billing_reason: str
    response_status: int
    quota_remaining: int | None
    payload_hash: str | None  # None for an archived key (its row is gone)
    idempotency_version: int
    created_at: datetime
    request_id: str | None

    @property
    def archived_month(self) -> str | None:
        """The ``year_month`` of a key that was archived and cleaned up with its month, else None."""
        return self.billing_reason if self.billing_state == ARCHIVED_STATE else None


def write_params(
    site_id: uuid.UUID, now: datetime, request_id: str, billing_enabled: bool, events: list[KeyedEvent]
) -> dict[str, Any]:
    """The bound parameters of ``WRITE_EVENTS``; the events travel as one JSON array."""
    rows = [
        {
            "k": k.idempotency_key,
            "v": k.idempotency_version,
            "c": k.event_class,
            "h": k.payload_hash,
            "ec": k.event.ec,
            "ea": k.event.ea,
            "el": k.event.el,
            "url": k.event.page_url,
            "fp": k.event.fp,
            "at": k.occurred_at,
            "p": k.payload,
            "a": k.client_hash,  # migration 0021
        }
        for k in events
    ]
    return {
        "site_id": site_id,
        "now": now,
        "billing_enabled": billing_enabled,
        "request_id": request_id,
        "events": msgspec.json.encode(rows).decode("utf-8"),
    }


async def write_events(
    conn: AsyncConnection[Any],
    *,
    site_id: uuid.UUID,
    now: datetime,
    request_id: str,
    billing_enabled: bool,
    events: list[KeyedEvent],
) -> list[LedgerResult | None]:
    """Run the ledger transaction for one site's events (module docstring); one result each.

    ``conn`` must be in autocommit mode (the pool's connections are): the one statement is the
    transaction. A result is None only if the original of a duplicate vanished between the
    conflict and its read (a cleanup racing the request): the caller reads it again or fails.
    Raises ``psycopg.Error`` when the transaction fails; then nothing was written.
    """
    cur = await conn.execute(WRITE_EVENTS, write_params(site_id, now, request_id, billing_enabled, events))
    rows = await cur.fetchall()
    results: list[LedgerResult | None] = [None] * len(events)
    for row in rows:
        results[row[0] - 1] = LedgerResult(*row[1:])
    return results


async def lookup_keys(conn: AsyncConnection[Any], site_id: uuid.UUID, keys: list[str]) -> dict[str, LedgerResult]:
    """What the ledger holds now for ``keys`` of a site (rows as originals, ``inserted`` false)."""
    cur = await conn.execute(LOOKUP_KEYS, {"site_id": site_id, "keys": sorted(set(keys))})
    return {str(row[0]): LedgerResult(*row[1:]) for row in await cur.fetchall()}


async def read_original(conn: AsyncConnection[Any], site_id: uuid.UUID, idempotency_key: str) -> LedgerResult | None:
    """The original of a duplicate: its ledger row, or its cleaned-key record once archived."""
    return (await lookup_keys(conn, site_id, [idempotency_key])).get(idempotency_key)
