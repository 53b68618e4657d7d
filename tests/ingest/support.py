"""Helpers for ingest tests: sites with known plans, ledger and counter readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from litestar.testing import TestClient

from kernel.clock import ManualClock
from kernel.settings import Settings
from kernel.tenants import NewSite, create_site

START = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def make_site(conn: psycopg.Connection[Any], **plan: Any) -> NewSite:
    """A site with a plan (defaults: enforce, limit 5, no soft limit, 1000 requests/minute)."""
    options: dict[str, Any] = {
        "name": "Test site",
        "monthly_limit": 5,
        "soft_limit_enabled": False,
        "hard_cap_multiplier": Decimal(1),
        "rate_limit_per_minute": 1000,
        "billing_mode": "enforce",
    }
    options.update(plan)
    return create_site(conn, **options)


def auth(site: NewSite) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.ingest_key}"}


def counters(conn: psycopg.Connection[Any], site: NewSite, year_month: str) -> dict[str, int]:
    row = conn.execute(
        """SELECT event_count, overage_count, rejected_count, non_billable_count, dedup_count
           FROM site_usage_monthly WHERE site_id = %s AND year_month = %s""",
        (site.site.id, year_month),
    ).fetchone()
    names = ("event_count", "overage_count", "rejected_count", "non_billable_count", "dedup_count")
    return dict(zip(names, row or (0, 0, 0, 0, 0), strict=True))


def ledger(conn: psycopg.Connection[Any], site: NewSite) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT idempotency_key, billable, billing_state, billing_reason, year_month
           FROM ingest_idempotency WHERE site_id = %s ORDER BY created_at, idempotency_key COLLATE "C" """,
        (site.site.id,),
    ).fetchall()


def outbox_keys(conn: psycopg.Connection[Any], site: NewSite) -> list[str]:
    rows = conn.execute(
        "SELECT idempotency_key FROM ingest_outbox WHERE site_id = %s ORDER BY id", (site.site.id,)
    ).fetchall()
    return [r[0] for r in rows]


@dataclass
class Harness:
    client: TestClient[Any]
    clock: ManualClock
    conn: psycopg.Connection[Any]
    settings: Settings
