"""The ingest pipeline of SPEC §4.1: one function owns the order, helpers compute.

Order, per request: size → auth → rate limit → validate → classify → ledger transaction → respond.

Decisions written down here (SPEC is silent on them):
- A keyed request is authenticated before its body is parsed. A keyless request (deployed browser
  trackers) names its site in the body (``s``), so its JSON is parsed as part of auth: bad JSON is
  then a 400 before any 401. Schema validation (422) always comes after the rate limit.
- ``s`` (top level or on any event) naming another site → 403 ``site_mismatch``, nothing written.
- Keyless requests are accepted only for sites with ``ingest_auth = 'public'`` and an ``Origin``
  on the site's allowlist; a keyed site with an allowlist refuses other browser origins (403
  ``origin_not_allowed``); a keyed site without an allowlist does not check ``Origin`` and gets no
  CORS headers (server-to-server use).
- ``Idempotency-Key`` names one event: sent with a batch it is a 422 (use ``event_id`` per event).
  The header wins over ``event_id`` for a single event.
- A duplicate counts ``dedup_count`` of the month it arrives in (the site-month row the ledger
  transaction holds), also when it turns out to be a 409 conflict: it is the count of requests
  that hit an existing key. Duplicates are never counted, billed or published again.
- A duplicate of a quota-rejected event stays rejected, also next month: the ledger row is the
  evidence, and re-admitting it would move usage into another month. A new event needs a new key.
- ``billing_disabled`` (mode ``off`` or ``BILLING_ENABLED=false``) wins over the non-billable
  classes; such events carry no quota header (nothing is metered).
- Shadow mode answers 200 like an accepted event, with the quota remaining it computed.
- Site and key lookups go through the bounded, gated caches of ``kernel.tenants.directory``: a
  revoked key is refused within ``FOUND_TTL_S``, an unknown key or site id is remembered as
  unknown, and a flood of them costs a few database connections at most, never the ingest pool
  (busy: 503 ``lookup_busy`` with ``Retry-After``). The plan itself is always read inside the
  ledger transaction, so quota and billing mode are exact at once.
- The database unreachable for auth is the same 500 ``billing_gate_closed`` as a failed ledger write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from kernel import metrics
from kernel.ingest import queries
from kernel.ingest.clients import ClientHasher, load_client_hash_secret
from kernel.ingest.keys import KeyedEvent, keyed_event, server_ms
from kernel.ingest.outcome import H_LEDGER_OUTCOME, outcome_unknown, resolve_outcome
from kernel.ingest.queries import LedgerResult
from kernel.ingest.ratelimit import REDIS_TIMEOUT_S, RateDecision, RateLimitBusy, SiteRateLimiter
from kernel.ingest.schemas import MAX_BODY_BYTES, SchemaViolation, decode_json, to_events
from kernel.lookup_cache import LookupBusy
from kernel.months import next_month_start, year_month_of
from kernel.tenants.directory import CredentialDirectory, credentials_of
from kernel.tenants.sites import Site
from kernel.web import AppState

__all__ = [
    "EXPOSED_HEADERS",
    "Decision",
    "IngestCall",
    "IngestRuntime",
    "Reply",
    "decide",
    "handle_ingest",
    "preflight_allowed",
    "runtime_of",
]

_log = logging.getLogger("kernel.ingest")

PUBLIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,63}$")  # sites.public_id (migration 0001)
LEDGER_ATTEMPTS = 2  # a key cleaned up during the write (RK001) is retried once
SQLSTATE_KEY_CLEANED = "RK001"  # ingest_write, migration 0010
SQLSTATE_MONTH_CLOSED = "RK002"
MONTH_CLOSED_RETRY_AFTER_S = 60
EXTRAS_KEY = "ingest"
UNKNOWN_CLIENT = "unknown"
MAX_RATE_UNITS = 1000  # a request counts at most this many events (a batch over 100 fails validation anyway)

H_QUOTA_REMAINING = "x-opsmantik-quota-remaining"
H_QUOTA_EXCEEDED = "x-opsmantik-quota-exceeded"
H_OVERAGE = "x-opsmantik-overage"
H_DEDUP = "x-opsmantik-dedup"
H_RATELIMIT = "x-opsmantik-ratelimit"
H_DEGRADED = "x-opsmantik-degraded"
H_RATELIMIT_SCOPE = "x-opsmantik-ratelimit-scope"  # site | client: which window answered the 429
EXPOSED_HEADERS = ", ".join(
    [
        H_QUOTA_REMAINING,
        H_QUOTA_EXCEEDED,
        H_OVERAGE,
        H_DEDUP,
        H_RATELIMIT,
        H_RATELIMIT_SCOPE,
        H_DEGRADED,
        H_LEDGER_OUTCOME,
        "retry-after",
        "x-request-id",
    ]
)


@dataclass(frozen=True)
class IngestCall:
    """The HTTP request, reduced to what the pipeline reads."""

    body: bytes
    bearer: str | None
    origin: str | None
    idempotency_key: str | None
    request_id: str
    client_address: str | None = None  # behind trusted proxies only (kernel.ingest.clients)


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    cors_origin: str | None = None  # echo in Access-Control-Allow-Origin
    outcome: str = "error"  # metric label


@dataclass(frozen=True)
class Decision:
    """The billing decision for one new event (the Python twin of ``queries.WRITE_EVENT``)."""

    billable: bool
    billing_state: str
    billing_reason: str
    response_status: int
    quota_remaining: int | None


def decide(
    *,
    position: int,
    quota_limit: int,
    hard_cap: int,
    billing_mode: str,
    billing_enabled: bool,
    event_class: str | None,
) -> Decision:
    """Decide an event that is the ``position``-th billable candidate of its month (SPEC §4.1)."""
    if not billing_enabled or billing_mode == "off":
        return Decision(False, "ACCEPTED", "billing_disabled", 200, None)
    if event_class is not None:
        return Decision(False, "ACCEPTED", event_class, 200, max(quota_limit - (position - 1), 0))
    if position <= quota_limit:
        verdict = "within_quota"
    elif position <= hard_cap:
        verdict = "overage"
    else:
        verdict = "rejected_quota"
    if billing_mode == "shadow":
        return Decision(True, "ACCEPTED", f"shadow_{verdict}", 200, max(quota_limit - position, 0))
    if verdict == "within_quota":
        return Decision(True, "ACCEPTED", verdict, 200, quota_limit - position)
    if verdict == "overage":
        return Decision(True, "OVERAGE", verdict, 200, 0)
    return Decision(False, "REJECTED_QUOTA", verdict, 429, 0)


@dataclass
class IngestRuntime:
    """Per-process state of ingest: the rate limiter and the client hasher (in ``AppState.extras``)."""

    limiter: SiteRateLimiter
    clients: ClientHasher

    async def close(self) -> None:
        await self.limiter.close()


def runtime_of(state: AppState) -> IngestRuntime:
    runtime = state.extras.get(EXTRAS_KEY)
    if runtime is None:
        extra = state.settings.extra
        limiter = SiteRateLimiter(
            state.settings.redis_url,
            state.clock,
            prefix=extra.get("REVKERNEL_REDIS_PREFIX", "rk"),
            timeout_s=state.settings.seconds("REVKERNEL_REDIS_TIMEOUT_S", REDIS_TIMEOUT_S),
        )
        runtime = IngestRuntime(limiter, ClientHasher(load_client_hash_secret(state.settings)))
        state.extras[EXTRAS_KEY] = runtime
    assert isinstance(runtime, IngestRuntime)
    return runtime


class _Stop(Exception):
    """Ends the pipeline early with a reply (an error answer, never a bug)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _error(status: int, code: str, message: str, *, outcome: str, **extra: Any) -> _Stop:
    body: dict[str, Any] = {"ok": False, "status": code, "error": code, "message": message, **extra}
    return _Stop(Reply(status, body, outcome=outcome))


