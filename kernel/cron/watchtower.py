"""Watchtower (SPEC §4.2): health and dead man's switch, computed from the database.

Each check answers ``ok``, ``degraded``, ``alarm`` or ``critical``; the overall status is the
worst one. ``ok``/``degraded`` → HTTP 200 ``{"ok": true, ...}``; ``alarm``/``critical`` → 503
``{"ok": false, ...}``.

| check | red when |
|---|---|
| ``database`` | PostgreSQL does not answer (critical) |
| ``redis`` | ``REDIS_URL`` is set and Redis does not answer (degraded: Redis is never an authority) |
| ``crons`` | last success older than its allowance (alarm); never succeeded, last failed, died mid-run (degraded) |
| ``invoice_freeze`` | a closed month with activity is still unfrozen a day after it ended (alarm) |
| ``outbox_backlog`` | with a sink, the oldest unpublished row is older than 5 min (degraded) / 30 min (alarm) |
| ``publish_failures`` | failed deliveries in the last 15 min: any (degraded), ≥ 50 (alarm) |
| ``drift`` | reconcile found counter drift in the last hour (alarm) or Redis drift only (degraded) |
| ``ingest_activity`` | sites exist but no ledger row arrived in the last hour (degraded) |
| ``dispute_holds`` | a dispute hold is older than ``REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS`` (degraded) |
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import redis

from kernel.clock import format_utc
from kernel.cron.runs import CronContext, CronResult, last_runs
from kernel.errors import ConfigError
from kernel.months import month_bounds

__all__ = [
    "CRON_ALLOWANCE",
    "STATUS_ORDER",
    "check_redis",
    "database_checks",
    "watchtower",
    "watchtower_without_database",
]

STATUS_ORDER = ("ok", "degraded", "alarm", "critical")
# How long after its last success a cron counts as overdue (about two missed runs).
CRON_ALLOWANCE: dict[str, timedelta] = {
    "reconcile-usage": timedelta(minutes=45),
    "publish-outbox": timedelta(minutes=5),
    "idempotency-cleanup": timedelta(hours=48),
}
CRON_RUN_STUCK_AFTER = timedelta(hours=2)  # a run still "running" this long died mid-run
FREEZE_OVERDUE_AFTER = timedelta(days=1)
OUTBOX_DEGRADED_AGE = timedelta(minutes=5)
OUTBOX_ALARM_AGE = timedelta(minutes=30)
PUBLISH_FAILURE_WINDOW = timedelta(minutes=15)
PUBLISH_FAILURES_ALARM = 50
DRIFT_WINDOW = timedelta(hours=1)
INGEST_SILENCE = timedelta(hours=1)
REDIS_TIMEOUT_S = 2.0


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=STATUS_ORDER.index, default="ok")


def _iso(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


def check_redis(url: str | None) -> dict[str, Any]:
    if not url:
        return {"status": "ok", "configured": False}
    try:
        client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return {"status": "degraded", "configured": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "configured": True}


def database_checks(conn: psycopg.Connection[Any], now: datetime, sink_configured: bool) -> dict[str, dict[str, Any]]:
    """Every check that reads the database."""
    checks: dict[str, dict[str, Any]] = {"database": {"status": "ok"}}

    runs = last_runs(conn)
    overdue, never, failing = [], [], []
    for name, allowance in CRON_ALLOWANCE.items():
        if name == "publish-outbox" and not sink_configured:
            continue  # no sink: the outbox table is the queue and nothing needs relaying
        info = runs.get(name)
        if info is None or info["last_ok_at"] is None:
            never.append(name)
        elif now - info["last_ok_at"] > allowance:
            overdue.append(name)
        if info is not None and info["last_status"] == "failed":
            failing.append(name)
    stuck = [
        str(name)
        for (name,) in conn.execute(
            "SELECT DISTINCT name FROM cron_runs WHERE status = 'running' AND started_at < %s ORDER BY name",
            (now - CRON_RUN_STUCK_AFTER,),
        ).fetchall()
    ]
    cron_status = "alarm" if overdue else ("degraded" if never or failing or stuck else "ok")
    checks["crons"] = {
        "status": cron_status,
        "overdue": overdue,
        "never_succeeded": never,
        "last_run_failed": failing,
        "stuck_running": stuck,
        "last_ok_at": {name: _iso(info["last_ok_at"]) for name, info in sorted(runs.items())},
    }

    unfrozen = conn.execute(
        """
        SELECT u.year_month, count(*) FROM site_usage_monthly u
        WHERE (u.event_count + u.rejected_count + u.non_billable_count) > 0
          AND u.year_month < %s
          AND NOT EXISTS (SELECT 1 FROM invoice_snapshot s WHERE s.site_id = u.site_id AND s.year_month = u.year_month)
        GROUP BY u.year_month ORDER BY u.year_month
        """,
        (now.strftime("%Y-%m"),),
    ).fetchall()
    late = {ym: int(n) for ym, n in unfrozen if now >= month_bounds(ym)[1] + FREEZE_OVERDUE_AFTER}
    checks["invoice_freeze"] = {"status": "alarm" if late else "ok", "unfrozen_site_months": late}

    row = conn.execute("SELECT min(created_at), count(*) FROM ingest_outbox WHERE published_at IS NULL").fetchone()
    oldest, pending = (row[0], int(row[1])) if row else (None, 0)
    age_s = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    if not sink_configured:
        backlog_status = "ok"
    elif age_s > OUTBOX_ALARM_AGE.total_seconds():
        backlog_status = "alarm"
    elif age_s > OUTBOX_DEGRADED_AGE.total_seconds():
        backlog_status = "degraded"
    else:
        backlog_status = "ok"
    checks["outbox_backlog"] = {
        "status": backlog_status,
        "pending": pending,
        "oldest_age_s": round(age_s, 3),
        "sink_configured": sink_configured,
    }

    row = conn.execute(
        "SELECT count(*) FROM ingest_publish_failures WHERE failed_at > %s", (now - PUBLISH_FAILURE_WINDOW,)
    ).fetchone()
    failures = int(row[0]) if row else 0
    checks["publish_failures"] = {
        "status": "alarm" if failures >= PUBLISH_FAILURES_ALARM else ("degraded" if failures else "ok"),
        "ingestPublishFailuresLast15m": failures,
    }

    row = conn.execute(
        "SELECT count(*) FILTER (WHERE counter_drift <> 0), count(*) FILTER (WHERE coalesce(redis_drift, 0) <> 0),"
        " coalesce(max(abs(counter_drift)), 0) FROM reconciliation_drift_log WHERE checked_at > %s",
        (now - DRIFT_WINDOW,),
    ).fetchone()
    counter_drifts, redis_drifts, max_drift = (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
    checks["drift"] = {
        "status": "alarm" if counter_drifts else ("degraded" if redis_drifts else "ok"),
        "counter_drift_checks_1h": counter_drifts,
        "redis_drift_checks_1h": redis_drifts,
        "max_abs_counter_drift_1h": max_drift,
    }

    row = conn.execute(
        "SELECT (SELECT max(created_at) FROM ingest_idempotency), (SELECT count(*) FROM sites)"
    ).fetchone()
    last_event, sites = (row[0], int(row[1])) if row else (None, 0)
    silent = sites > 0 and (last_event is None or now - last_event > INGEST_SILENCE)
    checks["ingest_activity"] = {
        "status": "degraded" if silent else "ok",
        "last_event_at": _iso(last_event),
        "sites": sites,
    }
    return checks


def _body(checks: dict[str, dict[str, Any]], now: datetime) -> CronResult:
    status = _worst([c["status"] for c in checks.values()])
    ok = status in ("ok", "degraded")
    body: CronResult = {"ok": ok, "status": status, "checked_at": format_utc(now), "checks": checks}
    if not ok:
        red = sorted(name for name, c in checks.items() if c["status"] in ("alarm", "critical"))
        body["error"] = f"watchtower {status}: {', '.join(red)}"
    return body


def watchtower(ctx: CronContext) -> CronResult:
    """Run every check; ``ok`` is false for ``alarm`` and ``critical``."""
    from kernel.cron.relay import sink_from_settings

    now = ctx.clock.now()
    sink_error: str | None = None
    try:
        sink = sink_from_settings(ctx.settings)
    except ConfigError as exc:
        sink, sink_error = None, exc.message
    if sink is not None:
        sink.close()
    with ctx.db.connect("app", autocommit=True) as conn:
        checks = database_checks(conn, now, sink is not None or sink_error is not None)
        from kernel.disputes.holds import stale_holds_check  # issue 15: holds a case left behind

        checks["dispute_holds"] = stale_holds_check(conn, now, ctx.settings.dispute_hold_max_age_days)
    checks["redis"] = check_redis(ctx.settings.redis_url)
    if sink_error is not None:
        # A sink that is named but unusable means nothing is being published: say so here
        # rather than failing the whole watchtower.
        checks["outbox_backlog"].update(status="alarm", error=sink_error)
    return _body(checks, now)


def watchtower_without_database(ctx: CronContext, error: str) -> CronResult:
    """The answer when PostgreSQL is unreachable: critical (nothing else can be checked or recorded)."""
    now = ctx.clock.now()
    checks: dict[str, dict[str, Any]] = {
        "database": {"status": "critical", "error": error},
        "redis": check_redis(ctx.settings.redis_url),
    }
    return _body(checks, now)
