"""Invoice freeze (SPEC §4.2, §5): signed, chained Merkle snapshots of closed months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cron_support import CRON_HEADERS, add_event, add_month, cron_ctx, make_site
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock, format_utc
from kernel.cron.freeze import LEAVES_SQL, freeze_month
from kernel.cron.keystore import SIGNING_KEY_ENV, load_signing_key, signing_key_path
from kernel.ledger import (
    EMPTY_ROOT,
    SigningKey,
    SnapshotDocument,
    inclusion_proof,
    key_id,
    leaf_bytes,
    leaf_hash,
    merkle_root,
    verify_inclusion,
    verify_signature,
)
from kernel.settings import Settings

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def _expected_root(conn: psycopg.Connection[Any], site_id: str, year_month: str) -> tuple[str, int]:
    """Independent recount: every billable row, sorted in Python by (created_at, key bytes)."""
    rows = conn.execute(
        "SELECT idempotency_key, created_at, billing_state FROM ingest_idempotency"
        " WHERE site_id = %s AND year_month = %s AND billable",
        (site_id, year_month),
    ).fetchall()
    leaves = sorted(((format_utc(c), k, s) for k, c, s in rows), key=lambda r: (r[0], r[1].encode()))
    return merkle_root(leaf_bytes(k, c, s) for c, k, s in leaves).hex(), len(leaves)


def _snapshot(conn: psycopg.Connection[Any], site_id: str, year_month: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM invoice_snapshot WHERE site_id = %s AND year_month = %s", (site_id, year_month))
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return dict(zip([d.name for d in cur.description], row, strict=True))


def test_freeze_writes_signed_chained_snapshots_and_rerun_changes_nothing(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    other, _ = make_site(app_conn, "Other")
    add_month(app_conn, site, MARCH + timedelta(days=3), billable=9, overage=2, rejected=3, non_billable=4)
    # Same instant, keys that sort differently bytewise than by locale: order is bytewise.
    same = MARCH + timedelta(days=20)
    for key in ("b-key", "B-key", "a-key", "\u00e7-key"):
        add_event(app_conn, site, key, same)
    add_month(app_conn, other, MARCH + timedelta(days=1), billable=2)
    add_month(app_conn, site, APRIL + timedelta(days=2), billable=5, prefix="apr")
    clock = ManualClock(datetime(2026, 4, 15, tzinfo=UTC))

    with TestClient(create_app(settings, clock=clock)) as client:
        first = client.post("/api/cron/invoice-freeze", params={"year_month": "2026-03"}, headers=CRON_HEADERS)
        assert first.status_code == 200, first.text
        assert first.json() == {"ok": True, "year_month": "2026-03", "frozen": 2, "already_frozen": 0}
        keys = client.get("/api/billing/public-keys").json()

    march = _snapshot(app_conn, site, "2026-03")
    assert march is not None
    root, leaves = _expected_root(app_conn, site, "2026-03")
    assert (march["merkle_root"], march["billable_count"]) == (root, leaves) == (march["merkle_root"], 13)
    assert (march["overage_count"], march["rejected_count"], march["non_billable_count"]) == (2, 3, 4)
    assert march["prev_snapshot_hash"] is None
    document = SnapshotDocument.from_bytes(march["document"].encode("utf-8"))
    assert document.snapshot_hash == march["snapshot_hash"]
    assert document.frozen_at == "2026-04-15T00:00:00.000000Z"
    assert document.site_id == site and document.merkle_root == root
    public = bytes.fromhex(keys["keys"][0]["public_key"])
    assert keys["keys"][0]["key_id"] == key_id(public) == march["key_id"]
    assert verify_signature(public, march["document"].encode("utf-8"), march["signature"])

    # One disputed row checks against the root without the other rows.
    ordered = app_conn.execute(LEAVES_SQL, (site, "2026-03")).fetchall()
    hashes = [leaf_hash(leaf_bytes(*r)) for r in ordered]
    proof = inclusion_proof(hashes, 7)
    assert verify_inclusion(leaf_bytes(*ordered[7]), proof, bytes.fromhex(root))
    assert [r[0] for r in ordered if r[1] == format_utc(same)] == ["B-key", "a-key", "b-key", "\u00e7-key"]

    # The next month chains to March; the re-run of March changes nothing.
    clock.set(datetime(2026, 5, 1, 0, 6, tzinfo=UTC))
    ctx = cron_ctx(settings, clock)
    assert freeze_month(ctx) == {"ok": True, "year_month": "2026-04", "frozen": 1, "already_frozen": 0}
    april = _snapshot(app_conn, site, "2026-04")
    assert april is not None and april["prev_snapshot_hash"] == march["snapshot_hash"]
    audit_before = app_conn.execute("SELECT count(*) FROM audit_log WHERE action = 'invoice_freeze'").fetchone()
    assert freeze_month(ctx, "2026-03") == {"ok": True, "year_month": "2026-03", "frozen": 0, "already_frozen": 2}
    assert _snapshot(app_conn, site, "2026-03") == march
    audit_after = app_conn.execute("SELECT count(*) FROM audit_log WHERE action = 'invoice_freeze'").fetchone()
    assert audit_before == audit_after == (3,)
    # Finality: the app role cannot change a snapshot.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn.execute("UPDATE invoice_snapshot SET billable_count = 0 WHERE site_id = %s", (site,))


def test_open_or_future_month_is_409_and_bad_month_is_400(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    add_event(app_conn, site, "k1", datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC))
    clock = ManualClock(datetime(2026, 4, 1, 0, 1, tzinfo=UTC))  # inside the grace period
    with TestClient(create_app(settings, clock=clock)) as client:
        for month in ("2026-04", "2026-05", None):
            params = {"year_month": month} if month else {}
            reply = client.post("/api/cron/invoice-freeze", params=params, headers=CRON_HEADERS)
            assert reply.status_code == 409, reply.text
            assert reply.json()["error"] == "month_open"
        bad = client.post("/api/cron/invoice-freeze", params={"year_month": "2026-4"}, headers=CRON_HEADERS)
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_year_month"
        clock.set(datetime(2026, 4, 1, 0, 6, tzinfo=UTC))
        ok = client.post("/api/cron/invoice-freeze", headers=CRON_HEADERS)
        assert ok.json() == {"ok": True, "year_month": "2026-03", "frozen": 1, "already_frozen": 0}
    runs = app_conn.execute(
        "SELECT status, count(*) FROM cron_runs WHERE name = 'invoice-freeze' GROUP BY status ORDER BY status"
    ).fetchall()
    assert runs == [("failed", 3), ("ok", 1)]


def test_event_after_freeze_cannot_land_in_the_frozen_month(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    """Server time decides the month: a late event with a March client timestamp goes to April."""
    site, ingest_key = make_site(app_conn)
    clock = ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    with TestClient(create_app(settings, clock=clock)) as client:
        auth = {"Authorization": f"Bearer {ingest_key}"}
        for i in range(3):
            sent = client.post("/api/sync", json={"event_id": f"march-{i}", "ec": "click", "ea": "buy"}, headers=auth)
            assert sent.status_code == 200, sent.text
            clock.advance(timedelta(seconds=1))
        clock.set(datetime(2026, 4, 1, 0, 10, tzinfo=UTC))
        frozen = client.post("/api/cron/invoice-freeze", params={"year_month": "2026-03"}, headers=CRON_HEADERS)
        assert frozen.json()["frozen"] == 1
        before = _snapshot(app_conn, site, "2026-03")
        assert before is not None and before["billable_count"] == 3
        march_ts = int(datetime(2026, 3, 20, tzinfo=UTC).timestamp() * 1000)
        late = client.post(
            "/api/sync", json={"event_id": "late-1", "ec": "click", "ea": "buy", "ts": march_ts}, headers=auth
        )
        assert late.status_code == 200, late.text
    month = app_conn.execute(
        "SELECT year_month FROM ingest_idempotency WHERE site_id = %s AND idempotency_key = 'late-1'", (site,)
    ).fetchone()
    assert month == ("2026-04",)
    # The frozen month still recomputes to its snapshot: nothing was added to it.
    assert _expected_root(app_conn, site, "2026-03") == (before["merkle_root"], 3)
    assert _snapshot(app_conn, site, "2026-03") == before


def test_server_formatting_of_leaves_equals_the_pure_module(app_conn: psycopg.Connection[Any]) -> None:
    site, _ = make_site(app_conn)
    instants = [
        datetime(2026, 3, 1, 0, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 15, 9, 5, 7, 100000, tzinfo=UTC),
    ]
    for i, at in enumerate(instants):
        add_event(app_conn, site, f"fmt-{i}", at)
    app_conn.execute("SET TIME ZONE 'Asia/Kolkata'")  # the session zone must not matter
    rows = app_conn.execute(LEAVES_SQL, (site, "2026-03")).fetchall()
    assert [r[1] for r in rows] == sorted(format_utc(at) for at in instants)


def test_empty_month_chain_fork_and_failures_are_reported(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    site, _ = make_site(app_conn)
    add_month(app_conn, site, MARCH, billable=0, rejected=2)
    add_month(app_conn, site, datetime(2026, 2, 3, tzinfo=UTC), billable=1, prefix="feb")
    ctx = cron_ctx(settings, ManualClock(datetime(2026, 6, 1, tzinfo=UTC)))
    assert freeze_month(ctx, "2026-03")["frozen"] == 1
    snap = _snapshot(app_conn, site, "2026-03")
    assert snap is not None and snap["merkle_root"] == EMPTY_ROOT.hex() and snap["rejected_count"] == 2
    # February after March would fork the chain: refused for that site, and said so.
    result = freeze_month(ctx, "2026-02")
    assert result["ok"] is False and result["failed"] == 1 and "snapshot chain" in result["errors"][site]
    assert _snapshot(app_conn, site, "2026-02") is None


def test_signing_key_from_environment_or_created_once(settings: Settings) -> None:
    seed = bytes(range(32))
    from_env = load_signing_key(settings.with_overrides(extra={SIGNING_KEY_ENV: seed.hex()}))
    assert from_env.key_id == SigningKey.from_seed(seed).key_id
    first = load_signing_key(settings)
    path = signing_key_path(settings)
    assert path.exists() and path.stat().st_mode & 0o077 == 0
    assert load_signing_key(settings).key_id == first.key_id
    from kernel.errors import ConfigError

    with pytest.raises(ConfigError):
        load_signing_key(settings.with_overrides(extra={SIGNING_KEY_ENV: "zz"}))
