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

Operations figures (the runbook's §6 rollback conditions and §7 metrics) are read from the store of
record at scrape time, so they are right whichever process ran the cron, and are cached for
``OPS_CACHE_S`` per process, so a flood of scrapes costs at most one database round trip per
interval. They come from the watchtower's own checks (``kernel.cron.watchtower.database_checks``):
one rule, one place.

| metric | meaning |
|---|---|
| `billing_cron_last_success_timestamp_seconds{cron}` | start of the cron's latest successful run (0: never) |
| `billing_cron_last_success_duration_seconds{cron}` | how long that run took |
| `billing_cron_last_run_failed{cron}` | 1 when the cron's latest run failed |
| `billing_cron_overdue{cron}` | 1 when the watchtower counts the cron overdue |
| `billing_cron_overdue_after_seconds{cron}` | the allowance after which it is overdue |
| `billing_outbox_backlog` / `billing_outbox_oldest_age_seconds` | unpublished outbox rows and the oldest one's age |
| `billing_publish_failures_last_15m` | ingestPublishFailuresLast15m: failed deliveries in the last 15 min |
| `billing_reconciliation_drift` | billing.reconciliation.drift: largest counter drift found in the last hour |
| `billing_reconciliation_drift_checks_1h{kind}` | reconcile results with counter / Redis drift in the last hour |
| `billing_watchtower_check_status{check}` | each watchtower check: 0 ok, 1 degraded, 2 alarm, 3 critical |
| `billing_dispute_exports_total{kind}` | dispute exports and manifests served (from `audit_log`) |
| `billing_evidence_packets_total` | evidence packets built (from `audit_log`) |
| `billing_ops_metrics_up` | 1 when the figures above could be read from the database |

No sample carries a site id or any other tenant identifier: ``/metrics`` is unauthenticated, so a
label with a site id would let anyone enumerate customers (issue 12 §4). Per-site drift is in the
drift report and the audit notebooks, for people with a database role.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response, get
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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
    "OPS_CACHE_S",
    "PUBLISH_FAILURES",
    "RATELIMIT_DEGRADED",
    "RECONCILIATION_DRIFT",
    "OpsFigures",
    "metrics_endpoint",
    "ops_figures",
    "read_ops_figures",
    "render_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_log = logging.getLogger("kernel.metrics")

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


def render_metrics(accept: str = "", ops: OpsFigures | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of every worker's metrics plus the operations figures.

    The format follows the scraper's ``Accept`` header the way prometheus_client's own exposition
    does (``choose_encoder``): OpenMetrics when asked for, else the text format; the Content-Type
    is exactly the one that encoder declares.
    """
    from prometheus_client.exposition import choose_encoder

    source: CollectorRegistry = REGISTRY
    if _multiprocess():
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TenantFree(source))
    if ops is not None:
        registry.register(_OpsCollector(ops))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


@get("/metrics", tags=["operations"], include_in_schema=True)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics of all workers and the operations figures (SPEC §4.4); no tenant ids."""
    from kernel.web import app_state

    ops = await ops_figures(app_state(request))
    body, content_type = render_metrics(request.headers.get("accept", ""), ops)
    # Set the header verbatim: Litestar would append a second charset to a text/* media type,
    # and Prometheus 3 refuses a Content-Type with a repeated parameter.
    return Response(body, headers={"content-type": content_type})


# --- Operations figures read from the database at scrape time (issue 16: crons, outbox, drift,
# watchtower, exports and packets). Appended here; the collectors below expose them.

# Seconds a process reuses the figures it read: a scrape flood costs one query per interval.
OPS_CACHE_S = 15.0
# The watchtower cannot check itself; it runs every 15 minutes, so three missed runs is overdue.
WATCHTOWER_OVERDUE_AFTER_S = 45 * 60.0
# Audit-log actions counted as exports / packets (written by kernel.export for every request).
_EXPORT_ACTIONS = {"dispute_export": "csv", "dispute_manifest": "manifest"}
_PACKET_ACTION = "dispute_packet"
# Metrics whose labels name a tenant: never exposed (issue 12 §4). The drift gauge above stays a
# process-local record of reconcile; ``billing_reconciliation_drift`` is exposed fleet-wide below.
_TENANT_LABELS = frozenset({"site_id", "public_id", "site"})


@dataclass(frozen=True)
class OpsFigures:
    """What the operations metrics say, read in one pass (``up`` False: the database did not answer)."""

    up: bool
    crons: dict[str, dict[str, float]] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    outbox_backlog: int = 0
    outbox_oldest_age_s: float = 0.0
    publish_failures_15m: int = 0
    drift_max_abs_1h: int = 0
    drift_checks_1h: dict[str, int] = field(default_factory=dict)
    exports: dict[str, int] = field(default_factory=dict)
    packets: int = 0


_CRON_SQL = """
SELECT n.name,
       ok.started_at, extract(epoch FROM ok.finished_at - ok.started_at),
       last.status = 'failed'
FROM unnest(%(names)s::text[]) AS n(name)
LEFT JOIN LATERAL (
    SELECT started_at, finished_at FROM cron_runs
    WHERE name = n.name AND status = 'ok' ORDER BY started_at DESC, id DESC LIMIT 1
) ok ON true
LEFT JOIN LATERAL (
    SELECT status FROM cron_runs
    WHERE name = n.name AND status <> 'skipped' ORDER BY started_at DESC, id DESC LIMIT 1
) last ON true
"""
_AUDIT_SQL = "SELECT action, count(*) FROM audit_log WHERE action = ANY(%(actions)s::text[]) GROUP BY action"


def read_ops_figures(conn: Any, now: Any, settings: Any) -> OpsFigures:
    """Read every operations figure on ``conn`` (the app role) as of ``now``.

    The outbox, publish-failure, drift and cron verdicts are the watchtower's own checks.
    """
    from kernel.cron.relay import sink_from_settings
    from kernel.cron.runs import CRON_NAMES
    from kernel.cron.watchtower import CRON_ALLOWANCE, STATUS_ORDER, database_checks
    from kernel.errors import ConfigError

    try:
        sink = sink_from_settings(settings)
        configured = sink is not None
        if sink is not None:
            sink.close()
    except ConfigError:
        configured = True  # named but unusable: the watchtower treats it as configured too
    checks = database_checks(conn, now, configured)
    overdue = set(checks["crons"]["overdue"])
    allowance = {name: td.total_seconds() for name, td in CRON_ALLOWANCE.items()}
    allowance["watchtower"] = WATCHTOWER_OVERDUE_AFTER_S
    crons: dict[str, dict[str, float]] = {}
    for name, ok_at, duration_s, failed in conn.execute(_CRON_SQL, {"names": list(CRON_NAMES)}).fetchall():
        figures = {
            "last_success": ok_at.timestamp() if ok_at is not None else 0.0,
            "duration": float(duration_s) if duration_s is not None else 0.0,
            "failed": 1.0 if failed else 0.0,
            "overdue": 1.0 if name in overdue else 0.0,
        }
        if name in allowance:
            figures["overdue_after"] = allowance[name]
        crons[str(name)] = figures
    actions = [*_EXPORT_ACTIONS, _PACKET_ACTION]
    counted = {str(a): int(n) for a, n in conn.execute(_AUDIT_SQL, {"actions": actions}).fetchall()}
    drift = checks["drift"]
    return OpsFigures(
        up=True,
        crons=crons,
        checks={name: STATUS_ORDER.index(c["status"]) for name, c in checks.items()},
        outbox_backlog=int(checks["outbox_backlog"]["pending"]),
        outbox_oldest_age_s=float(checks["outbox_backlog"]["oldest_age_s"]),
        publish_failures_15m=int(checks["publish_failures"]["ingestPublishFailuresLast15m"]),
        drift_max_abs_1h=int(drift["max_abs_counter_drift_1h"]),
        drift_checks_1h={
            "counter": int(drift["counter_drift_checks_1h"]),
            "redis": int(drift["redis_drift_checks_1h"]),
        },
        exports={kind: counted.get(action, 0) for action, kind in _EXPORT_ACTIONS.items()},
        packets=counted.get(_PACKET_ACTION, 0),
    )


def _read_ops_blocking(state: Any) -> OpsFigures:
    try:
        with state.db.connect("app", autocommit=True) as conn:
            return read_ops_figures(conn, state.clock.now(), state.settings)
    except Exception as exc:  # a scrape must answer: say the figures are missing, and why, in the log
        _log.warning("operations metrics unavailable: %s: %s", type(exc).__name__, exc)
        return OpsFigures(up=False)


async def ops_figures(state: Any) -> OpsFigures:
    """The operations figures, read at most once per ``OPS_CACHE_S`` per process (single flight)."""
    cache: dict[str, Any] = state.extras.setdefault("ops_metrics", {})
    lock = cache.setdefault("lock", asyncio.Lock())
    async with lock:
        read_at = cache.get("read_at")
        if read_at is None or time.monotonic() - read_at >= OPS_CACHE_S:
            cache["figures"] = await asyncio.to_thread(_read_ops_blocking, state)
            cache["read_at"] = time.monotonic()
        figures: OpsFigures = cache["figures"]
    return figures


class _TenantFree:
    """The registry's metrics without any series labelled with a tenant (issue 12 §4)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name in _FLEET_WIDE:
                continue  # exposed fleet-wide by the operations collector instead
            family.samples = [s for s in family.samples if not _TENANT_LABELS & s.labels.keys()]
            yield family


# The process-local per-site drift gauge; its fleet-wide figure comes from the database.
_FLEET_WIDE = frozenset({"billing_reconciliation_drift"})


class _OpsCollector:
    def __init__(self, figures: OpsFigures) -> None:
        self._f = figures

    def collect(self) -> Iterator[Metric]:
        f = self._f
        yield GaugeMetricFamily(
            "billing_ops_metrics_up", "1 when the operations figures could be read from the database", value=int(f.up)
        )
        if not f.up:
            return
        per_cron = [
            (
                "billing_cron_last_success_timestamp_seconds",
                "Start of the cron's latest successful run (0: never)",
                "last_success",
            ),
            ("billing_cron_last_success_duration_seconds", "Duration of the cron's latest successful run", "duration"),
            ("billing_cron_last_run_failed", "1 when the cron's latest run failed", "failed"),
            ("billing_cron_overdue", "1 when the watchtower counts the cron overdue", "overdue"),
            (
                "billing_cron_overdue_after_seconds",
                "Seconds after its last success that the cron is overdue",
                "overdue_after",
            ),
        ]
        for name, doc, key in per_cron:
            family = GaugeMetricFamily(name, doc, labels=["cron"])
            for cron, figures in sorted(f.crons.items()):
                if key in figures:
                    family.add_metric([cron], figures[key])
            yield family
        yield GaugeMetricFamily("billing_outbox_backlog", "Unpublished outbox rows", value=f.outbox_backlog)
        yield GaugeMetricFamily(
            "billing_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", value=f.outbox_oldest_age_s
        )
        yield GaugeMetricFamily(
            "billing_publish_failures_last_15m",
            "Failed outbox deliveries in the last 15 minutes (ingestPublishFailuresLast15m)",
            value=f.publish_failures_15m,
        )
        yield GaugeMetricFamily(
            "billing_reconciliation_drift",
            "Largest counter drift (counter - ledger) reconcile found in the last hour, over all sites",
            value=f.drift_max_abs_1h,
        )
        checks_1h = GaugeMetricFamily(
            "billing_reconciliation_drift_checks_1h", "Reconcile results with drift in the last hour", labels=["kind"]
        )
        for kind, count in sorted(f.drift_checks_1h.items()):
            checks_1h.add_metric([kind], count)
        yield checks_1h
        status = GaugeMetricFamily(
            "billing_watchtower_check_status",
            "Watchtower check status: 0 ok, 1 degraded, 2 alarm, 3 critical",
            labels=["check"],
        )
        for check, level in sorted(f.checks.items()):
            status.add_metric([check], level)
        yield status
        exports = CounterMetricFamily(
            "billing_dispute_exports", "Dispute exports (csv) and manifests served", labels=["kind"]
        )
        for kind, count in sorted(f.exports.items()):
            exports.add_metric([kind], count)
        yield exports
        yield CounterMetricFamily("billing_evidence_packets", "Evidence packets built", value=f.packets)


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
