"""A throwaway embedded PostgreSQL holding the audit sample, for nbval and golden outputs."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from kernel.audit.sample import seed_demo_sample
from kernel.db import embedded, migrations
from kernel.db.urls import role_conninfo

SAMPLE_DB = "rk_notebooks"


def create_sample_database(server: str, name: str = SAMPLE_DB) -> str:
    """Create (fresh), migrate and seed database ``name`` on ``server``; return its owner conninfo."""
    with psycopg.connect(role_conninfo(server, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = role_conninfo(server, dbname=name)
    with psycopg.connect(owner, autocommit=True) as conn:
        migrations.migrate(conn)
        seed_demo_sample(conn)
    return owner


def start_sample_server(data_dir: Path) -> str:
    return embedded.start(data_dir)
