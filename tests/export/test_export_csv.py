"""The dispute CSV over HTTP: exact format, neutralisation, determinism, snapshots, audit (SPEC §4.3)."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.db.connect import Database
from kernel.export import EXPORT_COLUMNS, ExportTally, export_chunks, neutralise_cell, restore_cell
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.export.conftest import MONTH, freeze, insert_rows, make_tenant, sample_rows


def _export(client: TestClient[Any], token: str, site_id: object, month: str = MONTH) -> Any:
    return client.get(
        "/api/billing/dispute-export",
        params={"site_id": str(site_id), "year_month": month},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.mark.parametrize(
    "value",
    [
        *("=1", "+x", "-3", "@a", "\tt", "\rr", "'q", "''", "plain", "a=b", "", "'"),
        *(" =1", "\u00a0+x", "\n-3", "\r\n@a", "\uff1d1", " \uff20a", "\u3000\uff0b1", " x", "\u00a0"),  # bypasses
    ],
)
def test_neutralisation_is_reversible(value: str) -> None:
    cell = neutralise_cell(value)
    assert cell is not None and restore_cell(cell) == value
    first = value.lstrip(" \t\r\n\u00a0\u3000")[:1]
    if value[:1] in ("\t", "\r", "\n", "'") or first in ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff20"):
        assert cell == "'" + value
    else:
        assert cell == value


def test_export_has_the_exact_columns_formats_order_and_neutralised_cells(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    tenant = make_tenant(app_conn, "shop-one")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    with TestClient(create_app(settings)) as client:
        response = _export(client, tenant.tokens["billing"], tenant.site_id)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="dispute-{tenant.site_id}-{MONTH}.csv"'
    assert response.headers["cache-control"] == "no-store"
    assert "x-opsmantik-snapshot-hash" not in response.headers  # the month is open
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    body = [dict(zip(EXPORT_COLUMNS, r, strict=True)) for r in rows[1:]]
    assert [restore_cell(r["idempotency_key"]) for r in body] == [
        "evt-0001", "evt-0002", "B-tie", "a-tie", "evt-0005", "'quoted-key", "-dash-key", "evt-0008",
        "evt-0009", "evt-0010", "evt-0011",
    ]  # fmt: skip
    by_key = {restore_cell(r["idempotency_key"]): r for r in body}
    # Every hostile cell reads back as text starting with an apostrophe, never as a formula.
    assert by_key["evt-0001"]["event_label"] == "'=cmd|' /C calc'!A0"
    assert by_key["evt-0002"]["event_label"] == "'+1+1"
    assert by_key["evt-0002"]["event_category"] == "'-2"
    assert by_key["a-tie"]["event_label"] == "'@SUM(A1:A2)"
    assert by_key["B-tie"]["event_label"] == "'\tTabbed"
    assert by_key["B-tie"]["event_action"] == "'\rCarriage"
    assert by_key["'quoted-key"]["idempotency_key"] == "''quoted-key"
    assert by_key["-dash-key"]["idempotency_key"] == "'-dash-key"
    for row in body:
        for cell in row.values():
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")
    # RFC 4180 quoting of commas, quotes and newlines; UTF-8 kept.
    assert by_key["evt-0005"]["event_label"] == 'plain, with "quotes"\nand a newline'
    assert '"plain, with ""quotes""\nand a newline"' in response.content.decode("utf-8")
    assert by_key["evt-0008"]["event_label"] == "Ünïcode ✓"
    first = by_key["evt-0001"]
    assert first["created_at"] == "2026-10-04T09:00:00.000000Z"
    assert (first["year_month"], first["billable"], first["billing_state"]) == (MONTH, "true", "ACCEPTED")
    assert first["idempotency_version"] == "2"
    assert by_key["evt-0009"]["billable"] == "false" and by_key["evt-0009"]["billing_state"] == "REJECTED_QUOTA"
    assert by_key["evt-0010"]["billing_reason"] == "scroll_depth" and by_key["evt-0010"]["event_label"] == ""


def test_export_is_byte_for_byte_deterministic_and_equals_the_library_stream(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database
) -> None:
    tenant = make_tenant(app_conn, "shop-two")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    with TestClient(create_app(settings)) as client:
        first = _export(client, tenant.tokens["admin"], tenant.site_id).content
        second = _export(client, tenant.tokens["billing"], tenant.site_id).content
    assert first == second
    with database.connect("app", autocommit=True) as conn:
        library = b"".join(export_chunks(conn, tenant.site_id, MONTH, chunk_bytes=64))
    assert library == first


def test_frozen_month_export_matches_its_snapshot_and_manifest(
    settings: Settings, app_conn: psycopg.Connection[Any], signing_key: SigningKey
) -> None:
    tenant = make_tenant(app_conn, "shop-three")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    frozen = freeze(settings, tenant.site_id, MONTH, signing_key)
    with TestClient(create_app(settings)) as client:
        response = _export(client, tenant.tokens["billing"], tenant.site_id)
        manifest = client.get(
            "/api/billing/dispute-manifest",
            params={"site_id": str(tenant.site_id), "year_month": MONTH},
            headers={"Authorization": f"Bearer {tenant.tokens['billing']}"},
        )
    assert response.headers["x-opsmantik-snapshot-hash"] == frozen.snapshot_hash
    tally = ExportTally(year_month=MONTH)
    tally.feed(response.content)
    digest = tally.close()
    assert digest.merkle_root == frozen.merkle_root
    assert (digest.billable_count, digest.overage_count) == (frozen.billable_count, frozen.overage_count)
    assert (digest.rejected_count, digest.non_billable_count) == (frozen.rejected_count, frozen.non_billable_count)
    assert manifest.status_code == 200
    body = manifest.json()
    assert body["row_count"] == 11 and body["counts"]["billable"] == 9
    assert body["csv"]["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert body["merkle_root"] == frozen.merkle_root and body["snapshot_matches"] is True
    assert body["snapshot"]["snapshot_hash"] == frozen.snapshot_hash
    assert body["snapshot"]["public_key"] == signing_key.public_key.hex()


def test_tally_reads_the_same_digest_whatever_the_chunking(
    settings: Settings, app_conn: psycopg.Connection[Any], database: Database
) -> None:
    tenant = make_tenant(app_conn, "shop-four")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    with database.connect("app", autocommit=True) as conn:
        data = b"".join(export_chunks(conn, tenant.site_id, MONTH))
    whole = ExportTally(year_month=MONTH)
    whole.feed(data)
    expected = whole.close()
    for size in (1, 7, 50):
        tally = ExportTally(year_month=MONTH)
        for at in range(0, len(data), size):
            tally.feed(data[at : at + size])
        assert tally.close() == expected
    assert expected.format_problem_count == expected.order_problem_count == 0


def test_every_export_and_manifest_is_written_to_the_audit_log(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    tenant = make_tenant(app_conn, "shop-five")
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            assert _export(client, tenant.tokens["billing"], tenant.site_id).status_code == 200
        assert _export(client, tenant.tokens["viewer"], tenant.site_id).status_code == 403
        client.get(
            "/api/billing/dispute-manifest",
            params={"site_id": str(tenant.site_id), "year_month": MONTH},
            headers={"Authorization": f"Bearer {tenant.tokens['admin']}"},
        )
    rows = app_conn.execute(
        "SELECT action, actor, year_month, details->>'role' FROM audit_log WHERE site_id = %s ORDER BY id",
        (tenant.site_id,),
    ).fetchall()
    assert [r[0] for r in rows] == ["dispute_export", "dispute_export", "dispute_manifest"]
    assert rows[0][1].startswith(f"billing@site:{tenant.site_id}:") and rows[0][2] == MONTH
    assert rows[2][3] == "admin"


def test_a_frozen_month_cleaned_up_after_archiving_is_refused_not_served_partially(
    settings: Settings, app_conn: psycopg.Connection[Any], signing_key: SigningKey
) -> None:
    tenant = make_tenant(app_conn, "shop-archived")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    frozen = freeze(settings, tenant.site_id, MONTH, signing_key)
    auth = {"Authorization": f"Bearer {tenant.tokens['billing']}"}
    params = {"site_id": str(tenant.site_id), "year_month": MONTH}
    app_conn.execute(
        "INSERT INTO ledger_archive (site_id, year_month, file_path, sha256, row_count, merkle_root)"
        " VALUES (%s, %s, 'archive.csv.gz', %s, 11, %s)",
        (tenant.site_id, MONTH, "0" * 64, frozen.merkle_root),
    )
    with TestClient(create_app(settings)) as client:
        # Archived but still whole: served as usual.
        assert client.get("/api/billing/dispute-export", params=params, headers=auth).status_code == 200
        app_conn.execute(
            "DELETE FROM ingest_idempotency WHERE site_id = %s AND idempotency_key IN ('evt-0001', 'evt-0009')",
            (tenant.site_id,),
        )
        for route in ("/api/billing/dispute-export", "/api/billing/dispute-manifest"):
            refused = client.get(route, params=params, headers=auth)
            assert (refused.status_code, refused.json()["error"]) == (409, "month_cleaned_up")
            assert "2 row(s)" in refused.json()["message"]
