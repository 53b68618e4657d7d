"""A failure in the middle of an export cuts the transfer: never a 200 that looks complete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from kernel.settings import Settings
from tests.export.conftest import MONTH, MONTH_START, make_tenant
from tests.export.live import insert_bulk_rows, live_app

pytestmark = pytest.mark.slow

# Far more than the socket buffers between PostgreSQL, the app and the client can hold, so the
# COPY is still running when its backend is killed.
ROWS = 300_000
COPY_START_TIMEOUT_S = 10

_TERMINATE_COPY = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE 'COPY (%%'
"""


def test_database_backend_killed_mid_stream_aborts_the_transfer(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert settings.database_url is not None
    tenant = make_tenant(app_conn, "big-shop")
    insert_bulk_rows(app_conn, tenant.site_id, MONTH_START, ROWS)
    params = {"site_id": str(tenant.site_id), "year_month": MONTH}
    headers = {"Authorization": f"Bearer {tenant.tokens['billing']}"}
    with live_app(settings.database_url, tmp_path / "data") as url, httpx.Client(timeout=30) as client:
        received = 0
        with client.stream("GET", url + "/api/billing/dispute-export", params=params, headers=headers) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            received += len(next(chunks))
            # The header may go out before the COPY starts: wait (bounded) until it is running.
            deadline = time.monotonic() + COPY_START_TIMEOUT_S
            killed = owner_conn.execute(_TERMINATE_COPY).fetchall()
            while not killed and time.monotonic() < deadline:
                time.sleep(0.05)
                killed = owner_conn.execute(_TERMINATE_COPY).fetchall()
            assert killed == [(True,)], f"the export's COPY should still be running: {killed}, {received} bytes in"
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                for chunk in chunks:
                    received += len(chunk)
        # The server survived, and the same export completes when nothing fails.
        complete = client.get(url + "/api/billing/dispute-export", params=params, headers=headers)
    assert complete.status_code == 200
    assert complete.content.count(b"\n") == ROWS + 1
    assert received < len(complete.content)
