"""Demo step "traffic": the four demo sites send two closed months of events through real HTTP.

A live ``revkernel serve`` (a uvicorn subprocess on a free port) runs on a ``FrozenFileClock``
(``REVKERNEL_CLOCK=file-frozen:<data dir>/demo-clock.txt``: every event of a step gets the step's
instant, whatever the machine's speed, so two demos give the same ledger byte for byte); the
driver moves that clock from day to day
of 2026-09 and 2026-10 and sends, per day, each site's events in tracker batches. The traffic is a
fixed script (seeded, ids derived from names), and each site sends its requests one after the
other, so every quota position — hence every ledger row's state — is the same on every run:

- duplicates: client retries re-send earlier ``event_id``s a day later;
- ``demo-overage`` goes past 300 into OVERAGE (and past 450 into rejection in October), with a
  scroll_depth flood;
- ``demo-hardcap`` is rejected past 400, then its client retries the rejected events (429 with
  ``x-opsmantik-dedup``) and, in October, storms until the rate limit answers 429 too;
- ``demo-shadow`` records shadow decisions (and a system flood), ``demo-off`` records
  ``billing_disabled``.

Idempotent: when the demo months already hold ledger rows of the demo sites, no traffic is sent
(re-sending would only grow the duplicate counters) and the summary is printed from the ledger.
The rate-limit windows use a fresh Redis prefix per run, and without Redis the server runs one
worker so the local limiter is exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kernel.clock import write_clock_file
from kernel.demo.tenants import DEMO_SITES, DemoSite
from kernel.errors import KernelError

if TYPE_CHECKING:
    from kernel.demo import DemoRun

__all__ = ["DEMO_MONTHS", "run_traffic", "traffic_summary"]

DEMO_MONTHS = ("2026-09", "2026-10")
DAYS_PER_MONTH = 27  # traffic days 1..27; day 28 is the retry storm
BATCH_EVENTS = 25  # events per tracker batch
SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 20
REQUEST_TIMEOUT_S = 30
STORM_CONNECTIONS = 8
STORM_CLOCK_STEP_REQUESTS = 50  # rewrite the clock every N storm requests: the storm stays in one minute


@dataclass(frozen=True)
class MonthPlan:
    """What one site sends in one month."""

    billable: int
    scroll_depth: int = 0
    system: int = 0
    retries: int = 0  # earlier events re-sent by the client (duplicates)
    storm_retries: int = 0  # single requests re-sending rejected events after the month's 429s


PLANS: dict[str, dict[str, MonthPlan]] = {
    "demo-hardcap": {
        "2026-09": MonthPlan(billable=450, scroll_depth=60, system=20, retries=30, storm_retries=100),
        "2026-10": MonthPlan(billable=430, scroll_depth=40, system=10, retries=20, storm_retries=640),
    },
    "demo-overage": {
        "2026-09": MonthPlan(billable=380, scroll_depth=40, retries=20),
        "2026-10": MonthPlan(billable=470, scroll_depth=250, retries=25),
    },
    "demo-shadow": {
        "2026-09": MonthPlan(billable=260, scroll_depth=20, retries=10),
        "2026-10": MonthPlan(billable=180, system=160, retries=10),
    },
    "demo-off": {
        "2026-09": MonthPlan(billable=300, retries=10),
        "2026-10": MonthPlan(billable=320, scroll_depth=30, retries=10),
    },
}


@dataclass
class SiteLog:
    """HTTP answers one site got during the run."""

    statuses: Counter[str] = field(default_factory=Counter)


def _events(demo: DemoSite, year_month: str, plan: MonthPlan) -> list[dict[str, Any]]:
    rng = random.Random(f"{demo.public_id}:{year_month}")
    kinds = ["billable"] * plan.billable + ["scroll_depth"] * plan.scroll_depth + ["system"] * plan.system
    rng.shuffle(kinds)
    events: list[dict[str, Any]] = []
    for i, kind in enumerate(kinds):
        page = f"https://{demo.public_id}.example/p/{rng.randrange(40)}"
        if kind == "scroll_depth":
            body = {"ec": "interaction", "ea": "scroll_depth", "el": str(rng.choice((25, 50, 75, 100)))}
        elif kind == "system":
            body = {"ec": "system", "ea": "heartbeat", "el": f"t{i}"}
        else:
            body = {"ec": rng.choice(("conversion", "interaction")), "ea": rng.choice(("click", "buy", "signup"))}
            body["el"] = f"item-{rng.randrange(1000)}"
        body.update(event_id=f"{demo.public_id}-{year_month}-{i:05d}", u=page, fp=f"fp-{rng.randrange(200)}")
        events.append(body)
    return events


def _day_groups(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    size = -(-len(events) // DAYS_PER_MONTH)
    return [events[i * size : (i + 1) * size] for i in range(DAYS_PER_MONTH)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _DemoServer:
    """``revkernel serve`` on a free port with the demo's file clock (started and stopped by us)."""

    def __init__(self, run: DemoRun, clock_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir = run.settings.data_dir
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            REVKERNEL_DATA_DIR=str(data_dir),
            REVKERNEL_CLOCK=f"file-frozen:{clock_path}",
            REVKERNEL_METRICS_DIR=str(data_dir / "demo-prometheus"),
            REVKERNEL_REDIS_PREFIX=f"rk-demo-{uuid.uuid4().hex[:12]}",
        )
        if run.settings.database_url is not None:
            env["DATABASE_URL"] = run.settings.database_url
        workers = "2" if run.settings.redis_url else "1"
        self.log_path = data_dir / "demo-serve.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kernel.cli", "serve", "--port", str(self.port), "--workers", workers],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise KernelError(f"demo server exited: {' '.join(tail)}", code="demo_server_failed")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise KernelError(f"demo server not ready after {SERVER_START_TIMEOUT_S}s", code="demo_server_failed")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(SERVER_STOP_TIMEOUT_S)


