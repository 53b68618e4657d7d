"""Usage reconciliation (SPEC §4.2): the ledger corrects the counters and the Redis mirror."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from cron_support import CRON_HEADERS, add_month, cron_ctx, make_site
from litestar.testing import TestClient
from psycopg import sql

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.freeze import freeze_month
from kernel.cron.reconcile import STUCK_JOB_TIMEOUT, enqueue_jobs, run_jobs, usage_mirror_key
from kernel.settings import Settings
from tests.conftest import redis_url_or_skip

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)

# Runbook §5 reconciliation proof ("Reconciliation kanit" section), verbatim.
RUNBOOK_RECONCILIATION_SQL = """
SELECT
  j.site_id, j.year_month, j.updated_at AS job_time,
  (SELECT COUNT(*) FROM ingest_idempotency i
   WHERE i.site_id = j.site_id AND i.year_month = j.year_month AND i.billable = true) AS billable_total_now,
  (SELECT event_count FROM site_usage_monthly u
   WHERE u.site_id = j.site_id AND u.year_month = j.year_month) AS monthly_event_count
FROM billing_reconciliation_jobs j
WHERE j.status = 'COMPLETED'
ORDER BY j.updated_at DESC
LIMIT 5;
"""


@pytest.fixture
def redis_db() -> Any:
    url = redis_url_or_skip()
    client = redis.Redis.from_url(url)
    yield url, client
    client.close()


def test_corrupted_counter_and_redis_mirror_are_logged_and_fixed(
    settings: Settings, app_conn: psycopg.Connection[Any], redis_db: Any
) -> None:
    url, client = redis_db
    settings = settings.with_overrides(redis_url=url)
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=6, overage=1, rejected=2, non_billable=3)
    # Corrupt by hand: the counter says 50 billable, the mirror says 4.
    app_conn.execute(
        "UPDATE site_usage_monthly SET event_count = 50, rejected_count = 0"
        " WHERE site_id = %s AND year_month = '2026-04'",
        (site,),
    )
    mirror_key = usage_mirror_key(site, "2026-04")
    client.set(mirror_key, 4)
    try:
        with TestClient(create_app(settings, clock=ManualClock(NOW))) as http:
            reply = http.get("/api/cron/reconcile-usage", headers=CRON_HEADERS)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            # This site's current and previous month are armed; only April has rows.
            assert body == {"ok": True, "enqueued": 2, "processed": 2, "completed": 2, "failed": 0}
        drift = app_conn.execute(
            "SELECT ledger_billable, counter_billable, redis_billable, counter_drift, redis_drift, ledger_overage,"
            " ledger_rejected, ledger_non_billable, corrected FROM reconciliation_drift_log"
            " WHERE site_id = %s AND year_month = '2026-04'",
            (site,),
        ).fetchall()
        assert drift == [(6, 50, 4, 44, -2, 1, 2, 3, True)]
        counters = app_conn.execute(
            "SELECT event_count, overage_count, rejected_count, non_billable_count FROM site_usage_monthly"
            " WHERE site_id = %s AND year_month = '2026-04'",
            (site,),
        ).fetchone()
        assert counters == (6, 1, 2, 3)
        assert client.get(mirror_key) == b"6"
        proof = app_conn.execute(RUNBOOK_RECONCILIATION_SQL).fetchall()
        assert proof and all(row[3] == row[4] for row in proof if row[4] is not None)
        assert any(str(row[0]) == site and row[1] == "2026-04" and row[3] == 6 for row in proof)

        # A second cycle re-arms COMPLETED jobs and finds no drift.
        ctx = cron_ctx(settings, ManualClock(NOW + timedelta(minutes=15)))
        with ctx.db.connect("app", autocommit=True) as conn:
            assert enqueue_jobs(conn, ctx.clock.now()) == 2
        assert run_jobs(ctx) == {"ok": True, "processed": 2, "completed": 2, "failed": 0, "reclaimed": 0}
        last = app_conn.execute(
            "SELECT counter_drift, redis_drift, corrected FROM reconciliation_drift_log"
            " WHERE site_id = %s AND year_month = '2026-04' ORDER BY id DESC LIMIT 1",
            (site,),
        ).fetchone()
        assert last == (0, 0, False)
    finally:
        client.delete(mirror_key, usage_mirror_key(site, "2026-03"))


def test_redis_down_still_corrects_counters(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    from tests.conftest import free_port

    settings = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 2, tzinfo=UTC), billable=3)
    app_conn.execute("UPDATE site_usage_monthly SET event_count = 1 WHERE site_id = %s", (site,))
    ctx = cron_ctx(settings, ManualClock(NOW))
    with ctx.db.connect("app", autocommit=True) as conn:
        enqueue_jobs(conn, NOW)
    assert run_jobs(ctx)["completed"] == 2
    row = app_conn.execute(
        "SELECT counter_drift, redis_billable, redis_drift FROM reconciliation_drift_log WHERE year_month = '2026-04'"
    ).fetchone()
    assert row == (-2, None, None)
    assert app_conn.execute("SELECT event_count FROM site_usage_monthly WHERE year_month = '2026-04'").fetchone() == (
        3,
    )


def test_jobs_rearm_until_frozen_and_stuck_jobs_are_reclaimed(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 2, 5, tzinfo=UTC), billable=2, prefix="feb")
    add_month(app_conn, site, datetime(2026, 3, 5, tzinfo=UTC), billable=2, prefix="mar")
    ctx = cron_ctx(settings, ManualClock(NOW))
    assert freeze_month(ctx, "2026-02")["frozen"] == 1
    with TestClient(create_app(settings, clock=ctx.clock)) as http:
        enq = http.get("/api/cron/reconcile-usage/enqueue", headers=CRON_HEADERS)
        assert enq.json() == {"ok": True, "enqueued": 2}  # March and April; February is frozen
        months = app_conn.execute("SELECT year_month FROM billing_reconciliation_jobs ORDER BY year_month").fetchall()
        assert months == [("2026-03",), ("2026-04",)]
        # A worker died holding March: PROCESSING for longer than the timeout.
        stale = NOW - STUCK_JOB_TIMEOUT - timedelta(seconds=1)
        app_conn.execute(
            "UPDATE billing_reconciliation_jobs SET status = 'PROCESSING', updated_at = %s"
            " WHERE year_month = '2026-03'",
            (stale,),
        )
        run = http.post("/api/cron/reconcile-usage/run", headers=CRON_HEADERS)
        assert run.status_code == 200
        assert run.json() == {"ok": True, "processed": 2, "completed": 2, "failed": 0}
        statuses = app_conn.execute("SELECT status, attempts FROM billing_reconciliation_jobs ORDER BY year_month")
        assert statuses.fetchall() == [("COMPLETED", 1), ("COMPLETED", 1)]
        # Backfill finds months in the ledger itself (a lost counter row included), never frozen ones.
        app_conn.execute("DELETE FROM site_usage_monthly WHERE year_month = '2026-03'")
        app_conn.execute("DELETE FROM billing_reconciliation_jobs")
        back = http.post("/api/cron/reconcile-usage/backfill", headers=CRON_HEADERS)
        assert back.json() == {"ok": True, "enqueued": 1}
        assert http.post("/api/cron/reconcile-usage/run", headers=CRON_HEADERS).json()["completed"] == 1
    restored = app_conn.execute("SELECT event_count FROM site_usage_monthly WHERE year_month = '2026-03'").fetchone()
    assert restored == (2,)


def test_a_failing_job_is_failed_and_the_run_says_so(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    site, _ = make_site(app_conn)
    app_conn.execute(
        "INSERT INTO billing_reconciliation_jobs (site_id, year_month, status) VALUES (%s, '2026-04', 'PENDING')",
        (site,),
    )
    ctx = cron_ctx(settings, ManualClock(NOW))
    # Make this site-month's drift log write fail (as a full disk or a lost grant would).
    with ctx.db.connect("owner", autocommit=True) as owner:
        owner.execute(
            sql.SQL("ALTER TABLE reconciliation_drift_log ADD CONSTRAINT no_writes CHECK (site_id <> {})").format(
                sql.Literal(uuid.UUID(site))
            )
        )
    with TestClient(create_app(settings, clock=ctx.clock)) as http:
        reply = http.post("/api/cron/reconcile-usage/run", headers=CRON_HEADERS)
    assert reply.status_code == 500
    body = reply.json()
    assert body["ok"] is False and body["failed"] == 1 and body["completed"] == 0
    job = app_conn.execute("SELECT status, last_error FROM billing_reconciliation_jobs").fetchone()
    assert job is not None and job[0] == "FAILED" and "no_writes" in job[1]
    run = app_conn.execute("SELECT status FROM cron_runs WHERE name = 'reconcile-usage'").fetchone()
    assert run == ("failed",)
