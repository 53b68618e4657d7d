"""HTTP: ``/api/billing/disputes`` — dispute cases and their corrections (issue 15).

| route | does |
|---|---|
| ``POST /api/billing/disputes`` | open a case (201; 200 when ``case_id`` names the same case again) |
| ``GET /api/billing/disputes`` | list cases (``site_id``, ``year_month``, ``state``) |
| ``GET /api/billing/disputes/{case_id}`` | a case, its hold, its correction and its history |
| ``POST …/{case_id}/investigate`` | ``open → investigating`` |
| ``POST …/{case_id}/resolve`` | ``investigating → resolved``, with the credit's signed correction |
| ``POST …/{case_id}/close`` | ``resolved → closed``, releases the month's hold |

Who: reading (the two GETs) takes a viewer, billing or admin token of the site or a platform admin
(who lists every site without ``site_id``); every change takes billing or admin of the site or a
platform admin.

Order: credentials (401, in a guard, before the body is read) → parameters and body (400) →
authorisation (403, see ``kernel.disputes.access``) → the service (409 for an illegal move, 422
for a refused credit). The service is synchronous (one short transaction); it runs in a worker
thread on a connection of its own, never on the event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import psycopg
from litestar import Request, Response, get, post
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from kernel.cron.keystore import load_signing_key
from kernel.disputes import queries, service
from kernel.disputes.access import authorize_case, authorize_site, is_platform_admin
from kernel.disputes.schemas import (
    CaseAnswer,
    CaseDetailAnswer,
    CaseList,
    ErrorBody,
    NoteIn,
    OpenCaseIn,
    ResolveCaseIn,
    case_answer,
    case_detail_answer,
    case_list,
)
from kernel.export.access import actor_of, parse_site_id, require_key
from kernel.export.queries import authenticate_async
from kernel.months import parse_year_month
from kernel.tenants import ApiKey
from kernel.web import AppState, app_state, bearer_token

__all__ = ["dispute_route_handlers"]

T = TypeVar("T")
_KEY_STATE = "dispute_api_key"
_BASE = "/api/billing/disputes"
_ERRORS = {
    400: ResponseSpec(ErrorBody, description="malformed parameter or body", generate_examples=False),
    401: ResponseSpec(ErrorBody, description="missing, unknown or revoked token", generate_examples=False),
    403: ResponseSpec(
        ErrorBody,
        description="billing_view_required: not allowed, another tenant's or an unknown site or case",
        generate_examples=False,
    ),
    404: ResponseSpec(ErrorBody, description="unknown site or case (platform admin only)", generate_examples=False),
}
_MOVE_ERRORS = {
    **_ERRORS,
    409: ResponseSpec(
        ErrorBody, description="illegal_transition, case_already_resolved, already_credited, …", generate_examples=False
    ),
    422: ResponseSpec(ErrorBody, description="a refused credit (credit_not_billable, …)", generate_examples=False),
}


async def _authenticate(connection: Any, _: BaseRouteHandler) -> None:
    """Guard: 401 before anything else is looked at; the key is kept for the handler."""
    request: Request[Any, Any, Any] = connection
    token = bearer_token(request)
    async with app_state(request).require_pool().connection() as conn:
        key = require_key(await authenticate_async(conn, token) if token else None)
    request.state[_KEY_STATE] = key


def _key(request: Request[Any, Any, Any]) -> ApiKey:
    key = request.state[_KEY_STATE]
    assert isinstance(key, ApiKey)
    return key


async def _run(request: Request[Any, Any, Any], work: Callable[[AppState, psycopg.Connection[Any], ApiKey], T]) -> T:
    """Run ``work`` in a worker thread on an autocommit app-role connection of its own."""
    state, key = app_state(request), _key(request)

    def call() -> T:
        with state.db.connect("app", autocommit=True) as conn:
            return work(state, conn, key)

    return await anyio.to_thread.run_sync(call)


def _case_for(conn: psycopg.Connection[Any], key: ApiKey, case_id: str, *, write: bool) -> uuid.UUID:
    parsed = service.parse_case_id(case_id)
    return authorize_case(key, queries.load_case(conn, parsed), write=write).case_id


@post(
    _BASE,
    guards=[_authenticate],
    tags=["disputes"],
    summary="Open a dispute case for a site-month",
    responses={**_MOVE_ERRORS},
    status_code=201,
)
async def open_dispute(request: Request[Any, Any, Any], data: JSONBody[OpenCaseIn]) -> Response[CaseAnswer]:
    """Open a case (the disputed keys, or ``whole_month``) and hold its month in the same transaction."""

    def work(state: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseAnswer:
        authorize_site(key, data.site_id, site_exists=queries.site_exists(conn, data.site_id), write=True)
        if data.case_id is not None:
            # An id that names another tenant's case answers as an unknown case would.
            existing = queries.load_case(conn, data.case_id)
            if existing is not None:
                authorize_case(key, existing, write=True)
        move = service.open_case(
            conn,
            site_id=data.site_id,
            year_month=data.year_month,
            disputed_keys=data.disputed_keys,
            whole_month=data.whole_month,
            reason=data.reason,
            customer_reference=data.customer_reference,
            actor=actor_of(key),
            clock=state.clock,
            case_id=data.case_id,
        )
        return case_answer(move)

    answer = await _run(request, work)
    return Response(answer, status_code=201 if answer.changed else 200)


@get(_BASE, guards=[_authenticate], tags=["disputes"], summary="List dispute cases", responses={**_ERRORS})
async def list_disputes(
    request: Request[Any, Any, Any],
    site_id: FromQuery[str | None] = None,
    year_month: FromQuery[str | None] = None,
    case_state: Annotated[str | None, QueryParameter(name="state")] = None,
) -> CaseList:
    """Cases newest first. A site token lists its own site when ``site_id`` is absent; a platform
    admin without ``site_id`` lists every site. ``state`` is one state or a comma-separated list."""

    def work(_: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseList:
        site: uuid.UUID | None
        if site_id is not None:
            site = parse_site_id(site_id)
        elif is_platform_admin(key):
            site = None
        else:
            site = key.site_id or uuid.UUID(int=0)
        states = service.parse_states([s.strip() for s in case_state.split(",") if s.strip()] if case_state else None)
        month = parse_year_month(year_month) if year_month is not None else None
        if site is not None:
            authorize_site(key, site, site_exists=queries.site_exists(conn, site), write=False)
        return case_list(service.find_cases(conn, site_id=site, year_month=month, states=states))

    return await _run(request, work)


@get(
    f"{_BASE}/{{case_id:str}}",
    guards=[_authenticate],
    tags=["disputes"],
    summary="A dispute case with its hold, correction and history",
    responses={**_ERRORS},
)
async def show_dispute(request: Request[Any, Any, Any], case_id: FromPath[str]) -> CaseDetailAnswer:
    """The case, its month's hold, its signed correction and every ``audit_log`` row of it."""

    def work(_: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseDetailAnswer:
        return case_detail_answer(service.get_case(conn, _case_for(conn, key, case_id, write=False)))

    return await _run(request, work)


@post(
    f"{_BASE}/{{case_id:str}}/investigate",
    guards=[_authenticate],
    tags=["disputes"],
    summary="Start investigating a dispute case",
    responses={**_MOVE_ERRORS},
    status_code=200,
)
async def investigate_dispute(
    request: Request[Any, Any, Any], case_id: FromPath[str], data: JSONBody[NoteIn | None] = None
) -> CaseAnswer:
    """``open → investigating``; again on an investigating case: ``changed: false``."""
    note = data.note if data is not None else ""

    def work(state: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseAnswer:
        found = _case_for(conn, key, case_id, write=True)
        return case_answer(service.investigate_case(conn, found, note=note, actor=actor_of(key), clock=state.clock))

    return await _run(request, work)


@post(
    f"{_BASE}/{{case_id:str}}/resolve",
    guards=[_authenticate],
    tags=["disputes"],
    summary="Resolve a dispute case (and write the credit's signed correction)",
    responses={**_MOVE_ERRORS},
    status_code=200,
)
async def resolve_dispute(
    request: Request[Any, Any, Any], case_id: FromPath[str], data: JSONBody[ResolveCaseIn]
) -> CaseAnswer:
    """``investigating → resolved`` as upheld / partially upheld (with a credit) or rejected."""

    def work(state: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseAnswer:
        found = _case_for(conn, key, case_id, write=True)
        move = service.resolve_case(
            conn,
            found,
            outcome=data.outcome,
            note=data.note,
            credit=data.credit.to_credit() if data.credit is not None else None,
            actor=actor_of(key),
            clock=state.clock,
            signer=load_signing_key(state.settings),
        )
        return case_answer(move)

    return await _run(request, work)


@post(
    f"{_BASE}/{{case_id:str}}/close",
    guards=[_authenticate],
    tags=["disputes"],
    summary="Close a resolved dispute case (releases the month's hold)",
    responses={**_MOVE_ERRORS},
    status_code=200,
)
async def close_dispute(
    request: Request[Any, Any, Any], case_id: FromPath[str], data: JSONBody[NoteIn | None] = None
) -> CaseAnswer:
    """``resolved → closed``; the hold is released unless another case of the month is open."""
    note = data.note if data is not None else ""

    def work(state: AppState, conn: psycopg.Connection[Any], key: ApiKey) -> CaseAnswer:
        found = _case_for(conn, key, case_id, write=True)
        return case_answer(service.close_case(conn, found, note=note, actor=actor_of(key), clock=state.clock))

    return await _run(request, work)


def dispute_route_handlers() -> list[Any]:
    return [open_dispute, list_disputes, show_dispute, investigate_dispute, resolve_dispute, close_dispute]
