"""Every cron run: one lock per cron name, one ``cron_runs`` row per run.

The same ``run_cron`` wraps a cron whether HTTP, the CLI or the scheduler triggers it, so the
lock (two runs of one cron never overlap, across processes and hosts) and the record (the dead
man's switch of the watchtower reads it) cannot be skipped by one of the callers.

The lock is the cron's row of ``cron_locks`` locked ``FOR UPDATE NOWAIT`` in a transaction held
open on a dedicated connection for the run (issue 11 §4). Row locks need UPDATE privilege, which
the read-only analyst role lacks (and its sessions are read-only), so no notebook can take a cron
lock or hold one hostage; a PostgreSQL advisory lock, by contrast, can be taken by any role.
A run that dies drops its connection and with it the lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from kernel.clock import Clock
from kernel.db.connect import Database
from kernel.errors import Conflict, KernelError
from kernel.settings import Settings

__all__ = [
    "CRON_NAMES",
    "CronContext",
    "CronResult",
    "CronRunning",
    "last_runs",
    "run_cron",
    "take_cron_lock",
]

_log = logging.getLogger("kernel.cron")

CRON_NAMES = ("watchtower", "reconcile-usage", "invoice-freeze", "idempotency-cleanup", "publish-outbox")
ERROR_TEXT_MAX_CHARS = 2000
_LOCK_SQL = "SELECT name FROM cron_locks WHERE name = %s FOR UPDATE NOWAIT"
_LOCK_ROW_SQL = "INSERT INTO cron_locks (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"

CronResult = dict[str, Any]


@dataclass(frozen=True)
class CronContext:
    """What every cron function gets: settings, the injected clock, the database, the trigger."""

    settings: Settings
    clock: Clock
    db: Database
    trigger: str = "http"  # http | cli | scheduler
    # The clock of the run's cron_runs record, when the job runs on a simulated clock (the demo):
    # the history the watchtower and the scheduler read stays true to the real clock.
    history_clock: Clock | None = None

    @property
    def recorded_clock(self) -> Clock:
        return self.history_clock or self.clock

    @property
    def actor(self) -> str:
        """The ``audit_log.actor`` of work this run does."""
        return f"cron:{self.trigger}"


class CronRunning(Conflict):
    """Another run of the same cron holds its lock; this one did nothing."""

    code = "cron_running"


def lock_name(name: str) -> str:
    """The ``cron_locks`` row of a cron."""
    return name


def take_cron_lock(db: Database, name: str) -> psycopg.Connection[Any] | None:
    """A connection whose open transaction holds the cron's lock, or None when another holds it.

    Closing the connection (or ending its transaction) releases the lock.
    """
    conn = db.connect("app", application_name=f"revkernel-cron-lock:{name}")
    try:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute(_LOCK_ROW_SQL, (lock_name(name),))  # first run of a cron added later
        conn.commit()
        row = conn.execute(_LOCK_SQL, (lock_name(name),)).fetchone()
    except psycopg.errors.LockNotAvailable:
        conn.close()
        return None
    except BaseException:
        conn.close()
        raise
    assert row is not None
    return conn


def run_cron(ctx: CronContext, name: str, body: Callable[[CronContext], CronResult]) -> CronResult:
    """Run ``body`` under the cron's lock (``take_cron_lock``) and record the run in ``cron_runs``.

    The run's status is ``ok`` only when ``body`` returned ``{"ok": True, ...}``; a result with
    ``ok: False`` is recorded as ``failed`` (and returned), an exception as ``failed`` (and
    re-raised). A run that finds the lock taken is recorded as ``skipped`` and raises
    ``CronRunning``.

    Raises:
        CronRunning: another run of ``name`` is in progress.
        DatabaseUnavailable: the database cannot be reached (nothing can be recorded then).
    """
    assert name in CRON_NAMES, name
    with ctx.db.connect("app", autocommit=True) as conn:
        started_at = ctx.recorded_clock.now()
        lock = take_cron_lock(ctx.db, name)
        if lock is None:
            conn.execute(
                "INSERT INTO cron_runs (name, trigger, started_at, finished_at, status, error)"
                " VALUES (%s, %s, %s, %s, 'skipped', %s)",
                (name, ctx.trigger, started_at, started_at, "another run of this cron holds its lock"),
            )
            raise CronRunning(f"cron {name} is already running; this run did nothing")
        try:
            run_row = conn.execute(
                "INSERT INTO cron_runs (name, trigger, started_at) VALUES (%s, %s, %s) RETURNING id",
                (name, ctx.trigger, started_at),
            ).fetchone()
            assert run_row is not None
            run_id = run_row[0]
            try:
                result = body(ctx)
            except Exception as exc:
                _finish(conn, ctx, run_id, "failed", {}, _error_text(exc))
                raise
            ok = bool(result.get("ok"))
            error = None if ok else str(result.get("error") or "the run reported a failure")
            _finish(conn, ctx, run_id, "ok" if ok else "failed", result, error)
            if not ok:
                _log.error("cron %s (%s) failed: %s", name, ctx.trigger, error)
            return result
        finally:
            # Ending the lock's transaction releases it, also when the body failed; if that
            # connection broke, the server has already ended the transaction and the lock.
            lock.close()


def _finish(
    conn: psycopg.Connection[Any], ctx: CronContext, run_id: int, status: str, result: CronResult, error: str | None
) -> None:
    counts = {k: v for k, v in result.items() if isinstance(v, int | str | bool | float | None) and k != "ok"}
    try:
        conn.execute(
            "UPDATE cron_runs SET finished_at = %s, status = %s, counts = %s, error = %s WHERE id = %s",
            (ctx.recorded_clock.now(), status, json.dumps(counts), error, run_id),
        )
    except psycopg.Error as exc:
        # The run's own outcome matters more than its record; say loudly that the record is missing.
        _log.error("cron run %s could not be recorded as %s: %s", run_id, status, exc)


def _error_text(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, KernelError) else f"{type(exc).__name__}: {exc}"
    return text[:ERROR_TEXT_MAX_CHARS]


def last_runs(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Per cron name: the latest run and the latest successful run (for the dead man's switch)."""
    rows = conn.execute(
        """
        SELECT name,
               max(started_at) AS last_started_at,
               max(started_at) FILTER (WHERE status = 'ok') AS last_ok_at,
               (array_agg(status ORDER BY started_at DESC, id DESC)
                   FILTER (WHERE status <> 'skipped'))[1] AS last_status
        FROM cron_runs
        GROUP BY name
        """
    ).fetchall()
    return {
        name: {"last_started_at": started, "last_ok_at": ok_at, "last_status": status}
        for name, started, ok_at, status in rows
    }
