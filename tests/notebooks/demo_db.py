"""The real `make demo` data in a throwaway database, for nbval and the notebooks' golden outputs."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from kernel.db.urls import role_conninfo

def create_demo_database(server: str, name: str, data_dir: Path) -> str:
    """Load the real `make demo` data into a fresh database ``name``: the demo tenants, their two
    months of traffic over real HTTP (a live `revkernel serve`), then the demo's crons (reconcile,
    freeze, relay, watchtower) and its support case. Returns its owner conninfo: the same database
    as `make demo` leaves, so the golden outputs hold on it."""
    from kernel.db.connect import Database
    from kernel.demo import DemoRun, demo_steps
    from kernel.settings import Settings

    with psycopg.connect(role_conninfo(server, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = role_conninfo(server, dbname=name)
    settings = Settings(database_url=owner, data_dir=data_dir)
    run = DemoRun(settings=settings, db=Database(settings), echo=lambda line: None, force=True)
    steps = dict(demo_steps())
    for step in ("database", "tenants", "traffic", "crons"):
        steps[step](run)
    # The support case of `make demo` (a credit on demo-overage 2026-10), its packet kept with the data.
    from kernel.demo.disputes import run_case_demo

    run_case_demo(run, packet_dir=data_dir / "disputes")
    return owner
