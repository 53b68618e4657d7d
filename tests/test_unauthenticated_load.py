"""Unauthenticated requests are cheap (issue 12 §4), attacked against a live ``revkernel serve``.

Each test makes every database lookup of one kind hang (the owner holds an ACCESS EXCLUSIVE
lock on the table the lookup reads), floods the server with requests anyone could send, then
counts the server's backends stuck on that lock in ``pg_stat_activity`` and checks that a client
whose key is already known is still served. Before the fix each flooded request held one pool
connection (or opened its own), so the pool was exhausted and the good client got a 500.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from kernel.lookup_cache import LOOKUP_DB_SLOTS
from kernel.settings import Settings
from kernel.tenants import create_site, issue_key
from tests.ingest.live import live_server

FLOOD = 48
WAIT_S = 30.0


@contextmanager
def table_locked(settings: Settings, table: str) -> Iterator[None]:
    """Every reader of ``table`` waits until the block ends."""
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def waiting_backends(owner: psycopg.Connection[Any], fragment: str) -> int:
    row = owner.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"
        " AND usename = 'revkernel_app'",
        (f"%{fragment}%",),
    ).fetchone()
    return int(row[0]) if row else 0


def wait_for_waiters(owner: psycopg.Connection[Any], fragment: str, expected: int) -> int:
    """Wait until ``expected`` backends wait on the lock; then give the rest a moment to pile up."""
    deadline = time.monotonic() + WAIT_S
    while waiting_backends(owner, fragment) < expected:
        assert time.monotonic() < deadline, f"never saw {expected} lookups waiting"
        time.sleep(0.05)
    time.sleep(0.5)  # more would arrive now if nothing bounded them
    return waiting_backends(owner, fragment)


def _site(app_conn: psycopg.Connection[Any]) -> tuple[str, str]:
    new = create_site(app_conn, name="flooded", monthly_limit=1000, rate_limit_per_minute=100_000, public_id="flooded")
    return str(new.site.id), new.ingest_key


def _tracker(app_conn: psycopg.Connection[Any]) -> None:
    """A keyless browser site: its lookup reads ``sites``, never ``api_keys`` (locked below)."""
    create_site(
        app_conn,
        name="tracker",
        monthly_limit=1000,
        rate_limit_per_minute=100_000,
        public_id="tracker",
        ingest_auth="public",
        allowed_origins=("https://shop.example",),
    )


async def _track(http: httpx.AsyncClient, event_id: str) -> httpx.Response:
    body = {"s": "tracker", "event_id": event_id, "ec": "page", "ea": "view"}
    return await http.post("/api/sync", json=body, headers={"Origin": "https://shop.example"})


def _warm_tracker(url: str) -> None:
    """The tracker is a client the server knows (found before: its refreshes have slots of their own)."""
    body = {"s": "tracker", "event_id": "warm", "ec": "page", "ea": "view"}
    assert httpx.post(f"{url}/api/sync", json=body, headers={"Origin": "https://shop.example"}).status_code == 200


async def _flood(url: str, make: Any, count: int) -> Counter[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=count)) as http:
        answers = await asyncio.gather(*(make(http, i) for i in range(count)))
    return Counter(r.status_code for r in answers)


def test_unknown_ingest_keys_cannot_starve_the_pool(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    _tracker(app_conn)
    with live_server(settings.database_url, tmp_path, workers=1) as server:
        _warm_tracker(server.url)

        async def attack(http: httpx.AsyncClient, i: int) -> httpx.Response:
            forged = f"rk_ingest_{secrets.token_urlsafe(32)}"
            return await http.post("/api/sync", json={"ec": "x"}, headers={"Authorization": f"Bearer {forged}"})

        async def run() -> tuple[httpx.Response, Counter[int]]:
            with table_locked(settings, "api_keys"):
                task = asyncio.create_task(_flood(server.url, attack, FLOOD))
                stuck = await asyncio.to_thread(wait_for_waiters, owner_conn, "api_keys", LOOKUP_DB_SLOTS)
                assert stuck <= LOOKUP_DB_SLOTS, f"{stuck} connections stuck on unknown keys"
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    served = await _track(http, "during")
            return served, await task

        served, answers = asyncio.run(run())
        # The pool still had connections for a real client while the flood's lookups hung.
        assert served.status_code == 200, served.text
        # Every forged key was refused: 401 once its lookup ran, 503 lookup_busy (with
        # Retry-After) while every lookup slot was taken; never a 500 or a billed row.
        assert set(answers) <= {401, 503} and sum(answers.values()) == FLOOD
        assert app_conn.execute("SELECT count(*) FROM ingest_idempotency").fetchone() == (2,)
        # An unknown key is remembered as unknown: re-sent, it is refused without a lookup, so
        # even with every lookup hanging it is answered at once.
        forged = {"Authorization": f"Bearer rk_ingest_{secrets.token_urlsafe(32)}"}
        assert httpx.post(f"{server.url}/api/sync", json={"ec": "x"}, headers=forged).status_code == 401
        with table_locked(settings, "api_keys"):
            again = [
                httpx.post(f"{server.url}/api/sync", json={"ec": "x"}, headers=forged, timeout=2).status_code
                for _ in range(20)
            ]
            assert waiting_backends(owner_conn, "api_keys") == 0
        assert again == [401] * 20


def test_unknown_user_tokens_cannot_starve_the_pool(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    site_id, _ = _site(app_conn)
    _tracker(app_conn)
    _, billing = issue_key(app_conn, site_id=uuid.UUID(site_id), role="billing")
    params = {"site_id": site_id, "year_month": "2026-01"}
    with live_server(settings.database_url, tmp_path, workers=1) as server:
        assert (
            httpx.get(
                f"{server.url}/api/billing/dispute-export",
                params=params,
                headers={"Authorization": f"Bearer {billing}"},
            ).status_code
            == 200
        )
        _warm_tracker(server.url)

        async def attack(http: httpx.AsyncClient, i: int) -> httpx.Response:
            forged = f"rk_user_{secrets.token_urlsafe(32)}"
            return await http.get(
                "/api/billing/dispute-export", params=params, headers={"Authorization": f"Bearer {forged}"}
            )

        async def run() -> tuple[httpx.Response, Counter[int]]:
            with table_locked(settings, "api_keys"):
                task = asyncio.create_task(_flood(server.url, attack, FLOOD))
                stuck = await asyncio.to_thread(wait_for_waiters, owner_conn, "api_keys", LOOKUP_DB_SLOTS)
                assert stuck <= LOOKUP_DB_SLOTS, f"{stuck} connections stuck on unknown tokens"
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    ingest = await _track(http, "during")
            return ingest, await task

        ingest, answers = asyncio.run(run())
        assert ingest.status_code == 200, ingest.text
        assert set(answers) <= {401, 503} and sum(answers.values()) == FLOOD
        # Nothing of the flood reached the audit log: refused before any evidence was touched.
        assert owner_conn.execute("SELECT count(*) FROM audit_log WHERE action = 'dispute_export'").fetchone() == (1,)


def test_public_keys_flood_costs_one_connection(
    settings: Settings, owner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    with live_server(settings.database_url, tmp_path, workers=1) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        async def attack(http: httpx.AsyncClient, i: int) -> httpx.Response:
            return await http.get("/api/billing/public-keys")

        async def run() -> Counter[int]:
            with table_locked(settings, "signing_keys"):
                task = asyncio.create_task(_flood(server.url, attack, FLOOD))
                stuck = await asyncio.to_thread(wait_for_waiters, owner_conn, "signing_keys", 1)
                assert stuck == 1, f"{stuck} connections opened for one list of public keys"
            return await task

        # Every request shared the one load, and got its answer once the table was free.
        assert asyncio.run(run()) == Counter({200: FLOOD})


def test_preflight_floods_of_unknown_sites_are_bounded(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    _, key = _site(app_conn)
    with live_server(settings.database_url, tmp_path, workers=1) as server:
        assert (
            httpx.post(
                f"{server.url}/api/sync", json={"event_id": "warm"}, headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )

        async def attack(http: httpx.AsyncClient, i: int) -> httpx.Response:
            return await http.options(
                "/api/sync", params={"s": f"nosite{i}"}, headers={"Origin": "https://evil.example"}
            )

        async def run() -> tuple[httpx.Response, Counter[int]]:
            with table_locked(settings, "sites"):
                task = asyncio.create_task(_flood(server.url, attack, FLOOD))
                stuck = await asyncio.to_thread(wait_for_waiters, owner_conn, "sites", LOOKUP_DB_SLOTS)
                assert stuck <= LOOKUP_DB_SLOTS, f"{stuck} connections stuck on preflights"
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                served = await http.post(
                    "/api/sync", json={"event_id": "after"}, headers={"Authorization": f"Bearer {key}"}
                )
            return served, await task

        served, answers = asyncio.run(run())
        assert served.status_code == 200
        assert answers == Counter({403: FLOOD})
