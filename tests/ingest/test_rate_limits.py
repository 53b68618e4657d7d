"""Keyless browser ingest cannot burn a customer's quota (issue 12 §3), attacked over real HTTP.

A public site accepts any request whose Origin is allowed, and Origin is trivially forged. So the
limit counts events (a batch is no cheaper), public sites are also limited per client address,
``X-Forwarded-For`` counts only from configured proxies, and every 429 says which limit answered.
The shared limit stays shared under load, and degrades to local windows only when Redis really
fails (a Redis that accepts connections and never answers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.ingest.ratelimit import REDIS_MAX_IN_FLIGHT, SiteRateLimiter
from kernel.settings import Settings
from tests.conftest import free_port, redis_url_or_skip
from tests.ingest.live import live_server
from tests.ingest.support import START, Harness, auth, ledger, make_site

ORIGIN = {"Origin": "https://shop.example"}


def _public_site(conn: psycopg.Connection[Any], **plan: Any) -> Any:
    options: dict[str, Any] = {
        "public_id": "tracker",
        "ingest_auth": "public",
        "allowed_origins": ("https://shop.example",),
        "monthly_limit": 10_000,
        "rate_limit_per_minute": 1000,
        "client_rate_limit_per_minute": 5,
    }
    options.update(plan)
    return make_site(conn, **options)


def _track(url: str, event_ids: list[str], headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"s": "tracker", "events": [{"event_id": e, "ec": "page", "ea": "view"} for e in event_ids]}
    return httpx.post(f"{url}/api/sync", json=body, headers={**ORIGIN, **(headers or {})})


def test_a_batch_costs_its_events(harness: Harness) -> None:
    site = make_site(harness.conn, rate_limit_per_minute=100, monthly_limit=1000)
    batch = {"events": [{"event_id": f"b{i}", "ec": "x"} for i in range(100)]}
    assert harness.client.post("/api/sync", json=batch, headers=auth(site)).status_code == 200
    # The minute's 100 events are used by that one request: the next single event is refused.
    limited = harness.client.post("/api/sync", json={"event_id": "one-more", "ec": "x"}, headers=auth(site))
    assert limited.status_code == 429 and limited.json()["status"] == "rate_limited"
    assert limited.headers["x-opsmantik-ratelimit"] == "1"
    assert limited.headers["x-opsmantik-ratelimit-scope"] == "site"
    assert "x-opsmantik-quota-exceeded" not in limited.headers
    assert len(ledger(harness.conn, site)) == 100


def test_public_site_limits_each_client_address_behind_trusted_proxies(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    site = _public_site(app_conn)
    proxies = {"REVKERNEL_TRUSTED_PROXIES": "127.0.0.1, 10.9.0.0/16"}
    with live_server(settings.database_url, tmp_path, workers=1, extra_env=proxies) as server:
        # Client 203.0.113.7 through two of our proxies (the first hop the client may have forged).
        via = {"X-Forwarded-For": "198.51.100.99, 203.0.113.7, 10.9.1.2"}
        assert _track(server.url, ["a1", "a2", "a3"], via).status_code == 200
        refused = _track(server.url, ["a4", "a5", "a6"], via)  # 3 + 3 > 5 events a minute
        assert refused.status_code == 429 and refused.json()["status"] == "rate_limited"
        assert refused.headers["x-opsmantik-ratelimit-scope"] == "client"
        assert refused.headers["x-opsmantik-ratelimit"] == "1" and int(refused.headers["retry-after"]) >= 1
        assert "x-opsmantik-quota-exceeded" not in refused.headers
        assert "x-opsmantik-ratelimit" in refused.headers["access-control-expose-headers"]
        # Rotating the forged first hop does not help: the address our proxy saw is the client.
        forged = {"X-Forwarded-For": "192.0.2.1, 203.0.113.7, 10.9.1.2"}
        assert _track(server.url, ["a7", "a8", "a9"], forged).status_code == 429
        # Another client has its own window; the refused requests consumed nothing.
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert _track(server.url, ["b1", "b2", "b3", "b4", "b5"], other).status_code == 200
        assert _track(server.url, ["a4", "a5"], via).status_code == 200
        # An IPv6 client is one /64: fresh addresses of the same network share its window.
        for i, host in enumerate(("2001:db8:1:2::1", "2001:db8:1:2::dead", "2001:db8:1:2:ffff::9")):
            answer = _track(server.url, [f"v{i}a", f"v{i}b"], {"X-Forwarded-For": host})
            assert answer.status_code == (200 if i < 2 else 429), host
    ids = {r[0] for r in ledger(app_conn, site)}
    assert ids == {"a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4", "b5", "v0a", "v0b", "v1a", "v1b"}


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    site = _public_site(app_conn, monthly_limit=7)
    with live_server(settings.database_url, tmp_path, workers=1) as server:  # no trusted proxies
        # A script on one machine claims a new address per request: it is still one client.
        answers = [_track(server.url, [f"e{i}"], {"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(7)]
        assert answers == [200] * 5 + [429] * 2
        # The quota's 429 keeps its own headers too: a new address window, the month's limit hit.
        quota_site = _public_site(app_conn, public_id="tracker2", monthly_limit=1, client_rate_limit_per_minute=50)
        body = {"s": "tracker2", "events": [{"event_id": "q1", "ec": "p"}, {"event_id": "q2", "ec": "p"}]}
        batch = httpx.post(f"{server.url}/api/sync", json=body, headers=ORIGIN)
        single = httpx.post(f"{server.url}/api/sync", json={"s": "tracker2", "event_id": "q3"}, headers=ORIGIN)
    assert batch.status_code == 200 and batch.headers["x-opsmantik-quota-exceeded"] == "1"
    assert single.status_code == 429 and single.headers["x-opsmantik-quota-exceeded"] == "1"
    assert "x-opsmantik-ratelimit" not in single.headers and "x-opsmantik-ratelimit-scope" not in single.headers
    assert len(ledger(app_conn, site)) == 5 and len(ledger(app_conn, quota_site)) == 3


def _hits(limiter: SiteRateLimiter, site: uuid.UUID, count: int, limit: int) -> list[Any]:
    async def run() -> list[Any]:
        try:
            return await asyncio.gather(*(limiter.hit(site, limit) for _ in range(count)))
        finally:
            await limiter.close()

    return asyncio.run(run())


@pytest.mark.redis
def test_many_in_flight_calls_keep_one_shared_limit() -> None:
    url = redis_url_or_skip()
    prefix = f"rk-test-{uuid.uuid4().hex}"
    # A generous Redis timeout: this test is about concurrency, not a slow machine.
    limiter = SiteRateLimiter(url, ManualClock(START), prefix=prefix, timeout_s=10)
    decisions = _hits(limiter, uuid.uuid4(), 8 * REDIS_MAX_IN_FLIGHT, limit=50)
    assert [d.degraded for d in decisions].count(True) == 0  # being busy is not a Redis failure
    assert [d.allowed for d in decisions].count(True) == 50


@pytest.fixture
def blackhole_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_redis_that_never_answers_degrades_loudly_to_exact_local_windows(
    blackhole_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = SiteRateLimiter(blackhole_redis, ManualClock(START), timeout_s=0.2)
    with caplog.at_level(logging.WARNING, logger="kernel.ingest.ratelimit"):
        decisions = _hits(limiter, uuid.uuid4(), 4 * REDIS_MAX_IN_FLIGHT, limit=50)
    assert all(d.degraded for d in decisions)  # said on every answer (x-opsmantik-degraded)
    assert [d.allowed for d in decisions].count(True) == 50  # this process's window is exact
    assert any("Redis failed" in r.getMessage() for r in caplog.records)


def _serve_stderr(env: dict[str, str], *args: str) -> str:
    """stderr of `revkernel serve` up to its "serving on" line (then it is stopped)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "serve", "--port", str(free_port()), *args],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 120
        for line in process.stderr:
            lines.append(line)
            if line.startswith("serving on") or time.monotonic() > deadline:
                break
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    return "".join(lines)


