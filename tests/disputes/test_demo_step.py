"""The demo step "cases": one case on demo-overage 2026-10, partially upheld with a credit of two,
its rendered packet verified offline; a second run changes nothing and the packet is byte-stable."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kernel.cron.keystore import load_signing_key
from kernel.db.connect import Database
from kernel.demo import DemoRun
from kernel.demo.disputes import DEMO_CASE_ID, demo_case_packet_path, run_case_demo
from kernel.demo.tenants import DEMO_SITES, ensure_demo_tenants
from kernel.export.verify import verify_packet
from kernel.settings import Settings
from tests.disputes.conftest import counts
from tests.export.conftest import MONTH, freeze, insert_rows, sample_rows


@pytest.mark.slow
def test_demo_case_step_is_repeatable_and_byte_deterministic(
    settings: Settings, app_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    ensure_demo_tenants(app_conn)
    site = next(d for d in DEMO_SITES if d.public_id == "demo-overage").site_id
    insert_rows(app_conn, site, sample_rows())  # ACCEPTED, OVERAGE and REJECTED_QUOTA rows in 2026-10
    key = load_signing_key(settings)
    freeze(settings, site, MONTH, key)
    lines: list[str] = []
    run = DemoRun(settings=settings, db=Database(settings), echo=lines.append)

    run_case_demo(run, packet_dir=tmp_path)
    packet = demo_case_packet_path(tmp_path)
    first_bytes = packet.read_bytes()
    assert verify_packet(packet, trusted_keys=[key.public_key.hex()]).ok
    with zipfile.ZipFile(packet) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert "report.html" in archive.namelist()
    case = manifest["case"]
    assert case["case_id"] == str(DEMO_CASE_ID) and len(case["disputed_keys"]) == 3
    assert (case["state"], case["outcome"]) == ("resolved", "partially_upheld")
    assert manifest["corrections"]["invoice"]["credited"] == 2
    assert "credited 2" in "\n".join(lines) and "written and verified offline" in "\n".join(lines)

    before = counts(app_conn)
    lines.clear()
    run_case_demo(run, packet_dir=tmp_path)  # a second run: nothing changes
    assert counts(app_conn) == before and packet.read_bytes() == first_bytes
    assert "up to date" in "\n".join(lines)

    packet.unlink()
    run_case_demo(run, packet_dir=tmp_path)  # rebuilt from the same data on the demo's clock: same bytes
    assert packet.read_bytes() == first_bytes
