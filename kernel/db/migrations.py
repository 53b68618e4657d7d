"""Migration runner: ordered, one transaction each, checksummed, and refusing edited history.

Migrations are ``sql/migrations/NNNN_name.sql``. Each is applied in its own transaction and
recorded in ``schema_migrations`` with the SHA-256 of its bytes. An applied migration whose file
has changed since is refused (``MigrationChecksumMismatch``): history is additive, a change is a
new migration. After migrating, ``sql/roles.sql`` (idempotent) re-grants the app and analyst roles
on every table, so new tables are covered. The service calls ``require_current`` at start and
refuses to run on a database that is behind the code (runbook: migration first, then deploy).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kernel.errors import MigrationChecksumMismatch, MigrationError, SchemaBehind
from kernel.settings import PROJECT_ROOT

__all__ = [
    "MIGRATIONS_DIR",
    "ROLES_SQL",
    "Migration",
    "MigrationStatus",
    "apply_roles",
    "discover",
    "migrate",
    "require_current",
    "status",
]

MIGRATIONS_DIR = PROJECT_ROOT / "sql" / "migrations"
ROLES_SQL = PROJECT_ROOT / "sql" / "roles.sql"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# One advisory lock key for "migrations in progress" so two `db migrate` never interleave.
_MIGRATION_LOCK_KEY = 0x72_6B_6D_69_67  # "rkmig"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    sha256: str

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class MigrationStatus:
    name: str
    sha256: str
    state: str  # applied | pending | modified | unknown (in the database, not in the code)
    applied_at: datetime | None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The code's migrations, in order; a misnamed or duplicate-numbered file is an error."""
    found: list[Migration] = []
    numbers: set[str] = set()
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        if match.group(1) in numbers:
            raise MigrationError(f"two migrations share number {match.group(1)}: {path.name}")
        numbers.add(match.group(1))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(Migration(name=path.stem, path=path, sha256=digest))
    return found


def _applied(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, datetime]]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT name, sha256, applied_at FROM schema_migrations").fetchall()
    return {name: (digest, at) for name, digest, at in rows}


def status(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[MigrationStatus]:
    """Every migration known to the code or the database, with its state."""
    applied = _applied(conn)
    result: list[MigrationStatus] = []
    for mig in discover(directory):
        if mig.name not in applied:
            result.append(MigrationStatus(mig.name, mig.sha256, "pending", None))
            continue
        digest, at = applied[mig.name]
        state = "applied" if digest == mig.sha256 else "modified"
        result.append(MigrationStatus(mig.name, mig.sha256, state, at))
    known = {m.name for m in result}
    for name, (digest, at) in sorted(applied.items()):
        if name not in known:
            result.append(MigrationStatus(name, digest, "unknown", at))
    return result


def _refuse_modified(states: list[MigrationStatus]) -> None:
    modified = [s.name for s in states if s.state == "modified"]
    if modified:
        raise MigrationChecksumMismatch(
            f"applied migration {modified[0]} was edited after it was applied; "
            "restore it and add a new migration instead"
        )


def migrate(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order as the owner; return the names applied now.

    The connection is switched to autocommit so that each migration is exactly one explicit
    transaction (a failed migration leaves nothing behind).
    """
    conn.autocommit = True
    with conn.transaction():
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
    applied_now: list[str] = []
    try:
        with conn.transaction():
            conn.execute(_CREATE_TABLE)
        states = status(conn, directory)
        _refuse_modified(states)
        pending = {s.name for s in states if s.state == "pending"}
        for mig in discover(directory):
            if mig.name not in pending:
                continue
            try:
                with conn.transaction():
                    conn.execute(mig.sql.encode("utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (name, sha256) VALUES (%s, %s)",
                        (mig.name, mig.sha256),
                    )
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MigrationError(f"migration {mig.name} failed and was rolled back: {first}") from exc
            applied_now.append(mig.name)
        apply_roles(conn)
    finally:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


def apply_roles(conn: psycopg.Connection[Any], roles_sql: Path = ROLES_SQL) -> None:
    """Create/refresh the app and analyst roles and their grants (idempotent)."""
    conn.autocommit = True
    dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None
    with conn.transaction():
        conn.execute(roles_sql.read_text(encoding="utf-8").encode("utf-8"))
        for role in ("revkernel_app", "revkernel_analyst"):
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname[0]), sql.Identifier(role))
            )


def require_current(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> None:
    """Raise ``SchemaBehind`` unless every migration of the code is applied unchanged."""
    states = status(conn, directory)
    _refuse_modified(states)
    pending = [s.name for s in states if s.state == "pending"]
    if pending:
        raise SchemaBehind(
            f"database schema is behind the code ({len(pending)} pending, first {pending[0]}): "
            "run `revkernel db migrate` before starting the service"
        )
