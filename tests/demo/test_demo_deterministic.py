"""`make demo` is byte-deterministic: two fresh demos give the same ledger, CSV bytes, Merkle roots
and snapshot hashes, whatever the machine's speed or its signing key.

Each load is the real demo pipeline (tenants, two months of traffic over HTTP through a live
`revkernel serve`, reconcile and freeze) into a database and a data directory of its own.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kernel.demo.tenants import DEMO_SITES
from kernel.demo.traffic import DEMO_MONTHS
from kernel.export.csv import export_chunks
from tests.notebooks.demo_db import create_demo_database


def _fingerprint(owner: str) -> dict[str, Any]:
    with psycopg.connect(owner, autocommit=True) as conn:
        ledger = conn.execute(
            "SELECT site_id, idempotency_key, idempotency_version, created_at, year_month, billable, billing_state,"
            " billing_reason, event_category, event_action, event_label, payload_hash, occurred_at"
            ' FROM ingest_idempotency ORDER BY site_id, created_at, idempotency_key COLLATE "C"'
        ).fetchall()
        csv = {
            (d.public_id, ym): hashlib.sha256(b"".join(export_chunks(conn, d.site_id, ym))).hexdigest()
            for d in DEMO_SITES
            for ym in DEMO_MONTHS
        }
        snapshots = conn.execute(
            "SELECT site_id, year_month, merkle_root, snapshot_hash, document FROM invoice_snapshot"
            " ORDER BY site_id, year_month"
        ).fetchall()
        keys = conn.execute("SELECT DISTINCT key_id FROM invoice_snapshot").fetchall()
        drift_runs = conn.execute(
            "SELECT count(*) FROM reconciliation_drift_log WHERE year_month = '2026-10'"
        ).fetchone()
    return {"ledger": ledger, "csv": csv, "snapshots": snapshots, "keys": keys, "drift_runs": drift_runs}


@pytest.mark.slow
def test_two_fresh_demos_are_identical(pg_server: str, tmp_path: Path) -> None:
    first = _fingerprint(create_demo_database(pg_server, f"demo_a_{uuid.uuid4().hex[:8]}", tmp_path / "a"))
    second = _fingerprint(create_demo_database(pg_server, f"demo_b_{uuid.uuid4().hex[:8]}", tmp_path / "b"))
    assert len(first["ledger"]) > 3000
    assert first["ledger"] == second["ledger"]
    assert first["csv"] == second["csv"]
    assert len(first["snapshots"]) == len(DEMO_SITES) * len(DEMO_MONTHS)
    assert first["snapshots"] == second["snapshots"]  # roots, hashes and the signed documents
    # Two data directories, two signing keys: the signature differs, the invoice does not.
    assert first["keys"] != second["keys"]
    # The demo reconciles before it freezes: the demo month's drift report has real runs.
    assert first["drift_runs"][0] >= len(DEMO_SITES)
