"""`revkernel smoke` (runbook §5) against a live `revkernel serve` started by the test."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner
from release_live import live_server

from kernel.cli import main
from kernel.db.connect import Database
from kernel.release.smoke import SMOKE_CHECKS, SmokeOptions, run_smoke
from kernel.release.stand import free_port
from kernel.settings import Settings
from kernel.tenants import issue_key


@pytest.mark.slow
def test_smoke_passes_against_a_live_instance_and_fails_with_a_wrong_secret(settings: Settings, tmp_path: Path) -> None:
    settings = settings.with_overrides(cron_secret=f"smoke-{secrets.token_hex(16)}", commit="0123abcdsmoke")
    database = Database(settings)
    with database.connect("owner", autocommit=True) as conn:
        _, admin_token = issue_key(conn, site_id=None, role="admin", label="smoke test platform admin")
    with live_server(settings, free_port(), tmp_path / "serve.log") as url:
        options = SmokeOptions(
            url=url,
            cron_secret=settings.cron_secret,
            admin_token=admin_token,
            expect_commit="0123abcd",
            reports_dir=tmp_path / "reports",
        )
        results = run_smoke(options, database)
        assert [r.name for r in results] == list(SMOKE_CHECKS)
        failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
        assert not failed, failed
        assert len(list((tmp_path / "reports" / "smoke").glob("*.json"))) == 1

        # The same smoke from the command line with the wrong secret: a FAIL row and a non-zero exit.
        cli = CliRunner().invoke(
            main,
            [
                "smoke",
                "--url",
                url,
                "--cron-secret",
                "not-the-secret-0123456789",
                "--database-url",
                str(settings.database_url),
                "--reports-dir",
                str(tmp_path / "reports"),
            ],
        )
        assert cli.exit_code == 1, cli.output
        assert "cron auth" in cli.output and "FAIL" in cli.output
