"""Issue 11 §1: a ledger call whose outcome is unknown is resolved before anyone is answered.

Faults built with real parts, on a PostgreSQL of this module's own (``synchronous_standby_names``
is cluster-wide):

- a synchronous standby that never answers: every commit waits forever, the service's ledger
  timeout fires, the cancel leaves the transaction committed locally;
- a connection cut by a TCP proxy after the statement was sent, with the statement running to
  its commit, or blocked on a lock the test holds;
- the backend terminated while its statement waits for a lock;
- the database unreachable for the resolution.

Every answer must agree with the ledger, and a client's retry must never make a second row.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.db import embedded, migrations
from kernel.db.urls import role_conninfo
from kernel.settings import Settings
from tests.conftest import TEST_CRON_SECRET
from tests.faults import pg_proxy, pg_socket_path
from tests.ingest.support import auth, make_site

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
LEDGER_TIMEOUT_S = 1.0
OUTCOME = "x-opsmantik-ledger-outcome"


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Owner conninfo of a migrated PostgreSQL that only this module uses."""
    pg_dir = tmp_path_factory.mktemp("ambiguous") / "pg"
    uri = embedded.start(pg_dir)
    owner = role_conninfo(uri, dbname="postgres")
    with psycopg.connect(owner) as conn:
        migrations.migrate(conn)
    yield owner
    embedded.stop(pg_dir, mode="immediate")