def _gate_closed(site_id: uuid.UUID | None, what: str, exc: BaseException) -> _Stop:
    """Golden rule 2: nothing was written, nothing is published or counted."""
    metrics.GATE_CLOSED.inc()
    _log.error("billing gate closed for site %s: %s failed: %s: %s", site_id, what, type(exc).__name__, exc)
    reply = Reply(
        500,
        {"ok": False, "status": "billing_gate_closed", "error": "billing_gate_closed"},
        {H_LEDGER_OUTCOME: "not_written"},
        outcome="gate_closed",
    )
    return _Stop(reply)


def _outcome_unknown(site_id: uuid.UUID, exc: BaseException) -> _Stop:
    """The ledger call may have committed and the database could not tell us (``outcome``)."""
    metrics.GATE_CLOSED.inc()
    _log.error("billing gate closed for site %s: ledger outcome unknown: %s: %s", site_id, type(exc).__name__, exc)
    body = {
        "ok": False,
        "status": "billing_gate_closed",
        "error": "ledger_outcome_unknown",
        "message": "the ledger could not confirm whether this request was written; retry with the same event_id",
    }
    return _Stop(Reply(500, body, {H_LEDGER_OUTCOME: "unknown"}, outcome="gate_closed"))


def _month_closed(site_id: uuid.UUID, exc: BaseException) -> _Stop:
    """The site-month is closed and so is the database's month: nothing written, retry later."""
    metrics.GATE_CLOSED.inc()
    _log.error("billing gate closed for site %s: month closed: %s", site_id, exc)
    body = {
        "ok": False,
        "status": "billing_gate_closed",
        "error": "month_closed",
        "message": "the month is frozen and the database clock has not reached an open month; retry later",
    }
    headers = {H_LEDGER_OUTCOME: "not_written", "retry-after": str(MONTH_CLOSED_RETRY_AFTER_S)}
    return _Stop(Reply(500, body, headers, outcome="gate_closed"))


