"""Resolving a ledger call whose outcome is unknown (issue 11 §1): never answer "nothing written"
for a transaction that may have committed.

The ledger statement is sent on an autocommit connection, so the statement is the transaction.
Its outcome is *known* when the server answered: rows (committed) or an ERROR on a live
connection (rolled back). It is *unknown* when the service stopped waiting (its ledger timeout,
``REVKERNEL_LEDGER_TIMEOUT_S``) or the connection broke after the statement was sent. Then the
transaction can have committed: a commit waiting for a synchronous standby ignores
``statement_timeout``, and cancelling it leaves it committed locally with only a WARNING; a
connection cut after the query went out leaves the backend running it to the end.

Resolution, bounded by ``RESOLVE_TIMEOUT_S``, on a *fresh* connection (never one of the pool,
which may be broken), with its own connect and statement timeouts:

1. **End the original backend first.** Until the backend that ran the statement has finished its
   transaction, a lookup can see "absent" for rows that commit a moment later (a commit waiting
   for a standby is not yet visible to other sessions). The service captured that backend's pid
   before sending; if ``pg_stat_activity`` still shows it in a transaction, it is terminated
   (``pg_terminate_backend``: the app role may signal its own role's backends) and the
   resolution waits, bounded, until it is gone. The original connection was closed before, so
   the pool can never hand that backend to another request.
2. **Look the request's keys up** (``queries.LOOKUP_KEYS``, one statement): a row written with
   this request's ``request_id`` is this request's (answered exactly as a first-time success
   would have been: status, quota headers and body come from the row); a row of another request
   is a duplicate; a cleaned-key record is an archived duplicate.

- ``committed``: every key is in the ledger (this request's rows, or earlier ones) → answered as
  the ledger holds them;
- ``absent``: the backend provably ended and a key is missing, so the transaction did not commit
  → 500 ``billing_gate_closed`` (header ``x-opsmantik-ledger-outcome: not_written``);
- ``unknown``: the database cannot be reached, or the backend cannot be ended, within the bound
  → 500 with ``"status": "billing_gate_closed"`` (golden rule 2) but ``"error":
  "ledger_outcome_unknown"`` and ``x-opsmantik-ledger-outcome: unknown``.

Every resolution counts ``billing_ledger_ambiguous_total{resolution}`` and logs one line with
the site, the request id and the keys. After ``unknown`` a client must retry with the same
client keys (``event_id`` / ``Idempotency-Key``): a derived (v1) key is bound to a 5 s server-time
bucket, so a later retry of a v1 event may be a second event if the first one did commit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from dataclasses import dataclass, replace
from typing import Literal

import psycopg

from kernel import metrics
from kernel.ingest import queries
from kernel.ingest.queries import LedgerResult

__all__ = [
    "H_LEDGER_OUTCOME",
    "RESOLVE_TIMEOUT_S",
    "Resolution",
    "outcome_unknown",
    "resolve_outcome",
    "statement_timeout_ms",
]

_log = logging.getLogger("kernel.ingest.outcome")

H_LEDGER_OUTCOME = "x-opsmantik-ledger-outcome"
RESOLVE_TIMEOUT_S = 3.0  # the whole resolution: connect, end the backend, look up
RESOLVE_CONNECT_TIMEOUT_S = 2  # libpq connect_timeout (whole seconds, at least 2)
RESOLVE_STATEMENT_TIMEOUT_MS = 1000
BACKEND_END_WAIT_MS = 1500  # pg_terminate_backend(pid, timeout): wait for it to exit
BACKEND_POLL_S = 0.02
RESOLVE_CONCURRENCY = 4  # fresh connections per process at once; more waiting → unknown
# The server bounds the ledger statement below the client's own timeout, so a lock wait or a slow
# statement fails on the server (a known rollback) before the client has to give up.
STATEMENT_TIMEOUT_SHARE = 0.8
# Connection-level failures: the server may have committed before the link broke.
_LINK_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03")

ResolutionKind = Literal["committed", "absent", "unknown"]
# One bound per event loop (a semaphore belongs to the loop it first waited on).
_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Resolution:
    """How an unknown outcome was resolved; ``results`` (one per event) only when ``committed``."""

    kind: ResolutionKind
    results: list[LedgerResult] | None = None
    detail: str = ""


def statement_timeout_ms(ledger_timeout_s: float) -> int:
    """The server-side ``statement_timeout`` of the ingest pool, below the client's ledger timeout."""
    return max(100, int(ledger_timeout_s * 1000 * STATEMENT_TIMEOUT_SHARE))


