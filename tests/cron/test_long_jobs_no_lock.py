"""Issue 11 §4: long jobs never hold the quota lock; cron locks the analyst cannot take.

Reconcile recounts from one snapshot without the ingest lock and corrects by a delta; its Redis
call runs with no lock held, so a Redis that never answers (a socket that accepts and stays
silent) stalls only reconcile. Cron locks are rows the read-only analyst cannot lock, and a
scheduled slot that found its lock busy is retried.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cron_support import add_month, cron_ctx, make_site

import kernel.cron.reconcile as reconcile_module
from kernel.app import create_app
from kernel.clock import ManualClock, OffsetClock
from kernel.cron.jobs import run_named
from kernel.cron.reconcile import enqueue_jobs, reconcile_site_month, run_jobs
from kernel.cron.runs import CronContext
from kernel.cron.scheduler import LEADER_LOCK, Scheduler
from kernel.db.connect import Database
from kernel.settings import Settings
from tests.faults import blackhole

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)
APRIL = "2026-04"


def _counter(conn: psycopg.Connection[Any], site: str) -> int:
    row = conn.execute(
        "SELECT event_count FROM site_usage_monthly WHERE site_id = %s AND year_month = %s", (site, APRIL)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _ledger(conn: psycopg.Connection[Any], site: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s AND billable", (site, APRIL)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_reconcile_with_redis_blackholed_never_makes_ingest_wait(
    settings: Settings, app_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While reconcile is stuck in a Redis call that never returns, clients ingest into the same
    site-month: every request answers 200 at once, and reconcile holds no lock meanwhile."""
    from litestar.testing import TestClient

    site, ingest_key = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=20)
    app_conn.execute(
        "UPDATE site_usage_monthly SET event_count = event_count + 7 WHERE site_id = %s AND year_month = %s",
        (site, APRIL),
    )
    # Long enough that only the test ends the stall (it releases the socket).
    monkeypatch.setattr(reconcile_module, "REDIS_TIMEOUT_S", 120.0)
    results: list[Any] = []
    with blackhole() as hole:
        ctx = cron_ctx(settings.with_overrides(redis_url=hole.url), ManualClock(NOW))
        enqueue_jobs(app_conn, NOW)

        def run() -> None:
            try:
                results.append(run_named(ctx, "reconcile-usage"))
            except Exception as exc:  # reported by the assertion below
                results.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert hole.connected.wait(60), "reconcile never called Redis"
        # Reconcile is inside its Redis call now: no transaction open, no lock held.
        held = app_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%%' AND application_name NOT LIKE 'revkernel-cron-lock:%%'"
        ).fetchone()
        assert held == (0,)
        auth = {"Authorization": f"Bearer {ingest_key}"}
        with TestClient(create_app(settings, clock=ManualClock(NOW))) as client:
            replies = [
                client.post("/api/sync", json={"event_id": f"live-{i}", "ec": "x"}, headers=auth) for i in range(20)
            ]
        assert worker.is_alive(), "reconcile finished before the requests: the test proved nothing"
        assert [r.status_code for r in replies] == [200] * 20
        hole.release()
        worker.join(60)
    assert results and isinstance(results[0], dict) and results[0]["completed"] >= 1, results
    # The correction was exact although ingest kept committing: counter = ledger.
    assert _counter(app_conn, site) == _ledger(app_conn, site) == 40
    drift = app_conn.execute(
        "SELECT counter_drift, redis_drift FROM reconciliation_drift_log WHERE site_id = %s AND year_month = %s",
        (site, APRIL),
    ).fetchall()
    assert drift == [(7, None)]


def test_the_correction_is_a_delta_exact_for_commits_after_the_snapshot(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database
) -> None:
    """Reconcile counts at snapshot S; a ledger transaction commits after S (holding the counter
    row lock, so reconcile's correction waits for it); the delta keeps the counter exact."""
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=10)
    app_conn.execute(
        "UPDATE site_usage_monthly SET event_count = event_count - 4 WHERE site_id = %s AND year_month = %s",
        (site, APRIL),
    )
    ingest = database.connect("app")  # plays one ledger transaction: row lock, 3 rows, counter +3
    ingest.execute(
        "SELECT 1 FROM site_usage_monthly WHERE site_id = %s AND year_month = %s FOR NO KEY UPDATE", (site, APRIL)
    )
    out: list[Any] = []

    def run() -> None:
        with database.connect("app", autocommit=True) as conn:
            out.append(reconcile_site_month(conn, None, site, APRIL, NOW))

    worker = threading.Thread(target=run)
    worker.start()
    _wait_for_lock_waiter(app_conn)  # the snapshot is taken; the correction waits for the lock
    for i in range(3):
        ingest.execute(
            "INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,"
            " billing_state, billing_reason, payload_hash) VALUES (%s, %s, 2, %s, true, 'ACCEPTED', 'within_quota',"
            " repeat('0', 64))",
            (site, f"after-s-{i}", NOW),
        )
    ingest.execute(
        "UPDATE site_usage_monthly SET event_count = event_count + 3 WHERE site_id = %s AND year_month = %s",
        (site, APRIL),
    )
    ingest.commit()
    ingest.close()
    worker.join(30)
    assert out and out[0]["counter_drift"] == -4 and out[0]["ledger_billable"] == 10
    assert _counter(app_conn, site) == _ledger(app_conn, site) == 13