async def _send(
    http: httpx.AsyncClient, ingest_key: str, body: dict[str, Any], log: SiteLog
) -> tuple[int, dict[str, Any], httpx.Headers]:
    response = await http.post(
        "/api/sync", json=body, headers={"Authorization": f"Bearer {ingest_key}"}, params={"_ts": "1"}
    )
    payload = response.json()
    if response.status_code >= 500 or response.status_code in (400, 401, 403, 413, 422):
        raise KernelError(f"demo traffic got {response.status_code}: {payload}", code="demo_traffic_failed")
    if "results" in payload:
        for item in payload["results"]:
            log.statuses[item["status"]] += 1
    elif response.status_code == 429 and response.headers.get("x-opsmantik-ratelimit") == "1":
        log.statuses["rate_limited"] += 1
    else:
        log.statuses[payload["status"]] += 1
    return response.status_code, payload, response.headers


async def _site_day(
    http: httpx.AsyncClient, ingest_key: str, today: list[dict[str, Any]], retry: list[dict[str, Any]], log: SiteLog
) -> list[str]:
    """Send one site's day: its events in batches, then yesterday's retries; return rejected ids."""
    rejected: list[str] = []
    for start in range(0, len(today), BATCH_EVENTS):
        chunk = today[start : start + BATCH_EVENTS]
        _, payload, _ = await _send(http, ingest_key, {"events": chunk}, log)
        rejected += [chunk[r["index"]]["event_id"] for r in payload["results"] if r["status"] == "rejected_quota"]
    for event in retry:
        await _send(http, ingest_key, event, log)
    return rejected


