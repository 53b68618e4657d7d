"""Idempotency keys, payload hashes, client time and classification of one event (pure, no I/O).

SPEC §4.1: ``Idempotency-Key`` header or ``event_id`` → a client key (version 2). Otherwise the
key is derived (version 1): lowercase hex SHA-256 of the UTF-8 string
``"{site_id}:{ec}|{ea}|{el}:{url}:{fp}:{bucket}"``, missing fields as empty strings and
``bucket = floor(server_ms / 5000) * 5000`` — so the same event re-sent within one 5-second
bucket of server time is a duplicate, and the same event later is a new one.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from kernel.ingest.schemas import EVENT_ID, EventIn, SchemaViolation

__all__ = [
    "BUCKET_MS",
    "KeyedEvent",
    "classify",
    "derive_v1_key",
    "keyed_event",
    "occurred_at_of",
    "payload_hash",
    "server_ms",
]

BUCKET_MS = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Client times outside this range are refused (422 on ``ts``): they are typos, not events.
_TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class KeyedEvent:
    """An event ready for the ledger: its key, version, hash, classification and client time."""

    event: EventIn
    idempotency_key: str
    idempotency_version: int
    payload_hash: str
    event_class: str | None  # None: billable; else the non-billable reason
    occurred_at: datetime | None
    payload: dict[str, Any]  # the outbox payload, without the billing decision
    client_hash: str | None = None  # salted hash of the sender's address (kernel.ingest.clients)


def server_ms(now: datetime) -> int:
    """Milliseconds since the epoch of a server instant, exactly (no float rounding)."""
    return (now.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


def derive_v1_key(
    site_id: uuid.UUID,
    *,
    ec: str | None,
    ea: str | None,
    el: str | None,
    url: str | None,
    fp: str | None,
    now_ms: int,
) -> str:
    """The version-1 key of SPEC §4.1 (see the module docstring)."""
    bucket = now_ms // BUCKET_MS * BUCKET_MS
    text = f"{site_id}:{ec or ''}|{ea or ''}|{el or ''}:{url or ''}:{fp or ''}:{bucket}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def classify(event: EventIn) -> str | None:
    """The non-billable reason of an event (``scroll_depth``, ``system``), or None when billable."""
    if event.ec == "interaction" and event.ea == "scroll_depth":
        return "scroll_depth"
    if event.ec == "system":
        return "system"
    return None


def payload_hash(event: EventIn) -> str:
    """SHA-256 of the event's canonical JSON (sorted keys), without its id and site.

    Two requests with one client key but different hashes are an ``idempotency_conflict`` (409).
    """
    return hashlib.sha256(msgspec.json.encode(_event_fields(event), order="sorted")).hexdigest()


def _event_fields(event: EventIn) -> dict[str, Any]:
    """What the client said about the event: hashed for conflicts and carried in the outbox payload."""
    return {
        "ec": event.ec,
        "ea": event.ea,
        "el": event.el,
        "url": event.page_url,
        "fp": event.fp,
        "ts": event.ts,
        "meta": event.meta,
    }


def occurred_at_of(event: EventIn, field: str) -> datetime | None:
    """Client time of an event (informational only: the month is server time, SPEC §3)."""
    if event.ts is None:
        return None
    try:
        if isinstance(event.ts, str):
            parsed = datetime.fromisoformat(event.ts.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise ValueError("naive")
            instant = parsed.astimezone(UTC)
        else:
            instant = _EPOCH + timedelta(milliseconds=float(event.ts))
    except (ValueError, OverflowError) as exc:
        raise SchemaViolation(field, "ts must be milliseconds since the epoch or ISO-8601 with an offset") from exc
    if not _TS_MIN <= instant < _TS_MAX:
        raise SchemaViolation(field, "ts must lie between 2000-01-01 and 2100-01-01")
    return instant


def keyed_event(
    event: EventIn,
    *,
    site_id: uuid.UUID,
    now_ms: int,
    header_key: str | None,
    field_prefix: str,
) -> KeyedEvent:
    """Key, hash, classify and time one validated event (raises ``SchemaViolation``)."""
    if header_key is not None:
        if not EVENT_ID.match(header_key):
            raise SchemaViolation("Idempotency-Key", "Idempotency-Key must be 1-200 of [A-Za-z0-9._:-]")
        key, version = header_key, 2
    elif event.event_id is not None:
        key, version = event.event_id, 2
    else:
        url = event.page_url
        key = derive_v1_key(site_id, ec=event.ec, ea=event.ea, el=event.el, url=url, fp=event.fp, now_ms=now_ms)
        version = 1
    occurred_at = occurred_at_of(event, f"{field_prefix}ts")
    payload = {"site_id": str(site_id), "idempotency_key": key, "event_id": event.event_id, **_event_fields(event)}
    return KeyedEvent(
        event=event,
        idempotency_key=key,
        idempotency_version=version,
        payload_hash=payload_hash(event),
        event_class=classify(event),
        occurred_at=occurred_at,
        payload=payload,
    )
