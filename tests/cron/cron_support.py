"""Helpers for the cron tests: sites, ledger rows written like the ingest transaction writes them.

Ledger rows are inserted with the same three writes as the ingest path (ledger row, counter,
outbox) in one transaction, with ``created_at`` chosen by the test, so a test can build a month
of history in milliseconds. Tests that need the real ingest path use ``POST /api/sync``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kernel.clock import ManualClock
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.settings import Settings
from kernel.tenants import create_site

CRON_HEADERS = {"Authorization": "Bearer test-cron-secret-0123456789"}


def make_site(conn: psycopg.Connection[Any], name: str = "Cron Test") -> tuple[str, str]:
    """A new site; returns (site_id, ingest_key)."""
    with conn.transaction():
        new = create_site(conn, name=name, monthly_limit=1_000_000)
    return str(new.site.id), new.ingest_key


def add_event(
    conn: psycopg.Connection[Any],
    site_id: str,
    key: str,
    created_at: datetime,
    state: str = "ACCEPTED",
    billable: bool | None = None,
    reason: str | None = None,
) -> None:
    """One ledger row + its counter increment + (when billable) its outbox row, in one transaction."""
    if billable is None:
        billable = state != "REJECTED_QUOTA"
    reason = reason or ("rejected_quota" if state == "REJECTED_QUOTA" else ("billable" if billable else "system"))
    month = created_at.astimezone(UTC).strftime("%Y-%m")
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
                billing_state, billing_reason, event_category, event_action, payload_hash)
            VALUES (%s, %s, 2, %s, %s, %s, %s, 'test', 'event', %s)
            """,
            (site_id, key, created_at, billable, state, reason, hashlib.sha256(key.encode()).hexdigest()),
        )
        conn.execute(
            """
            INSERT INTO site_usage_monthly AS u (site_id, year_month, event_count, overage_count, rejected_count,
                non_billable_count)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (site_id, year_month) DO UPDATE SET
                event_count = u.event_count + EXCLUDED.event_count,
                overage_count = u.overage_count + EXCLUDED.overage_count,
                rejected_count = u.rejected_count + EXCLUDED.rejected_count,
                non_billable_count = u.non_billable_count + EXCLUDED.non_billable_count
            """,
            (
                site_id,
                month,
                int(billable),
                int(billable and state == "OVERAGE"),
                int(state == "REJECTED_QUOTA"),
                int(not billable and state != "REJECTED_QUOTA"),
            ),
        )
        if billable:
            conn.execute(
                "INSERT INTO ingest_outbox (site_id, idempotency_key, payload, created_at) VALUES (%s, %s, %s, %s)",
                (site_id, key, json.dumps({"key": key, "n": 1}), created_at),
            )


def add_month(
    conn: psycopg.Connection[Any],
    site_id: str,
    start: datetime,
    billable: int,
    overage: int = 0,
    rejected: int = 0,
    non_billable: int = 0,
    prefix: str = "evt",
) -> list[str]:
    """A month's worth of rows, one second apart from ``start``; returns the keys in insertion order."""
    keys: list[str] = []
    at = start
    plan = (
        [("ACCEPTED", True)] * (billable - overage)
        + [("OVERAGE", True)] * overage
        + [("REJECTED_QUOTA", False)] * rejected
        + [("ACCEPTED", False)] * non_billable
    )
    for i, (state, is_billable) in enumerate(plan):
        key = f"{prefix}-{i:05d}-{uuid.uuid4().hex[:6]}"
        add_event(conn, site_id, key, at, state=state, billable=is_billable)
        keys.append(key)
        at += timedelta(seconds=1)
    return keys


def cron_ctx(settings: Settings, clock: ManualClock, trigger: str = "cli") -> CronContext:
    return CronContext(settings, clock, Database(settings), trigger=trigger)
