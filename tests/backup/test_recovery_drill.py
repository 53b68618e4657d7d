"""The recovery drill of issue 18: back up the demo store while a live server ingests, restore it
into a fresh data directory, verify the copy, and compare it with the source.

The demo data is the real `make demo` load (tenants, two months of traffic over HTTP, freeze,
reconcile), and the cleanup cron then archives September and part of October as it would in
January, so the backup carries archives and the copy is verified from them. A live
`revkernel serve --workers 2` takes events for a site of its own throughout.

The window is made deterministic instead of hoping for an overlap: the test holds an ACCESS
EXCLUSIVE lock on a table ingest never touches (``dispute_holds``). The backup exports its
snapshot first and then waits on that lock, so every event acknowledged while the test sees it
waiting was committed after the snapshot: none of them may be in the copy, and every event
acknowledged before the backup started must be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from kernel.clock import ManualClock
from kernel.cron.jobs import run_named
from kernel.cron.runs import CronContext
from kernel.db import embedded
from kernel.db.connect import Database
from kernel.settings import Settings
from kernel.tenants import create_site
from tests.ingest.live import live_server
from tests.notebooks.demo_db import create_demo_database

# The demo load alone takes a minute or more on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLEANUP_AT = datetime(2027, 1, 20, tzinfo=UTC)  # September is 90 days old, October in part
WAIT_S = 120.0
ACKS_PER_PHASE = 15
PER_SITE_MONTH = """
SELECT site_id::text, year_month, billing_state, billable, count(*)
FROM ingest_idempotency GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


class Clients:
    """Two clients sending distinct events to the live server, noting when each was acknowledged."""

    def __init__(self, url: str, ingest_key: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {ingest_key}"}
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(2)]

    def _run(self, n: int) -> None:
        seq = 0
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self.stop.is_set():
                event_id = f"live-{n}-{seq}"
                seq += 1
                body = {"event_id": event_id, "ec": "live", "ea": "during-backup", "url": "https://live.example/"}
                try:
                    response = client.post("/api/sync", json=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{event_id}: {exc}")
                    continue
                if response.status_code == 200:
                    with self.lock:
                        self.acked.append(event_id)
                else:
                    self.errors.append(f"{event_id}: {response.status_code} {response.text[:100]}")

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.acked)

    def wait_for(self, n: int) -> set[str]:
        deadline = time.monotonic() + WAIT_S
        while len(self.snapshot()) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks; errors {self.errors[:3]}"
            time.sleep(0.05)
        return self.snapshot()


def _keys(conninfo: str) -> set[tuple[str, str]]:
    with psycopg.connect(conninfo) as conn:
        return {(str(s), k) for s, k in conn.execute("SELECT site_id, idempotency_key FROM ingest_idempotency")}


