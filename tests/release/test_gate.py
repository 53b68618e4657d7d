"""`revkernel gate`: invariants against a throwaway database, evidence files, exit codes.

This file is the one the gate leaves out of its own pytest run (it would run itself forever).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.release.gate import GATE_TEST_FILE, GateOptions, run_gate


def test_gate_file_name_is_the_one_the_gate_leaves_out() -> None:
    assert Path(__file__).resolve() == (Path(__file__).parents[2] / GATE_TEST_FILE).resolve()


@pytest.mark.slow
def test_gate_passes_and_writes_evidence(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["gate", "--skip-tests", "--reports-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "gate").glob("*.json"))
    assert len(written) == 1 and written[0].with_suffix(".md").exists()
    evidence = json.loads(written[0].read_text())
    assert evidence["passed"] is True
    assert evidence["commit"] and evidence["versions"]["postgresql"]
    names = {c["name"]: c["verdict"] for c in evidence["checks"]}
    for required in (
        "migration lint",
        "ledger write precedes publish (trigger)",
        "ledger write precedes publish (no grant)",
        "ledger and outbox commit together",
        "duplicate not published twice",
        "rollback flag records non-billable",
        "quota reject writes billable=false",
        "quota 429 and rate-limit 429 distinct",
        "cron auth rejects an empty secret",
    ):
        assert names[required] == "PASS"
    assert "PASS" in written[0].with_suffix(".md").read_text()


@pytest.mark.slow
def test_gate_fails_on_a_destructive_migration_and_a_failing_test(tmp_path: Path) -> None:
    bad = tmp_path / "0099_drop.sql"
    bad.write_text("SET lock_timeout = '5s';\nSET statement_timeout = '1min';\nDROP TABLE invoice_snapshot;\n")
    failing = tmp_path / "test_failing.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    report = run_gate(
        GateOptions(
            run_tests=True,
            reports_dir=tmp_path / "reports",
            migration_files=(bad,),
            pytest_args=(str(failing), "-p", "no:cacheprovider", f"--rootdir={tmp_path}"),
            test_workers=0,
            echo=lambda _: None,
        )
    )
    assert not report.passed
    verdicts = {r.name: r for r in report.results}
    assert not verdicts["migration lint"].passed and "no-drop" in verdicts["migration lint"].detail
    assert not verdicts["tests"].passed and "1 failed" in verdicts["tests"].detail
    assert report.json_path is not None
    assert json.loads(report.json_path.read_text())["passed"] is False