async def _drive(url: str, clock_path: Path, keys: dict[str, str]) -> dict[str, SiteLog]:
    logs = {demo.public_id: SiteLog() for demo in DEMO_SITES}
    limits = httpx.Limits(max_connections=STORM_CONNECTIONS)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        for year_month in DEMO_MONTHS:
            year, month = (int(x) for x in year_month.split("-"))
            plans = {demo.public_id: PLANS[demo.public_id][year_month] for demo in DEMO_SITES}
            events = {d.public_id: _events(d, year_month, plans[d.public_id]) for d in DEMO_SITES}
            days = {pid: _day_groups(evs) for pid, evs in events.items()}
            rng = random.Random(year_month)
            rejected: dict[str, list[str]] = {d.public_id: [] for d in DEMO_SITES}
            sent: dict[str, list[dict[str, Any]]] = {d.public_id: [] for d in DEMO_SITES}
            for day in range(1, DAYS_PER_MONTH + 1):
                write_clock_file(clock_path, datetime(year, month, day, 9 + day % 9, 0, 0, tzinfo=UTC))
                jobs = []
                for demo in DEMO_SITES:
                    pid = demo.public_id
                    per_day = -(-plans[pid].retries // (DAYS_PER_MONTH - 1))
                    retry = rng.sample(sent[pid], min(per_day, len(sent[pid]))) if day > 1 else []
                    today = days[pid][day - 1]
                    sent[pid] += today
                    jobs.append(_site_day(http, keys[pid], today, retry, logs[pid]))
                for demo, ids in zip(DEMO_SITES, await asyncio.gather(*jobs), strict=True):
                    rejected[demo.public_id] += ids
            await _storms(http, clock_path, keys, year, month, plans, rejected, sent, logs)
    return logs


async def _storms(
    http: httpx.AsyncClient,
    clock_path: Path,
    keys: dict[str, str],
    year: int,
    month: int,
    plans: dict[str, MonthPlan],
    rejected: dict[str, list[str]],
    sent: dict[str, list[dict[str, Any]]],
    logs: dict[str, SiteLog],
) -> None:
    """Day 28: clients that ignore Retry-After re-send their rejected events, all in one minute."""
    start = datetime(year, month, 28, 12, 0, 0, tzinfo=UTC)
    for demo in DEMO_SITES:
        plan = plans[demo.public_id]
        if not plan.storm_retries or not rejected[demo.public_id]:
            continue
        by_id = {event["event_id"]: event for event in sent[demo.public_id]}
        ids = rejected[demo.public_id]
        # Every storm request re-sends a rejected event, so each answer is a quota 429 (duplicate)
        # or a rate-limit 429 and the counts do not depend on the order: send them concurrently.
        for chunk in range(0, plan.storm_retries, STORM_CLOCK_STEP_REQUESTS):
            write_clock_file(clock_path, start + timedelta(seconds=chunk // STORM_CLOCK_STEP_REQUESTS))
            end = min(plan.storm_retries, chunk + STORM_CLOCK_STEP_REQUESTS)
            await asyncio.gather(
                *(
                    _send(http, keys[demo.public_id], by_id[ids[i % len(ids)]], logs[demo.public_id])
                    for i in range(chunk, end)
                )
            )


def _months_loaded(run: DemoRun) -> bool:
    with run.db.connect("app") as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM ingest_idempotency WHERE site_id = ANY(%s) AND year_month = ANY(%s))",
            ([d.site_id for d in DEMO_SITES], list(DEMO_MONTHS)),
        ).fetchone()
    return bool(row and row[0])


def traffic_summary(run: DemoRun) -> list[str]:
    """The per-site, per-month table of the ledger and counters (the same on every run)."""
    with run.db.connect("app") as conn:
        rows = conn.execute(
            """
            SELECT s.public_id, l.year_month,
                   count(*) FILTER (WHERE l.billable),
                   count(*) FILTER (WHERE l.billing_state = 'OVERAGE'),
                   count(*) FILTER (WHERE l.billing_state = 'REJECTED_QUOTA'),
                   count(*) FILTER (WHERE NOT l.billable AND l.billing_state <> 'REJECTED_QUOTA'),
                   coalesce(max(u.dedup_count), 0),
                   string_agg(DISTINCT l.billing_reason, ',' ORDER BY l.billing_reason)
            FROM ingest_idempotency l
            JOIN sites s ON s.id = l.site_id
            LEFT JOIN site_usage_monthly u ON u.site_id = l.site_id AND u.year_month = l.year_month
            WHERE l.site_id = ANY(%s) AND l.year_month = ANY(%s)
            GROUP BY s.public_id, l.year_month
            ORDER BY s.public_id, l.year_month
            """,
            ([d.site_id for d in DEMO_SITES], list(DEMO_MONTHS)),
        ).fetchall()
    header = (
        f"  {'site':<14} {'month':<8} {'billable':>8} {'overage':>7} {'rejected':>8} {'non-bill':>8} {'dedup':>6}"
        "  reasons"
    )
    lines = [header]
    for pid, ym, billable, overage, rejected, non_billable, dedup, reasons in rows:
        lines.append(
            f"  {pid:<14} {ym:<8} {billable:>8} {overage:>7} {rejected:>8} {non_billable:>8} {dedup:>6}  {reasons}"
        )
    return lines


def run_traffic(run: DemoRun) -> None:
    """The demo step: send the traffic (unless already loaded) and print the summary table."""
    if _months_loaded(run):
        run.echo(f"traffic: {', '.join(DEMO_MONTHS)} already loaded; nothing sent")
    else:
        run.settings.data_dir.mkdir(parents=True, exist_ok=True)
        clock_path = run.settings.data_dir / "demo-clock.txt"
        write_clock_file(clock_path, datetime(2026, 9, 1, 9, tzinfo=UTC))
        started = time.monotonic()
        keys = {demo.public_id: run.ingest_key(demo.public_id) for demo in DEMO_SITES}
        server = _DemoServer(run, clock_path)
        try:
            server.wait_ready()
            logs = asyncio.run(_drive(server.url, clock_path, keys))
        finally:
            server.stop()
        run.echo(f"traffic: {', '.join(DEMO_MONTHS)} sent over HTTP in {time.monotonic() - started:.1f}s; answers:")
        for pid, log in sorted(logs.items()):
            answers = ", ".join(f"{name} {n}" for name, n in sorted(log.statuses.items()))
            run.echo(f"  {pid:<14} {answers}")
    run.echo("ledger by site and month:")
    for line in traffic_summary(run):
        run.echo(line)
