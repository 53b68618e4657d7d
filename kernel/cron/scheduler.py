"""The built-in scheduler (SPEC §4.2): runs the crons on their schedule, one leader at a time.

Every process started with ``revkernel serve --scheduler`` (``REVKERNEL_SCHEDULER=1``) or
``revkernel cron scheduler`` runs a ``Scheduler`` thread. Leadership is a lease on the
``scheduler-leader`` row of ``cron_locks`` (issue 11 §4): the leader renews it every tick for
``LEADER_LEASE_TICKS`` ticks by the *database's* clock; a follower takes it over once it expired
(a dead leader is replaced within one lease), and a leader that cannot renew steps down. Taking
or renewing the lease is an UPDATE, which the read-only analyst role cannot do, so a notebook can
never hold leadership hostage (a PostgreSQL advisory lock can be taken by any role). A lease, not
a row lock held open: a transaction kept open for days would hold back vacuum. Only the leader
runs crons; each run still takes the cron's own lock (``kernel.cron.runs``), so an HTTP-triggered
run and a scheduled one never overlap, and two leaders for a moment (a paused one whose lease ran
out) never run one cron twice at once. A slot that finds its cron's lock busy is retried
``BUSY_RETRY_TICKS`` ticks later, never counted as done.

Schedules (UTC): watchtower and reconcile-usage every 15 min, publish-outbox every minute,
idempotency-cleanup daily 03:00, invoice-freeze on the 1st at 00:10 (after the freeze grace) and
again every ``FAILED_RETRY`` while it fails. A new leader catches up: an interval cron is due one
interval after its last recorded run; a calendar cron whose latest slot passed without a run is
due at once. ``REVKERNEL_SCHEDULER_INTERVAL_S`` shortens every interval (demos and tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import psycopg

from kernel.clock import Clock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext, CronRunning
from kernel.db.connect import Database
from kernel.errors import KernelError
from kernel.settings import Settings

__all__ = ["LEADER_LOCK", "SCHEDULER_ENV", "SCHEDULES", "Schedule", "Scheduler", "scheduler_hooks", "schedules_for"]

_log = logging.getLogger("kernel.cron.scheduler")

LEADER_LOCK = "scheduler-leader"  # its cron_locks row
SCHEDULER_ENV = "REVKERNEL_SCHEDULER"
SCHEDULER_TICK_S = 1.0
LEADER_LEASE_TICKS = 10
LEADER_LEASE_MIN_S = 2.0
BUSY_RETRY_TICKS = 5
# Take or renew the lease: free, expired, or already ours. Database clock only.
_LEASE_SQL = """
UPDATE cron_locks SET holder = %(me)s, expires_at = clock_timestamp() + make_interval(secs => %(lease_s)s)
WHERE name = %(name)s AND (holder IS NULL OR holder = %(me)s OR expires_at < clock_timestamp())
RETURNING holder
"""
FAILED_RETRY = timedelta(minutes=10)
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Schedule:
    """When one cron runs: every ``every``, or daily at ``at`` (h, m), or monthly on ``day``."""

    name: str
    every: timedelta | None = None
    at: tuple[int, int] | None = None
    day: int | None = None

    def slots_around(self, now: datetime) -> tuple[datetime, datetime]:
        """(latest slot ≤ now, next slot > now) of a calendar schedule."""
        assert self.at is not None
        hour, minute = self.at
        utc = now.astimezone(UTC)
        if self.day is None:
            slot = utc.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if slot > utc:
                slot -= timedelta(days=1)
            return slot, slot + timedelta(days=1)
        slot = utc.replace(day=self.day, hour=hour, minute=minute, second=0, microsecond=0)
        if slot > utc:
            slot = _add_months(slot, -1)
        return slot, _add_months(slot, 1)

    def first_due(self, now: datetime, last_run: datetime | None) -> datetime:
        """When a new leader should first run this cron, given its last recorded run."""
        if self.every is not None:
            return now if last_run is None else max(now, last_run + self.every)
        latest, upcoming = self.slots_around(now)
        return now if last_run is None or last_run < latest else upcoming

    def next_due(self, now: datetime, ok: bool) -> datetime:
        if self.every is not None:
            return now + self.every
        _, upcoming = self.slots_around(now)
        return upcoming if ok else min(upcoming, now + FAILED_RETRY)


def _add_months(instant: datetime, months: int) -> datetime:
    index = instant.year * 12 + instant.month - 1 + months
    return instant.replace(year=index // 12, month=index % 12 + 1)


SCHEDULES: tuple[Schedule, ...] = (
    Schedule("publish-outbox", every=timedelta(minutes=1)),
    Schedule("reconcile-usage", every=timedelta(minutes=15)),
    Schedule("watchtower", every=timedelta(minutes=15)),
    Schedule("invoice-freeze", at=(0, 10), day=1),
    Schedule("idempotency-cleanup", at=(3, 0)),
)


def schedules_for(settings: Settings) -> tuple[Schedule, ...]:
    """The schedules, with ``REVKERNEL_SCHEDULER_INTERVAL_S`` applied to the interval crons."""
    override_s = settings.seconds("REVKERNEL_SCHEDULER_INTERVAL_S", 0.0)  # 0.0: not set
    if not override_s:
        return SCHEDULES
    every = timedelta(seconds=override_s)
    return tuple(Schedule(s.name, every=every) if s.every is not None else s for s in SCHEDULES)


class Scheduler:
    """A thread that competes for leadership and, while leader, runs the due crons."""

    def __init__(self, settings: Settings, clock: Clock, db: Database | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db or Database(settings)
        self.schedules = schedules_for(settings)
        tick = settings.extra.get("REVKERNEL_SCHEDULER_TICK_S", "").strip()
        self.tick_s = float(tick) if tick else SCHEDULER_TICK_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._due: dict[str, datetime] = {}
        self.is_leader = False
        # Who holds the lease: readable in cron_locks (application name, pid, host, a nonce).
        self.holder = f"revkernel-scheduler:{os.getpid()}:{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = max(LEADER_LEASE_MIN_S, LEADER_LEASE_TICKS * self.tick_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="revkernel-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    def run(self) -> None:
        """Loop until ``stop()``: keep or seek leadership, run what is due, sleep a tick."""
        _log.info("scheduler started (pid %s)", os.getpid())
        try:
            while not self._stop.is_set():
                try:
                    if self._lead():
                        self._run_due()
                except (KernelError, psycopg.Error) as exc:
                    _log.error("scheduler tick failed: %s", exc)
                    self._drop_leadership()
                except Exception:
                    # The scheduler thread must outlive any one bad tick; say loudly what broke.
                    _log.exception("scheduler tick crashed")
                    self._drop_leadership()
                self._stop.wait(self.tick_s)
        finally:
            self._drop_leadership()

    def _lead(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = self.db.connect("app", autocommit=True, application_name=f"revkernel-scheduler:{os.getpid()}")
            self._conn.execute(
                "INSERT INTO cron_locks (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (LEADER_LOCK,)
            )
        row = self._conn.execute(
            _LEASE_SQL, {"me": self.holder, "lease_s": self.lease_s, "name": LEADER_LOCK}
        ).fetchone()
        if row is None:
            if self.is_leader:
                self.is_leader = False
                _log.warning("scheduler pid %s lost its leader lease", os.getpid())
            return False
        if not self.is_leader:
            self.is_leader = True
            self._due = self._first_due()
            _log.warning("scheduler pid %s is now the leader", os.getpid())
        return True

    def _first_due(self) -> dict[str, datetime]:
        assert self._conn is not None
        last = dict(
            self._conn.execute(
                "SELECT name, max(started_at) FROM cron_runs WHERE status <> 'skipped' GROUP BY name"
            ).fetchall()
        )
        now = self.clock.now()
        return {s.name: s.first_due(now, last.get(s.name)) for s in self.schedules}

    def _run_due(self) -> None:
        ctx = CronContext(self.settings, self.clock, self.db, trigger="scheduler")
        for schedule in self.schedules:
            if self._stop.is_set():
                return
            now = self.clock.now()
            if now < self._due.get(schedule.name, now):
                continue
            ok = False
            try:
                result = run_named(ctx, schedule.name)
                ok = bool(result.get("ok"))
                if not ok:
                    _log.error("scheduled %s reported failure: %s", schedule.name, result.get("error"))
            except CronRunning:
                # Another trigger holds the cron's lock: this slot did not run. Try again soon.
                _log.warning("scheduled %s found its lock busy; retrying", schedule.name)
                self._due[schedule.name] = self.clock.now() + timedelta(seconds=BUSY_RETRY_TICKS * self.tick_s)
                continue
            except KernelError as exc:
                _log.error("scheduled %s failed: %s [%s]", schedule.name, exc.message, exc.code)
            except Exception:
                _log.exception("scheduled %s crashed", schedule.name)
            self._due[schedule.name] = schedule.next_due(self.clock.now(), ok)

    def _drop_leadership(self) -> None:
        was_leader = self.is_leader
        self.is_leader = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                if was_leader and not self._conn.closed:
                    # Hand the lease back at once instead of letting it expire.
                    self._conn.execute(
                        "UPDATE cron_locks SET holder = NULL, expires_at = NULL WHERE name = %s AND holder = %s",
                        (LEADER_LOCK, self.holder),
                    )
                self._conn.close()
            self._conn = None
        if was_leader:
            _log.warning("scheduler pid %s gave up leadership", os.getpid())


def scheduler_hooks(state: Any) -> tuple[Callable[[Any], Awaitable[None]], Callable[[Any], Awaitable[None]]]:
    """(on_startup, on_shutdown) hooks for the app: start a ``Scheduler`` when
    ``REVKERNEL_SCHEDULER=1`` (set by ``revkernel serve --scheduler``), stop it on shutdown.

    ``state`` is the app's ``kernel.web.AppState`` (settings, clock, db).
    """
    holder: dict[str, Scheduler] = {}

    async def start(app: Any) -> None:
        if state.settings.extra.get(SCHEDULER_ENV) != "1":
            return
        scheduler = Scheduler(state.settings, state.clock, state.db)
        scheduler.start()
        holder["scheduler"] = scheduler

    async def stop(app: Any) -> None:
        scheduler = holder.pop("scheduler", None)
        if scheduler is not None:
            await anyio.to_thread.run_sync(scheduler.stop)

    return start, stop
