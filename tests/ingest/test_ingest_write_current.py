"""The ``ingest_write`` the migrations leave in the database carries every change made to it.

Two issues replaced the function in parallel (0010: closed months and archived keys; 0021: the
client-address hash); 0022 is the body with both. These tests call the function exactly as
``kernel.ingest.queries.write_events`` does and check each behaviour in the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg

from tests.ingest.support import make_site

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _write(conn: psycopg.Connection[Any], site_id: Any, now: datetime, events: list[dict[str, Any]]) -> list[Any]:
    rows = [
        {"v": 2, "c": None, "h": "h" * 64, "ec": "click", "ea": "buy", "el": None, "url": None, "fp": None}
        | {"at": None, "p": {}}
        | event
        for event in events
    ]
    return conn.execute(
        "SELECT idx, inserted, billing_state, billing_reason, created_at FROM ingest_write(%s, %s, true, 'req', %s)",
        (site_id, now, msgspec.json.encode(rows).decode()),
    ).fetchall()


def test_the_client_hash_is_stored_with_the_ledger_row(app_conn: psycopg.Connection[Any]) -> None:
    site = make_site(app_conn)
    _write(app_conn, site.site.id, NOW, [{"k": "e-1", "a": "c" * 64}])
    row = app_conn.execute(
        "SELECT client_hash FROM ingest_idempotency WHERE site_id = %s AND idempotency_key = 'e-1'", (site.site.id,)
    ).fetchone()
    assert row == ("c" * 64,)


def test_a_closed_site_month_sends_the_row_to_the_databases_month(
    app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    site = make_site(app_conn)
    _write(app_conn, site.site.id, NOW, [{"k": "e-1"}])
    owner_conn.execute(
        "UPDATE site_usage_monthly SET closed_at = now() WHERE site_id = %s AND year_month = '2026-03'",
        (site.site.id,),
    )
    (result,) = _write(app_conn, site.site.id, NOW, [{"k": "e-2", "a": "d" * 64}])
    assert result[1] is True
    month, client_hash = app_conn.execute(
        "SELECT year_month, client_hash FROM ingest_idempotency WHERE site_id = %s AND idempotency_key = 'e-2'",
        (site.site.id,),
    ).fetchone() or (None, None)
    assert month != "2026-03" and month == result[4].astimezone(UTC).strftime("%Y-%m")
    assert client_hash == "d" * 64


def test_a_cleaned_client_key_is_answered_archived_and_not_written(
    app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    site = make_site(app_conn)
    owner_conn.execute(
        "INSERT INTO ingest_cleaned_keys (site_id, idempotency_key, year_month, cleaned_at)"
        " VALUES (%s, 'old-1', '2025-11', now())",
        (site.site.id,),
    )
    results = _write(app_conn, site.site.id, NOW, [{"k": "old-1", "a": "e" * 64}, {"k": "new-1", "a": "e" * 64}])
    assert [(r[1], r[2], r[3]) for r in results] == [(False, "ARCHIVED", "2025-11"), (True, "ACCEPTED", "within_quota")]
    keys = app_conn.execute("SELECT idempotency_key FROM ingest_idempotency WHERE site_id = %s", (site.site.id,))
    assert [k for (k,) in keys] == ["new-1"]