async def handle_ingest(state: AppState, call: IngestCall) -> Reply:
    """Run one ``POST /api/sync`` through the whole pipeline and return the answer."""
    try:
        return await _pipeline(state, call)
    except _Stop as stop:
        return stop.reply


async def _pipeline(state: AppState, call: IngestCall) -> Reply:
    runtime = runtime_of(state)
    credentials = credentials_of(state)
    pool = state.require_pool()
    # 1. size
    if len(call.body) > MAX_BODY_BYTES:
        raise _error(413, "payload_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes", outcome="invalid")
    # 2. auth
    document: Any = None
    if call.bearer is not None:
        site = await _lookup(credentials.site_of_ingest_key(pool, call.bearer, state.clock.now()))
        if site is None:
            raise _error(401, "unauthorized", "unknown or revoked ingest key", outcome="unauthorized")
        if call.origin is not None and site.allowed_origins and call.origin not in site.allowed_origins:
            raise _error(403, "origin_not_allowed", "this origin may not send events for the site", outcome="forbidden")
        document = _parse(call.body)
    else:
        document = _parse(call.body)
        site = await _public_site(credentials, pool, document, call.origin)
    cors_origin = call.origin if call.origin is not None and call.origin in site.allowed_origins else None
    _check_site_refs(document, site)
    # 3. rate limit: every event counts; public sites also per client address
    now = state.clock.now()
    # An address that is not an IP (a Unix socket) is one shared "unknown" client, never unlimited.
    client_hash = (
        runtime.clients.digest(call.client_address, year_month_of(now)) if call.client_address else UNKNOWN_CLIENT
    )
    decision = await _rate_limit(runtime, site, _units(document), client_hash, cors_origin)
    extra_headers: dict[str, str] = {}
    if decision.degraded:
        metrics.RATELIMIT_DEGRADED.inc()
        extra_headers[H_DEGRADED] = "ratelimit_local"
    try:
        if not decision.allowed:
            metrics.INGEST_RATE_LIMITED.inc()
            what = "this client address" if decision.scope == "client" else "this site"
            stop = _error(
                429, "rate_limited", f"rate limit of events per minute exceeded for {what}", outcome="rate_limited"
            )
            # Golden rule 5: the rate-limit 429 never carries a quota header.
            stop.reply.headers.update(
                {H_RATELIMIT: "1", H_RATELIMIT_SCOPE: decision.scope, "retry-after": str(decision.retry_after_s)}
            )
            raise stop
        # 4. validate, 5. classify and key
        keyed, is_batch = _validate(document, site, call, server_ms(now))
        if client_hash != UNKNOWN_CLIENT:
            keyed = [dataclasses.replace(k, client_hash=client_hash) for k in keyed]
        # 6. ledger transaction
        results = await _write(state, pool, site, now, call.request_id, keyed)
        # 7. respond
        reply = _batch_reply(keyed, results, now) if is_batch else _single_reply(keyed[0], results[0], now)
    except _Stop as stop:
        stop.reply.headers.update(extra_headers)
        stop.reply.cors_origin = cors_origin
        raise
    reply.headers.update(extra_headers)
    reply.cors_origin = cors_origin
    return reply


