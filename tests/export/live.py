"""A live ``uvicorn kernel.app:create_app`` subprocess for the export fault tests, and bulk rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import free_port

START_TIMEOUT_S = 30

BULK_ROWS_SQL = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
    billing_state, billing_reason, event_category, event_action, event_label, event_url, fingerprint,
    payload_hash, occurred_at, response_status, quota_remaining, request_id)
SELECT %(site_id)s, 'k' || lpad(i::text, 9, '0'), 2, %(start)s::timestamptz + i * interval '1 millisecond',
       i %% 10 <> 0, CASE WHEN i %% 10 = 0 THEN 'REJECTED_QUOTA' ELSE 'ACCEPTED' END,
       CASE WHEN i %% 10 = 0 THEN 'rejected_quota' ELSE 'billable' END,
       'page', 'view', 'label ' || i, 'https://shop.example/p', 'fp', md5(i::text) || md5(i::text),
       NULL, 200, 0, NULL
FROM generate_series(1, %(rows)s) AS i
"""


def insert_bulk_rows(conn: psycopg.Connection[Any], site_id: uuid.UUID, start: datetime, rows: int) -> None:
    """``rows`` ledger rows one millisecond apart from ``start``; every tenth is quota-rejected."""
    conn.execute(BULK_ROWS_SQL, {"site_id": site_id, "start": start, "rows": rows})


@contextmanager
def live_app(database_url: str, data_dir: Path) -> Iterator[str]:
    """Run the app under uvicorn on a free port; yield its base URL; stop only that process."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REVKERNEL_DATA_DIR": str(data_dir), "REVKERNEL_COMMIT": "live"}
    log = (data_dir.parent / f"uvicorn-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "kernel.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"uvicorn exited; see {log.name}"
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