def outcome_unknown(exc: BaseException, connection_broken: bool) -> bool:
    """Whether a ledger statement that was sent and then raised ``exc`` may have committed.

    An ERROR the server sent on a live connection means it rolled the transaction back; the
    service giving up (timeout, cancel) or a broken link leaves the outcome unknown.
    """
    if isinstance(exc, TimeoutError | asyncio.CancelledError | OSError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        return connection_broken or state is None or state.startswith(_LINK_SQLSTATE_PREFIXES)
    return False


def _guard() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    semaphore = _semaphores.get(loop)
    if semaphore is None:
        semaphore = _semaphores[loop] = asyncio.Semaphore(RESOLVE_CONCURRENCY)
    return semaphore


async def resolve_outcome(
    conninfo: str,
    *,
    site_id: uuid.UUID,
    request_id: str,
    keys: list[str],
    backend_pid: int | None,
    reason: str,
) -> Resolution:
    """Resolve the outcome of this request's ledger call (module docstring); counts and logs it.

    ``backend_pid`` is the backend that ran the statement, or None when it is known to be over
    (the statement's result arrived, only reading the originals failed).
    """
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S), _guard():
            conn = await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=RESOLVE_CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={RESOLVE_STATEMENT_TIMEOUT_MS}",
                application_name="revkernel-ledger-resolve",
            )
            async with conn:
                if backend_pid is not None and not await _end_backend(conn, backend_pid):
                    resolution = Resolution("unknown", detail=f"backend {backend_pid} did not end")
                else:
                    found = await queries.lookup_keys(conn, site_id, keys)
                    resolution = judge(keys, found, request_id)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        resolution = Resolution("unknown", detail=f"{type(exc).__name__}: {exc}".strip())
    metrics.LEDGER_AMBIGUOUS.labels(resolution=resolution.kind).inc()
    log = _log.error if resolution.kind == "unknown" else _log.warning
    log(
        "ledger outcome of request %s for site %s was unknown (%s); resolved %s%s; keys %s",
        request_id,
        site_id,
        reason,
        resolution.kind,
        f" ({resolution.detail})" if resolution.detail else "",
        ",".join(keys),
    )
    return resolution


async def _end_backend(conn: psycopg.AsyncConnection[tuple[object, ...]], pid: int) -> bool:
    """True once backend ``pid`` is gone or idle (its transaction over), terminating it if needed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BACKEND_END_WAIT_MS / 1000
    terminated = False
    while True:
        cur = await conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
        if row is None or row[0] == "idle":
            return True
        if not terminated:
            # Still in its transaction (waiting for a lock, a standby, a disk): end it. A commit
            # waiting for a standby stays committed locally; anything else rolls back.
            await conn.execute("SELECT pg_terminate_backend(%s, %s)", (pid, BACKEND_END_WAIT_MS))
            terminated = True
            continue
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(BACKEND_POLL_S)


def judge(keys: list[str], found: dict[str, LedgerResult], request_id: str) -> Resolution:
    """Decide from what the ledger holds for the request's ``keys`` once its backend ended.

    The first occurrence of a key written by this request is this request's new row (as the
    ledger transaction returned it); a later occurrence in the same batch, and rows of other
    requests, are duplicates. A missing key means the transaction did not commit.
    """
    results: list[LedgerResult] = []
    ours: set[str] = set()
    missing = [key for key in keys if key not in found]
    if missing:
        written = sorted(k for k, r in found.items() if r.request_id == request_id and r.archived_month is None)
        if written:
            # Impossible for one atomic statement: say so instead of guessing.
            return Resolution("unknown", detail=f"keys {written} written by this request but {missing} missing")
        return Resolution("absent", detail=f"{len(missing)} key(s) not in the ledger")
    for key in keys:
        result = found[key]
        if result.request_id == request_id and result.archived_month is None and key not in ours:
            ours.add(key)
            result = replace(result, inserted=True)
        results.append(result)
    return Resolution("committed", results)