def _rows(conninfo: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(query).fetchall()


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVKERNEL_", "DATABASE_URL"))}
    env.update(values)
    return env


def _wait_until_backup_waits_on_lock(monitor: psycopg.Connection[Any], backup: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        row = monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'revkernel-backup'"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
        if row and row[0] == 1:
            return
        assert backup.poll() is None, backup.communicate()
        assert time.monotonic() < deadline, "the backup never reached the lock"
        time.sleep(0.05)


def test_backup_while_ingesting_restore_verify_and_compare(pg_server: str, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo-data"
    source_url = create_demo_database(pg_server, f"drill_{uuid.uuid4().hex[:10]}", demo_dir)
    source = Settings(database_url=source_url, data_dir=demo_dir)
    cleaned = run_named(
        CronContext(source, ManualClock(CLEANUP_AT), Database(source), trigger="cli"), "idempotency-cleanup"
    )
    # 8 demo site-months, less demo-overage 2026-10: the demo's support case holds it (never cleaned).
    assert cleaned["ok"] and cleaned["archived"] == 7 and cleaned["deleted"] > 0, cleaned
    with Database(source).transaction("app") as conn:
        live = create_site(
            conn, name="Live during backup", public_id="live-backup", monthly_limit=10**9, rate_limit_per_minute=10**7
        )
    out = tmp_path / "backup"
    fresh = tmp_path / "fresh-data"

    with live_server(source_url, tmp_path, workers=2) as server:
        clients = Clients(server.url, live.ingest_key)
        for thread in clients.threads:
            thread.start()
        try:
            acked_before = clients.wait_for(ACKS_PER_PHASE)
            keys_before_start = _keys(source_url)
            with (
                psycopg.connect(source_url, autocommit=True) as holder,
                psycopg.connect(source_url, autocommit=True) as monitor,
            ):
                holder.execute("BEGIN")
                holder.execute("LOCK TABLE dispute_holds IN ACCESS EXCLUSIVE MODE")
                backup = _cli(
                    ["db", "backup", "--out", str(out)], _env(DATABASE_URL=source_url, REVKERNEL_DATA_DIR=str(demo_dir))
                )
                _wait_until_backup_waits_on_lock(monitor, backup)
                seen_waiting = clients.snapshot()
                after_snapshot = clients.wait_for(len(seen_waiting) + ACKS_PER_PHASE) - seen_waiting
                holder.execute("COMMIT")
            stdout, stderr = backup.communicate(timeout=WAIT_S)
            assert backup.returncode == 0, stdout + stderr
            keys_before_end = _keys(source_url)
            clients.wait_for(len(clients.snapshot()) + ACKS_PER_PHASE)  # still ingesting after the backup
        finally:
            clients.stop.set()
            for thread in clients.threads:
                thread.join(timeout=30)
        assert not clients.errors, clients.errors[:5]

    try:
        restore = _cli(["db", "restore", str(out)], _env(REVKERNEL_DATA_DIR=str(fresh)))
        stdout, stderr = restore.communicate(timeout=WAIT_S * 2)
        assert restore.returncode == 0, stdout + stderr
        assert "7 archive(s)" in stdout  # demo-overage 2026-10 is held by the demo case
        verify = _cli(["verify", "--reports-dir", str(tmp_path / "reports")], _env(REVKERNEL_DATA_DIR=str(fresh)))
        stdout, stderr = verify.communicate(timeout=WAIT_S * 2)
        assert verify.returncode == 0, stdout + stderr
        assert "7 passed, 0 failed" in stdout
        assert "8 snapshot(s) recomputed" in stdout and "(7 from archives)" in stdout

        restored_url = Database(Settings(data_dir=fresh)).conninfo("owner", start=False)
        restored = _keys(restored_url)
        live_site = str(live.site.id)
        # The copy is the source at one instant between the start and the end of the backup ...
        assert keys_before_start <= restored <= keys_before_end
        assert {(live_site, k) for k in acked_before} <= restored
        # ... and that instant is the snapshot: what was acknowledged while the backup waited is not in it.
        assert after_snapshot and not ({(live_site, k) for k in after_snapshot} & restored)
        assert {(live_site, k) for k in after_snapshot} <= keys_before_end
        # Every site-month other than the live one is the source's, state by state.
        source_counts = [r for r in _rows(source_url, PER_SITE_MONTH) if r[0] != live_site]
        restored_counts = [r for r in _rows(restored_url, PER_SITE_MONTH) if r[0] != live_site]
        assert restored_counts == source_counts and restored_counts
        live_rows = sum(r[4] for r in _rows(restored_url, PER_SITE_MONTH) if r[0] == live_site)
        assert sum(1 for s, _ in keys_before_start if s == live_site) <= live_rows
        assert live_rows <= sum(1 for s, _ in keys_before_end if s == live_site)
        # The evidence is the source's: every snapshot, byte for byte.
        snapshots = "SELECT site_id, year_month, document, signature FROM invoice_snapshot ORDER BY 1, 2"
        assert _rows(restored_url, snapshots) == _rows(source_url, snapshots)
    finally:
        embedded.stop(fresh / "pg", mode="immediate")
