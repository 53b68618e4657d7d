"""The fleet report over the sample month: every site, its verdict, the index, pool and Dask."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.db.connect import Database
from kernel.reporting import run_fleet_report

EXPECTED = {"demo-hardcap": "warn", "demo-off": "pass", "demo-overage": "fail", "demo-shadow": "pass"}


@pytest.mark.slow
def test_monthly_fleet_report_flags_bad_sites(sample_db: Database, tmp_path: Path) -> None:
    report = run_fleet_report(
        kind="monthly",
        year_month="2026-10",
        database_url=sample_db.uri("analyst"),
        out_root=tmp_path,
        workers=2,
        progress=False,
        timeout_s=120,
    )
    assert not report.failed
    assert {o.public_id: o.verdict for o in report.outcomes} == EXPECTED
    summary = json.loads(report.summary_path.read_text())
    assert {k: v["verdict"] for k, v in summary["sites"].items()} == EXPECTED
    assert summary["runs"]["monthly"]["counts"] == {"pass": 2, "warn": 1, "fail": 1, "error": 0, "no_activity": 0}
    flags = {k: {f["code"] for f in v["findings"]} for k, v in summary["sites"].items()}
    assert "retry_storm" in flags["demo-hardcap"]  # the hard-capped site's retry storm
    assert "counter_mismatch" in flags["demo-overage"]  # the tampered counter
    index = report.index_path.read_text()
    for public_id in EXPECTED:
        link = summary["sites"][public_id]["reports"]["monthly"]["html"]
        assert (report.out_dir / link).exists() and f'href="{link}"' in index
    assert "counter_mismatch" in index
    assert "<script src" not in index and "http" not in index.split("<body>")[1]  # nothing from the network
    # The figures behind the index, and the month-over-month change against September.
    hardcap = summary["sites"]["demo-hardcap"]["figures"]
    with sample_db.connect("owner", autocommit=True) as conn:
        september = conn.execute(
            "SELECT count(*) FROM ingest_idempotency i JOIN sites s ON s.id = i.site_id"
            " WHERE s.public_id = 'demo-hardcap' AND i.year_month = '2026-09' AND i.billable"
        ).fetchone()
    assert september is not None and hardcap["previous_billable_count"] == september[0]
    assert hardcap["billable_count"] == 400 and hardcap["snapshot"] == "verified"
    change = f"{400 - september[0]:+,} ({(400 - september[0]) * 100 / september[0]:+.0f}%)"
    assert change in index


@pytest.mark.slow
def test_cli_report_one_site_merges_into_the_month(sample_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": sample_db.settings.database_url or ""}
    result = runner.invoke(
        main,
        ["report", "verify", "--year-month", "2026-10", "--site", "demo-off", "--out", str(tmp_path), "--no-progress"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "verify 2026-10: 1 site(s): pass 1" in result.output
    summary = json.loads((tmp_path / "2026-10" / "summary.json").read_text())
    assert summary["sites"]["demo-off"]["reports"]["verify"]["verdict"] == "pass"
    assert (tmp_path / "2026-10" / "verify" / "demo-off.html").exists()

    bad = runner.invoke(
        main, ["report", "monthly", "--year-month", "2026-10", "--site", "nope", "--out", str(tmp_path)], env=env
    )
    assert bad.exit_code == 1 and "unknown site 'nope'" in bad.output
    bad = runner.invoke(main, ["report", "drift", "--year-month", "2026-1", "--out", str(tmp_path)], env=env)
    assert bad.exit_code == 1 and "invalid_year_month" in bad.output


@pytest.mark.slow
def test_cli_report_with_a_relative_out_dir(
    sample_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel runs in notebooks/, so a relative path handed to it would land there instead.
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": sample_db.settings.database_url or ""}
    args = ["report", "monthly", "--year-month", "2026-10", "--site", "demo-off", "--out", "rel", "--no-progress"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "monthly 2026-10: 1 site(s): pass 1" in result.output
    sidecar = json.loads((tmp_path / "rel" / "2026-10" / "monthly" / "demo-off.results.json").read_text())
    assert sidecar["verdict"] == "pass" and sidecar["public_id"] == "demo-off"


@pytest.mark.slow
def test_dask_scheduler_renders_on_a_local_cluster(
    sample_db: Database, sample_ids: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        report = run_fleet_report(
            kind="drift",
            year_month="2026-10",
            database_url=sample_db.uri("analyst"),
            out_root=tmp_path,
            sites=[str(sample_ids["demo-overage"])],
            scheduler=cluster.scheduler_address,
            progress=False,
            timeout_s=120,
        )
    assert [(o.public_id, o.status, o.verdict) for o in report.outcomes] == [("demo-overage", "rendered", "fail")]
    sidecar = json.loads(Path(report.outcomes[0].results or "").read_text())
    assert sidecar["red_flags"] == ["counter_drift_logged", "counter_mismatch"]
