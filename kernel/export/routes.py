"""HTTP: ``GET /api/billing/dispute-export`` and ``GET /api/billing/dispute-manifest`` (SPEC §4.3)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from litestar import Request, get
from litestar.params import FromQuery
from litestar.response import Stream

from kernel.clock import format_utc
from kernel.db.connect import connect_url
from kernel.errors import Conflict
from kernel.export.access import actor_of, authorize_export, parse_export_params, require_key
from kernel.export.csv import CsvDigest, ExportTally, export_chunks, export_filename
from kernel.export.manifest import month_manifest
from kernel.export.queries import (
    SnapshotRecord,
    cleaned_up_rows_async,
    load_snapshot_async,
    record_audit_async,
    site_exists_async,
)
from kernel.export.stream import ExportBusy, ExportSlots, export_chunks_async
from kernel.tenants import ApiKey
from kernel.tenants.directory import credentials_of
from kernel.web import AppState, app_state, bearer_token, request_id_of

__all__ = ["dispute_export", "dispute_manifest", "export_route_handlers"]

_log = logging.getLogger("kernel.export")
SNAPSHOT_HASH_HEADER = "x-opsmantik-snapshot-hash"


async def _authorised(
    request: Request[Any, Any, Any], site_id: str | None, year_month: str | None, action: str
) -> tuple[ApiKey, uuid.UUID, str, SnapshotRecord | None]:
    """401 → 400 → 403, then the month's snapshot; the access is written to ``audit_log``.

    A frozen month whose rows were cleaned up after archiving answers 409 ``month_cleaned_up``.
    """
    state = app_state(request)
    token = bearer_token(request)
    pool = state.require_pool()
    # The token first, through the bounded, gated cache: an unknown token costs no connection.
    key = require_key(await credentials_of(state).user_token(pool, token, state.clock.now()) if token else None)
    async with pool.connection() as conn:
        site, month = parse_export_params(site_id, year_month)
        authorize_export(key, site, site_exists=await site_exists_async(conn, site))
        snapshot = await load_snapshot_async(conn, site, month)
        if snapshot is not None and (missing := await cleaned_up_rows_async(conn, site, month, snapshot)):
            # Never serve a partial month under its snapshot's hash: the rows live in the archive now.
            raise Conflict(
                f"{missing} row(s) of {month} were archived and removed from the ledger; the month's"
                " evidence is its ledger_archive file",
                code="month_cleaned_up",
            )
        # Every export is evidence access: recorded before a byte is sent, whatever happens next.
        await record_audit_async(
            conn,
            at=state.clock.now(),
            actor=actor_of(key),
            action=action,
            site_id=site,
            year_month=month,
            details={
                "key_id": str(key.id),
                "request_id": request_id_of(request.scope),
                "role": key.role,
                "snapshot_hash": snapshot.snapshot_hash if snapshot is not None else None,
            },
        )
    return key, site, month, snapshot


def _slots(state: AppState) -> ExportSlots:
    slots = state.extras.setdefault("export_slots", ExportSlots())
    assert isinstance(slots, ExportSlots)
    return slots


async def _export_stream(state: AppState, site_id: uuid.UUID, year_month: str, request_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in export_chunks_async(state.db.conninfo("app"), site_id, year_month, _slots(state)):
            yield chunk
    except Exception:
        # Re-raised on purpose: the server then cuts the connection before the last chunk,
        # so the client sees a broken transfer, never a 200 that looks complete.
        _log.exception(
            "dispute export aborted mid-stream: site %s month %s request %s", site_id, year_month, request_id
        )
        raise


@get("/api/billing/dispute-export", tags=["billing"], summary="Dispute CSV of a site-month")
async def dispute_export(
    request: Request[Any, Any, Any],
    site_id: FromQuery[str | None] = None,
    year_month: FromQuery[str | None] = None,
) -> Stream:
    """Stream every ledger row of the site-month as the dispute CSV (SPEC §4.3)."""
    state = app_state(request)
    _, site, month, snapshot = await _authorised(request, site_id, year_month, "dispute_export")
    if _slots(state).available <= 0:
        raise ExportBusy("every export slot of this process is busy; retry in a few seconds")
    headers = {
        "Content-Disposition": f'attachment; filename="{export_filename(site, month)}"',
        "Cache-Control": "no-store",
    }
    if snapshot is not None:
        headers[SNAPSHOT_HASH_HEADER] = snapshot.snapshot_hash
    stream = _export_stream(state, site, month, request_id_of(request.scope))
    return Stream(stream, media_type="text/csv", headers=headers)


@get("/api/billing/dispute-manifest", tags=["billing"], summary="Manifest of a site-month's dispute CSV")
async def dispute_manifest(
    request: Request[Any, Any, Any],
    site_id: FromQuery[str | None] = None,
    year_month: FromQuery[str | None] = None,
) -> dict[str, Any]:
    """Row counts, the CSV's SHA-256, the snapshot document and the Merkle root of the export.

    The CSV is generated and hashed on the server exactly as the export route streams it; for a
    frozen month the answer also says whether those rows still give the snapshot's root.
    """
    _, site, month, snapshot = await _authorised(request, site_id, year_month, "dispute_manifest")
    state = app_state(request)
    slots = _slots(state)
    if not slots.try_acquire():
        raise ExportBusy("every export slot of this process is busy; retry in a few seconds")
    try:
        # Parsing a big month is CPU work: done in a worker thread, never on the event loop.
        digest = await anyio.to_thread.run_sync(_digest_month, state.db.conninfo("app"), site, month)
    finally:
        slots.release()
    return month_manifest(site, month, digest, snapshot, generated_at=format_utc(state.clock.now()))


def _digest_month(conninfo: str, site_id: uuid.UUID, year_month: str) -> CsvDigest:
    tally = ExportTally(year_month=year_month)
    with connect_url(conninfo, autocommit=True) as conn:
        for chunk in export_chunks(conn, site_id, year_month):
            tally.feed(chunk)
    return tally.close()


def export_route_handlers() -> list[Any]:
    return [dispute_export, dispute_manifest]
