"""HTTP plumbing shared by every router: app state, headers, error mapping, bearer tokens.

Every response carries ``x-opsmantik-commit`` and ``x-request-id`` (SPEC §4); every error body is
JSON with a stable ``error`` code, mapped here in one place from ``kernel.errors``.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import Message, Scope
from psycopg_pool import AsyncConnectionPool

from kernel.clock import Clock
from kernel.db.connect import Database
from kernel.errors import KernelError
from kernel.settings import Settings

__all__ = [
    "AppState",
    "app_state",
    "bearer_token",
    "error_response",
    "exception_handlers",
    "request_id_of",
    "stamp_headers",
]

_log = logging.getLogger("kernel.web")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


@dataclass
class AppState:
    """Everything a handler needs, built once per process by ``kernel.app.create_app``."""

    settings: Settings
    clock: Clock
    db: Database
    pool: AsyncConnectionPool | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def require_pool(self) -> AsyncConnectionPool:
        assert self.pool is not None, "the app's connection pool is opened on startup"
        return self.pool


def app_state(request: Request[Any, Any, Any]) -> AppState:
    state: AppState = request.app.state["kernel"]
    return state


def request_id_of(scope: Scope) -> str:
    """The request's id: the caller's ``x-request-id`` when well-formed, else a new one."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


def stamp_headers(commit: str) -> Any:
    """A ``before_send`` hook adding the commit and request id to every response."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            headers = MutableScopeHeaders.from_message(message)
            headers["x-opsmantik-commit"] = commit
            headers["x-request-id"] = request_id_of(scope)

    return before_send


def error_response(status: int, code: str, message: str, **extra: Any) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error": code, "message": message, **extra}
    return Response(body, status_code=status, media_type="application/json")


def _kernel_error(request: Request[Any, Any, Any], exc: KernelError) -> Response[dict[str, Any]]:
    if exc.http_status >= 500:
        _log.error("request %s failed: %s [%s]", request_id_of(request.scope), exc.message, exc.code)
    return error_response(exc.http_status, exc.code, exc.message)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    return error_response(400, "invalid_request", str(exc.detail), fields=exc.extra or [])


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    code = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.exception("unhandled error in request %s", request_id_of(request.scope))
    return error_response(500, "internal_error", "internal error; see the server log with this request id")


exception_handlers: dict[Any, Any] = {
    KernelError: _kernel_error,
    ValidationException: _validation_error,
    NotFoundException: _http_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when absent or malformed."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