def _units(document: Any) -> int:
    """Rate-limit units of a request: its events (a batch of 100 costs 100), at least 1."""
    if isinstance(document, dict) and isinstance(document.get("events"), list):
        return max(1, min(len(document["events"]), MAX_RATE_UNITS))
    return 1


async def _rate_limit(
    runtime: IngestRuntime, site: Site, units: int, client_hash: str | None, cors_origin: str | None
) -> RateDecision:
    # Public sites accept any request whose (forgeable) Origin is allowed: limit each address too.
    client = client_hash if site.ingest_auth == "public" else None
    try:
        return await runtime.limiter.hit(
            site.id,
            site.rate_limit_per_minute,
            units=units,
            client=client,
            client_limit_per_minute=site.client_rate_limit_per_minute,
        )
    except RateLimitBusy as exc:
        stop = _error(503, exc.code, exc.message, outcome="busy")
        stop.reply.headers["retry-after"] = "1"
        stop.reply.cors_origin = cors_origin
        raise stop from exc


def _parse(body: bytes) -> Any:
    try:
        return decode_json(body)
    except msgspec.DecodeError as exc:
        raise _error(400, "invalid_json", f"the body is not valid JSON: {exc}", outcome="invalid") from exc
    except UnicodeDecodeError as exc:
        raise _error(400, "invalid_json", f"the body is not UTF-8: {exc.reason}", outcome="invalid") from exc
    except RecursionError as exc:
        raise _error(400, "invalid_json", "the body is nested too deeply", outcome="invalid") from exc


async def _lookup(lookup: Awaitable[Site | None]) -> Site | None:
    try:
        return await lookup
    except LookupBusy as exc:
        stop = _error(503, exc.code, exc.message, outcome="busy")
        stop.reply.headers["retry-after"] = str(exc.retry_after_s)
        raise stop from exc
    except (psycopg.Error, PoolTimeout, OSError) as exc:
        raise _gate_closed(None, "site lookup", exc) from exc


async def _public_site(
    credentials: CredentialDirectory, pool: AsyncConnectionPool, document: Any, origin: str | None
) -> Site:
    ref = _site_ref(document)
    site = await _lookup(credentials.site_by_public_id(pool, ref)) if ref and PUBLIC_ID.match(ref) else None
    if site is None or site.ingest_auth != "public" or origin is None:
        raise _error(
            401, "unauthorized", "missing ingest key: send Authorization: Bearer <key>", outcome="unauthorized"
        )
    if origin not in site.allowed_origins:
        raise _error(403, "origin_not_allowed", "this origin may not send events for the site", outcome="forbidden")
    return site


