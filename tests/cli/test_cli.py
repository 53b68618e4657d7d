"""The CLI through click's runner and as real subprocesses: one line per error, exit ≠ 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.settings import Settings
from kernel.tenants import authenticate


def _env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    return {"DATABASE_URL": settings.database_url, "REVKERNEL_DATA_DIR": str(settings.data_dir)}


def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=_env(settings))
    return result.exit_code, result.stdout, result.stderr


def test_site_create_prints_a_key_stored_only_hashed(settings: Settings) -> None:
    code, out, _ = run_cli(
        settings,
        "site",
        "create",
        "--name",
        "Shop",
        "--monthly-limit",
        "100",
        "--soft-limit",
        "--hard-cap-multiplier",
        "1.5",
        "--rate-limit-per-minute",
        "60",
        "--billing-mode",
        "shadow",
        "--json",
    )
    assert code == 0, out
    made = json.loads(out)
    assert set(made) == {"site_id", "public_id", "ingest_key"}
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys").fetchall()
        assert made["ingest_key"] not in {r[0] for r in stored}
        key = authenticate(conn, made["ingest_key"])
        assert key is not None and str(key.site_id) == made["site_id"] and key.role == "ingest"
        plan = conn.execute(
            "SELECT monthly_limit, soft_limit_enabled, hard_cap_multiplier, rate_limit_per_minute, billing_mode "
            "FROM site_plans JOIN sites ON sites.id = site_plans.site_id"
        ).fetchone()
    assert plan is not None and plan[0] == 100 and plan[1] is True and str(plan[2]) == "1.5000"
    assert plan[3] == 60 and plan[4] == "shadow"


def test_token_create_and_key_revoke(settings: Settings) -> None:
    _, out, _ = run_cli(
        settings,
        "site",
        "create",
        "--name",
        "A",
        "--monthly-limit",
        "5",
        "--public-id",
        "site-a",
        "--json",
    )
    ingest_key = json.loads(out)["ingest_key"]
    code, out, _ = run_cli(settings, "token", "create", "--site", "site-a", "--role", "billing", "--json")
    assert code == 0
    token = json.loads(out)
    code, out, _ = run_cli(settings, "token", "create", "--platform", "--role", "admin", "--json")
    assert code == 0 and json.loads(out)["site_id"] is None
    with psycopg.connect(settings.database_url) as conn:
        assert authenticate(conn, token["token"]) is not None
    assert run_cli(settings, "key", "revoke", token["key_id"])[0] == 0
    assert run_cli(settings, "key", "revoke", ingest_key)[0] == 0
    with psycopg.connect(settings.database_url) as conn:
        assert authenticate(conn, token["token"]) is None
        assert authenticate(conn, ingest_key) is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["token", "create", "--site", "no-such-site", "--role", "viewer"], "unknown site"),
        (["token", "create", "--platform", "--role", "superuser"], "role must be one of"),
        (["token", "create", "--role", "viewer"], "exactly one of --site or --platform"),
        (["key", "revoke", "rk_user_doesnotexist_at_all"], "no key matches"),
        (
            [
                "site",
                "create",
                "--name",
                "x",
                "--monthly-limit",
                "5",
                "--hard-cap-multiplier",
                "abc",
            ],
            "must be a number",
        ),
        (
            [
                "site",
                "create",
                "--name",
                "x",
                "--monthly-limit",
                "5",
                "--hard-cap-multiplier",
                "0.5",
            ],
            "between 1 and",
        ),
        (
            ["site", "create", "--name", "x", "--monthly-limit", "5", "--public-id", "bad id!"],
            "public id must be",
        ),
    ],
)
def test_bad_input_gives_one_line_and_changes_nothing(settings: Settings, args: list[str], fragment: str) -> None:
    code, out, err = run_cli(settings, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in out + err
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM sites").fetchone() == (0,)


def test_duplicate_public_id_is_a_clear_conflict(settings: Settings) -> None:
    args = ["site", "create", "--name", "x", "--monthly-limit", "5", "--public-id", "dup-site"]
    assert run_cli(settings, *args)[0] == 0
    code, _, err = run_cli(settings, *args)
    assert code == 1 and "exists" in err and len(err.strip().splitlines()) == 1


def _subprocess(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_every_command_has_help() -> None:
    runner = CliRunner()
    stack = [([], main)]
    seen = 0
    while stack:
        path, command = stack.pop()
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        seen += 1
        for name, sub in getattr(command, "commands", {}).items():
            stack.append(([*path, name], sub))
    assert seen >= 10


def test_wrong_database_url_is_one_line_as_a_real_process(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
        "REVKERNEL_DATA_DIR": str(tmp_path),
    }
    out = _subprocess(env, "db", "status")
    assert out.returncode == 1
    assert out.stderr.startswith("error: cannot connect to PostgreSQL") and len(out.stderr.strip().splitlines()) == 1
    bad = _subprocess({"DATABASE_URL": "this is not a url", "REVKERNEL_DATA_DIR": str(tmp_path)}, "db", "status")
    assert bad.returncode == 1 and "bad" in bad.stderr and "Traceback" not in bad.stderr
    debug = _subprocess(env, "--debug", "db", "status")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_db_status_and_url_as_real_processes(settings: Settings) -> None:
    out = _subprocess(_env(settings), "db", "status")
    assert out.returncode == 0 and "0001_ledger" in out.stdout and "0 pending" in out.stdout
    url = _subprocess(_env(settings), "db", "url", "--role", "analyst")
    assert url.returncode == 0
    with psycopg.connect(url.stdout.strip()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("revkernel_analyst",)
