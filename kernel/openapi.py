"""The OpenAPI document an integrator reads (``/schema/openapi.json``) and its offline docs page.

Litestar documents what it can see from the handlers' signatures. ``POST /api/sync`` reads its
body as raw bytes (size limit first, SPEC §4.1), so its request and response bodies are described
here from the wire Structs of ``kernel.ingest.schemas`` plus documentation Structs of the answers;
every documented status comes with its body schema and headers. Security schemes (ingest key,
user token, cron secret) are declared and attached by path. ``/schema`` renders Swagger UI from
assets served by this app (``swagger-ui-bundle-v2``): the page needs no CDN and works offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    SecurityScheme,
)
from litestar.openapi.spec import OpenAPIHeader as Header
from litestar.openapi.spec import OpenAPIMediaType as MediaType
from litestar.static_files import create_static_files_router

from kernel.ingest.schemas import MAX_BATCH_EVENTS, MAX_BODY_BYTES, BatchIn, EventIn

__all__ = [
    "BATCH_EXAMPLE",
    "DOCS_ASSETS_PATH",
    "SINGLE_EXAMPLE",
    "complete_document",
    "docs_assets_router",
    "openapi_config",
]

DOCS_ASSETS_PATH = "/schema/assets"
_REF = "#/components/schemas/{name}"
_JSON = "application/json"

# The README's two examples come from here, so the document and the README never disagree.
SINGLE_EXAMPLE: dict[str, Any] = {
    "event_id": "order-1042-confirmed",
    "ec": "conversion",
    "ea": "purchase",
    "el": "plan-pro",
    "url": "https://shop.example/checkout/done",
    "fp": "fp-5f2c",
    "ts": 1793962800000,
    "meta": {"currency": "EUR"},
}
BATCH_EXAMPLE: dict[str, Any] = {
    "s": "shop-eu",
    "events": [
        {"event_id": "pv-77a1", "ec": "interaction", "ea": "click", "el": "pricing", "u": "https://shop.example/"},
        {"ec": "interaction", "ea": "scroll_depth", "el": "75", "u": "https://shop.example/pricing"},
    ],
}


# Documentation of the answers (what kernel.ingest.service writes; extra fields may be added).
class EventOutcome(msgspec.Struct):
    """The billing decision of one event (also the ``original`` of a duplicate)."""

    status: Literal["accepted", "rejected_quota"]
    billing_state: Literal["ACCEPTED", "OVERAGE", "REJECTED_QUOTA"]
    billable: bool
    billing_reason: str
    quota_remaining: int | None


class EventResult(msgspec.Struct, kw_only=True):
    """The answer to one event: a decision, a duplicate with the original's, or a key conflict."""

    status: Literal["accepted", "rejected_quota", "duplicate", "idempotency_conflict"]
    idempotency_key: str
    idempotency_version: Literal[1, 2]
    billing_state: Literal["ACCEPTED", "OVERAGE", "REJECTED_QUOTA"] | None = None
    billable: bool | None = None
    billing_reason: str | None = None
    quota_remaining: int | None = None
    original: EventOutcome | None = None


class SingleResult(EventResult, kw_only=True):
    """``POST /api/sync`` with one event."""

    ok: bool
    error: str | None = None
    message: str | None = None


class BatchItem(EventResult, kw_only=True):
    """One event of a batch, by its position in ``events``."""

    index: int


class BatchCounts(msgspec.Struct):
    accepted: int
    rejected_quota: int
    duplicate: int
    idempotency_conflict: int


