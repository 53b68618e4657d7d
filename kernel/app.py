"""Litestar app factory: wires the routers, nothing else.

``create_app`` opens the app-role connection pool on startup after checking that the database
schema is current (runbook: migration first, then deploy), and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Litestar, Request, get
from psycopg_pool import AsyncConnectionPool

from kernel import __version__
from kernel.clock import Clock, clock_from_spec
from kernel.cron.watchtower import check_clock_skew
from kernel.db import migrations
from kernel.db.connect import Database
from kernel.errors import DatabaseUnavailable
from kernel.ingest.outcome import statement_timeout_ms
from kernel.ingest.routes import close_ingest
from kernel.ingest.service import runtime_of
from kernel.lookup_cache import BoundedCache, LookupCache, lookup_gate_of
from kernel.settings import Settings, get_settings
from kernel.web import AppState, app_state, error_response, exception_handlers, stamp_headers

__all__ = ["create_app"]

POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 16
POOL_TIMEOUT_S = 5.0
# A worker (re)started while PostgreSQL restarts waits for it instead of failing its startup:
# uvicorn stops the whole service when one worker fails to start (found by `make chaos`).
STARTUP_DB_WAIT_S = 60.0
STARTUP_DB_RETRY_S = 0.5


async def _wait_for_schema(db: Database, clock: Clock) -> None:
    """Check the schema as soon as the database answers; a stale schema is refused at once.

    The host clock is compared with the database's on the way (issue 11 §3): a log line and
    ``billing_clock_skew_seconds`` when they differ (the watchtower reports it as a finding).
    """
    deadline = time.monotonic() + STARTUP_DB_WAIT_S
    while True:
        try:
            with db.connect("owner") as conn:
                migrations.require_current(conn)
                check_clock_skew(conn, clock)
            return
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(STARTUP_DB_RETRY_S)


@get("/healthz", include_in_schema=True, tags=["operations"])
async def healthz() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"ok": True, "status": "alive"}


READY_TTL_S = 1.0  # a readiness answer is reused this long: a flood of probes costs one query


def _ready_cache(state: AppState) -> LookupCache[str, bool]:
    cache = state.extras.get("ready")
    if cache is None:
        bounded: BoundedCache[str, bool] = BoundedCache(
            ttl_s=READY_TTL_S, negative_ttl_s=READY_TTL_S, max_entries=1, max_negative_entries=1
        )
        cache = state.extras["ready"] = LookupCache(bounded, lookup_gate_of(state))
    assert isinstance(cache, LookupCache)
    return cache


@get("/readyz", tags=["operations"])
async def readyz(request: Request[Any, Any, Any]) -> Any:
    """Readiness: the store of record answers (checked at most once a second per process)."""
    state = app_state(request)

    async def probe() -> bool:
        async with state.require_pool().connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True

    try:
        await _ready_cache(state).get("ready", probe)
    except Exception as exc:
        return error_response(503, "not_ready", f"database unavailable: {type(exc).__name__}")
    return {"ok": True, "status": "ready"}


def route_handlers() -> list[Any]:
    """Every router of the service; each bounded context contributes its handlers."""
    handlers: list[Any] = [healthz, readyz]
    from kernel.export.routes import export_route_handlers

    handlers += export_route_handlers()
    from kernel.disputes.routes import dispute_route_handlers

    handlers += dispute_route_handlers()
    from kernel.ingest.routes import ingest_handlers
    from kernel.metrics import metrics_endpoint

    handlers += [*ingest_handlers(), metrics_endpoint]
    from kernel.cron.routes import cron_handlers

    handlers += cron_handlers()
    from kernel.openapi import docs_assets_router

    handlers.append(docs_assets_router())
    return handlers


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> Litestar:
    settings = settings or get_settings()
    state = AppState(settings=settings, clock=clock or clock_from_spec(settings.clock), db=Database(settings))
    runtime_of(state)  # built now, so a bad ingest setting stops the start instead of a request

    async def open_pool(app: Litestar) -> None:
        # Refuse to serve on a schema older than the code (checked as the owner, once).
        await _wait_for_schema(state.db, state.clock)
        # The server bounds every statement below the ledger timeout (issue 11 §1).
        statement_timeout = statement_timeout_ms(settings.ledger_timeout_s)
        pool = AsyncConnectionPool(
            state.db.conninfo("app"),
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_S,
            open=False,
            kwargs={"autocommit": True, "options": f"-c statement_timeout={statement_timeout}"},
        )
        await pool.open(wait=False)
        state.pool = pool

    async def close_pool(app: Litestar) -> None:
        if state.pool is not None:
            await state.pool.close()

    from kernel.cron.scheduler import scheduler_hooks

    start_scheduler, stop_scheduler = scheduler_hooks(state)  # no-ops unless REVKERNEL_SCHEDULER=1
    from kernel.openapi import complete_document, openapi_config

    app = Litestar(
        route_handlers=route_handlers(),
        on_startup=[open_pool, start_scheduler],
        on_shutdown=[stop_scheduler, close_ingest, close_pool],
        before_send=[stamp_headers(settings.commit)],
        exception_handlers=exception_handlers,
        openapi_config=openapi_config("Revenue kernel", __version__),
        state={"kernel": state},  # type: ignore[arg-type]
    )
    complete_document(app)
    return app
