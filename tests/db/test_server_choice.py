"""Embedded by default; with DATABASE_URL the kernel uses that server and starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kernel.db import embedded
from kernel.settings import Settings

DEMO_TIMEOUT_S = 900
MACHINE_PG = os.environ.get("TEST_SYSTEM_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def cli(env: dict[str, str], *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env,
    )


@pytest.fixture
def machine_database() -> Iterator[str]:
    try:
        admin = psycopg.connect(MACHINE_PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the machine's PostgreSQL is required under CI=true: {exc}")
        pytest.skip(f"no PostgreSQL at {MACHINE_PG}: {exc}")
    name = f"revkernel_t_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield MACHINE_PG.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_database_url_on_the_machines_postgresql_starts_nothing(machine_database: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": machine_database, "REVKERNEL_DATA_DIR": str(tmp_path)}
    up = cli(env, "db", "up")
    assert up.returncode == 0, up.stderr
    assert "DATABASE_URL" in up.stdout
    assert not (tmp_path / "pg").exists()  # no embedded server was started
    status = cli(env, "db", "status")
    assert "0 pending" in status.stdout
    made = cli(env, "site", "create", "--name", "on 5432", "--monthly-limit", "3", "--json")
    assert made.returncode == 0, made.stderr
    with psycopg.connect(machine_database) as conn:
        assert conn.execute("SELECT name FROM sites").fetchall() == [("on 5432",)]


def test_embedded_server_lifecycle_from_the_cli(tmp_path: Path) -> None:
    env = {"REVKERNEL_DATA_DIR": str(tmp_path / "data")}
    pg_dir = Settings.from_env(env).pg_data_dir
    try:
        up = cli(env, "db", "up")
        assert up.returncode == 0, up.stderr
        assert embedded.is_running(pg_dir)
        url = cli(env, "db", "url").stdout.strip()
        assert str(pg_dir) in url or "host=" in url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1
        again = cli(env, "db", "up")
        assert again.returncode == 0 and "0 migration(s) applied" in again.stdout
        assert cli(env, "db", "stop").stdout.strip() == "stopped"
        assert not embedded.is_running(pg_dir)
        down = cli(env, "db", "url")
        assert down.returncode == 1 and "not running" in down.stderr
    finally:
        embedded.stop(pg_dir, mode="immediate")


@pytest.mark.timeout(2 * DEMO_TIMEOUT_S + 60)
def test_demo_twice_changes_nothing_the_second_time(settings: Settings) -> None:
    assert settings.database_url is not None
    env = {"DATABASE_URL": settings.database_url, "REVKERNEL_DATA_DIR": str(settings.data_dir)}

    def counts() -> tuple[int, ...]:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM sites), (SELECT count(*) FROM api_keys),"
                " (SELECT count(*) FROM site_plans)"
            ).fetchone()
            assert row is not None
            return tuple(row)

    # DATABASE_URL: the demo needs --force (an empty database). The whole demo renders reports:
    # a bound for a machine shared by several test runs, not a speed target.
    first = cli(env, "demo", "--force", timeout_s=DEMO_TIMEOUT_S)
    assert first.returncode == 0, first.stderr
    after_first = counts()
    second = cli(env, "demo", "--force", timeout_s=DEMO_TIMEOUT_S)
    assert second.returncode == 0, second.stderr
    assert counts() == after_first
    assert after_first[0] >= 4
    assert "created" in first.stdout and "exists" in second.stdout