class BatchResult(msgspec.Struct):
    """``POST /api/sync`` with ``{"events": [...]}``: one result per event, in order."""

    ok: bool
    status: Literal["batch"]
    results: list[BatchItem]
    counts: BatchCounts


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error: a stable ``error`` code (ingest errors repeat it as ``status``)."""

    ok: Literal[False]
    error: str
    status: str | None = None
    message: str | None = None
    field: str | None = None


_SCHEMAS: tuple[type[msgspec.Struct], ...] = (EventIn, BatchIn, SingleResult, BatchResult, ErrorBody)

_SECURITY_SCHEMES = {
    "ingestKey": SecurityScheme(
        type="http",
        scheme="bearer",
        description="A site's ingest key (publishable, like an analytics write key). Sites in `public` ingest "
        "mode also accept keyless requests from an allowlisted Origin.",
    ),
    "userToken": SecurityScheme(
        type="http",
        scheme="bearer",
        description="A user token (`revkernel token create`): role viewer, billing or admin, of one site or the "
        "platform.",
    ),
    "cronSecret": SecurityScheme(
        type="http", scheme="bearer", description="`CRON_SECRET`; empty or placeholder closes every cron (403)."
    ),
}

_H = {
    "remaining": ("x-opsmantik-quota-remaining", "Billable events left within the monthly limit", "integer"),
    "exceeded": (
        "x-opsmantik-quota-exceeded",
        "`1`: the monthly quota refused the event (never with a rate limit)",
        "string",
    ),
    "overage": ("x-opsmantik-overage", "`true`: billed as overage, past the limit", "string"),
    "dedup": ("x-opsmantik-dedup", "`1`: a duplicate (or a key conflict); the original's outcome", "string"),
    "ratelimit": (
        "x-opsmantik-ratelimit",
        "`1`: the per-minute rate limit refused the request (never quota)",
        "string",
    ),
    "scope": (
        "x-opsmantik-ratelimit-scope",
        "`site` or `client`: which rate-limit window refused the request (with x-opsmantik-ratelimit)",
        "string",
    ),
    "degraded": ("x-opsmantik-degraded", "`ratelimit_local`: Redis failed, limits run per process", "string"),
    "outcome": (
        "x-opsmantik-ledger-outcome",
        "`not_written` or `unknown`: whether a failed ledger write is known to have written nothing",
        "string",
    ),
    "retry": ("Retry-After", "Whole seconds: to the next UTC month (quota) or to the window's end (rate)", "integer"),
    "expose": ("Access-Control-Expose-Headers", "The billing headers and Retry-After, for browser trackers", "string"),
    "request": ("x-request-id", "The request's id (the caller's when well-formed)", "string"),
    "commit": ("x-opsmantik-commit", "The deployed commit", "string"),
}


def _headers(*names: str) -> dict[str, Header | Reference]:
    out: dict[str, Header | Reference] = {}
    for name in ("commit", "request", "expose", *names):
        header, description, kind = _H[name]
        out[header] = Header(description=description, schema={"type": kind})  # type: ignore[arg-type]
    return out


def _json(schema: str, description: str, *headers: str, examples: Mapping[str, Any] | None = None) -> OpenAPIResponse:
    media = MediaType(schema={"$ref": _REF.format(name=schema)})  # type: ignore[arg-type]
    if examples:
        media.examples = {k: Example(value=v) for k, v in examples.items()}
    return OpenAPIResponse(description=description, content={_JSON: media}, headers=_headers(*headers))


def _sync_responses() -> dict[str, OpenAPIResponse]:
    both = {"oneOf": [{"$ref": _REF.format(name="SingleResult")}, {"$ref": _REF.format(name="BatchResult")}]}
    ok = OpenAPIResponse(
        description="Accepted, overage, a duplicate (the original's status), or a batch with one result per event",
        content={_JSON: MediaType(schema=both)},  # type: ignore[arg-type]
        headers=_headers("remaining", "overage", "dedup", "degraded"),
    )
    return {
        "200": ok,
        "400": _json("ErrorBody", "Not JSON or not UTF-8 (`invalid_json`)"),
        "401": _json("ErrorBody", "Missing, unknown or revoked ingest key (`unauthorized`)"),
        "403": _json("ErrorBody", "`s` names another site (`site_mismatch`) or the Origin is not allowed"),
        "409": _json("SingleResult", "Same client key, other payload (`idempotency_conflict`)", "dedup"),
        "413": _json("ErrorBody", f"Body over {MAX_BODY_BYTES} bytes (`payload_too_large`)"),
        "422": _json("ErrorBody", "Schema violation (`invalid_event`); `field` names it, e.g. `events[3].ec`"),
        "429": OpenAPIResponse(
            description="Quota (`rejected_quota`: x-opsmantik-quota-exceeded) or rate limit (`rate_limited`: "
            "x-opsmantik-ratelimit); never both headers",
            content={
                _JSON: MediaType(
                    # A quota 429 is an event result (with its key) that is also an error body.
                    schema={
                        "anyOf": [{"$ref": _REF.format(name="SingleResult")}, {"$ref": _REF.format(name="ErrorBody")}]
                    }  # type: ignore[arg-type]
                )
            },
            headers=_headers("exceeded", "remaining", "ratelimit", "scope", "retry", "dedup", "degraded"),
        ),
        "500": _json(
            "ErrorBody",
            "The ledger write failed (`billing_gate_closed`): nothing written and nothing published, or, with "
            "error `ledger_outcome_unknown`, the database could not say (retry with the same event_id)",
            "outcome",
            "retry",
            "degraded",
        ),
        "503": _json(
            "ErrorBody",
            "Too many credential lookups or rate-limit calls in flight (`lookup_busy`, `ratelimit_busy`); "
            "nothing written, retry after Retry-After",
            "retry",
        ),
    }


def _sync_request_body() -> RequestBody:
    schema = {"oneOf": [{"$ref": _REF.format(name="EventIn")}, {"$ref": _REF.format(name="BatchIn")}]}
    examples = {
        "single": Example(summary="One event (a client key: event_id)", value=SINGLE_EXAMPLE),
        "batch": Example(summary=f"A batch (1-{MAX_BATCH_EVENTS} events of one site)", value=BATCH_EXAMPLE),
    }
    content = {
        media: MediaType(schema=schema, examples=examples)  # type: ignore[arg-type]
        # Deployed trackers send JSON as text/plain (no preflight); both are read the same way.
        for media in (_JSON, "text/plain")
    }
    return RequestBody(
        content=content,
        required=True,
        description='One event, or `{"events": [...]}`. Unknown fields are ignored; `u` is an alias of `url`.',
    )


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    """The app's OpenAPI configuration: components, security schemes, offline Swagger UI at ``/schema``."""
    assets = DOCS_ASSETS_PATH
    swagger = SwaggerRenderPlugin(
        path=["/", "/swagger"],
        js_url=f"{assets}/swagger-ui-bundle.js",
        css_url=f"{assets}/swagger-ui.css",
        standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title=title,
        version=version,
        path="/schema",
        render_plugins=[swagger],
        components=Components(security_schemes=_SECURITY_SCHEMES),  # type: ignore[arg-type]
    )


