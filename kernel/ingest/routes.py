"""HTTP only: ``POST /api/sync`` and its CORS preflight. The rules are in ``service``."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, route

from kernel import metrics
from kernel.ingest.clients import client_address
from kernel.ingest.schemas import MAX_BODY_BYTES
from kernel.ingest.service import EXPOSED_HEADERS, IngestCall, Reply, handle_ingest, preflight_allowed, runtime_of
from kernel.web import app_state, bearer_token, request_id_of

__all__ = ["close_ingest", "ingest_handlers"]

PREFLIGHT_MAX_AGE_S = 600
_ALLOWED_REQUEST_HEADERS = "authorization, content-type, idempotency-key, x-request-id"


async def _read_body(request: Request[Any, Any, Any]) -> bytes | None:
    """The body, or None as soon as it exceeds ``MAX_BODY_BYTES`` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _response(reply: Reply) -> Response[bytes]:
    import msgspec

    headers = dict(reply.headers)
    headers["access-control-expose-headers"] = EXPOSED_HEADERS
    if reply.cors_origin is not None:
        # Never "*" and never credentials: the ingest key travels in a header, not a cookie.
        headers["access-control-allow-origin"] = reply.cors_origin
        headers["vary"] = "Origin"
    return Response(
        msgspec.json.encode(reply.body),
        status_code=reply.status,
        media_type="application/json",
        headers=headers,
    )


@route(
    "/api/sync",
    http_method=["POST", "OPTIONS"],
    tags=["ingest"],
    request_max_body_size=None,
    summary="Ingest one event or a batch of up to 100 (SPEC §4.1)",
    status_code=200,
)
async def sync(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Bill every event exactly once: auth, rate limit, validate, classify, ledger, respond.

    Body: one event ``{event_id?, ec, ea, el, url|u, fp, ts, meta, s}`` or ``{"events": [...]}``.
    Answers per SPEC §4.1: 200 accepted/overage/batch, 401, 403, 409, 413, 400, 422, 429 (quota:
    ``x-opsmantik-quota-exceeded``; rate limit: ``x-opsmantik-ratelimit``), 500 billing_gate_closed.
    """
    if request.method == "OPTIONS":
        return await _preflight(request)
    started = time.perf_counter()
    body = await _read_body(request)
    if body is None:
        reply = Reply(
            413,
            {
                "ok": False,
                "status": "payload_too_large",
                "error": "payload_too_large",
                "message": f"the body must be at most {MAX_BODY_BYTES} bytes",
            },
            outcome="invalid",
        )
    else:
        state = app_state(request)
        call = IngestCall(
            body=body,
            bearer=bearer_token(request),
            origin=request.headers.get("origin"),
            idempotency_key=request.headers.get("idempotency-key"),
            request_id=request_id_of(request.scope),
            client_address=client_address(
                request.client.host if request.client is not None else None,
                request.headers.getall("x-forwarded-for", []),
                state.settings.trusted_proxies,
            ),
        )
        reply = await handle_ingest(state, call)
    response = _response(reply)
    metrics.INGEST_LATENCY.labels(reply.outcome).observe(time.perf_counter() - started)
    return response


async def _preflight(request: Request[Any, Any, Any]) -> Response[bytes]:
    """CORS preflight: allowed only for an origin on the allowlist of the site named by ``?s=``."""
    origin = request.headers.get("origin")
    headers = {"access-control-expose-headers": EXPOSED_HEADERS, "vary": "Origin"}
    public_id = request.query_params.get("s")
    if origin is not None and await preflight_allowed(app_state(request), origin, public_id):
        headers.update(
            {
                "access-control-allow-origin": origin,
                "access-control-allow-methods": "POST, OPTIONS",
                "access-control-allow-headers": _ALLOWED_REQUEST_HEADERS,
                "access-control-max-age": str(PREFLIGHT_MAX_AGE_S),
            }
        )
        return Response(b"", status_code=204, headers=headers)
    body = (
        b'{"ok":false,"error":"origin_not_allowed","message":"this origin may not send events for the site'
        b' named by ?s=<public id>"}'
    )
    return Response(body, status_code=403, media_type="application/json", headers=headers)


def ingest_handlers() -> list[Any]:
    return [sync]


async def close_ingest(app: Any) -> None:
    """Shutdown hook: close this process's Redis connections."""
    state = app.state["kernel"]
    if "ingest" in state.extras:
        await runtime_of(state).close()
