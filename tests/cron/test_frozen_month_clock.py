"""Issue 11 §3: nothing lands in a frozen month, whatever a host clock says.

The host clock is the injected clock (``ManualClock``, ``OffsetClock``); the database's clock is
the real one. Months used here are long over by the database's clock, so the freeze is allowed
by it, and an event the database refuses to put in a frozen month goes to the database's month.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cron_support import CRON_HEADERS, cron_ctx, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock, OffsetClock
from kernel.cron.freeze import LEAVES_SQL, freeze_month
from kernel.cron.runs import CronContext
from kernel.cron.watchtower import watchtower
from kernel.db.connect import Database
from kernel.ledger import RootBuilder, leaf_bytes
from kernel.months import month_bounds, year_month_of
from kernel.settings import Settings

MARCH = "2026-03"
LATE_MARCH = datetime(2026, 3, 31, 23, 40, tzinfo=UTC)
FREEZE_AT = datetime(2026, 4, 1, 0, 10, tzinfo=UTC)


def _db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _snapshot(conn: psycopg.Connection[Any], site: str, month: str) -> tuple[int, str] | None:
    row = conn.execute(
        "SELECT billable_count, merkle_root FROM invoice_snapshot WHERE site_id = %s AND year_month = %s",
        (site, month),
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _recomputed(conn: psycopg.Connection[Any], site: str, month: str) -> tuple[int, str]:
    """(billable count, Merkle root) of the month as the ledger holds it now."""
    builder = RootBuilder()
    for key, created_at, state in conn.execute(LEAVES_SQL, (site, month)).fetchall():
        builder.add_leaf(leaf_bytes(key, created_at, state))
    return builder.size, builder.root().hex()


def _months(conn: psycopg.Connection[Any], site: str) -> dict[str, str]:
    rows = conn.execute("SELECT idempotency_key, year_month FROM ingest_idempotency WHERE site_id = %s", (site,))
    return {str(k): str(m) for k, m in rows.fetchall()}


def _post(client: TestClient[Any], key: str, body: dict[str, Any]) -> Any:
    return client.post("/api/sync", json=body, headers={"Authorization": f"Bearer {key}"})


def test_a_host_ten_minutes_behind_after_the_freeze_never_adds_to_the_frozen_month(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, key = make_site(app_conn)
    clock = ManualClock(LATE_MARCH)
    with TestClient(create_app(settings, clock=clock)) as client:
        for i in range(3):
            assert _post(client, key, {"event_id": f"march-{i}", "ec": "click"}).status_code == 200
        frozen = freeze_month(cron_ctx(settings, ManualClock(FREEZE_AT)), MARCH)
        assert frozen["frozen"] == 1
        snapshot = _snapshot(app_conn, site, MARCH)
        assert snapshot is not None and snapshot[0] == 3
        # This host's clock is 12 minutes behind the freeze: it still believes it is March.
        clock.set(FREEZE_AT - timedelta(minutes=12))
        db_month = year_month_of(_db_now(app_conn))
        single = _post(client, key, {"event_id": "late-v2", "ec": "click"})
        derived = _post(client, key, {"ec": "click", "ea": "late-v1"})
        batch = _post(
            client, key, {"events": [{"event_id": "late-b1", "ec": "x"}, {"event_id": "march-0", "ec": "click"}]}
        )
        assert single.status_code == derived.status_code == batch.status_code == 200
        assert single.json()["status"] == derived.json()["status"] == "accepted"
        assert [r["status"] for r in batch.json()["results"]] == ["accepted", "duplicate"]
        retry = _post(client, key, {"event_id": "late-v2", "ec": "click"})
        assert retry.json()["status"] == "duplicate"
    months = _months(app_conn, site)
    late = {k: m for k, m in months.items() if not k.startswith("march-")}
    assert len(late) == 3 and set(late.values()) == {db_month}  # the database's month, not March
    assert sorted(k for k, m in months.items() if m == MARCH) == ["march-0", "march-1", "march-2"]
    # created_at is the database's time for the moved events.
    row = app_conn.execute(
        "SELECT min(created_at) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s", (site, db_month)
    ).fetchone()
    assert row is not None and abs((row[0] - _db_now(app_conn)).total_seconds()) < 600
    assert _recomputed(app_conn, site, MARCH) == snapshot  # every snapshot still verifies
    counted = app_conn.execute(
        "SELECT event_count FROM site_usage_monthly WHERE site_id = %s AND year_month = %s", (site, MARCH)
    ).fetchone()
    assert counted == (3,)


def test_a_freeze_racing_live_ingest_at_the_month_boundary(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    """Sixteen clients keep sending at 23:59:59 of March by their host's clock while the month is
    frozen: each event lands in March before the close or in the database's month after it,
    never in March after the snapshot; every answer is a 200 and agrees with the ledger."""
    site, key = make_site(app_conn)
    clock = ManualClock(datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC))
    ids = [f"edge-{i:03d}" for i in range(160)]
    with TestClient(create_app(settings, clock=clock)) as client, ThreadPoolExecutor(16) as pool:
        first = list(pool.map(lambda i: _post(client, key, {"event_id": i, "ec": "click"}), ids[:60]))
        racing = [pool.submit(_post, client, key, {"event_id": i, "ec": "click"}) for i in ids[60:]]
        result = freeze_month(cron_ctx(settings, ManualClock(FREEZE_AT)), MARCH)
        after = [f.result() for f in racing]
        late = _post(client, key, {"event_id": "edge-late", "ec": "click"})
    assert result["ok"] is True and result["frozen"] == 1
    replies = [*first, *after, late]
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert all(r.json()["status"] == "accepted" for r in replies)
    months = _months(app_conn, site)
    assert sorted(months) == sorted([*ids, "edge-late"])  # every accepted event is in the ledger once
    db_month = year_month_of(_db_now(app_conn))
    assert set(months.values()) <= {MARCH, db_month}
    assert all(months[i] == MARCH for i in ids[:60]) and months["edge-late"] == db_month
    snapshot = _snapshot(app_conn, site, MARCH)
    assert snapshot is not None
    assert snapshot == _recomputed(app_conn, site, MARCH)
    assert snapshot[0] == sum(1 for m in months.values() if m == MARCH)


def test_a_host_clock_ahead_cannot_freeze_a_month_the_database_says_is_open(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, key = make_site(app_conn)
    db_now = _db_now(app_conn)
    current = year_month_of(db_now)
    ahead = ManualClock(month_bounds(current)[1] + timedelta(minutes=30))  # the host thinks it is over
    with TestClient(create_app(settings, clock=ManualClock(db_now))) as client:
        assert _post(client, key, {"event_id": "now-1", "ec": "click"}).status_code == 200
    with TestClient(create_app(settings, clock=ahead)) as client:
        reply = client.post("/api/cron/invoice-freeze", params={"year_month": current}, headers=CRON_HEADERS)
    assert reply.status_code == 409, reply.text
    assert reply.json()["error"] == "month_open" and "database" in reply.json()["message"]
    assert _snapshot(app_conn, site, current) is None
    closed = app_conn.execute(
        "SELECT closed_at FROM site_usage_monthly WHERE site_id = %s AND year_month = %s", (site, current)
    ).fetchone()
    assert closed == (None,)
    # Nor can the app role close it by calling the database directly.
    with pytest.raises(psycopg.Error, match="not closed by the database clock"):
        app_conn.execute("SELECT close_site_month(%s, %s, '0'::interval)", (site, current))


def test_when_the_databases_month_is_closed_too_the_event_gets_a_retryable_error(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    """A database clock that went back into a closed month: nothing is written, and the answer
    says to retry (golden rule 2's body, its own error code)."""
    site, key = make_site(app_conn)
    db_now = _db_now(app_conn)
    owner_conn.execute(
        "INSERT INTO site_usage_monthly (site_id, year_month, closed_at) VALUES (%s, %s, now())",
        (site, year_month_of(db_now)),
    )
    with TestClient(create_app(settings, clock=ManualClock(db_now))) as client:
        reply = _post(client, key, {"event_id": "nowhere-1", "ec": "click"})
    assert reply.status_code == 500
    assert reply.json()["status"] == "billing_gate_closed" and reply.json()["error"] == "month_closed"
    assert reply.headers["retry-after"] == "60" and reply.headers["x-opsmantik-ledger-outcome"] == "not_written"
    assert _months(app_conn, site) == {}


def test_the_app_role_cannot_reopen_or_close_a_month_behind_the_freezes_back(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    freeze_month(cron_ctx(settings, ManualClock(FREEZE_AT)), MARCH)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("UPDATE site_usage_monthly SET closed_at = NULL WHERE site_id = %s", (site,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("DELETE FROM closed_months")


def test_clock_skew_is_a_watchtower_finding_and_measured_at_startup(
    settings: Settings, app_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    behind = OffsetClock(timedelta(minutes=-10))
    result = watchtower(CronContext(settings, behind, Database(settings)))
    check = result["checks"]["clock_skew"]
    assert check["status"] == "alarm" and check["simulated"] is False
    assert -610 < check["skew_s"] < -590
    assert result["ok"] is False and "clock_skew" in result["error"]
    on_time = watchtower(CronContext(settings, OffsetClock(timedelta(0)), Database(settings)))
    assert on_time["checks"]["clock_skew"]["status"] == "ok"
    simulated = watchtower(cron_ctx(settings, ManualClock(FREEZE_AT)))
    assert simulated["checks"]["clock_skew"] == {
        "status": "ok",
        "skew_s": simulated["checks"]["clock_skew"]["skew_s"],
        "simulated": True,
    }
    caplog.set_level(logging.WARNING, logger="kernel.cron.watchtower")
    with TestClient(create_app(settings, clock=OffsetClock(timedelta(minutes=-10)))) as client:
        metrics = client.get("/metrics").text
    assert any("off the database clock" in r.getMessage() for r in caplog.records)
    match = re.search(r"^billing_clock_skew_seconds (\S+)$", metrics, re.M)
    assert match is not None and -610 < float(match.group(1)) < -590
