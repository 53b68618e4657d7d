"""HTTP surface of the crons (SPEC §4.2) and of the snapshot public keys. HTTP only: the work is
done by the same functions the CLI and the scheduler call, in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import anyio.to_thread
import psycopg
from litestar import Request, Response, get, post, route
from litestar.params import Parameter

from kernel.cron.auth import CRON_FORBIDDEN_BODY, cron_authorized
from kernel.cron.jobs import run_named
from kernel.cron.keystore import public_keys
from kernel.cron.reconcile import backfill, enqueue, run_jobs
from kernel.cron.runs import CronContext, CronResult, run_cron
from kernel.cron.watchtower import watchtower_without_database
from kernel.errors import DatabaseUnavailable
from kernel.lookup_cache import BoundedCache, LookupBusy, LookupCache, lookup_gate_of
from kernel.web import AppState, app_state, bearer_token, error_response

__all__ = ["cron_handlers"]

# The SPEC §4.2 bodies; a failed run keeps its error details on top of these.
_RUN_KEYS = ("ok", "processed", "completed", "failed")
_FREEZE_KEYS = ("ok", "year_month", "frozen", "already_frozen")
_WATCHTOWER_KEYS = ("ok", "status", "checks")

Json = Response[dict[str, Any]]


def _forbidden() -> Json:
    return Response(dict(CRON_FORBIDDEN_BODY), status_code=403, media_type="application/json")


def _ctx(state: AppState) -> CronContext:
    return CronContext(state.settings, state.clock, state.db, trigger="http")


def _authorized(request: Request[Any, Any, Any]) -> AppState | None:
    state = app_state(request)
    return state if cron_authorized(state.settings.cron_secret, bearer_token(request)) else None


def _answer(result: CronResult, keys: tuple[str, ...] | None = None, failure_status: int = 500) -> Json:
    ok = bool(result.get("ok"))
    body = dict(result)
    if ok and keys is not None:
        body = {k: result[k] for k in keys if k in result}
    if not ok:
        body.setdefault("error", "cron_failed")
    return Response(body, status_code=200 if ok else failure_status, media_type="application/json")


async def _run(
    request: Request[Any, Any, Any], job: Callable[[CronContext], CronResult], keys: tuple[str, ...] | None = None
) -> Json:
    """Authorise, run ``job`` in a worker thread (the crons are blocking code) and answer."""
    state = _authorized(request)
    if state is None:
        return _forbidden()
    return _answer(await anyio.to_thread.run_sync(job, _ctx(state)), keys)


@get("/api/cron/watchtower", tags=["cron"])
async def cron_watchtower(request: Request[Any, Any, Any]) -> Json:
    """Health and dead man's switch: 200 ok/degraded, 503 alarm/critical."""
    state = _authorized(request)
    if state is None:
        return _forbidden()
    ctx = _ctx(state)
    try:
        result = await anyio.to_thread.run_sync(partial(run_named, ctx, "watchtower"))
    except DatabaseUnavailable as exc:
        result = watchtower_without_database(ctx, exc.message)
    except psycopg.OperationalError as exc:  # the server went away mid-check
        result = watchtower_without_database(ctx, f"{type(exc).__name__}: {exc}")
    return _answer(result, _WATCHTOWER_KEYS, failure_status=503)


@route("/api/cron/reconcile-usage", http_method=["GET", "POST"], tags=["cron"], status_code=200)
async def cron_reconcile(request: Request[Any, Any, Any]) -> Json:
    """One cycle: arm a job for every unfrozen site-month, then run the pending jobs."""
    return await _run(request, lambda ctx: run_named(ctx, "reconcile-usage"), ("ok", "enqueued", *_RUN_KEYS[1:]))


@route("/api/cron/reconcile-usage/enqueue", http_method=["GET", "POST"], tags=["cron"], status_code=200)
async def cron_reconcile_enqueue(request: Request[Any, Any, Any]) -> Json:
    """Arm (or re-arm) a PENDING job for every unfrozen site-month."""
    return await _run(request, lambda ctx: run_cron(ctx, "reconcile-usage", enqueue), ("ok", "enqueued"))


