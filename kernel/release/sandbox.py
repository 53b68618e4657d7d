"""A throwaway store of record: a private embedded PostgreSQL in a temporary directory.

The gate and the chaos run break things on purpose (revoked grants, failing triggers, killed
servers); they do it here, never on the kernel's own data directory or the machine's 5432.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from kernel.db import embedded, migrations
from kernel.db.urls import role_conninfo
from kernel.errors import KernelError

__all__ = ["Sandbox", "sandbox"]

SANDBOX_DB = "revkernel_sandbox"
_log = logging.getLogger("kernel.release")


@dataclass(frozen=True)
class Sandbox:
    root: Path  # temporary directory holding everything below
    pg_dir: Path
    server: str  # superuser conninfo (database "postgres")
    owner: str  # owner conninfo of the migrated sandbox database

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def server_version(self) -> str:
        with psycopg.connect(self.owner) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


@contextmanager
def sandbox(prefix: str = "revkernel-sandbox-") -> Iterator[Sandbox]:
    """Start a private PostgreSQL, create and migrate one database; remove everything after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    pg_dir = root / "pg"
    try:
        server = embedded.start(pg_dir)
        with psycopg.connect(role_conninfo(server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SANDBOX_DB)))
        owner = role_conninfo(server, dbname=SANDBOX_DB)
        with psycopg.connect(owner) as conn:
            migrations.migrate(conn)
        yield Sandbox(root=root, pg_dir=pg_dir, server=server, owner=owner)
    finally:
        try:
            embedded.stop(pg_dir, mode="immediate")
        except (KernelError, OSError, subprocess.SubprocessError) as exc:
            _log.warning("sandbox PostgreSQL in %s did not stop cleanly: %s", pg_dir, exc)
        shutil.rmtree(root, ignore_errors=True)
