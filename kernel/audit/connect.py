"""How notebooks and reports reach the database: always as the read-only analyst role.

Two handles, both read-only:

- ``analyst_engine()``: an SQLAlchemy ``Engine`` (psycopg 3 driver, ``postgresql+psycopg://``)
  for notebooks. ``pd.read_sql(query, engine)`` works as analysts expect (pandas supports only
  SQLAlchemy connectables besides sqlite3), and the audit library builds its DataFrames through
  it. Every pooled connection is checked on checkout and re-opened when it died, and disposing
  the engine only empties the pool: widgets that run after a notebook's last cell still work.
- ``connect_analyst()``: one plain psycopg connection, for the fleet report's set-based queries.

Every session is forced read-only (``default_transaction_read_only``) on top of the role's own
grants, so even a URL naming a stronger role cannot change the ledger from a notebook; a write
fails with one line (``ReadOnlyQuery``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from kernel.db.connect import Database, connect_url
from kernel.errors import InputError
from kernel.settings import Settings

__all__ = [
    "ENGINE_POOL_SIZE",
    "AuditDB",
    "ReadOnlyQuery",
    "analyst_engine",
    "analyst_url",
    "connect_analyst",
    "pg_connection",
    "query",
    "read_frame",
    "read_limited",
]

# Connections a notebook's engine keeps open (widgets and cells share them one at a time).
ENGINE_POOL_SIZE = 2
# What every audit function accepts: a notebook's engine, or a plain psycopg connection.
AuditDB = Engine | psycopg.Connection[Any]
_READ_ONLY_SQL = "SET default_transaction_read_only = on"


class ReadOnlyQuery(InputError):
    """A query from a notebook tried to change something: the analyst connection is read-only."""

    code = "read_only"


def analyst_url(database_url: str = "", *, settings: Settings | None = None) -> str:
    """The analyst connection string: ``database_url`` if given, else the kernel's configured one.

    The configured one is ``ANALYST_DATABASE_URL``, else ``DATABASE_URL`` with the analyst user,
    else the embedded demo server (started if it is not running).
    """
    if database_url.strip():
        return database_url.strip()
    return Database(settings or Settings.from_env()).uri("analyst")


def connect_analyst(database_url: str = "", *, settings: Settings | None = None) -> psycopg.Connection[Any]:
    """An autocommit, read-only psycopg connection as the analyst role (see ``analyst_url``)."""
    conn = connect_url(analyst_url(database_url, settings=settings), autocommit=True)
    conn.execute(_READ_ONLY_SQL)
    return conn


def analyst_engine(database_url: str = "", *, settings: Settings | None = None) -> Engine:
    """An SQLAlchemy engine bound to the read-only analyst role, for notebooks and ``pd.read_sql``.

    The psycopg 3 dialect (``postgresql+psycopg``); connections come from ``connect_url`` (one
    readable error when the server is down), each forced read-only, autocommit, pre-pinged.
    """
    url = analyst_url(database_url, settings=settings)

    def connect() -> Any:
        return connect_url(url, autocommit=True)

    engine = sa.create_engine(
        "postgresql+psycopg://",
        creator=connect,
        pool_size=ENGINE_POOL_SIZE,
        max_overflow=0,
        pool_pre_ping=True,
        isolation_level="AUTOCOMMIT",
    ).execution_options(postgresql_readonly=True)

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute(_READ_ONLY_SQL)

    return engine


@contextmanager
def pg_connection(db: AuditDB) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection behind ``db`` for the audit's own queries (borrowed from the pool)."""
    if isinstance(db, psycopg.Connection):
        yield db
        return
    with db.connect() as conn:
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        yield driver


def read_frame(db: AuditDB, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """A query's rows as a DataFrame (columns named after the query's), read-only.

    Through SQLAlchemy when ``db`` is an engine (``pd.read_sql``, as a notebook would), through
    the cursor when it is a plain psycopg connection; both give the same frame.
    """
    if isinstance(db, psycopg.Connection):
        cur = db.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or ()])
    try:
        with db.connect() as conn:
            # A str goes to the driver as is (exec_driver_sql): psycopg's %(name)s parameters.
            return pd.read_sql(sql, conn, params=params, coerce_float=False)
    except (sa.exc.DBAPIError, pd.errors.DatabaseError) as exc:
        raise _one_line(exc) from exc


def read_limited(db: AuditDB, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """``read_frame`` of a query with a LIMIT and a ``count(*) OVER () AS total_rows`` column.

    The column moves to ``frame.attrs["total_rows"]``: how many rows matched before the LIMIT, so
    a table can say how many it did not show.
    """
    frame = read_frame(db, sql, params)
    total = int(frame["total_rows"].iloc[0]) if len(frame) else 0
    frame = frame.drop(columns=["total_rows"])
    frame.attrs["total_rows"] = total
    return frame


def query(db: AuditDB, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Ad-hoc SQL from a notebook: the rows as a DataFrame, or one clear line when it fails.

    Bind values through ``params`` (``%(name)s`` placeholders), never by formatting the string.
    """
    try:
        return read_frame(db, sql, params)
    except psycopg.Error as exc:
        raise _one_line(exc) from exc


def _one_line(exc: BaseException) -> InputError:
    # pandas wraps SQLAlchemy's error, which wraps psycopg's: report the database's own words.
    original: BaseException = exc
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error):
            original = seen
            break
        seen = seen.__cause__ or getattr(seen, "orig", None)
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    if isinstance(original, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.InsufficientPrivilege):
        return ReadOnlyQuery(f"the analyst connection is read-only: {text}")
    return InputError(f"query failed: {text}", code="query_failed")
