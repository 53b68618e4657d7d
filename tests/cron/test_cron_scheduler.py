"""The built-in scheduler: schedules, in-app start/stop, and leader failover across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.scheduler import SCHEDULES, Schedule, schedules_for
from kernel.settings import Settings

WAIT_S = 60.0  # generous upper bound for a condition to appear; never a speed assertion
REVKERNEL = Path(sys.executable).with_name("revkernel")


def _by_name(name: str) -> Schedule:
    return next(s for s in SCHEDULES if s.name == name)


def test_calendar_and_interval_schedules() -> None:
    freeze = _by_name("invoice-freeze")
    now = datetime(2026, 4, 15, 8, tzinfo=UTC)
    assert freeze.slots_around(now) == (
        datetime(2026, 4, 1, 0, 10, tzinfo=UTC),
        datetime(2026, 5, 1, 0, 10, tzinfo=UTC),
    )
    # A new leader catches up a missed freeze at once, but not one that already ran this month.
    assert freeze.first_due(now, None) == now
    assert freeze.first_due(now, datetime(2026, 3, 1, 0, 10, tzinfo=UTC)) == now
    assert freeze.first_due(now, datetime(2026, 4, 1, 0, 11, tzinfo=UTC)) == datetime(2026, 5, 1, 0, 10, tzinfo=UTC)
    # A failed freeze is retried soon; a successful one waits for next month.
    assert freeze.next_due(now, ok=False) == now + timedelta(minutes=10)
    assert freeze.next_due(now, ok=True) == datetime(2026, 5, 1, 0, 10, tzinfo=UTC)
    december = datetime(2026, 12, 31, 23, tzinfo=UTC)
    assert freeze.slots_around(december)[1] == datetime(2027, 1, 1, 0, 10, tzinfo=UTC)
    cleanup = _by_name("idempotency-cleanup")
    assert cleanup.slots_around(datetime(2026, 4, 15, 2, tzinfo=UTC)) == (
        datetime(2026, 4, 14, 3, tzinfo=UTC),
        datetime(2026, 4, 15, 3, tzinfo=UTC),
    )
    outbox = _by_name("publish-outbox")
    assert outbox.first_due(now, now - timedelta(seconds=20)) == now + timedelta(seconds=40)
    assert outbox.next_due(now, ok=False) == now + timedelta(minutes=1)
    assert {s.name: s.every for s in SCHEDULES if s.every} == {
        "publish-outbox": timedelta(minutes=1),
        "reconcile-usage": timedelta(minutes=15),
        "watchtower": timedelta(minutes=15),
    }
    fast = schedules_for(Settings(extra={"REVKERNEL_SCHEDULER_INTERVAL_S": "2"}))
    assert {s.every for s in fast if s.every} == {timedelta(seconds=2)}


def _wait_for(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...], predicate: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = conn.execute(query, params).fetchall()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {WAIT_S}s; last value {value!r}")
        time.sleep(0.1)


def test_app_with_scheduler_runs_the_crons(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    extra = {"REVKERNEL_SCHEDULER": "1", "REVKERNEL_SCHEDULER_INTERVAL_S": "0.5", "REVKERNEL_SCHEDULER_TICK_S": "0.1"}
    clock = ManualClock(datetime(2026, 4, 15, 8, tzinfo=UTC))
    with TestClient(create_app(settings.with_overrides(extra=extra), clock=clock)):
        rows = _wait_for(
            app_conn,
            "SELECT DISTINCT name FROM cron_runs WHERE trigger = 'scheduler' AND status <> 'running'",
            (),
            lambda v: len(v) == 5,
        )
    assert {r[0] for r in rows} == {s.name for s in SCHEDULES}
    # Shut down: the scheduler's connection (and with it the leader lock) goes away.
    _wait_for(
        app_conn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'revkernel-scheduler:%%'"
        " AND datname = current_database()",
        (),
        lambda v: v[0][0] == 0,
    )


def _leader_pid(conn: psycopg.Connection[Any]) -> int | None:
    """The pid of the process holding an unexpired leader lease (``cron_locks``)."""
    row = conn.execute(
        "SELECT holder FROM cron_locks WHERE name = 'scheduler-leader' AND expires_at > clock_timestamp()"
    ).fetchone()
    return int(row[0].split(":")[1]) if row and row[0] else None


@pytest.mark.slow
def test_second_scheduler_takes_over_when_the_leader_dies(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REVKERNEL_DATA_DIR": str(tmp_path / "data"),
        "CRON_SECRET": "scheduler-test-secret-123",
        "REVKERNEL_SCHEDULER_INTERVAL_S": "0.5",
        "REVKERNEL_SCHEDULER_TICK_S": "0.2",
        "REVKERNEL_CLOCK": "system",
    }
    env.pop("REDIS_URL", None)
    logs = [open(tmp_path / f"scheduler-{i}.log", "wb") for i in range(2)]  # noqa: SIM115 (closed below)
    procs = [
        subprocess.Popen([str(REVKERNEL), "cron", "scheduler"], env=env, stdout=subprocess.DEVNULL, stderr=log)
        for log in logs
    ]
    try:
        _wait_for(app_conn, "SELECT 1", (), lambda v: _leader_pid(app_conn) is not None)
        leader = _leader_pid(app_conn)
        assert leader in {p.pid for p in procs}
        _wait_for(
            app_conn,
            "SELECT count(*) FROM cron_runs WHERE trigger = 'scheduler' AND name = 'publish-outbox'",
            (),
            lambda v: v[0][0] >= 2,
        )
        victim = next(p for p in procs if p.pid == leader)
        survivor = next(p for p in procs if p.pid != leader)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed_at = datetime.now(UTC)
        _wait_for(app_conn, "SELECT 1", (), lambda v: _leader_pid(app_conn) == survivor.pid)
        _wait_for(
            app_conn,
            "SELECT count(*) FROM cron_runs WHERE trigger = 'scheduler' AND status = 'ok' AND started_at > %s",
            (killed_at,),
            lambda v: v[0][0] >= 3,
        )
        assert survivor.poll() is None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in logs:
            log.close()