def test_serve_warns_when_several_workers_have_no_redis(settings: Settings, tmp_path: Path) -> None:
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(DATABASE_URL=settings.database_url, REVKERNEL_DATA_DIR=str(tmp_path))
    warned = _serve_stderr(env, "--workers", "2")
    assert "2 workers and no REDIS_URL" in warned and "per worker" in warned
    assert "no REDIS_URL" not in _serve_stderr(env, "--workers", "1")
    env["REDIS_URL"] = "redis://127.0.0.1:6379/9"
    assert "no REDIS_URL" not in _serve_stderr(env, "--workers", "2")


def test_ledger_keeps_a_salted_hash_and_the_audit_flags_concentrated_traffic(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    limits = {"monthly_limit": 100_000, "rate_limit_per_minute": 100_000, "client_rate_limit_per_minute": 100_000}
    scripted = _public_site(app_conn, **limits)
    _public_site(app_conn, public_id="organic", **limits)
    with live_server(
        settings.database_url, tmp_path, workers=1, extra_env={"REVKERNEL_TRUSTED_PROXIES": "127.0.0.1"}
    ) as server:
        # A script on two hosts sends 210 events with a forged Origin; 10 real visitors send one each.
        for i in range(3):
            for h, host in enumerate(("198.51.100.1", "198.51.100.2")):
                ids = [f"s{h}-{i}-{n}" for n in range(35)]
                assert _track(server.url, ids, {"X-Forwarded-For": host}).status_code == 200
        for n in range(10):
            assert _track(server.url, [f"v{n}"], {"X-Forwarded-For": f"203.0.113.{n}"}).status_code == 200
        # 25 visitors of another site, 10 events each.
        for n in range(25):
            body = {"s": "organic", "events": [{"event_id": f"o{n}-{k}", "ec": "p"} for k in range(10)]}
            headers = {**ORIGIN, "X-Forwarded-For": f"192.0.2.{n}"}
            assert httpx.post(f"{server.url}/api/sync", json=body, headers=headers).status_code == 200
    rows = app_conn.execute(
        "SELECT client_hash, count(*) FROM ingest_idempotency WHERE site_id = %s GROUP BY 1 ORDER BY 2 DESC",
        (scripted.site.id,),
    ).fetchall()
    assert [n for _, n in rows] == [105, 105] + [1] * 10
    assert all(h is not None and len(h) == 32 and "198.51" not in h for h, _ in rows)
    everything = app_conn.execute("SELECT string_agg(t::text, '') FROM ingest_idempotency t").fetchone()
    assert everything is not None and "198.51.100.1" not in everything[0]  # never the raw address
    year_month = app_conn.execute("SELECT min(year_month) FROM ingest_idempotency").fetchone()
    assert year_month is not None
    from kernel.audit import Severity, audit_fleet

    fleet = audit_fleet(app_conn, year_month[0])
    flagged = {f.public_id: f for f in fleet.findings if f.code == "client_concentration"}
    assert set(flagged) == {"tracker"} and flagged["tracker"].severity is Severity.WARN
    assert flagged["tracker"].value["top_clients_count"] == 211 and flagged["tracker"].value["hashed_count"] == 220
