"""The export's bytes for the async server: libpq's COPY OUT drained without a coroutine per row.

Why not ``AsyncCursor.copy``: libpq hands COPY data over one row at a time, and psycopg's async
copy awaits once per row, which made the HTTP export about three times slower than the COPY
itself. Here the statement runs on a connection of its own and ``PGconn.get_copy_data`` (libpq
``PQgetCopyData`` in non-blocking mode, through psycopg's documented ``pq`` wrapper) takes every
row already received; the coroutine only awaits when the socket is empty. Rows are regrouped into
chunks of about ``EXPORT_CHUNK_BYTES``; while the HTTP layer sends a chunk nothing is read, so a
slow client stalls PostgreSQL instead of filling memory.

The statement is the one ``export_chunks`` runs (the CLI and packets), with its two parameters
bound client-side by psycopg, so both paths give the same bytes.

Failure: an error from the server (backend terminated, statement timeout) or a lost connection
raises ``ExportFailed`` in the middle of the stream; the route lets it escape so the transfer is
cut. A consumer that stops early closes the connection, which ends the COPY on the server.
At most ``MAX_CONCURRENT_EXPORTS`` run per process; beyond that a request gets 503 ``export_busy``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import pq

from kernel.db.connect import CONNECT_TIMEOUT_S
from kernel.errors import KernelError
from kernel.export.csv import EXPORT_CHUNK_BYTES, EXPORT_HEADER, EXPORT_STATEMENT_TIMEOUT_MS, export_copy_statement

__all__ = [
    "MAX_CONCURRENT_EXPORTS",
    "ExportBusy",
    "ExportFailed",
    "ExportSlots",
    "export_chunks_async",
]

MAX_CONCURRENT_EXPORTS = 8  # per process; each holds one PostgreSQL connection while it streams
RETRY_AFTER_S = 5


class ExportBusy(KernelError):
    """Every export slot of this process is taken; retry shortly."""

    code = "export_busy"
    http_status = 503


class ExportFailed(KernelError):
    """The database failed in the middle of an export: the transfer must be cut."""

    code = "export_failed"
    http_status = 503


class ExportSlots:
    """A counting limit on concurrent exports (thread-safe, never blocks)."""

    def __init__(self, limit: int = MAX_CONCURRENT_EXPORTS) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def available(self) -> int:
        with self._lock:
            return self.limit - self._used

    def try_acquire(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def release(self) -> None:
        with self._lock:
            assert self._used > 0, "release without acquire"
            self._used -= 1


async def _wait_socket(fd: int, *, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


def _failed(pgconn: pq.abc.PGconn, result: pq.abc.PGresult | None = None) -> ExportFailed:
    source = result.error_message if result is not None else pgconn.error_message
    detail = source.decode("utf-8", "replace").strip().splitlines()
    return ExportFailed(f"the database failed mid-export: {detail[0] if detail else 'connection lost'}")


def _consume_input(pgconn: pq.abc.PGconn) -> None:
    try:
        pgconn.consume_input()
    except psycopg.OperationalError as exc:
        raise _failed(pgconn) from exc


async def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    while True:
        _consume_input(pgconn)
        if not pgconn.is_busy():
            return pgconn.get_result()
        await _wait_socket(pgconn.socket)


async def _copy_out(pgconn: pq.abc.PGconn, statement: bytes, chunk_bytes: int) -> AsyncIterator[bytes]:
    try:
        pgconn.send_query(statement)
    except psycopg.OperationalError as exc:
        raise _failed(pgconn) from exc
    while pgconn.flush():
        await _wait_socket(pgconn.socket, write=True)
    result = await _next_result(pgconn)
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        raise _failed(pgconn, result)
    buffer = bytearray()
    get_copy_data = pgconn.get_copy_data
    while True:
        try:
            size, data = get_copy_data(1)  # non-blocking: 0 means "nothing buffered yet"
        except psycopg.OperationalError as exc:
            raise _failed(pgconn) from exc
        if size > 0:
            buffer += data
            if len(buffer) >= chunk_bytes:
                yield bytes(buffer)
                buffer.clear()
        elif size == 0:
            await _wait_socket(pgconn.socket)
            _consume_input(pgconn)
        elif size == -1:
            break
        else:
            raise _failed(pgconn)
    # The COPY's own outcome comes after its data: a failure here still cuts the transfer.
    while (result := await _next_result(pgconn)) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise _failed(pgconn, result)
    if buffer:
        yield bytes(buffer)


async def export_chunks_async(
    conninfo: str,
    site_id: uuid.UUID,
    year_month: str,
    slots: ExportSlots,
    *,
    chunk_bytes: int = EXPORT_CHUNK_BYTES,
) -> AsyncIterator[bytes]:
    """The dispute CSV of a site-month as chunks, header first, on a connection of its own.

    Raises:
        ExportBusy: no export slot is free (before any byte is produced).
        psycopg.OperationalError: the export's own connection could not be opened (after the
            header went out: the transfer is cut like any other mid-stream failure).
        ExportFailed: the database failed mid-stream.
    """
    if not slots.try_acquire():
        raise ExportBusy(f"{slots.limit} exports are running in this process; retry in {RETRY_AFTER_S} s")
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(EXPORT_STATEMENT_TIMEOUT_MS),))
        # Parameters bound client-side with psycopg's own literal quoting (COPY takes no $n).
        text = export_copy_statement().as_string(conn)
        statement = psycopg.AsyncClientCursor(conn).mogrify(text, (site_id, year_month))
        yield EXPORT_HEADER
        async for chunk in _copy_out(conn.pgconn, statement.encode("utf-8"), chunk_bytes):
            yield chunk
    finally:
        slots.release()
        if conn is not None:
            await conn.close()