def _wait_for_lock_waiter(conn: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if row is not None and row[0]:
            return
        time.sleep(0.02)
    raise AssertionError("reconcile's correction never waited for the row lock")


def test_the_analyst_can_neither_take_nor_hold_a_cron_lock(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database
) -> None:
    ctx = cron_ctx(settings, ManualClock(NOW))
    with database.connect("analyst", autocommit=True) as analyst:
        # The old advisory lock key: any role can take it, and it no longer blocks anything.
        analyst.execute("SELECT pg_advisory_lock(hashtextextended('revkernel:cron:reconcile-usage', 0))")
        with pytest.raises(psycopg.Error, match=r"permission denied|read-only"):
            analyst.execute("SELECT * FROM cron_locks WHERE name = 'reconcile-usage' FOR UPDATE")
        with pytest.raises(psycopg.Error, match=r"permission denied|read-only"):
            analyst.execute("SELECT * FROM cron_locks FOR KEY SHARE")
        with pytest.raises(psycopg.Error, match=r"permission denied|read-only"):
            analyst.execute(
                "UPDATE cron_locks SET holder = 'analyst', expires_at = 'infinity' WHERE name = %s", (LEADER_LOCK,)
            )
        assert run_named(ctx, "reconcile-usage")["ok"] is True
        scheduler = Scheduler(settings, OffsetClock(timedelta(0)), database)
        try:
            assert scheduler._lead() is True  # leadership is not the analyst's to hold
        finally:
            scheduler._drop_leadership()


def test_a_slot_missed_because_its_lock_was_busy_is_retried_not_counted(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database
) -> None:
    extra = {"REVKERNEL_SCHEDULER_TICK_S": "0.05", "REVKERNEL_SCHEDULER_INTERVAL_S": "3600"}
    settings = settings.with_overrides(extra=extra)
    holder = database.connect("app")  # another run of the cleanup holds its lock
    holder.execute("SELECT 1 FROM cron_locks WHERE name = 'idempotency-cleanup' FOR UPDATE")
    scheduler = Scheduler(settings, OffsetClock(timedelta(0)), Database(settings))
    scheduler.start()
    try:
        _wait(app_conn, "SELECT count(*) FROM cron_runs WHERE name = 'idempotency-cleanup' AND status = 'skipped'", 2)
        ok = app_conn.execute(
            "SELECT count(*) FROM cron_runs WHERE name = 'idempotency-cleanup' AND status = 'ok'"
        ).fetchone()
        assert ok == (0,)
        holder.rollback()  # the other run ends
        _wait(app_conn, "SELECT count(*) FROM cron_runs WHERE name = 'idempotency-cleanup' AND status = 'ok'", 1)
    finally:
        holder.close()
        scheduler.stop()
    runs = app_conn.execute(
        "SELECT status, trigger FROM cron_runs WHERE name = 'idempotency-cleanup' ORDER BY id"
    ).fetchall()
    assert runs[-1] == ("ok", "scheduler") and {s for s, _ in runs[:-1]} == {"skipped"}


def _wait(conn: psycopg.Connection[Any], query: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = conn.execute(query).fetchone()
        if row is not None and int(row[0]) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"never reached {at_least}: {query}")


def test_reconcile_run_jobs_still_reports_and_fixes_with_no_redis(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=5)
    app_conn.execute("UPDATE site_usage_monthly SET event_count = 0 WHERE site_id = %s", (site,))
    ctx = CronContext(settings, ManualClock(NOW), Database(settings))
    enqueue_jobs(app_conn, NOW)
    result = run_jobs(ctx)
    assert result["ok"] is True and result["failed"] == 0
    assert _counter(app_conn, site) == 5
