"""The per-site rate limit is shared through the machine's Redis, and degrades without it."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.settings import Settings
from tests.conftest import free_port, redis_url_or_skip
from tests.ingest.support import auth, ledger, make_site

pytestmark = pytest.mark.redis


def test_two_processes_share_one_window_through_redis(
    settings: Settings, app_conn: psycopg.Connection[Any], clock: ManualClock
) -> None:
    url = redis_url_or_skip()
    # The test is about sharing, not latency: a loaded CI machine must not push a call past the
    # production timeout (0.25 s) and silently degrade both apps to their own local windows.
    extra = {"REVKERNEL_REDIS_PREFIX": f"rk-test-{uuid.uuid4().hex}", "REVKERNEL_REDIS_TIMEOUT_S": "10"}
    shared = settings.with_overrides(redis_url=url, extra=extra)
    site = make_site(app_conn, rate_limit_per_minute=3)
    with (
        TestClient(create_app(shared, clock=clock)) as one,
        TestClient(create_app(shared, clock=clock)) as two,
    ):
        responses = [
            client.post("/api/sync", json={"event_id": f"e{i}"}, headers=auth(site))
            for i, client in enumerate([one, two, one, two, one])
        ]
        limited = two.post("/api/sync", json={"event_id": "x"}, headers=auth(site))
    assert [r.headers.get("x-opsmantik-degraded") for r in responses] == [None] * 5
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert limited.headers["x-opsmantik-ratelimit"] == "1"
    assert "x-opsmantik-degraded" not in limited.headers
    assert len(ledger(app_conn, site)) == 3


def test_redis_down_falls_back_to_the_local_limiter(
    settings: Settings, app_conn: psycopg.Connection[Any], clock: ManualClock
) -> None:
    dead = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    site = make_site(app_conn, rate_limit_per_minute=2, monthly_limit=10)
    with TestClient(create_app(dead, clock=clock)) as client:
        responses = [client.post("/api/sync", json={"event_id": f"e{i}"}, headers=auth(site)) for i in range(3)]
        metrics = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert all(r.headers["x-opsmantik-degraded"] == "ratelimit_local" for r in responses)
    assert responses[2].headers["x-opsmantik-ratelimit"] == "1"
    assert "billing_ratelimit_degraded_total" in metrics
    assert len(ledger(app_conn, site)) == 2
