"""`revkernel dispute packet` end to end: the rendered report is in the packet, and it verifies."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.export.conftest import MONTH, freeze, insert_rows, make_tenant, sample_rows


@pytest.mark.slow
def test_cli_packet_with_rendered_report_verifies_offline(
    settings: Settings, app_conn: psycopg.Connection[Any], signing_key: SigningKey, tmp_path: Path
) -> None:
    tenant = make_tenant(app_conn, "cli-shop")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    freeze(settings, tenant.site_id, MONTH, signing_key)
    out = tmp_path / "evidence.zip"
    env = {"DATABASE_URL": settings.database_url or "", "REVKERNEL_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner(env=env)
    built = runner.invoke(
        main,
        [
            "dispute",
            "packet",
            "--site",
            "cli-shop",
            "--year-month",
            MONTH,
            "--keys",
            "evt-0001,evt-0009",
            "--out",
            str(out),
        ],
    )
    assert built.exit_code == 0, built.output + built.stderr
    assert f"packet: {out}" in built.output and "report verdict: pass" in built.output
    with zipfile.ZipFile(out) as archive:
        names = sorted(archive.namelist())
        report = archive.read("report.html").decode("utf-8")
        results = json.loads(archive.read("report.results.json"))
        manifest = json.loads(archive.read("manifest.json"))
    assert names == sorted(
        ["VERIFY.md", "manifest.json", "report.html", "report.results.json", f"dispute-{tenant.site_id}-{MONTH}.csv"]
    )
    assert "Dispute evidence" in report and "evt-0001" in report and "def " not in report  # no code cells
    assert results["verdict"] == "pass" and results["metrics"]["verified"] is True
    assert manifest["report_verdict"] == "pass"
    checked = runner.invoke(main, ["dispute", "verify", str(out), "--trusted-key", signing_key.public_key.hex()])
    assert checked.exit_code == 0, checked.output
    assert "verdict: PASS" in checked.output
