"""The wire format of ``POST /api/sync`` (SPEC §4.1): msgspec Structs and their limits.

A body is one event, or ``{"events": [...]}`` (a batch for one site). Unknown fields are ignored
so that deployed trackers that send more than we read keep working; ``u`` is an alias of ``url``.
Every limit is a named constant; a violation is a 422 that names the field (``events[3].ec``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_META_BYTES",
    "BatchIn",
    "EventIn",
    "SchemaViolation",
    "decode_json",
    "to_events",
]

MAX_BODY_BYTES = 256 * 1024  # a full batch of 100 tracker events is ~30 KiB; anything larger is refused (413)
MAX_BATCH_EVENTS = 100  # SPEC §4.1: deployed trackers send at most 100 events per request
MAX_TEXT_CHARS = 200  # ec, ea, el, fp
MAX_URL_CHARS = 2048
MAX_META_BYTES = 4096  # encoded JSON size of one event's meta
MAX_META_DEPTH = 8  # nesting levels of objects and arrays inside meta
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
EVENT_ID = re.compile(EVENT_ID_PATTERN)

Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
Url = Annotated[str, Meta(max_length=MAX_URL_CHARS)]
EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN)]
PublicId = Annotated[str, Meta(max_length=64)]


class EventIn(msgspec.Struct, omit_defaults=True):
    """One tracker event. ``ts`` is client time (ms since the epoch, or ISO-8601): informational."""

    event_id: EventId | None = None
    ec: Text | None = None
    ea: Text | None = None
    el: Text | None = None
    url: Url | None = None
    u: Url | None = None
    fp: Text | None = None
    ts: int | float | str | None = None
    meta: dict[str, Any] | None = None
    s: PublicId | None = None

    @property
    def page_url(self) -> str | None:
        return self.url if self.url is not None else self.u


class BatchIn(msgspec.Struct):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]
    s: PublicId | None = None


class SchemaViolation(Exception):
    """A body that is JSON but not an event or batch; ``field`` names the offending path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def decode_json(body: bytes) -> Any:
    """Parse the body as JSON; ``msgspec.DecodeError`` on malformed input (→ 400)."""
    return msgspec.json.decode(body)


def to_events(document: Any) -> tuple[list[EventIn], bool, str | None]:
    """Validate a parsed body: (events, is_batch, top-level ``s``), or raise ``SchemaViolation``."""
    if not isinstance(document, dict):
        raise SchemaViolation("body", 'the body must be a JSON object: one event or {"events": [...]}')
    is_batch = "events" in document
    try:
        if is_batch:
            batch = msgspec.convert(document, BatchIn)
            events, site_ref = batch.events, batch.s
        else:
            event = msgspec.convert(document, EventIn)
            events, site_ref = [event], event.s
    except msgspec.ValidationError as exc:
        raise _violation(str(exc)) from exc
    for index, event in enumerate(events):
        prefix = f"events[{index}]." if is_batch else ""
        # PostgreSQL text and jsonb cannot hold U+0000: refuse it here (422), never at the ledger (500).
        for name in ("ec", "ea", "el", "url", "u", "fp", "ts", "s"):
            value = getattr(event, name)
            if isinstance(value, str) and "\x00" in value:
                raise SchemaViolation(f"{prefix}{name}", "text must not contain NUL (U+0000)")
        if event.meta is not None:
            _check_meta(event.meta, f"{prefix}meta")
            if len(msgspec.json.encode(event.meta)) > MAX_META_BYTES:
                raise SchemaViolation(f"{prefix}meta", f"meta must encode to at most {MAX_META_BYTES} bytes")
        if isinstance(event.ts, float) and event.ts != event.ts:  # NaN cannot be a time
            raise SchemaViolation(f"{prefix}ts", "ts must be a number of milliseconds or an ISO-8601 time")
    return events, is_batch, site_ref


def _check_meta(meta: dict[str, Any], field: str) -> None:
    """Depth at most ``MAX_META_DEPTH`` and no NUL in keys or strings (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_META_DEPTH:
                raise SchemaViolation(field, f"meta must nest at most {MAX_META_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    raise SchemaViolation(field, "meta keys must not contain NUL (U+0000)")
                stack.append((item, depth + 1))
        elif isinstance(value, str) and "\x00" in value:
            raise SchemaViolation(field, "meta strings must not contain NUL (U+0000)")


def _violation(text: str) -> SchemaViolation:
    match = _AT_PATH.search(text)
    if match is None:
        return SchemaViolation("body", text)
    path = match.group("path").lstrip(".")
    message = text[: match.start()]
    return SchemaViolation(path or "body", message)
