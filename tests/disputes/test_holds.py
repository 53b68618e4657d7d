"""A case's hold keeps its month out of cleanup past 90 days; the watchtower reports old holds.

The clock is a ``ManualClock`` driven past the retention, and the crons run through the same
registry as HTTP, the CLI and the scheduler (``kernel.cron.jobs.run_named``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext
from kernel.db.connect import Database
from kernel.disputes import service
from kernel.errors import ConfigError
from kernel.settings import DISPUTE_HOLD_MAX_AGE_DAYS, Settings
from tests.disputes.conftest import World
from tests.export.conftest import MONTH

# More than 90 days after every October row (the sample rows are of 4-6 October 2026).
PAST_RETENTION = datetime(2027, 2, 15, 3, 0, tzinfo=UTC)


def _rows(conn: psycopg.Connection[Any], site_id: Any) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ingest_idempotency WHERE site_id = %s AND year_month = %s", (site_id, MONTH)
    ).fetchone()
    return int(row[0]) if row else 0


def _archived(conn: psycopg.Connection[Any], site_id: Any) -> bool:
    found = conn.execute(
        "SELECT 1 FROM ledger_archive WHERE site_id = %s AND year_month = %s", (site_id, MONTH)
    ).fetchone()
    return found is not None


def test_cleanup_past_90_days_skips_the_held_month_until_its_case_is_closed(
    world: World, settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    case_id = service.open_case(
        app_conn,
        site_id=world.own.site_id,
        year_month=MONTH,
        disputed_keys=[],
        whole_month=True,
        reason="the whole month looks inflated",
        customer_reference="ZD-77",
        actor="support",
        clock=world.clock,
    ).case.case_id
    own_rows, other_rows = _rows(app_conn, world.own.site_id), _rows(app_conn, world.other.site_id)
    assert own_rows == 11 and other_rows == 3
    clock = ManualClock(PAST_RETENTION)
    ctx = CronContext(settings, clock, Database(settings), trigger="cli")

    result = run_named(ctx, "idempotency-cleanup")
    assert result["ok"] is True, result
    assert result["deleted"] == other_rows  # only the month nobody disputes
    assert _rows(app_conn, world.own.site_id) == own_rows and not _archived(app_conn, world.own.site_id)
    assert _rows(app_conn, world.other.site_id) == 0 and _archived(app_conn, world.other.site_id)

    # Resolved is not enough: the evidence stays protected until the case is closed.
    service.investigate_case(app_conn, case_id, note="", actor="support", clock=clock)
    service.resolve_case(
        app_conn,
        case_id,
        outcome="rejected",
        note="traffic is genuine",
        credit=None,
        actor="support",
        clock=clock,
        signer=world.key,
    )
    assert run_named(ctx, "idempotency-cleanup")["deleted"] == 0
    assert _rows(app_conn, world.own.site_id) == own_rows

    service.close_case(app_conn, case_id, note="customer accepted", actor="support", clock=clock)
    clock.advance(timedelta(days=1))
    result = run_named(ctx, "idempotency-cleanup")
    assert result["deleted"] == own_rows and _archived(app_conn, world.own.site_id)


def test_watchtower_reports_holds_older_than_the_configured_age(
    world: World, settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    service.open_case(
        app_conn,
        site_id=world.own.site_id,
        year_month=MONTH,
        disputed_keys=["evt-0001"],
        whole_month=False,
        reason="r",
        customer_reference="c",
        actor="support",
        clock=world.clock,
    )

    def watch(at: datetime, max_age_days: int) -> dict[str, Any]:
        ctx = CronContext(
            settings.with_overrides(dispute_hold_max_age_days=max_age_days),
            ManualClock(at),
            Database(settings),
            trigger="cli",
        )
        check: dict[str, Any] = run_named(ctx, "watchtower")["checks"]["dispute_holds"]
        return check

    fresh = watch(world.clock.now() + timedelta(days=10), 30)
    assert fresh["status"] == "ok" and fresh["stale_holds"] == 0
    stale = watch(world.clock.now() + timedelta(days=31), 30)
    assert stale["status"] == "degraded" and stale["stale_holds"] == 1
    assert stale["oldest"] == [
        {
            "site_id": str(world.own.site_id),
            "public_id": "own-shop",
            "year_month": MONTH,
            "held_since": "2026-11-05T09:30:00.000000Z",
            "age_days": 31,
        }
    ]
    assert watch(world.clock.now() + timedelta(days=31), 60)["status"] == "ok"  # the age is a setting


def test_the_hold_age_setting_is_typed_and_validated() -> None:
    assert Settings.from_env({}).dispute_hold_max_age_days == DISPUTE_HOLD_MAX_AGE_DAYS
    assert Settings.from_env({"REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS": " 45 "}).dispute_hold_max_age_days == 45
    for bad in ("0", "-3", "ten", "1.5", "٣"):
        with pytest.raises(ConfigError):
            Settings.from_env({"REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS": bad})
