"""Prometheus metrics with the runbook's names (SPEC §4.4), correct with several workers.

``revkernel serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at ``<data dir>/prometheus`` (wiped at each
start) before any worker imports ``prometheus_client``; every worker then writes its samples to
memory-mapped files there and ``GET /metrics`` merges all workers' files (counters summed, the
drift gauge as the most recent value). Without that variable (tests, a plain ``create_app``) the
process serves its own in-memory registry.

| metric | runbook name |
|---|---|
| `billing_ingest_allowed_total` | billing.ingest.allowed (events admitted, billable or not) |
| `billing_ingest_duplicate_total` | billing.ingest.duplicate |
| `billing_ingest_rejected_quota_total` | billing.ingest.rejected_quota |
| `billing_ingest_overage_total` | billing.ingest.overage |
| `billing_ingest_rate_limited_total` | billing.ingest.rate_limited |
| `billing_gate_closed_total` | the ledger write failed: 500 billing_gate_closed |
| `billing_publish_failures_total` | ingestPublishFailuresLast15m (rate over 15 m) |
| `billing_reconciliation_drift` | billing.reconciliation.drift (counter - ledger, per site-month) |
| `billing_ingest_idempotency_conflict_total` | same client key, different payload (409) |
| `billing_ratelimit_degraded_total` | requests limited locally because Redis failed |
| `billing_ingest_request_duration_seconds` | request latency of `POST /api/sync` |
| `billing_ledger_ambiguous_total{resolution}` | unknown ledger outcomes resolved `committed`, `absent` or `unknown` |
| `billing_clock_skew_seconds` | this host's clock minus the database's clock, last measured (startup, watchtower) |
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = [
    "CLOCK_SKEW",
    "GATE_CLOSED",
    "INGEST_ALLOWED",
    "INGEST_CONFLICT",
    "INGEST_DUPLICATE",
    "INGEST_LATENCY",
    "INGEST_OVERAGE",
    "INGEST_RATE_LIMITED",
    "INGEST_REJECTED_QUOTA",
    "LEDGER_AMBIGUOUS",
    "MULTIPROC_ENV",
    "PUBLISH_FAILURES",
    "RATELIMIT_DEGRADED",
    "RECONCILIATION_DRIFT",
    "metrics_endpoint",
    "render_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

INGEST_ALLOWED = Counter("billing_ingest_allowed_total", "Events admitted to the ledger (billable or not)")
INGEST_DUPLICATE = Counter("billing_ingest_duplicate_total", "Events answered as duplicates")
INGEST_REJECTED_QUOTA = Counter("billing_ingest_rejected_quota_total", "Events rejected by the quota")
INGEST_OVERAGE = Counter("billing_ingest_overage_total", "Events billed as overage")
INGEST_RATE_LIMITED = Counter("billing_ingest_rate_limited_total", "Requests refused by the rate limit")
INGEST_CONFLICT = Counter("billing_ingest_idempotency_conflict_total", "Client keys reused with another payload (409)")
GATE_CLOSED = Counter("billing_gate_closed_total", "Requests refused because the ledger write failed")
PUBLISH_FAILURES = Counter("billing_publish_failures_total", "Failed outbox delivery attempts")
RATELIMIT_DEGRADED = Counter(
    "billing_ratelimit_degraded_total", "Requests rate-limited by the local fallback because Redis failed"
)
RECONCILIATION_DRIFT = Gauge(
    "billing_reconciliation_drift",
    "Counter minus ledger billable count found by the last reconcile of a site-month",
    ["site_id", "year_month"],
    multiprocess_mode="mostrecent",
)
INGEST_LATENCY = Histogram(
    "billing_ingest_request_duration_seconds",
    "Latency of POST /api/sync, by outcome",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def _multiprocess() -> bool:
    # The value class is fixed when prometheus_client is imported: only trust the directory if
    # this process really writes there.
    return bool(os.environ.get(MULTIPROC_ENV)) and values.ValueClass is not values.MutexValue


def render_metrics() -> bytes:
    """The exposition text of every worker's metrics (or this process's without multiprocess)."""
    if _multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@get("/metrics", tags=["operations"], include_in_schema=True, sync_to_thread=False)
def metrics_endpoint() -> Response[Any]:
    """Prometheus metrics of all workers (SPEC §4.4)."""
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)


# Issue 11 (lane11): exactly-once under faults.
LEDGER_AMBIGUOUS = Counter(
    "billing_ledger_ambiguous_total",
    "Ledger calls whose outcome was unknown when they ended, by how the service resolved them",
    ["resolution"],
)
CLOCK_SKEW = Gauge(
    "billing_clock_skew_seconds",
    "This host's billing clock minus the database clock, as last measured",
    multiprocess_mode="mostrecent",
)
