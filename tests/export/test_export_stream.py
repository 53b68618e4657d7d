"""The async COPY OUT reader: identical bytes, bounded slots, and a consumer that leaves early."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.db.connect import Database
from kernel.export import export_chunks
from kernel.export.stream import ExportSlots, export_chunks_async
from kernel.settings import Settings
from tests.export.conftest import MONTH, MONTH_START, make_tenant
from tests.export.live import insert_bulk_rows

BACKEND_EXIT_WAIT_S = 30
_COPIES = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (%%'"


def test_threaded_stream_gives_the_library_bytes_and_frees_its_slot_when_left_early(
    database: Database, app_conn: psycopg.Connection[Any]
) -> None:
    tenant = make_tenant(app_conn, "stream-shop")
    insert_bulk_rows(app_conn, tenant.site_id, MONTH_START, 20_000)
    conninfo = database.conninfo("app")
    expected = b"".join(export_chunks(app_conn, tenant.site_id, MONTH))
    slots = ExportSlots(limit=2)

    async def whole() -> bytes:
        return b"".join([c async for c in export_chunks_async(conninfo, tenant.site_id, MONTH, slots)])

    async def first_chunk_only() -> bytes:
        stream = export_chunks_async(conninfo, tenant.site_id, MONTH, slots)
        chunk = await anext(stream)
        await stream.aclose()
        return chunk

    assert asyncio.run(whole()) == expected
    assert expected.startswith(asyncio.run(first_chunk_only()))
    # A consumer that left closed the connection and gave the slot back.
    assert slots.available == 2
    # ...and the server ends the abandoned COPY once it finds the socket closed.
    deadline = time.monotonic() + BACKEND_EXIT_WAIT_S
    with psycopg.connect(database.conninfo("owner"), autocommit=True) as owner:
        while owner.execute(_COPIES).fetchone() != (0,):
            assert time.monotonic() < deadline, "the abandoned COPY kept running"
            time.sleep(0.05)


def test_no_free_export_slot_is_a_503_after_authorisation(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    tenant = make_tenant(app_conn, "busy-shop")
    app = create_app(settings)
    with TestClient(app) as client:
        app.state["kernel"].extras["export_slots"] = ExportSlots(limit=0)
        params = {"site_id": str(tenant.site_id), "year_month": MONTH}
        for route in ("/api/billing/dispute-export", "/api/billing/dispute-manifest"):
            busy = client.get(route, params=params, headers={"Authorization": f"Bearer {tenant.tokens['billing']}"})
            assert (busy.status_code, busy.json()["error"]) == (503, "export_busy")
            assert client.get(route, params=params).status_code == 401


def test_slots_never_go_negative() -> None:
    slots = ExportSlots(limit=1)
    assert slots.try_acquire() and not slots.try_acquire()
    slots.release()
    assert slots.available == 1
    with pytest.raises(AssertionError):
        slots.release()
        slots.release()
