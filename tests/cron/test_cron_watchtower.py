"""Watchtower: each check of SPEC §4.2 turns red on its own; 200 ok/degraded, 503 alarm/critical."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cron_support import CRON_HEADERS, add_event, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.watchtower import CRON_ALLOWANCE, PUBLISH_FAILURES_ALARM
from kernel.db.connect import Database
from kernel.settings import Settings
from tests.conftest import free_port

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)


def _healthy(conn: psycopg.Connection[Any]) -> str:
    """A system where every check is green: recent runs, recent ingest, no drift, no failures."""
    site, _ = make_site(conn)
    add_event(conn, site, "recent", NOW - timedelta(minutes=1))
    conn.execute("UPDATE ingest_outbox SET published_at = %s", (NOW,))
    for name in CRON_ALLOWANCE:
        conn.execute(
            "INSERT INTO cron_runs (name, started_at, finished_at, status) VALUES (%s, %s, %s, 'ok')",
            (name, NOW - timedelta(minutes=1), NOW - timedelta(minutes=1)),
        )
    return site


def _watch(settings: Settings) -> tuple[int, dict[str, Any]]:
    with TestClient(create_app(settings, clock=ManualClock(NOW))) as client:
        reply = client.get("/api/cron/watchtower", headers=CRON_HEADERS)
    return reply.status_code, reply.json()


def test_all_green_is_200_ok(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    _healthy(app_conn)
    status, body = _watch(settings)
    assert status == 200, body
    assert set(body) == {"ok", "status", "checks"}
    assert body["ok"] is True and body["status"] == "ok"
    assert set(body["checks"]) == {
        "database",
        "redis",
        "crons",
        "invoice_freeze",
        "outbox_backlog",
        "publish_failures",
        "drift",
        "ingest_activity",
        "dispute_holds",
    }
    assert all(check["status"] == "ok" for check in body["checks"].values())
    recorded = app_conn.execute("SELECT status FROM cron_runs WHERE name = 'watchtower'").fetchall()
    assert recorded == [("ok",)]


def _old_cron_run(conn: psycopg.Connection[Any], site: str) -> None:
    conn.execute("DELETE FROM cron_runs WHERE name = 'reconcile-usage'")
    conn.execute(
        "INSERT INTO cron_runs (name, started_at, finished_at, status) VALUES ('reconcile-usage', %s, %s, 'ok')",
        (NOW - timedelta(hours=2), NOW - timedelta(hours=2)),
    )


def _publish_failures(count: int) -> Callable[[psycopg.Connection[Any], str], None]:
    def make(conn: psycopg.Connection[Any], site: str) -> None:
        for _ in range(count):
            conn.execute(
                "INSERT INTO ingest_publish_failures (site_id, sink, error, failed_at) VALUES (%s, 'webhook', 'x', %s)",
                (site, NOW - timedelta(minutes=3)),
            )

    return make


def _drift(column: str) -> Callable[[psycopg.Connection[Any], str], None]:
    def make(conn: psycopg.Connection[Any], site: str) -> None:
        conn.execute(
            f"INSERT INTO reconciliation_drift_log (site_id, year_month, ledger_billable, {column}, checked_at)"
            " VALUES (%s, '2026-04', 1, 3, %s)",
            (site, NOW - timedelta(minutes=10)),
        )

    return make


def _unfrozen_old_month(conn: psycopg.Connection[Any], site: str) -> None:
    add_event(conn, site, "feb", datetime(2026, 2, 10, tzinfo=UTC))
    conn.execute("UPDATE ingest_outbox SET published_at = %s", (NOW,))


def _silent_ingest(conn: psycopg.Connection[Any], site: str) -> None:
    conn.execute("DELETE FROM ingest_outbox")
    conn.execute("DELETE FROM ingest_idempotency")


def _failed_last_run(conn: psycopg.Connection[Any], site: str) -> None:
    conn.execute(
        "INSERT INTO cron_runs (name, started_at, finished_at, status, error)"
        " VALUES ('idempotency-cleanup', %s, %s, 'failed', 'boom')",
        (NOW, NOW),
    )


def _run_died_mid_run(conn: psycopg.Connection[Any], site: str) -> None:
    conn.execute(
        "INSERT INTO cron_runs (name, started_at, status) VALUES ('invoice-freeze', %s, 'running')",
        (NOW - timedelta(hours=3),),
    )


@pytest.mark.parametrize(
    ("check", "breaks", "expected", "http"),
    [
        ("crons", _old_cron_run, "alarm", 503),
        ("crons", _failed_last_run, "degraded", 200),
        ("crons", _run_died_mid_run, "degraded", 200),
        ("publish_failures", _publish_failures(1), "degraded", 200),
        ("publish_failures", _publish_failures(PUBLISH_FAILURES_ALARM), "alarm", 503),
        ("drift", _drift("counter_drift"), "alarm", 503),
        ("drift", _drift("redis_drift"), "degraded", 200),
        ("invoice_freeze", _unfrozen_old_month, "alarm", 503),
        ("ingest_activity", _silent_ingest, "degraded", 200),
    ],
)
def test_each_check_turns_red(
    settings: Settings,
    app_conn: psycopg.Connection[Any],
    check: str,
    breaks: Callable[[psycopg.Connection[Any], str], None],
    expected: str,
    http: int,
) -> None:
    site = _healthy(app_conn)
    breaks(app_conn, site)
    status, body = _watch(settings)
    assert status == http, body
    assert body["status"] == expected and body["checks"][check]["status"] == expected
    assert body["ok"] is (http == 200)
    others = {name: c["status"] for name, c in body["checks"].items() if name != check}
    assert set(others.values()) == {"ok"}, others
    run = app_conn.execute("SELECT status FROM cron_runs WHERE name = 'watchtower'").fetchone()
    assert run == (("ok",) if http == 200 else ("failed",))


def test_outbox_backlog_age_with_a_sink(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    site = _healthy(app_conn)
    app_conn.execute("UPDATE ingest_outbox SET published_at = NULL, created_at = %s", (NOW - timedelta(hours=1),))
    # Without a sink the outbox table is the queue: a backlog is normal.
    assert _watch(settings)[1]["checks"]["outbox_backlog"]["status"] == "ok"
    sink = {"REVKERNEL_WEBHOOK_URL": "http://127.0.0.1:9/hook", "REVKERNEL_WEBHOOK_SECRET": "s3cret-value-xyz"}
    app_conn.execute(
        "INSERT INTO cron_runs (name, started_at, finished_at, status) VALUES ('publish-outbox', %s, %s, 'ok')",
        (NOW, NOW),
    )
    status, body = _watch(settings.with_overrides(extra=sink))
    assert status == 503 and body["checks"]["outbox_backlog"]["status"] == "alarm"
    assert body["checks"]["outbox_backlog"]["oldest_age_s"] == 3600.0
    assert site
    # A sink named but unusable (no secret) is an alarm of its own, not a crashed watchtower.
    status, body = _watch(settings.with_overrides(extra={"REVKERNEL_WEBHOOK_URL": "http://127.0.0.1:9/hook"}))
    assert status == 503 and body["checks"]["outbox_backlog"]["status"] == "alarm"
    assert "REVKERNEL_WEBHOOK_SECRET" in body["checks"]["outbox_backlog"]["error"]


def test_redis_unreachable_is_degraded(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    _healthy(app_conn)
    status, body = _watch(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert status == 200 and body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "degraded" and body["checks"]["redis"]["configured"] is True


def test_database_unreachable_is_503_critical(settings: Settings, tmp_path: Any) -> None:
    app = create_app(settings, clock=ManualClock(NOW))
    with TestClient(app) as client:
        # The cron's own connections now go to a server that is not there.
        unreachable = settings.with_overrides(database_url=f"host={tmp_path} port=1 dbname=none user=none")
        app.state["kernel"].db = Database(unreachable)
        reply = client.get("/api/cron/watchtower", headers=CRON_HEADERS)
    assert reply.status_code == 503
    body = reply.json()
    assert body["ok"] is False and body["status"] == "critical"
    assert body["checks"]["database"]["status"] == "critical"
