"""Shared fixtures: a real embedded PostgreSQL per test session, a fresh database per test.

The session starts one embedded server in a temporary directory, migrates a template database
once, and gives each test that asks for ``database`` its own copy (``CREATE DATABASE … TEMPLATE``,
tens of milliseconds), so tests never see each other's rows and need no cleanup.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kernel.db import embedded, migrations
from kernel.db.connect import Database
from kernel.db.urls import role_conninfo
from kernel.settings import Settings

TEMPLATE_DB = "rk_template"
TEST_CRON_SECRET = "test-cron-secret-0123456789"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Superuser conninfo of a private embedded PostgreSQL for this test session (or worker)."""
    data_dir = tmp_path_factory.mktemp("pg") / "data"
    uri = embedded.start(data_dir)
    yield uri
    embedded.stop(data_dir, mode="immediate")


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    with psycopg.connect(role_conninfo(pg_server, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    with psycopg.connect(role_conninfo(pg_server, dbname=TEMPLATE_DB)) as conn:
        migrations.migrate(conn)
    return TEMPLATE_DB


def clone_database(pg_server: str, template: str) -> str:
    """A new database copied from ``template``; returns its owner conninfo."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(role_conninfo(pg_server, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
        roles = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname IN ('revkernel_app', 'revkernel_analyst')"
        ).fetchall()
        for (role,) in roles:
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(role))
            )
    return role_conninfo(pg_server, dbname=name)


@pytest.fixture
def settings(pg_server: str, template_db: str, tmp_path: Path) -> Settings:
    """Settings of a kernel pointed at a fresh, migrated database of its own."""
    return Settings(
        database_url=clone_database(pg_server, template_db),
        data_dir=tmp_path / "data",
        cron_secret=TEST_CRON_SECRET,
        commit="testcommit",
    )


@pytest.fixture
def database(settings: Settings) -> Database:
    return Database(settings)


@pytest.fixture
def app_conn(database: Database) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as the application role."""
    with database.connect("app", autocommit=True) as conn:
        yield conn


@pytest.fixture
def owner_conn(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with database.connect("owner", autocommit=True) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_url_or_skip() -> str:
    """The machine's Redis; skipped with a reason when absent, but a failure under CI=true."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is required under CI=true: {exc}")
        pytest.skip(f"no Redis reachable at {url}: {exc}")
    return url