def docs_assets_router() -> Any:
    """Swagger UI's own files, served by the app (the docs page loads nothing from the network)."""
    from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

    return create_static_files_router(path=DOCS_ASSETS_PATH, directories=[swagger_ui_path], include_in_schema=False)


def _security_of(path: str) -> list[dict[str, list[str]]] | None:
    if path.startswith("/api/cron/"):
        return [{"cronSecret": []}]
    if path.startswith("/api/billing/") and path != "/api/billing/public-keys":
        return [{"userToken": []}]
    return None


def complete_document(app: Litestar) -> None:
    """Add what Litestar cannot see to the app's OpenAPI document (once, before it is served)."""
    document = app.openapi_schema
    paths = document.paths or {}
    # The wire Structs' JSON Schemas (msgspec's own generator), next to what Litestar generated.
    _, wire = msgspec.json.schema_components(_SCHEMAS, ref_template=_REF)
    # The service reads a body with an "events" member as a batch: the two never overlap.
    wire["EventIn"]["not"] = {"required": ["events"]}
    if document.components.schemas is None:
        document.components.schemas = {}
    document.components.schemas.update(wire)
    forbidden_cron = _json("ErrorBody", "No, empty, placeholder or wrong cron secret (`CRON_FORBIDDEN`)")
    for path, item in paths.items():
        for method in ("get", "post", "options"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            security = _security_of(path)
            if security is not None:
                operation.security = security
                responses = operation.responses or {}
                if path.startswith("/api/cron/"):
                    responses.setdefault("403", forbidden_cron)
                else:
                    responses.setdefault("401", _json("ErrorBody", "No, unknown or revoked token"))
                    responses.setdefault("403", _json("ErrorBody", "Not allowed for this site (no existence leak)"))
                operation.responses = responses
    sync = paths["/api/sync"]
    if sync.post is not None:
        sync.post.request_body = _sync_request_body()
        sync.post.responses = _sync_responses()  # type: ignore[assignment]
        # Keyless requests from an allowlisted Origin are allowed for public-mode sites: {} = none.
        sync.post.security = [{"ingestKey": []}, {}]
    if sync.options is not None:
        sync.options.summary = "CORS preflight: 204 for an allowed Origin, else 403 `origin_not_allowed`"
        sync.options.responses = {
            "204": OpenAPIResponse(description="Allowed: Access-Control-Allow-* for this Origin"),
            "403": _json("ErrorBody", "This Origin may not send events"),
        }
    metrics = paths.get("/metrics")
    if metrics is not None and metrics.get is not None:
        metrics.get.responses = {
            "200": OpenAPIResponse(
                description="Prometheus exposition (OpenMetrics when the Accept header asks for it); no tenant ids",
                content={
                    "text/plain; version=0.0.4; charset=utf-8": MediaType(schema={"type": "string"}),  # type: ignore[arg-type]
                    "application/openmetrics-text; version=1.0.0; charset=utf-8": MediaType(schema={"type": "string"}),  # type: ignore[arg-type]
                },
            )
        }