def _site_ref(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    ref = document.get("s")
    if ref is None and isinstance(document.get("events"), list) and document["events"]:
        first = document["events"][0]
        ref = first.get("s") if isinstance(first, dict) else None
    return ref if isinstance(ref, str) and ref else None


def _check_site_refs(document: Any, site: Site) -> None:
    if not isinstance(document, dict):
        return
    refs = [document.get("s")]
    if isinstance(document.get("events"), list):
        refs += [e.get("s") for e in document["events"] if isinstance(e, dict)]
    for ref in refs:
        if isinstance(ref, str) and ref != site.public_id:
            raise _error(403, "site_mismatch", "s names another site than the ingest key's", outcome="forbidden")


def _validate(document: Any, site: Site, call: IngestCall, now_ms: int) -> tuple[list[KeyedEvent], bool]:
    try:
        events, is_batch, _ = to_events(document)
        if is_batch and call.idempotency_key is not None:
            raise SchemaViolation("Idempotency-Key", "a batch takes one event_id per event, not an Idempotency-Key")
        keyed = [
            keyed_event(
                event,
                site_id=site.id,
                now_ms=now_ms,
                header_key=call.idempotency_key,
                field_prefix=f"events[{i}]." if is_batch else "",
            )
            for i, event in enumerate(events)
        ]
    except SchemaViolation as exc:
        raise _error(422, "invalid_event", f"{exc.field}: {exc.message}", outcome="invalid", field=exc.field) from exc
    return keyed, is_batch


async def _write(
    state: AppState, pool: AsyncConnectionPool, site: Site, now: datetime, request_id: str, keyed: list[KeyedEvent]
) -> list[LedgerResult]:
    """The ledger transaction of one request; every failure is a ``_Stop`` with its answer.

    A key cleaned up while this very statement wrote it (``RK001``) is retried once: the retry
    finds it archived. Every other outcome is final here (see ``_ledger_call``).
    """
    for attempt in range(1, LEDGER_ATTEMPTS + 1):
        try:
            return await _ledger_call(state, pool, site, now, request_id, keyed)
        except psycopg.Error as exc:
            if exc.sqlstate == SQLSTATE_KEY_CLEANED and attempt < LEDGER_ATTEMPTS:
                _log.warning("site %s request %s: a key was cleaned up during the write; retrying", site.id, request_id)
                continue
            if exc.sqlstate == SQLSTATE_MONTH_CLOSED:
                raise _month_closed(site.id, exc) from exc
            raise _gate_closed(site.id, "ledger transaction", exc) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _ledger_call(
    state: AppState, pool: AsyncConnectionPool, site: Site, now: datetime, request_id: str, keyed: list[KeyedEvent]
) -> list[LedgerResult]:
    """Send the ledger statement once. A definite failure is raised as ``psycopg.Error`` (rolled
    back) or ``_Stop``; an unknown outcome is resolved before anyone answers (``outcome``)."""
    keys = [event.idempotency_key for event in keyed]
    backend_pid: int | None = None
    sent = unknown = False
    results: list[LedgerResult | None] | None = None
    try:
        async with pool.connection() as conn:
            backend_pid = conn.info.backend_pid
            try:
                async with asyncio.timeout(state.settings.ledger_timeout_s):
                    sent = True
                    results = await queries.write_events(
                        conn,
                        site_id=site.id,
                        now=now,
                        request_id=request_id,
                        billing_enabled=state.settings.billing_enabled,
                        events=keyed,
                    )
                    missing = [k for k, r in zip(keys, results, strict=True) if r is None]
                    if missing:
                        # The original of a duplicate vanished before it was read (a cleanup
                        # racing the request): it is in the cleaned-key record now.
                        found = await queries.lookup_keys(conn, site.id, missing)
                        results = [r if r is not None else found.get(k) for k, r in zip(keys, results, strict=True)]
            except BaseException as exc:
                unknown = sent and (results is not None or outcome_unknown(exc, conn.broken))
                if unknown:
                    # The pool must never hand this backend to another request: the resolution
                    # may terminate it.
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                raise
    except (PoolTimeout, psycopg.Error, OSError, TimeoutError) as exc:
        if not sent:
            raise _gate_closed(site.id, "ledger connection", exc) from exc
        if not unknown:
            if isinstance(exc, psycopg.Error):
                raise  # the server rolled the statement back: a known failure (see _write)
            raise _gate_closed(site.id, "ledger transaction", exc) from exc
        # The statement committed (results arrived) or may have: resolve it before answering.
        resolution = await resolve_outcome(
            state.db.conninfo("app"),
            site_id=site.id,
            request_id=request_id,
            keys=keys,
            backend_pid=None if results is not None else backend_pid,
            reason=f"{type(exc).__name__}: {exc}".strip(),
        )
        if resolution.kind == "committed" and resolution.results is not None:
            return resolution.results
        if resolution.kind == "absent":
            raise _gate_closed(site.id, "ledger transaction (resolved: not written)", exc) from exc
        raise _outcome_unknown(site.id, exc) from exc
    complete = [r for r in results if r is not None]
    if len(complete) != len(keyed):
        raise _gate_closed(site.id, "ledger transaction", RuntimeError("a duplicate's original has no ledger row"))
    return complete


def _status_name(response_status: int) -> str:
    return "rejected_quota" if response_status == 429 else "accepted"


def _retry_after_month_s(now: datetime) -> int:
    return max(1, math.ceil((next_month_start(now) - now).total_seconds()))


def _quota_headers(result: LedgerResult, now: datetime) -> dict[str, str]:
    if result.archived_month is not None:
        return {}  # nothing of this month is metered any more
    if result.billing_state == "REJECTED_QUOTA":
        return {H_QUOTA_EXCEEDED: "1", H_QUOTA_REMAINING: "0", "retry-after": str(_retry_after_month_s(now))}
    headers: dict[str, str] = {}
    if result.billing_state == "OVERAGE":
        headers[H_OVERAGE] = "true"
    if result.quota_remaining is not None:
        headers[H_QUOTA_REMAINING] = str(result.quota_remaining)
    return headers


def _outcome(result: LedgerResult) -> dict[str, Any]:
    if result.archived_month is not None:
        # Its month was invoiced, archived and cleaned up: the row is gone, the key is remembered.
        return {"status": "archived", "archived": True, "year_month": result.archived_month}
    return {
        "status": _status_name(result.response_status),
        "billing_state": result.billing_state,
        "billable": result.billable,
        "billing_reason": result.billing_reason,
        "quota_remaining": result.quota_remaining,
    }


def _event_result(event: KeyedEvent, result: LedgerResult) -> tuple[str, dict[str, Any]]:
    """(kind, per-event body) where kind is new / duplicate / conflict; counts the metrics."""
    key = {"idempotency_key": event.idempotency_key, "idempotency_version": event.idempotency_version}
    if result.inserted:
        if result.billing_state == "REJECTED_QUOTA":
            metrics.INGEST_REJECTED_QUOTA.inc()
        else:
            metrics.INGEST_ALLOWED.inc()
            if result.billing_state == "OVERAGE":
                metrics.INGEST_OVERAGE.inc()
        return "new", {**_outcome(result), **key}
    if event.idempotency_version == 2 and result.archived_month is None and result.payload_hash != event.payload_hash:
        metrics.INGEST_CONFLICT.inc()
        return "conflict", {"status": "idempotency_conflict", **key}
    metrics.INGEST_DUPLICATE.inc()
    return "duplicate", {"status": "duplicate", "original": _outcome(result), **key}


def _single_reply(event: KeyedEvent, result: LedgerResult, now: datetime) -> Reply:
    kind, body = _event_result(event, result)
    if kind == "conflict":
        body.update(ok=False, error="idempotency_conflict", message="this key was used with another payload")
        return Reply(409, body, {H_DEDUP: "1"}, outcome="conflict")
    headers = _quota_headers(result, now)
    rejected = result.response_status == 429
    if kind == "duplicate":
        headers[H_DEDUP] = "1"
    body["ok"] = not rejected
    if rejected:
        body.update(error="quota_exceeded", message="monthly quota exceeded; retry after the month ends")
    outcome = kind if kind == "duplicate" else ("rejected_quota" if rejected else "accepted")
    return Reply(result.response_status, body, headers, outcome=outcome)


def _batch_reply(events: list[KeyedEvent], results: list[LedgerResult], now: datetime) -> Reply:
    counts = {"accepted": 0, "rejected_quota": 0, "duplicate": 0, "idempotency_conflict": 0}
    items: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    for index, (event, result) in enumerate(zip(events, results, strict=True)):
        kind, body = _event_result(event, result)
        items.append({"index": index, **body})
        if kind == "new":
            counts[body["status"]] += 1
            # Aggregate quota headers: the latest state of the month after this batch.
            if result.billing_state == "REJECTED_QUOTA":
                headers.update(_quota_headers(result, now))
            else:
                headers.pop(H_QUOTA_EXCEEDED, None)
                headers.pop("retry-after", None)
                if result.quota_remaining is not None:
                    headers[H_QUOTA_REMAINING] = str(result.quota_remaining)
                if result.billing_state == "OVERAGE":
                    headers[H_OVERAGE] = "true"
        else:
            counts["duplicate" if kind == "duplicate" else "idempotency_conflict"] += 1
            headers[H_DEDUP] = "1"
    body = {"ok": True, "status": "batch", "results": items, "counts": counts}
    return Reply(200, body, headers, outcome="batch")


async def preflight_allowed(state: AppState, origin: str, public_id: str | None) -> bool:
    """Whether a CORS preflight from ``origin`` may proceed: the site it names (``?s=``) lists it.

    A preflight carries no key and no body, so the site comes from the query string (a browser
    sends the real request's URL with its preflight). No named site, an unknown one, an origin
    the site does not list, or a busy or unreachable database: no preflight (same answer for all,
    so a preflight never tells which sites exist).
    """
    if not public_id or not PUBLIC_ID.match(public_id):
        return False
    try:
        site = await credentials_of(state).site_by_public_id(state.require_pool(), public_id)
    except (LookupBusy, psycopg.Error, PoolTimeout, OSError):
        return False
    return site is not None and origin in site.allowed_origins
