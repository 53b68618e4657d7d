"""invoice-freeze restricted to some sites (what the post-deploy smoke uses on a live instance)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cron_support import CRON_HEADERS, add_month, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.settings import Settings

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
AFTER_MARCH = datetime(2026, 4, 1, 1, 0, tzinfo=UTC)


def _frozen(conn: psycopg.Connection[Any], site_id: str) -> bool:
    return conn.execute("SELECT 1 FROM invoice_snapshot WHERE site_id = %s", (site_id,)).fetchone() is not None


def test_freeze_with_site_id_freezes_that_site_only(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    mine, _ = make_site(app_conn, "Smoke site")
    customer, _ = make_site(app_conn, "A customer")
    add_month(app_conn, mine, MARCH + timedelta(days=2), billable=3)
    add_month(app_conn, customer, MARCH + timedelta(days=2), billable=5, prefix="cust")
    with TestClient(create_app(settings, clock=ManualClock(AFTER_MARCH))) as client:
        only = client.post("/api/cron/invoice-freeze", params={"site_id": mine}, headers=CRON_HEADERS)
        assert only.status_code == 200, only.text
        assert only.json() == {"ok": True, "year_month": "2026-03", "frozen": 1, "already_frozen": 0}
        assert _frozen(app_conn, mine) and not _frozen(app_conn, customer)
        # A malformed id is a 400 before anything runs; the customer's month stays open to freezing.
        bad = client.post("/api/cron/invoice-freeze", params={"site_id": "not-a-uuid"}, headers=CRON_HEADERS)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_site_id"
        assert not _frozen(app_conn, customer)
        # Without the filter the scheduled freeze still covers everyone.
        everyone = client.post("/api/cron/invoice-freeze", headers=CRON_HEADERS)
        assert everyone.json()["frozen"] == 1 and everyone.json()["already_frozen"] == 1
    assert _frozen(app_conn, customer)