@post("/api/cron/reconcile-usage/run", tags=["cron"], status_code=200)
async def cron_reconcile_run(request: Request[Any, Any, Any]) -> Json:
    """Process the pending jobs: ``{"ok": true, "processed", "completed", "failed"}``."""
    return await _run(request, lambda ctx: run_cron(ctx, "reconcile-usage", run_jobs), _RUN_KEYS)


@post("/api/cron/reconcile-usage/backfill", tags=["cron"], status_code=200)
async def cron_reconcile_backfill(request: Request[Any, Any, Any]) -> Json:
    """Arm a job for every unfrozen site-month found in the ledger itself (full scan)."""
    return await _run(request, lambda ctx: run_cron(ctx, "reconcile-usage", backfill), ("ok", "enqueued"))


@post("/api/cron/invoice-freeze", tags=["cron"], status_code=200)
async def cron_invoice_freeze(
    request: Request[Any, Any, Any],
    year_month: str | None = Parameter(default=None, description="YYYY-MM; default: the previous month"),
    site_id: str | None = Parameter(default=None, description="freeze only this site (UUID); default: every site"),
) -> Json:
    """Snapshot a closed month: ``{"ok", "year_month", "frozen", "already_frozen"}``; open month → 409."""
    only = None if site_id is None else [site_id]
    return await _run(
        request, lambda ctx: run_named(ctx, "invoice-freeze", year_month=year_month, site_ids=only), _FREEZE_KEYS
    )


@post("/api/cron/idempotency-cleanup", tags=["cron"], status_code=200)
async def cron_idempotency_cleanup(
    request: Request[Any, Any, Any],
    dry_run: bool = Parameter(default=False, description="true: change nothing, list what would go"),
) -> Json:
    """Delete expired ledger rows of archived, frozen, unheld months (≤ 10,000 per run)."""
    return await _run(request, lambda ctx: run_named(ctx, "idempotency-cleanup", dry_run=dry_run))


@post("/api/cron/publish-outbox", tags=["cron"], status_code=200)
async def cron_publish_outbox(request: Request[Any, Any, Any]) -> Json:
    """The outbox relay: deliver pending rows to the configured sink, in order per site."""
    return await _run(request, lambda ctx: run_named(ctx, "publish-outbox"))


PUBLIC_KEYS_TTL_S = 10.0  # a key registered by a freeze is served within this time


def _public_keys_cache(state: AppState) -> LookupCache[str, list[dict[str, str]]]:
    cache = state.extras.get("public_keys")
    if cache is None:
        bounded: BoundedCache[str, list[dict[str, str]]] = BoundedCache(
            ttl_s=PUBLIC_KEYS_TTL_S, negative_ttl_s=PUBLIC_KEYS_TTL_S, max_entries=1, max_negative_entries=1
        )
        cache = state.extras["public_keys"] = LookupCache(bounded, lookup_gate_of(state))
    assert isinstance(cache, LookupCache)
    return cache


@get("/api/billing/public-keys", tags=["billing"])
async def billing_public_keys(request: Request[Any, Any, Any]) -> Any:
    """Every Ed25519 public key that signed invoice snapshots here (public: verifiers need them).

    Unauthenticated, so cached (``PUBLIC_KEYS_TTL_S``) with one load at a time per process: a
    flood of requests costs at most one database connection (issue 12 §4).
    """
    state = app_state(request)

    def load_sync() -> list[dict[str, str]]:
        with state.db.connect("app", autocommit=True) as conn:
            return public_keys(conn)

    async def load() -> list[dict[str, str]]:
        return await anyio.to_thread.run_sync(load_sync)

    try:
        keys = await _public_keys_cache(state).get("all", load)
    except LookupBusy as exc:
        response = error_response(503, exc.code, exc.message)
        response.headers["retry-after"] = str(exc.retry_after_s)
        return response
    return {"ok": True, "algorithm": "ed25519", "keys": keys or []}


def cron_handlers() -> list[Any]:
    return [
        cron_watchtower,
        cron_reconcile,
        cron_reconcile_enqueue,
        cron_reconcile_run,
        cron_reconcile_backfill,
        cron_invoice_freeze,
        cron_idempotency_cleanup,
        cron_publish_outbox,
        billing_public_keys,
    ]
