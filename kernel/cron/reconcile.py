"""Usage reconciliation (SPEC §4.2): recount each site-month from the ledger, fix the caches.

Golden rule 3: the ledger (``ingest_idempotency``) is the truth; ``site_usage_monthly`` and the
Redis mirror are caches. Each job recounts one site-month, corrects the counter row and the
mirror, and logs the result (drift before correction) in ``reconciliation_drift_log``.

Jobs (``billing_reconciliation_jobs``, one per site-month) go PENDING → PROCESSING →
COMPLETED/FAILED. ``enqueue`` re-arms every unfrozen site-month each cycle (a frozen month's
invoice is final, so its counters stop mattering); ``PROCESSING`` jobs older than
``STUCK_JOB_TIMEOUT`` (a worker died mid-job) go back to PENDING.

Long jobs never hold the quota lock (issue 11 §4). The recount reads the counter row and the
ledger's counts in *one* REPEATABLE READ snapshot ``S``, without any lock, so ingest never waits
for it however big the month is. Every ledger transaction changes the ledger and the counter
row together, so those committed after ``S`` add to the counter by themselves and the drift
``counter - ledger`` is the same at ``S`` and now. The correction is therefore applied as a
delta, ``counter_new = counter_now + (ledger_at_S - counter_at_S)``, in one ``UPDATE`` that holds
the row lock for microseconds. The Redis mirror is written after that commit, with no lock and no
transaction open: no network call ever runs under a ledger or counter lock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import psycopg
import redis

from kernel.cron.freeze import month_counts
from kernel.cron.runs import CronContext, CronResult
from kernel.metrics import RECONCILIATION_DRIFT
from kernel.months import previous_year_month, year_month_of

__all__ = [
    "RECONCILE_JOBS_PER_RUN",
    "STUCK_JOB_TIMEOUT",
    "backfill",
    "backfill_jobs",
    "enqueue",
    "enqueue_jobs",
    "reconcile_cycle",
    "reconcile_site_month",
    "run_jobs",
    "usage_mirror_key",
]

_log = logging.getLogger("kernel.cron.reconcile")

RECONCILE_JOBS_PER_RUN = 500
STUCK_JOB_TIMEOUT = timedelta(minutes=10)
REDIS_TIMEOUT_S = 2.0
JOB_ERROR_MAX_CHARS = 1000
RECOUNT_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000  # a multi-million-row month; no lock is held meanwhile


def usage_mirror_key(site_id: str, year_month: str) -> str:
    """Redis key of a site-month's billable count mirror (a cache: never an authority)."""
    return f"revkernel:usage:{site_id}:{year_month}"


