"""Cron auth, the per-cron lock, the run record, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from cron_support import CRON_HEADERS, cron_ctx

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.auth import cron_authorized, usable_cron_secret
from kernel.cron.runs import CronRunning, lock_name, run_cron
from kernel.settings import Settings

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)
CRON_CALLS = [
    ("GET", "/api/cron/watchtower"),
    ("GET", "/api/cron/reconcile-usage"),
    ("POST", "/api/cron/reconcile-usage"),
    ("GET", "/api/cron/reconcile-usage/enqueue"),
    ("POST", "/api/cron/reconcile-usage/run"),
    ("POST", "/api/cron/reconcile-usage/backfill"),
    ("POST", "/api/cron/invoice-freeze"),
    ("POST", "/api/cron/idempotency-cleanup?dry_run=true"),
    ("POST", "/api/cron/publish-outbox"),
]


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "   ",
        "changeme",
        "CHANGEME",
        "default",
        "placeholder",
        "<your-secret>",
        "${CRON_SECRET}",
        "your-secret-here",
    ],
)
def test_placeholder_secrets_are_unusable(secret: str) -> None:
    assert not usable_cron_secret(secret)
    assert not cron_authorized(secret, secret)


def test_cron_authorized_compares_exactly() -> None:
    real = "k8Jq-real-secret-93"
    assert cron_authorized(real, real)
    assert not cron_authorized(real, real + "x") and not cron_authorized(real, None) and not cron_authorized(real, "")


def test_every_cron_is_403_without_the_secret_and_runs_with_it(settings: Settings) -> None:
    from litestar.testing import TestClient

    forbidden = {"error": "forbidden", "code": "CRON_FORBIDDEN"}
    with TestClient(create_app(settings, clock=ManualClock(NOW))) as client:
        for method, path in CRON_CALLS:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer "},
                {"Authorization": "Basic x"},
            ):
                reply = client.request(method, path, headers=headers)
                assert (reply.status_code, reply.json()) == (403, forbidden), (method, path, headers)
            allowed = client.request(method, path, headers=CRON_HEADERS)
            assert allowed.status_code != 403, (method, path)
    # A placeholder configured on the server closes every cron, even to a caller who sends it.
    for configured in ("", "changeme"):
        with TestClient(create_app(settings.with_overrides(cron_secret=configured), clock=ManualClock(NOW))) as client:
            for method, path in CRON_CALLS:
                reply = client.request(method, path, headers={"Authorization": f"Bearer {configured}"})
                assert (reply.status_code, reply.json()) == (403, forbidden)


def test_overlapping_runs_are_refused_and_recorded(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    ctx = cron_ctx(settings, ManualClock(NOW))
    with ctx.db.connect("app") as other:
        other.execute("SELECT 1 FROM cron_locks WHERE name = %s FOR UPDATE", (lock_name("publish-outbox"),))
        with pytest.raises(CronRunning):
            run_cron(ctx, "publish-outbox", lambda c: {"ok": True})
        from litestar.testing import TestClient

        with TestClient(create_app(settings, clock=ctx.clock)) as client:
            reply = client.post("/api/cron/publish-outbox", headers=CRON_HEADERS)
        assert reply.status_code == 409 and reply.json()["error"] == "cron_running"
    # Lock released by the other session: the next run goes ahead.
    assert run_cron(ctx, "publish-outbox", lambda c: {"ok": True, "published": 0})["ok"] is True
    rows = app_conn.execute("SELECT status, trigger FROM cron_runs ORDER BY id").fetchall()
    assert rows == [("skipped", "cli"), ("skipped", "http"), ("ok", "cli")]


def test_failures_are_recorded_as_failures(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    ctx = cron_ctx(settings, ManualClock(NOW))
    assert run_cron(ctx, "watchtower", lambda c: {"ok": False, "error": "alarm: drift"})["ok"] is False

    def crash(c: Any) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        run_cron(ctx, "watchtower", crash)
    rows = app_conn.execute("SELECT status, error, finished_at IS NOT NULL FROM cron_runs ORDER BY id").fetchall()
    assert rows == [("failed", "alarm: drift", True), ("failed", "RuntimeError: disk on fire", True)]
    # The lock is free again after a crash.
    assert run_cron(ctx, "watchtower", lambda c: {"ok": True})["ok"] is True


def test_cli_cron_run(settings: Settings, app_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel.cli import main

    assert settings.database_url is not None
    env = {
        "DATABASE_URL": settings.database_url,
        "REVKERNEL_DATA_DIR": str(settings.data_dir),
        "CRON_SECRET": "",
        "REDIS_URL": "",
        "REVKERNEL_CLOCK": "system",
    }
    runner = CliRunner()
    ok = runner.invoke(main, ["cron", "run", "publish-outbox"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["sink"] == "none"
    bad = runner.invoke(main, ["cron", "run", "invoice-freeze", "--year-month", "2999-01"], env=env)
    assert bad.exit_code == 1 and "month_open" in bad.output
    dry = runner.invoke(main, ["cron", "run", "idempotency-cleanup", "--dry-run"], env=env)
    assert dry.exit_code == 0 and json.loads(dry.output)["dry_run"] is True
    triggers = app_conn.execute("SELECT DISTINCT trigger FROM cron_runs").fetchall()
    assert triggers == [("cli",)]
