"""Ingest: ``POST /api/sync`` bills every event exactly once (SPEC §2, §4.1).

``routes`` (HTTP only) → ``service`` (the pipeline and its rules) → ``queries`` (the ledger
transaction); ``schemas`` is the wire format, ``keys`` the idempotency keys, ``ratelimit`` the
per-site limiter.
"""

from __future__ import annotations

from kernel.ingest.keys import derive_v1_key, payload_hash
from kernel.ingest.routes import close_ingest, ingest_handlers
from kernel.ingest.schemas import MAX_BATCH_EVENTS, MAX_BODY_BYTES
from kernel.ingest.service import Decision, IngestCall, Reply, decide, handle_ingest

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "Decision",
    "IngestCall",
    "Reply",
    "close_ingest",
    "decide",
    "derive_v1_key",
    "handle_ingest",
    "ingest_handlers",
    "payload_hash",
]
