"""How notebooks and reports reach the database: always as the read-only analyst role."""

from __future__ import annotations

from typing import Any

import psycopg

from kernel.db.connect import Database, connect_url
from kernel.settings import Settings

__all__ = ["analyst_url", "connect_analyst"]


def analyst_url(database_url: str = "", *, settings: Settings | None = None) -> str:
    """The analyst connection string: ``database_url`` if given, else the kernel's configured one.

    The configured one is ``ANALYST_DATABASE_URL``, else ``DATABASE_URL`` with the analyst user,
    else the embedded demo server (started if it is not running).
    """
    if database_url.strip():
        return database_url.strip()
    return Database(settings or Settings.from_env()).uri("analyst")


def connect_analyst(database_url: str = "", *, settings: Settings | None = None) -> psycopg.Connection[Any]:
    """An autocommit, read-only connection as the analyst role (see ``analyst_url``).

    Every session is forced read-only as well, so a URL that names a stronger role still cannot
    change the ledger from a notebook.
    """
    conn = connect_url(analyst_url(database_url, settings=settings), autocommit=True)
    conn.execute("SET default_transaction_read_only = on")
    return conn