def _mirror(ctx: CronContext) -> redis.Redis[bytes] | None:
    if not ctx.settings.redis_url:
        return None
    return redis.Redis.from_url(
        ctx.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


# Arms (or re-arms) a PENDING job for each candidate site-month that is not frozen yet;
# COMPLETED and FAILED jobs are re-armed, PENDING and PROCESSING ones are left alone.
_ARM_JOBS = """
WITH candidates AS ({candidates}), armed AS (
    INSERT INTO billing_reconciliation_jobs (site_id, year_month, status, created_at, updated_at)
    SELECT c.site_id, c.year_month, 'PENDING', %(now)s, %(now)s
    FROM candidates c
    WHERE NOT EXISTS (
        SELECT 1 FROM invoice_snapshot s WHERE s.site_id = c.site_id AND s.year_month = c.year_month)
    ON CONFLICT (site_id, year_month) DO UPDATE
        SET status = 'PENDING', updated_at = EXCLUDED.updated_at, last_error = NULL
        WHERE billing_reconciliation_jobs.status IN ('COMPLETED', 'FAILED')
    RETURNING 1
)
SELECT count(*) FROM armed
"""
_COUNTED_MONTHS = """
    SELECT site_id, year_month FROM site_usage_monthly
    UNION
    SELECT id, m FROM sites CROSS JOIN (VALUES (%(current)s), (%(previous)s)) AS months(m)
"""
_LEDGER_MONTHS = "SELECT DISTINCT site_id, year_month FROM ingest_idempotency"


def _arm(conn: psycopg.Connection[Any], candidates: str, params: dict[str, Any]) -> int:
    row = conn.execute(_ARM_JOBS.format(candidates=candidates), params).fetchone()
    return int(row[0]) if row else 0


def enqueue_jobs(conn: psycopg.Connection[Any], now: datetime) -> int:
    """Arm a PENDING job for every unfrozen site-month that has counters, plus every site's current
    and previous month; COMPLETED and FAILED jobs are re-armed. Returns the jobs armed now."""
    params = {"current": year_month_of(now), "previous": previous_year_month(now), "now": now}
    return _arm(conn, _COUNTED_MONTHS, params)


def backfill_jobs(conn: psycopg.Connection[Any], now: datetime) -> int:
    """Arm a job for every unfrozen site-month found in the ledger itself (a full scan: use after
    counters were lost or restored from backup, not every cycle)."""
    return _arm(conn, _LEDGER_MONTHS, {"now": now})


def reclaim_stuck(conn: psycopg.Connection[Any], now: datetime) -> int:
    """Return PROCESSING jobs untouched for ``STUCK_JOB_TIMEOUT`` to PENDING."""
    cur = conn.execute(
        "UPDATE billing_reconciliation_jobs SET status = 'PENDING', updated_at = %s,"
        " last_error = 'reclaimed: stuck in PROCESSING'"
        " WHERE status = 'PROCESSING' AND updated_at < %s",
        (now, now - STUCK_JOB_TIMEOUT),
    )
    return cur.rowcount


def _claim(conn: psycopg.Connection[Any], now: datetime, limit: int) -> list[tuple[int, str, str]]:
    rows = conn.execute(
        """
        UPDATE billing_reconciliation_jobs j
        SET status = 'PROCESSING', attempts = j.attempts + 1, started_at = %(now)s, updated_at = %(now)s
        WHERE j.id IN (
            SELECT id FROM billing_reconciliation_jobs
            WHERE status = 'PENDING'
            ORDER BY updated_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        RETURNING j.id, j.site_id::text, j.year_month
        """,
        {"now": now, "limit": limit},
    ).fetchall()
    return sorted((int(r[0]), str(r[1]), str(r[2])) for r in rows)


def reconcile_site_month(
    conn: psycopg.Connection[Any], mirror: redis.Redis[bytes] | None, site_id: str, year_month: str, now: datetime
) -> dict[str, Any]:
    """Recount one site-month, correct its counter row and Redis mirror, log the drift (module docstring).

    ``conn`` must be in autocommit mode.
    """
    # 1. One snapshot S: the counter row and the ledger's counts as of the same commits, no lock.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(f"SET LOCAL statement_timeout = {RECOUNT_STATEMENT_TIMEOUT_MS}")
        row = conn.execute(
            "SELECT event_count, overage_count, rejected_count, non_billable_count FROM site_usage_monthly"
            " WHERE site_id = %s AND year_month = %s",
            (site_id, year_month),
        ).fetchone()
        ledger = month_counts(conn, site_id, year_month)
    counter = tuple(int(c) for c in row) if row is not None else (0, 0, 0, 0)
    delta = tuple(truth - cached for truth, cached in zip(ledger, counter, strict=True))
    counter_drift = counter[0] - ledger[0]
    counters_differ = any(delta) or row is None
    # 2. The correction as a delta: the row lock is held for this one statement.
    if row is None:
        conn.execute(
            "INSERT INTO site_usage_monthly (site_id, year_month, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (site_id, year_month) DO NOTHING",
            (site_id, year_month, now),
        )
    if any(delta):
        fixed = conn.execute(
            "UPDATE site_usage_monthly SET event_count = event_count + %s, overage_count = overage_count + %s,"
            " rejected_count = rejected_count + %s, non_billable_count = non_billable_count + %s, updated_at = %s"
            " WHERE site_id = %s AND year_month = %s RETURNING event_count",
            (*delta, now, site_id, year_month),
        ).fetchone()
    else:
        fixed = conn.execute(
            "SELECT event_count FROM site_usage_monthly WHERE site_id = %s AND year_month = %s", (site_id, year_month)
        ).fetchone()
    billable_now = int(fixed[0]) if fixed is not None else ledger[0]
    # 3. Redis, with no transaction open and no lock held (golden rule 4: only a cache).
    redis_billable, redis_drift, redis_fixed = _fix_mirror(mirror, site_id, year_month, billable_now)
    conn.execute(
        """
        INSERT INTO reconciliation_drift_log (site_id, year_month, ledger_billable, counter_billable,
            redis_billable, counter_drift, redis_drift, ledger_overage, ledger_rejected,
            ledger_non_billable, corrected, checked_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            site_id,
            year_month,
            ledger[0],
            counter[0],
            redis_billable,
            counter_drift,
            redis_drift,
            ledger[1],
            ledger[2],
            ledger[3],
            counters_differ or redis_fixed,
            now,
        ),
    )
    RECONCILIATION_DRIFT.labels(site_id=site_id, year_month=year_month).set(counter_drift)
    if counter_drift or redis_drift:
        _log.warning(
            "drift site %s month %s: counter %+d, redis %s (ledger billable %d); corrected",
            site_id,
            year_month,
            counter_drift,
            redis_drift,
            ledger[0],
        )
    return {"ledger_billable": ledger[0], "counter_drift": counter_drift, "redis_drift": redis_drift}


def _fix_mirror(
    mirror: redis.Redis[bytes] | None, site_id: str, year_month: str, billable: int
) -> tuple[int | None, int | None, bool]:
    """(mirror value before, its drift, corrected?) — all None/False when Redis is absent or down."""
    if mirror is None:
        return None, None, False
    key = usage_mirror_key(site_id, year_month)
    try:
        raw = mirror.get(key)
        before = int(raw) if raw is not None else 0
        if raw is None or before != billable:
            mirror.set(key, billable)
            return before, before - billable, True
        return before, 0, False
    except (redis.RedisError, ValueError) as exc:
        # Golden rule 4: Redis is never an authority; the counters are corrected all the same.
        _log.warning("redis mirror of site %s month %s not reconciled: %s", site_id, year_month, exc)
        return None, None, False


def run_jobs(ctx: CronContext, limit: int = RECONCILE_JOBS_PER_RUN) -> CronResult:
    """Reclaim stuck jobs, then process up to ``limit`` PENDING ones.

    Returns ``{"ok", "processed", "completed", "failed", "reclaimed"}``; ``ok`` is false when any job failed.
    """
    now = ctx.clock.now()
    mirror = _mirror(ctx)
    completed = failed = 0
    try:
        with ctx.db.connect("app", autocommit=True) as conn:
            reclaimed = reclaim_stuck(conn, now)
            jobs = _claim(conn, now, limit)
            for job_id, site_id, year_month in jobs:
                try:
                    reconcile_site_month(conn, mirror, site_id, year_month, ctx.clock.now())
                except psycopg.Error as exc:
                    failed += 1
                    _log.error("reconcile job %s (site %s, %s) failed: %s", job_id, site_id, year_month, exc)
                    conn.execute(
                        "UPDATE billing_reconciliation_jobs SET status = 'FAILED', last_error = %s,"
                        " updated_at = %s, finished_at = %s WHERE id = %s",
                        (str(exc)[:JOB_ERROR_MAX_CHARS], ctx.clock.now(), ctx.clock.now(), job_id),
                    )
                    continue
                completed += 1
                conn.execute(
                    "UPDATE billing_reconciliation_jobs SET status = 'COMPLETED', last_error = NULL,"
                    " updated_at = %s, finished_at = %s WHERE id = %s",
                    (ctx.clock.now(), ctx.clock.now(), job_id),
                )
    finally:
        if mirror is not None:
            mirror.close()
    body: CronResult = {
        "ok": failed == 0,
        "processed": completed + failed,
        "completed": completed,
        "failed": failed,
        "reclaimed": reclaimed,
    }
    if failed:
        body["error"] = f"{failed} reconciliation job(s) failed"
    return body


def enqueue(ctx: CronContext) -> CronResult:
    with ctx.db.connect("app", autocommit=True) as conn:
        return {"ok": True, "enqueued": enqueue_jobs(conn, ctx.clock.now())}


def backfill(ctx: CronContext) -> CronResult:
    with ctx.db.connect("app", autocommit=True) as conn:
        return {"ok": True, "enqueued": backfill_jobs(conn, ctx.clock.now())}


def reconcile_cycle(ctx: CronContext) -> CronResult:
    """One scheduled cycle: arm the jobs, then run them."""
    armed = enqueue(ctx)["enqueued"]
    return {"enqueued": armed, **run_jobs(ctx)}
