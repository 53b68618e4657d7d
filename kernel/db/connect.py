"""Where the store of record is, and connections to it as the owner, app or analyst role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from kernel.db import embedded
from kernel.db.urls import as_uri, explicit_role_url, role_conninfo
from kernel.errors import ConfigError, DatabaseUnavailable
from kernel.settings import Settings

__all__ = ["CONNECT_TIMEOUT_S", "Database", "Role", "connect_url"]

Role = Literal["owner", "app", "analyst"]
CONNECT_TIMEOUT_S = 10


def connect_url(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open one connection, turning every failure into one readable ``DatabaseUnavailable``."""
    try:
        return psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad database URL: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        detail = _first_line(exc)
        if "role" in detail and "does not exist" in detail:
            # The app and analyst roles are made by the migrations: the database was never set up.
            detail += " (run `revkernel db up` first: it applies the migrations and creates the roles)"
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {detail}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Database:
    """Resolves the server (embedded or ``DATABASE_URL``) and hands out role connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._owner: str | None = None

    def owner_conninfo(self, *, start: bool = True) -> str:
        """Owner connection string; starts the embedded server and creates its database if asked."""
        if self._owner is not None:
            return self._owner
        if self.settings.database_url is not None:
            try:
                conninfo_to_dict(self.settings.database_url)
            except psycopg.ProgrammingError as exc:
                raise ConfigError(f"bad DATABASE_URL: {_first_line(exc)}") from exc
            self._owner = self.settings.database_url
            return self._owner
        pg_dir = self.settings.pg_data_dir
        server = embedded.start(pg_dir) if start else embedded.server_uri(pg_dir)
        if server is None:
            raise DatabaseUnavailable(f"the embedded PostgreSQL in {pg_dir} is not running: run `revkernel db up`")
        self._ensure_database(server, self.settings.db_name)
        self._owner = role_conninfo(server, dbname=self.settings.db_name)
        return self._owner

    def conninfo(self, role: Role = "app", *, start: bool = True) -> str:
        owner = self.owner_conninfo(start=start)
        if role == "owner":
            return owner
        name = self.settings.app_role if role == "app" else self.settings.analyst_role
        explicit = explicit_role_url(self.settings, name)
        return explicit if explicit is not None else role_conninfo(owner, user=name)

    def uri(self, role: Role = "app", *, start: bool = True) -> str:
        return as_uri(self.conninfo(role, start=start))

    def connect(self, role: Role = "app", **kwargs: Any) -> psycopg.Connection[Any]:
        return connect_url(self.conninfo(role), **kwargs)

    @contextmanager
    def transaction(self, role: Role = "app") -> Iterator[psycopg.Connection[Any]]:
        """A connection whose work commits on success and rolls back on any exception."""
        with self.connect(role) as conn, conn.transaction():
            yield conn

    @staticmethod
    def _ensure_database(server_conninfo: str, dbname: str) -> None:
        with connect_url(role_conninfo(server_conninfo, dbname="postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if exists is None:
                # Another process may create it between our check and our CREATE: that is fine.
                with suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