@pytest.fixture
def owner(own_pg: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(own_pg, autocommit=True) as conn:
        yield conn


def _settings(owner_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=owner_url,
        data_dir=tmp_path / "data",
        cron_secret=TEST_CRON_SECRET,
        commit="testcommit",
        ledger_timeout_s=LEDGER_TIMEOUT_S,
    )


def _app_conn(owner_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(role_conninfo(owner_url, user="revkernel_app"), autocommit=True)


@pytest.fixture
def standby_never_answers(owner: psycopg.Connection[Any]) -> Iterator[None]:
    """Every commit from now on waits for a synchronous standby that does not exist."""
    owner.execute("ALTER SYSTEM SET synchronous_standby_names = 'nosuchstandby'")
    owner.execute("SELECT pg_reload_conf()")
    _wait_for_setting(owner, "nosuchstandby")
    try:
        yield
    finally:
        owner.execute("ALTER SYSTEM RESET synchronous_standby_names")
        owner.execute("SELECT pg_reload_conf()")
        _wait_for_setting(owner, "")


def _wait_for_setting(owner: psycopg.Connection[Any], value: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(owner.info.dsn, autocommit=True) as fresh:
            row = fresh.execute("SHOW synchronous_standby_names").fetchone()
        if row is not None and row[0] == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"synchronous_standby_names never became {value!r}")


def _rows(conn: psycopg.Connection[Any], site: Any) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT idempotency_key, billable, billing_state, request_id FROM ingest_idempotency WHERE site_id = %s",
        (site.site.id,),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def _ambiguous_total(client: TestClient[Any], resolution: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf'^billing_ledger_ambiguous_total{{resolution="{resolution}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _answer(reply: Any) -> tuple[int, Any, dict[str, str]]:
    """What a client sees, minus the per-request id and the site-derived (v1) keys."""
    keep = {k: v for k, v in reply.headers.items() if k.startswith("x-opsmantik-") and k != "x-opsmantik-commit"}
    body = reply.json()
    for item in [body, *body.get("results", [])]:
        if item.get("idempotency_version") == 1:
            item.pop("idempotency_key")
    return reply.status_code, body, keep


def _batch(prefix: str, n: int, keyed: bool) -> dict[str, Any]:
    events = []
    for i in range(n):
        event: dict[str, Any] = {"ec": "click", "ea": "buy", "el": f"{prefix}-{i}"}
        if keyed:
            event["event_id"] = f"{prefix}-{i}"
        events.append(event)
    return {"events": events}


def test_commit_waiting_for_a_standby_that_never_answers_is_answered_as_committed(
    own_pg: str, owner: psycopg.Connection[Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Single events and batches, client (v2) and derived (v1) keys: every answer is the committed
    outcome exactly as a healthy server gives it, and no retry makes a second row."""
    with _app_conn(own_pg) as conn:
        plan = {"monthly_limit": 3, "rate_limit_per_minute": 10**6}
        healthy, faulty = make_site(conn, **plan), make_site(conn, **plan)
    clock = ManualClock(NOW)
    sends = [
        {"event_id": "single-v2", "ec": "click", "ea": "buy"},
        {"ec": "click", "ea": "derived", "el": "single-v1"},
        _batch("batch-v2", 3, keyed=True),  # over the limit of 3: one quota rejection
        _batch("batch-v1", 2, keyed=False),  # all rejected: the month is full
    ]
    with TestClient(create_app(_settings(own_pg, tmp_path), clock=clock)) as client:
        expected = [_answer(client.post("/api/sync", json=body, headers=auth(healthy))) for body in sends]
        assert [e[0] for e in expected] == [200, 200, 200, 200]
        committed_before = _ambiguous_total(client, "committed")
        request.getfixturevalue("standby_never_answers")
        answers = []
        for body in sends:
            started = time.monotonic()
            reply = client.post("/api/sync", json=body, headers=auth(faulty))
            # Bounded: the ledger timeout, psycopg's cancel, the resolution.
            assert time.monotonic() - started < LEDGER_TIMEOUT_S + 10
            answers.append((_answer(reply), reply.headers["x-request-id"]))
        assert [a for a, _ in answers] == expected
        assert _ambiguous_total(client, "committed") >= committed_before + len(sends)
        # The client retries (it may have missed the answer): duplicates, never a second row.
        retry = client.post("/api/sync", json=sends[0], headers=auth(faulty))
        assert retry.status_code == 200 and retry.json()["status"] == "duplicate", retry.text
        assert retry.headers["x-opsmantik-dedup"] == "1"
        again = client.post("/api/sync", json=sends[2], headers=auth(faulty))
        assert [r["status"] for r in again.json()["results"]] == ["duplicate"] * 3
    with _app_conn(own_pg) as conn:
        ledger, reference = _rows(conn, faulty), _rows(conn, healthy)
    # The ledger holds exactly what the answers said: the same rows as the healthy site's, each
    # written by the request that was answered for it.
    assert sorted(v[:2] for v in ledger.values()) == sorted(v[:2] for v in reference.values())
    assert len(ledger) == 1 + 1 + 3 + 2
    assert sum(len(k) == 64 for k in ledger) == 3  # the derived keys: single-v1 and the v1 batch
    assert ledger["single-v2"][2] == answers[0][1]
    assert {ledger[f"batch-v2-{i}"][2] for i in range(3)} == {answers[2][1]}


@pytest.mark.parametrize("when", ["answered", "sent"])
def test_connection_cut_after_the_statement_was_sent_agrees_with_the_ledger(
    own_pg: str, owner: psycopg.Connection[Any], tmp_path: Path, when: str
) -> None:
    """The statement reaches the server; the client never hears back.

    ``answered``: the cut comes after the commit (the answer is swallowed): resolved committed,
    answered as accepted. ``sent``: the cut comes as soon as the statement is sent, so the
    backend may still be running it when the resolution looks: the resolution ends it first, and
    whichever way it went (committed, or rolled back by the termination), the answer says so.
    """
    with _app_conn(own_pg) as conn:
        site = make_site(conn, monthly_limit=100, rate_limit_per_minute=10**6)
    socket_dir = conninfo_to_dict(own_pg)["host"]
    event = {"event_id": "cut-1", "ec": "click"}
    with pg_proxy(pg_socket_path(str(socket_dir))) as proxy:
        proxied = make_conninfo(own_pg, host="127.0.0.1", port=str(proxy.port))
        with TestClient(create_app(_settings(proxied, tmp_path), clock=ManualClock(NOW))) as client:
            before = {kind: _ambiguous_total(client, kind) for kind in ("committed", "absent")}
            proxy.cut_after(b"ingest_write", when=when)
            reply = client.post("/api/sync", json=event, headers=auth(site))
            assert proxy.cut.is_set()
            after = {kind: _ambiguous_total(client, kind) for kind in ("committed", "absent")}
            with _app_conn(own_pg) as conn:
                ledger = _rows(conn, site)
            if reply.status_code == 200:
                assert reply.json()["status"] == "accepted" and reply.json()["billing_state"] == "ACCEPTED"
                assert list(ledger) == ["cut-1"] and ledger["cut-1"][2] == reply.headers["x-request-id"]
                assert after["committed"] == before["committed"] + 1
            else:
                assert when == "sent", reply.text
                assert reply.status_code == 500 and reply.headers[OUTCOME] == "not_written"
                assert ledger == {}
                assert after["absent"] == before["absent"] + 1
            retry = client.post("/api/sync", json=event, headers=auth(site))
            assert retry.status_code == 200
            assert retry.json()["status"] == ("duplicate" if reply.status_code == 200 else "accepted")
    with _app_conn(own_pg) as conn:
        assert list(_rows(conn, site)) == ["cut-1"]


def _hold_site_month(owner_url: str, site: Any) -> psycopg.Connection[Any]:
    """A transaction holding the site-month row lock every ledger statement of the site needs."""
    conn = psycopg.connect(owner_url)
    conn.execute(
        "INSERT INTO site_usage_monthly (site_id, year_month) VALUES (%s, '2026-03') ON CONFLICT DO NOTHING",
        (site.site.id,),
    )
    conn.commit()
    conn.execute(
        "SELECT 1 FROM site_usage_monthly WHERE site_id = %s AND year_month = '2026-03' FOR UPDATE", (site.site.id,)
    )
    return conn


def test_connection_cut_while_the_statement_waits_is_resolved_not_written(
    own_pg: str, owner: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Cut while the statement waits for a lock: the resolution ends that backend and only then
    finds the keys absent; nothing was written, and the retry writes exactly once."""
    with _app_conn(own_pg) as conn:
        site = make_site(conn, monthly_limit=100, rate_limit_per_minute=10**6)
    socket_dir = conninfo_to_dict(own_pg)["host"]
    body = _batch("locked", 3, keyed=True)
    with pg_proxy(pg_socket_path(str(socket_dir))) as proxy:
        proxied = make_conninfo(own_pg, host="127.0.0.1", port=str(proxy.port))
        with TestClient(create_app(_settings(proxied, tmp_path), clock=ManualClock(NOW))) as client:
            before = _ambiguous_total(client, "absent")
            holder = _hold_site_month(own_pg, site)
            try:
                proxy.cut_after(b"ingest_write")
                reply = client.post("/api/sync", json=body, headers=auth(site))
                assert proxy.cut.is_set()
                assert reply.status_code == 500, reply.text
                assert reply.json() == {"ok": False, "status": "billing_gate_closed", "error": "billing_gate_closed"}
                assert reply.headers[OUTCOME] == "not_written"
                assert _ambiguous_total(client, "absent") == before + 1
            finally:
                holder.rollback()
                holder.close()
            with _app_conn(own_pg) as conn:
                assert _rows(conn, site) == {}
            retry = client.post("/api/sync", json=body, headers=auth(site))
            assert [r["status"] for r in retry.json()["results"]] == ["accepted"] * 3
    with _app_conn(own_pg) as conn:
        assert sorted(_rows(conn, site)) == ["locked-0", "locked-1", "locked-2"]


def test_backend_terminated_while_blocked_on_a_lock_is_resolved_not_written(
    own_pg: str, owner: psycopg.Connection[Any], tmp_path: Path
) -> None:
    with _app_conn(own_pg) as conn:
        site = make_site(conn, monthly_limit=100, rate_limit_per_minute=10**6)
    settings = _settings(own_pg, tmp_path).with_overrides(ledger_timeout_s=30.0)  # the kill comes first
    with TestClient(create_app(settings, clock=ManualClock(NOW))) as client:
        before = _ambiguous_total(client, "absent")
        holder = _hold_site_month(own_pg, site)
        replies: list[Any] = []
        try:
            sender = threading.Thread(
                target=lambda: replies.append(
                    client.post("/api/sync", json={"event_id": "killed-1", "ec": "click"}, headers=auth(site))
                )
            )
            sender.start()
            pid = _wait_for_lock_waiter(owner)
            owner.execute("SELECT pg_terminate_backend(%s)", (pid,))
            sender.join(60)
        finally:
            holder.rollback()
            holder.close()
        assert replies and replies[0].status_code == 500, replies
        assert replies[0].headers[OUTCOME] == "not_written"
        assert _ambiguous_total(client, "absent") == before + 1
        with _app_conn(own_pg) as conn:
            assert _rows(conn, site) == {}
        retry = client.post("/api/sync", json={"event_id": "killed-1", "ec": "click"}, headers=auth(site))
        assert retry.json()["status"] == "accepted"
    with _app_conn(own_pg) as conn:
        assert list(_rows(conn, site)) == ["killed-1"]


def _wait_for_lock_waiter(owner: psycopg.Connection[Any]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = owner.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'revkernel_app' AND wait_event_type = 'Lock'"
            " AND query LIKE '%%ingest_write%%'"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError("the ledger statement never waited for the lock")


def test_database_unreachable_for_the_resolution_is_unknown_and_said_so(
    own_pg: str, owner: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The link is cut after the statement went out and new connections are refused: the outcome
    cannot be known, the answer says so distinctly, and the retry with the same key settles it."""
    with _app_conn(own_pg) as conn:
        site = make_site(conn, monthly_limit=100, rate_limit_per_minute=10**6)
    socket_dir = conninfo_to_dict(own_pg)["host"]
    event = {"event_id": "unknown-1", "ec": "click"}
    with pg_proxy(pg_socket_path(str(socket_dir))) as proxy:
        proxied = make_conninfo(own_pg, host="127.0.0.1", port=str(proxy.port))
        with TestClient(create_app(_settings(proxied, tmp_path), clock=ManualClock(NOW))) as client:
            before = _ambiguous_total(client, "unknown")
            proxy.cut_after(b"ingest_write", when="answered", refuse_after_cut=True)
            reply = client.post("/api/sync", json=event, headers=auth(site))
            body = reply.json()
            assert reply.status_code == 500
            assert body["status"] == "billing_gate_closed" and body["error"] == "ledger_outcome_unknown"
            assert reply.headers[OUTCOME] == "unknown"
            assert _ambiguous_total(client, "unknown") == before + 1
            proxy.heal()
            retries = [client.post("/api/sync", json=event, headers=auth(site)) for _ in range(2)]
    # The cut statement committed on the server; the retries are duplicates of it.
    assert [r.json()["status"] for r in retries] == ["duplicate", "duplicate"]
    with _app_conn(own_pg) as conn:
        assert list(_rows(conn, site)) == ["unknown-1"]
