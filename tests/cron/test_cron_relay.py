"""The outbox relay: at least once, in order per site, with backoff; every failed attempt recorded."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cron_support import CRON_HEADERS, add_month, cron_ctx, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.cron.relay import publish_outbox
from kernel.settings import Settings
from tests.conftest import free_port, redis_url_or_skip

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)
WEBHOOK_SECRET = "webhook-secret-for-tests-0123"


class Sink:
    """A real local webhook server that fails its first ``fail_first`` requests, then recovers."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.batches: list[dict[str, Any]] = []
        self.bad_signatures = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                sink.requests += 1
                expected = hmac.new(
                    WEBHOOK_SECRET.encode(),
                    self.headers["x-revkernel-timestamp"].encode() + b"." + body,
                    hashlib.sha256,
                ).hexdigest()
                if self.headers["x-revkernel-signature"] != f"sha256={expected}":
                    sink.bad_signatures += 1
                if sink.requests <= sink.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.batches.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Sink]:
    sink = Sink(fail_first=2)
    yield sink
    sink.close()


def _keys_in_order(conn: psycopg.Connection[Any], site: str) -> list[str]:
    rows = conn.execute("SELECT idempotency_key FROM ingest_outbox WHERE site_id = %s ORDER BY id", (site,))
    return [r[0] for r in rows.fetchall()]


def test_webhook_fails_then_recovers_everything_delivered_in_order(
    settings: Settings, app_conn: psycopg.Connection[Any], webhook: Sink
) -> None:
    settings = settings.with_overrides(
        extra={"REVKERNEL_WEBHOOK_URL": webhook.url, "REVKERNEL_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )
    site_a, _ = make_site(app_conn, "A")
    site_b, _ = make_site(app_conn, "B")
    add_month(app_conn, site_a, datetime(2026, 4, 1, tzinfo=UTC), billable=130, rejected=2, prefix="a")
    add_month(app_conn, site_b, datetime(2026, 4, 2, tzinfo=UTC), billable=3, prefix="b")
    clock = ManualClock(NOW)
    with TestClient(create_app(settings, clock=clock)) as http:
        first = http.post("/api/cron/publish-outbox", headers=CRON_HEADERS)
        assert first.status_code == 500
        assert first.json()["ok"] is False and first.json()["failed"] == 2 and first.json()["published"] == 0
        # Still in backoff: nothing is attempted, later rows never overtake the failed head.
        waiting = http.post("/api/cron/publish-outbox", headers=CRON_HEADERS)
        assert waiting.status_code == 200
        assert waiting.json() == {
            "ok": True,
            "sink": "webhook",
            "published": 0,
            "failed": 0,
            "deferred": 2,
            "pending": 133,
        }
        clock.advance(timedelta(seconds=6))
        done = http.post("/api/cron/publish-outbox", headers=CRON_HEADERS)
        assert done.json() == {
            "ok": True,
            "sink": "webhook",
            "published": 133,
            "failed": 0,
            "deferred": 0,
            "pending": 0,
        }
    failures = app_conn.execute("SELECT site_id::text, sink FROM ingest_publish_failures ORDER BY id").fetchall()
    assert sorted(failures) == sorted([(site_a, "webhook"), (site_b, "webhook")])
    assert webhook.bad_signatures == 0
    delivered: dict[str, list[str]] = {}
    for batch in webhook.batches:
        assert len(batch["events"]) <= 100
        delivered.setdefault(batch["site_id"], []).extend(e["idempotency_key"] for e in batch["events"])
    assert delivered[site_a] == _keys_in_order(app_conn, site_a) and len(delivered[site_a]) == 130
    assert delivered[site_b] == _keys_in_order(app_conn, site_b)
    attempts = app_conn.execute("SELECT attempts, count(*) FROM ingest_outbox GROUP BY attempts ORDER BY 1").fetchall()
    assert attempts == [(0, 131), (1, 2)]


def test_redis_stream_sink_after_an_outage(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    url = redis_url_or_skip()
    stream = f"revkernel:test-outbox:{uuid.uuid4().hex}"
    site_a, _ = make_site(app_conn, "A")
    site_b, _ = make_site(app_conn, "B")
    add_month(app_conn, site_a, datetime(2026, 4, 1, tzinfo=UTC), billable=4, prefix="a")
    add_month(app_conn, site_b, datetime(2026, 4, 1, tzinfo=UTC), billable=2, prefix="b")
    extra = {"REVKERNEL_OUTBOX_SINK": "redis", "REVKERNEL_OUTBOX_STREAM": stream}
    clock = ManualClock(NOW)
    down = cron_ctx(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0", extra=extra), clock)
    result = publish_outbox(down)
    assert result["ok"] is False and result["failed"] == 2 and result["pending"] == 6
    assert app_conn.execute("SELECT count(*), min(sink) FROM ingest_publish_failures").fetchone() == (2, "redis")

    clock.advance(timedelta(seconds=6))
    up = cron_ctx(settings.with_overrides(redis_url=url, extra=extra), clock)
    client = redis.Redis.from_url(url)
    try:
        assert publish_outbox(up) == {
            "ok": True,
            "sink": "redis",
            "published": 6,
            "failed": 0,
            "deferred": 0,
            "pending": 0,
        }
        entries = client.xrange(stream)
        by_site: dict[str, list[str]] = {}
        for _, fields in entries:
            by_site.setdefault(fields[b"site_id"].decode(), []).append(fields[b"idempotency_key"].decode())
        assert by_site == {site_a: _keys_in_order(app_conn, site_a), site_b: _keys_in_order(app_conn, site_b)}
        assert json.loads(entries[0][1][b"payload"])["n"] == 1
    finally:
        client.delete(stream)
        client.close()


def test_no_sink_leaves_the_outbox_as_the_queue(settings: Settings, app_conn: psycopg.Connection[Any]) -> None:
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 1, tzinfo=UTC), billable=2)
    result = publish_outbox(cron_ctx(settings, ManualClock(NOW)))
    assert result == {"ok": True, "sink": "none", "published": 0, "failed": 0, "deferred": 0, "pending": 2}


def _start_redis(port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc


@pytest.mark.slow
def test_private_redis_killed_and_restarted_nothing_lost(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    stream = "revkernel:outbox"
    extra = {"REVKERNEL_OUTBOX_SINK": "redis"}
    clock = ManualClock(NOW)
    ctx = cron_ctx(settings.with_overrides(redis_url=f"redis://127.0.0.1:{port}/0", extra=extra), clock)
    site, _ = make_site(app_conn)
    add_month(app_conn, site, datetime(2026, 4, 1, tzinfo=UTC), billable=150, prefix="r")
    proc = _start_redis(port, tmp_path)
    try:
        proc.kill()  # the sink dies before the relay runs
        proc.wait()
        down = publish_outbox(ctx)
        assert down["ok"] is False and down["published"] == 0 and down["pending"] == 150
        proc = _start_redis(port, tmp_path)
        clock.advance(timedelta(seconds=6))
        up = publish_outbox(ctx)
        assert up["ok"] is True and up["published"] == 150 and up["pending"] == 0
        client = redis.Redis(port=port)
        keys = [fields[b"idempotency_key"].decode() for _, fields in client.xrange(stream)]
        client.close()
        assert keys == _keys_in_order(app_conn, site)
        assert app_conn.execute("SELECT count(*) FROM ingest_publish_failures").fetchone() == (1,)
    finally:
        proc.kill()
        proc.wait()
