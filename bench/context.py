"""A private embedded PostgreSQL for benchmarks, so they never disturb the demo or test data."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.conninfo
from psycopg import sql

from kernel.db import embedded, migrations
from kernel.db.urls import role_conninfo
from kernel.settings import PROJECT_ROOT, Settings

BENCH_DATA = PROJECT_ROOT / ".data" / "bench"


@dataclass
class BenchContext:
    server: str  # superuser conninfo of the bench server
    data_dir: Path

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[BenchContext]:
        if BENCH_DATA.exists():
            embedded.stop(BENCH_DATA / "pg", mode="immediate")
            shutil.rmtree(BENCH_DATA)
        BENCH_DATA.mkdir(parents=True)
        server = embedded.start(BENCH_DATA / "pg")
        try:
            yield cls(server=server, data_dir=BENCH_DATA)
        finally:
            embedded.stop(BENCH_DATA / "pg", mode="fast")

    def fresh_database(self) -> Settings:
        """A new migrated database on the bench server, as kernel settings."""
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(role_conninfo(self.server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        owner = role_conninfo(self.server, dbname=name)
        with psycopg.connect(owner) as conn:
            migrations.migrate(conn)
        return self._settings(name)

    def clone_database(self, template: Settings, suffix: str) -> Settings:
        """A copy of a bench database (``CREATE DATABASE … TEMPLATE``; nobody may be connected to it)."""
        source = str(psycopg.conninfo.conninfo_to_dict(template.database_url or "")["dbname"])
        name = f"{source}_{suffix}"
        with psycopg.connect(role_conninfo(self.server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source)))
        return self._settings(name)

    def drop_database(self, settings: Settings) -> None:
        """Drop a bench database and its data directory (big benchmarks give their disk back)."""
        name = str(psycopg.conninfo.conninfo_to_dict(settings.database_url or "")["dbname"])
        with psycopg.connect(role_conninfo(self.server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        shutil.rmtree(settings.data_dir, ignore_errors=True)

    def _settings(self, name: str) -> Settings:
        owner = role_conninfo(self.server, dbname=name)
        return Settings(database_url=owner, data_dir=self.data_dir / name, cron_secret="bench-secret-0123456789")  # noqa: S106 (bench-only server)
