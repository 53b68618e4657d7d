"""`revkernel smoke` right after the demo: it passes, touches only its own smoke sites, and a failed
check is one readable line."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from release_live import live_server

from kernel.cli import main
from kernel.db.connect import Database
from kernel.demo.tenants import DEMO_SITES
from kernel.release.smoke import SmokeOptions, failure_lines, run_smoke
from kernel.release.stand import free_port
from kernel.settings import Settings
from tests.notebooks.demo_db import create_demo_database


def _demo_evidence(owner: str) -> list[tuple[Any, ...]]:
    """The demo tenants' snapshots not frozen by the instance's own scheduler."""
    with psycopg.connect(owner) as conn:
        return conn.execute(
            "SELECT i.site_id, i.year_month, i.snapshot_hash FROM invoice_snapshot i WHERE i.site_id = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.action = 'invoice_freeze'"
            "   AND a.actor = 'cron:scheduler' AND a.site_id = i.site_id AND a.year_month = i.year_month)"
            " ORDER BY i.site_id, i.year_month",
            ([d.site_id for d in DEMO_SITES],),
        ).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheduler",
    [
        True,
        False,
    ],
)
def test_smoke_passes_after_the_demo(pg_server: str, tmp_path: Path, scheduler: bool) -> None:
    owner = create_demo_database(pg_server, f"smoke_{uuid.uuid4().hex[:8]}", tmp_path / "data")
    settings = Settings(
        database_url=owner, data_dir=tmp_path / "data", cron_secret=f"smoke-{secrets.token_hex(16)}", commit="demo"
    )
    before = _demo_evidence(owner)
    extra = {"REVKERNEL_SCHEDULER": "1"} if scheduler else {}
    with live_server(settings, free_port(), tmp_path / "serve.log", extra_env=extra) as url:
        results = run_smoke(SmokeOptions(url=url, cron_secret=settings.cron_secret), Database(settings))
        assert failure_lines(results) == []
        # The smoke froze nothing of the demo tenants (its freeze is restricted to its own sites).
        assert _demo_evidence(owner) == before

        # A failing smoke prints one line per failed check, after the table.
        wrong = CliRunner().invoke(
            main,
            ["smoke", "--url", url, "--cron-secret", "not-the-secret-0123456789", "--database-url", owner],
        )
        assert wrong.exit_code == 1
        failed = [line for line in wrong.stderr.splitlines() if line.startswith("FAIL ")]
        assert failed and all(len(line) < 260 and "{" not in line for line in failed), failed
        assert any(line.startswith("FAIL cron auth:") for line in failed)
