"""Hand-written hostile input: what a fuzzer finds late or never.

Oversize and deeply nested JSON, invalid UTF-8, NUL bytes, huge batches, SQL in every string
field, CSV formula payloads (through to the dispute export), path tricks in packet names, and
clock skew in ``ts``. Every case: never a 5xx, and a rejected request writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hardening_support import bearer, table_state
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.export.verify import verify_packet
from kernel.ingest.schemas import MAX_BATCH_EVENTS, MAX_BODY_BYTES
from kernel.settings import Settings
from kernel.tenants import create_site, issue_key

# Server time: the last millisecond of January 2026 (month attribution must ignore client time).
SERVER_NOW = datetime(2026, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)
SQL_PAYLOADS = (
    "'; DROP TABLE ingest_idempotency; --",
    '" OR 1=1 --',
    "1; UPDATE site_usage_monthly SET event_count = 0",
    "$$; SELECT pg_sleep(10); $$",
    "Robert'); DELETE FROM invoice_snapshot;--",
)
FORMULAS = (
    '=HYPERLINK("http://evil.invalid","x")',
    "+1+1",
    "-2+3",
    "@SUM(A1)",
    "\tTAB",
    "\rCR",
    "'quoted",
    # The bypasses the advisories list: blanks before the trigger, and fullwidth triggers.
    ' =HYPERLINK("http://evil.invalid","x")',
    "\u00a0+1+1",
    "\n@SUM(A1)",
    "\r\n-2+3",
    " \t=1",
    "\uff1dcmd|' /C calc'!A0",
    "\u3000\uff0b1",
    "\ufeff=1",
)
# What a spreadsheet skips before it looks for a formula, and what starts one (OWASP, fullwidth too).
SPREADSHEET_BLANKS = " \t\r\n\u00a0\u3000\ufeff"
SPREADSHEET_TRIGGERS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


@pytest.fixture
def env(settings: Settings, owner_conn: psycopg.Connection[Any]) -> Any:
    site = create_site(
        owner_conn, name="hostile", public_id="hostile", monthly_limit=100_000, rate_limit_per_minute=1_000_000
    )
    _, billing = issue_key(owner_conn, site_id=site.site.id, role="billing")
    with TestClient(create_app(settings, clock=ManualClock(SERVER_NOW))) as client:
        yield client, site, billing


def _post_raw(client: TestClient[Any], key: str, body: bytes, content_type: str = "application/json") -> Any:
    return client.post("/api/sync", content=body, headers={**bearer(key), "content-type": content_type})


def _rejected(
    client: TestClient[Any], conn: psycopg.Connection[Any], key: str, body: bytes, statuses: tuple[int, ...]
) -> Any:
    before = table_state(conn)
    response = _post_raw(client, key, body)
    assert response.status_code in statuses, f"{body[:80]!r}: {response.status_code} {response.text[:200]}"
    assert response.json().get("error"), response.text
    assert table_state(conn) == before, f"{body[:80]!r} was rejected but wrote to the database"
    return response


def test_oversize_bodies_are_413(env: Any, owner_conn: psycopg.Connection[Any]) -> None:
    client, site, _ = env
    padding = "x" * (MAX_BODY_BYTES + 1)
    _rejected(client, owner_conn, site.ingest_key, json.dumps({"ec": "a", "el": padding}).encode(), (413,))

    def chunks() -> Any:  # no content-length: the limit must hold on a streamed body too
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    before = table_state(owner_conn)
    response = client.post("/api/sync", content=chunks(), headers=bearer(site.ingest_key))
    assert response.status_code == 413
    assert table_state(owner_conn) == before


DEPTH = 5000
MALFORMED_BODIES = {
    "deeply nested meta": (
        b'{"event_id":"deep","ec":"a","meta":' + b'{"a":' * DEPTH + b"1" + b"}" * DEPTH + b"}",
        (400, 413, 422),
    ),
    "deeply nested arrays": (b"[" * DEPTH + b"]" * DEPTH, (400, 422)),
    "invalid UTF-8": (b'{"ec": "caf\xe9", "ea": "\xff\xfe"}', (400, 422)),
    "truncated JSON": (b'{"ec": "a",', (400,)),
    "empty body": (b"", (400, 422)),
    "null": (b"null", (400, 422)),
    "number overflow": (b'{"ec": 1e999999}', (400, 422)),
    "events not a list": (b'{"events": {"not": "a list"}}', (400, 422)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_BODIES))
def test_malformed_bodies_are_4xx_and_write_nothing(env: Any, owner_conn: psycopg.Connection[Any], name: str) -> None:
    client, site, _ = env
    body, statuses = MALFORMED_BODIES[name]
    _rejected(client, owner_conn, site.ingest_key, body, statuses)


NUL_EVENTS = {
    "ec": {"event_id": "nul-ec", "ec": "a\u0000b"},
    "url": {"event_id": "nul-url", "url": "https://x.invalid/\u0000"},
    "meta value": {"event_id": "nul-meta-value", "ec": "a", "meta": {"k": "v\u0000"}},
    "meta key": {"event_id": "nul-meta-key", "ec": "a", "meta": {"k\u0000": "v"}},
    "event_id": {"event_id": "nul\u0000id", "ec": "a"},
    "s": {"ec": "a", "s": "hostile\u0000"},
}


@pytest.mark.parametrize("field", sorted(NUL_EVENTS))
def test_nul_bytes_are_refused_not_a_500(env: Any, owner_conn: psycopg.Connection[Any], field: str) -> None:
    client, site, _ = env
    event = NUL_EVENTS[field]
    before = table_state(owner_conn)
    response = client.post("/api/sync", json=event, headers=bearer(site.ingest_key))
    # PostgreSQL text and jsonb cannot hold NUL: the only right answer is a 4xx naming the field.
    assert response.status_code in (400, 403, 422), f"{event}: {response.status_code} {response.text[:200]}"
    assert table_state(owner_conn) == before, f"{event} was rejected but wrote"


def test_batches_at_and_past_the_limit(env: Any, owner_conn: psycopg.Connection[Any]) -> None:
    client, site, _ = env
    key = site.ingest_key
    too_many = {"events": [{"event_id": f"big-{i}", "ec": "a"} for i in range(MAX_BATCH_EVENTS + 1)]}
    response = _rejected(client, owner_conn, key, json.dumps(too_many).encode(), (413, 422))
    if response.status_code == 422:
        assert "events" in response.text
    full = {"events": [{"event_id": f"full-{i}", "ec": "a"} for i in range(MAX_BATCH_EVENTS)]}
    ok = client.post("/api/sync", json=full, headers=bearer(key))
    assert ok.status_code == 200, ok.text
    rows = owner_conn.execute("SELECT count(*) FROM ingest_idempotency WHERE idempotency_key LIKE 'full-%'").fetchone()
    assert rows is not None and rows[0] == MAX_BATCH_EVENTS
    # One bad event fails the whole batch's validation: nothing of it is written.
    mixed = {"events": [{"event_id": "mixed-ok", "ec": "a"}, {"event_id": "bad id!", "ec": "a"}]}
    _rejected(client, owner_conn, key, json.dumps(mixed).encode(), (422,))
    empty = {"events": []}
    _rejected(client, owner_conn, key, json.dumps(empty).encode(), (422,))


def test_sql_in_every_string_field_is_stored_verbatim(env: Any, owner_conn: psycopg.Connection[Any]) -> None:
    client, site, _ = env
    tables_before = table_state(owner_conn)
    for n, payload in enumerate(SQL_PAYLOADS):
        event = {
            "event_id": f"sql-{n}",
            "ec": payload,
            "ea": payload,
            "el": payload,
            "url": payload,
            "fp": payload,
            "meta": {payload: payload},
        }
        response = client.post("/api/sync", json=event, headers=bearer(site.ingest_key))
        assert response.status_code == 200, response.text
        row = owner_conn.execute(
            "SELECT event_category, event_action, event_label FROM ingest_idempotency WHERE idempotency_key = %s",
            (f"sql-{n}",),
        ).fetchone()
        assert row == (payload, payload, payload)
        hostile_id = client.post("/api/sync", json={"event_id": payload, "ec": "a"}, headers=bearer(site.ingest_key))
        assert hostile_id.status_code == 422
        hostile_site = client.post("/api/sync", json={"ec": "a", "s": payload}, headers=bearer(site.ingest_key))
        assert hostile_site.status_code in (403, 422)
        hostile_header = client.post(
            "/api/sync", json={"ec": "a"}, headers={**bearer(site.ingest_key), "Idempotency-Key": payload}
        )
        assert hostile_header.status_code == 422
        export = client.get(
            "/api/billing/dispute-export",
            params={"site_id": payload, "year_month": payload},
            headers=bearer(site.ingest_key),
        )
        assert export.status_code in (400, 401, 403)
    after = table_state(owner_conn)
    assert after["ingest_idempotency"] == tables_before["ingest_idempotency"] + len(SQL_PAYLOADS)
    assert after["sites"] == tables_before["sites"] and after["invoice_snapshot"] == tables_before["invoice_snapshot"]


def test_csv_formula_payloads_are_neutralised_in_the_dispute_export(env: Any) -> None:
    client, site, billing = env
    for n, formula in enumerate(FORMULAS):
        event = {"event_id": f"formula-{n}", "ec": formula, "ea": formula, "el": formula}
        assert client.post("/api/sync", json=event, headers=bearer(site.ingest_key)).status_code == 200
    export = client.get(
        "/api/billing/dispute-export",
        params={"site_id": str(site.site.id), "year_month": "2026-01"},
        headers=bearer(billing),
    )
    assert export.status_code == 200, export.text
    rows = list(csv.reader(io.StringIO(export.text, newline="")))
    assert rows[0][0] == "idempotency_key"
    assert len(rows) == 1 + len(FORMULAS)
    for row in rows[1:]:
        for cell in row:
            live = cell.lstrip(SPREADSHEET_BLANKS)[:1] in SPREADSHEET_TRIGGERS or cell[:1] in ("\t", "\r", "\n")
            assert not live, f"formula cell exported live: {cell!r} in {row}"


def test_clock_skew_in_ts_never_moves_the_month(env: Any, owner_conn: psycopg.Connection[Any]) -> None:
    client, site, _ = env
    skewed = {
        "future-iso": (SERVER_NOW + timedelta(days=40)).isoformat(),
        "past-iso": "2001-01-01T00:00:00+00:00",
        "future-ms": int((SERVER_NOW + timedelta(days=400)).timestamp() * 1000),
        "past-ms": 978307200000,
    }
    for name, ts in skewed.items():
        response = client.post(
            "/api/sync", json={"event_id": f"skew-{name}", "ec": "a", "ts": ts}, headers=bearer(site.ingest_key)
        )
        assert response.status_code == 200, response.text
    months = owner_conn.execute(
        "SELECT DISTINCT year_month FROM ingest_idempotency WHERE idempotency_key LIKE 'skew-%'"
    ).fetchall()
    assert months == [("2026-01",)], "client time moved an event out of the server's month"
    for bad_ts in ("not a time", "2026-01-01T00:00:00", -1, 10**20, "9999-12-31T23:59:59Z", "NaN", "Infinity"):
        before = table_state(owner_conn)
        response = client.post(
            "/api/sync", json={"event_id": "skew-bad", "ec": "a", "ts": bad_ts}, headers=bearer(site.ingest_key)
        )
        assert response.status_code == 422, f"ts={bad_ts!r}: {response.status_code} {response.text[:200]}"
        assert table_state(owner_conn) == before


@pytest.mark.parametrize(
    "name",
    ["../outside.csv", "/etc/passwd", "..\\windows.csv", "dir/inner.csv", ".hidden", "manifest.json/../../x", "a\x00b"],
)
def test_packet_member_names_with_path_tricks_fail_verification(tmp_path: Path, name: str) -> None:
    packet = tmp_path / "inner" / "packet.zip"
    packet.parent.mkdir()
    manifest = {"files": [{"name": name, "sha256": "0" * 64, "bytes": 1}]}
    with zipfile.ZipFile(packet, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr(zipfile.ZipInfo(name.replace("\x00", "_")), b"x")
    result = verify_packet(packet)
    assert not result.ok
    assert not (tmp_path / "outside.csv").exists() and not (tmp_path / "inner" / "outside.csv").exists()
