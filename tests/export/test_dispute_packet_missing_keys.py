"""`dispute packet --keys` with a key that is not in the month: a warning, no packet, exit 1."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from kernel.cli import main
from kernel.ledger import SigningKey
from kernel.settings import Settings
from tests.export.conftest import MONTH, freeze, insert_rows, make_tenant, sample_rows


def test_a_key_outside_the_month_is_refused_unless_allowed(
    settings: Settings, app_conn: psycopg.Connection[Any], signing_key: SigningKey, tmp_path: Path
) -> None:
    tenant = make_tenant(app_conn, "keys-shop")
    insert_rows(app_conn, tenant.site_id, sample_rows())
    freeze(settings, tenant.site_id, MONTH, signing_key)
    env = {"DATABASE_URL": settings.database_url or "", "REVKERNEL_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner(env=env)
    out = tmp_path / "evidence.zip"
    args = ["dispute", "packet", "--site", "keys-shop", "--year-month", MONTH, "--no-report", "--out", str(out)]

    typo = runner.invoke(main, [*args, "--keys", "evt-0001,evt-000l"])
    assert typo.exit_code == 1
    assert "warning: 1 disputed key(s) not in the" in typo.stderr and "evt-000l" in typo.stderr
    assert typo.stderr.strip().splitlines()[-1].endswith("[disputed_key_not_in_month]")
    assert not out.exists()  # no packet that looks like evidence for a typo

    allowed = runner.invoke(main, [*args, "--keys", "evt-0001,evt-000l", "--allow-missing"])
    assert allowed.exit_code == 0, allowed.output + allowed.stderr
    assert "warning: 1 disputed key(s)" in allowed.stderr
    with zipfile.ZipFile(out) as archive:
        disputed = json.loads(archive.read("manifest.json"))["disputed"]
    assert {d["idempotency_key"]: d["status"] for d in disputed} == {
        "evt-0001": "billable",
        "evt-000l": "not_in_ledger",
    }

    clean = runner.invoke(main, [*args, "--keys", "evt-0001,evt-0009"])
    assert clean.exit_code == 0 and "warning" not in clean.stderr
