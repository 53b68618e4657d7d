"""Findings for every site of a month from a handful of set-based queries (SPEC §9).

``audit_fleet`` runs ``FLEET_METRICS`` once for all sites in scope (or a given list), streams the
leaves of every frozen site-month in one ordered query to recompute their Merkle roots, and turns
each metrics row into findings with a pure function. A one-site notebook calls the same code with
``site_ids=[site_id]``, so the notebook, the fleet index and the report can never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import psycopg

from kernel.audit import queries
from kernel.audit.connect import AuditDB, pg_connection
from kernel.audit.findings import Finding, Severity, Verdict, verdict_of
from kernel.audit.snapshots import SnapshotCheck, check_snapshot, feed_leaf
from kernel.clock import Clock, SystemClock, format_utc
from kernel.ledger import RootBuilder
from kernel.months import month_bounds, parse_year_month

__all__ = [
    "CONCENTRATION_MIN_EVENTS",
    "CONCENTRATION_SHARE",
    "CONCENTRATION_TOP_CLIENTS",
    "LEAF_FETCH_ROWS",
    "METRIC_COLUMNS",
    "NON_BILLABLE_FLOOD_MIN_EVENTS",
    "NON_BILLABLE_FLOOD_SHARE",
    "OUTBOX_STALE_AFTER",
    "RETRY_STORM_DUPLICATES",
    "RETRY_STORM_REJECTED_PER_HOUR",
    "SPIKE_FACTOR",
    "SPIKE_MIN_EVENTS",
    "FleetAudit",
    "audit_fleet",
    "fleet_verdict",
    "hard_cap_of",
    "site_findings",
]

# A client that keeps sending after a quota 429 instead of honouring Retry-After: this many
# rejected rows within one clock hour is a retry storm.
RETRY_STORM_REJECTED_PER_HOUR = 50
# A client that re-sends its rejected events (same idempotency keys) shows up as duplicates only:
# this many duplicates in a month that also saw quota rejections is a retry storm too.
RETRY_STORM_DUPLICATES = 100
# Non-billable traffic (scroll_depth, system) at or above this count AND share of the month.
NON_BILLABLE_FLOOD_MIN_EVENTS = 200
NON_BILLABLE_FLOOD_SHARE = Decimal("0.5")
# A day with at least SPIKE_MIN_EVENTS events and SPIKE_FACTOR times the median active day.
SPIKE_FACTOR = 5
SPIKE_MIN_EVENTS = 200
# Public (keyless) ingest concentrated on a few client addresses: at least this many rows with a
# client hash, of which this share came from the CONCENTRATION_TOP_CLIENTS busiest addresses.
# Browser traffic comes from many visitors; a script with a forged Origin comes from a few hosts.
CONCENTRATION_MIN_EVENTS = 200
CONCENTRATION_SHARE = Decimal("0.5")
CONCENTRATION_TOP_CLIENTS = 3
# The figures shown in tables and written to the sidecar (the snapshot document stays out).
METRIC_COLUMNS = (
    "public_id",
    "billing_mode",
    "monthly_limit",
    "hard_cap",
    "total_count",
    "billable_count",
    "accepted_count",
    "overage_count",
    "rejected_count",
    "non_billable_count",
    "counter_billable",
    "dedup_count",
    "max_rejected_per_hour",
    "max_daily_events",
    "median_daily_events",
    "accepted_without_outbox",
    "unpublished_outbox",
    "outbox_without_ledger",
    "drift_checks",
    "counter_drift_checks",
    "redis_drift_checks",
    "has_snapshot",
)
# An outbox row still unpublished this long after it was written counts as never published.
OUTBOX_STALE_AFTER = timedelta(hours=1)
# Rows fetched per round trip when streaming the month's leaves (bounded memory).
LEAF_FETCH_ROWS = 10_000


def hard_cap_of(monthly_limit: int, soft_limit_enabled: bool, hard_cap_multiplier: Decimal) -> int:
    """H = floor(L * hard_cap_multiplier) with a soft limit, else L (SPEC §4.1)."""
    if not soft_limit_enabled:
        return int(monthly_limit)
    return int((Decimal(monthly_limit) * Decimal(hard_cap_multiplier)).to_integral_value("ROUND_FLOOR"))


@dataclass(frozen=True)
class FleetAudit:
    """Metrics, snapshot checks and findings of every site in scope for one month."""

    year_month: str
    records: list[dict[str, Any]]  # one FLEET_METRICS row per site, NULLs kept as None
    snapshots: dict[str, SnapshotCheck]
    findings: list[Finding]

    def metrics_frame(self) -> pd.DataFrame:
        """The metrics without the snapshot document columns, one row per site."""
        columns = [c for c in METRIC_COLUMNS if not self.records or c in self.records[0]]
        return pd.DataFrame([{c: r[c] for c in columns} for r in self.records], columns=columns)

    def record_of(self, site_id: str) -> dict[str, Any]:
        for record in self.records:
            if record["site_id"] == str(site_id):
                return record
        raise KeyError(site_id)

    def findings_of(self, site_id: str) -> list[Finding]:
        return [f for f in self.findings if f.site_id == site_id]

    def verdicts(self) -> pd.DataFrame:
        """One row per site: public id, verdict, red flags (codes of warn/fail findings)."""
        rows = []
        for record in self.records:
            found = self.findings_of(str(record["site_id"]))
            rows.append(
                {
                    "public_id": record["public_id"],
                    "site_id": str(record["site_id"]),
                    "name": record["name"],
                    "billing_mode": record["billing_mode"],
                    "verdict": verdict_of(found).value,
                    "red_flags": ", ".join(sorted({f.code for f in found if f.is_red_flag})),
                }
            )
        return pd.DataFrame(rows, columns=["public_id", "site_id", "name", "billing_mode", "verdict", "red_flags"])


def _fetch_metrics(conn: psycopg.Connection[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    # Plain dicts, not a DataFrame: NULL must stay None (pandas would turn it into NaN).
    cur = conn.execute(queries.FLEET_METRICS, params)
    columns = [c.name for c in cur.description or ()]
    records = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    for record in records:
        record["site_id"] = str(record["site_id"])
        record["year_month"] = params["year_month"]
        record["hard_cap"] = hard_cap_of(
            int(record["monthly_limit"]), bool(record["soft_limit_enabled"]), Decimal(record["hard_cap_multiplier"])
        )
    return records


def _recompute_roots(conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, RootBuilder]:
    builders: dict[str, RootBuilder] = {}
    # A named (server-side) cursor streams the leaves: a month of millions of rows stays bounded.
    with conn.transaction(), conn.cursor(name="audit_month_leaves") as cur:
        cur.itersize = LEAF_FETCH_ROWS
        cur.execute(queries.MONTH_LEAVES, params)
        current_id: str | None = None
        builder = RootBuilder()
        for site_id, key, created_at, state in cur:
            sid = str(site_id)
            if sid != current_id:
                current_id, builder = sid, RootBuilder()
                builders[sid] = builder
            feed_leaf(builder, key, format_utc(created_at), state)
    return builders


def audit_fleet(
    conn: AuditDB,
    year_month: str,
    *,
    site_ids: Sequence[str | uuid.UUID] | None = None,
    clock: Clock | None = None,
) -> FleetAudit:
    """Audit every site (or ``site_ids``) for ``year_month`` with set-based SQL.

    Args:
        conn: A connection, normally as the read-only analyst role.
        year_month: The ``YYYY-MM`` month.
        site_ids: Restrict to these site UUIDs; None audits every site.
        clock: Decides whether the month is over (a missing snapshot only matters then).
    """
    parse_year_month(year_month)
    month_start, month_end = month_bounds(year_month)
    params: dict[str, Any] = {
        "year_month": year_month,
        "site_ids": None if site_ids is None else [uuid.UUID(str(s)) for s in site_ids],
        "month_start": month_start,
        "month_end": month_end,
        "top_clients": CONCENTRATION_TOP_CLIENTS,
    }
    now = (clock or SystemClock()).now()
    params["stale_before"] = now - OUTBOX_STALE_AFTER
    with pg_connection(conn) as pg:
        records = _fetch_metrics(pg, params)
        builders = _recompute_roots(pg, params)
    month_closed = now >= month_end
    snapshots: dict[str, SnapshotCheck] = {}
    findings: list[Finding] = []
    for record in records:
        sid = str(record["site_id"])
        check = check_snapshot(record, builders.get(sid))
        snapshots[sid] = check
        findings.extend(site_findings(record, check, month_closed=month_closed))
    return FleetAudit(year_month, records, snapshots, findings)


def site_findings(metrics: dict[str, Any], snapshot: SnapshotCheck, *, month_closed: bool) -> list[Finding]:
    """The findings of one site-month from its metrics row and snapshot check (pure)."""
    sid, pid, ym = str(metrics["site_id"]), str(metrics["public_id"]), str(metrics["year_month"])
    out: list[Finding] = []

    def add(code: str, severity: Severity, message: str, **value: Any) -> None:
        out.append(Finding(sid, pid, ym, code, severity, message, value))

    m = metrics
    billable, total = int(m["billable_count"]), int(m["total_count"])
    if total == 0:
        add("no_activity", Severity.INFO, "no ledger rows this month")

    # Golden rule 3: counters are caches of the ledger; the billable counter must equal it.
    if m["has_counter"]:
        if int(m["counter_billable"]) != billable:
            add(
                "counter_mismatch",
                Severity.FAIL,
                f"site_usage_monthly.event_count is {m['counter_billable']}, the ledger has {billable} billable rows",
                counter=int(m["counter_billable"]),
                ledger=billable,
            )
        pairs = {
            "overage": ("counter_overage", "overage_count"),
            "rejected": ("counter_rejected", "rejected_count"),
            "non_billable": ("counter_non_billable", "non_billable_count"),
        }
        differ = {k: (int(m[c]), int(m[led])) for k, (c, led) in pairs.items() if int(m[c]) != int(m[led])}
        if differ:
            text = ", ".join(f"{k} {c} vs ledger {led}" for k, (c, led) in sorted(differ.items()))
            add("counter_breakdown_mismatch", Severity.WARN, f"counter breakdown differs: {text}")
    elif billable > 0:
        add("counter_missing", Severity.FAIL, f"no site_usage_monthly row for {billable} billable ledger rows")

    if m["billing_mode"] == "enforce":
        limit, cap = int(m["monthly_limit"]), int(m["hard_cap"])
        if int(m["accepted_count"]) > limit:
            add("quota_limit_exceeded", Severity.FAIL, f"{m['accepted_count']} ACCEPTED rows over a limit of {limit}")
        if billable > cap:
            add("hard_cap_exceeded", Severity.FAIL, f"{billable} billable rows over a hard cap of {cap}")
    if int(m["rejected_count"]) > 0:
        add("quota_rejections", Severity.INFO, f"{m['rejected_count']} events rejected by quota")
    if int(m["max_rejected_per_hour"]) >= RETRY_STORM_REJECTED_PER_HOUR:
        add(
            "retry_storm",
            Severity.WARN,
            f"{m['max_rejected_per_hour']} quota-rejected events within one hour: the client ignores Retry-After",
            max_rejected_per_hour=int(m["max_rejected_per_hour"]),
        )
    elif int(m["rejected_count"]) > 0 and int(m["dedup_count"]) >= RETRY_STORM_DUPLICATES:
        add(
            "retry_storm",
            Severity.WARN,
            f"{m['dedup_count']} duplicate re-sends in a month with quota rejections: the client ignores Retry-After",
            dedup_count=int(m["dedup_count"]),
        )
    flood = int(m["flood_candidate_count"])
    if flood >= NON_BILLABLE_FLOOD_MIN_EVENTS and Decimal(flood) >= NON_BILLABLE_FLOOD_SHARE * total:
        add("non_billable_flood", Severity.WARN, f"{flood} of {total} events are non-billable (scroll_depth/system)")
    peak, median = int(m["max_daily_events"]), int(m["median_daily_events"])
    if peak >= SPIKE_MIN_EVENTS and peak >= SPIKE_FACTOR * max(median, 1):
        add("volume_spike", Severity.WARN, f"a day with {peak} events against a median day of {median}")
    hashed, top = int(m["hashed_count"]), int(m["top_clients_count"])
    if (
        m["ingest_auth"] == "public"
        and hashed >= CONCENTRATION_MIN_EVENTS
        and Decimal(top) >= CONCENTRATION_SHARE * hashed
    ):
        busiest = min(CONCENTRATION_TOP_CLIENTS, int(m["client_count"]))
        add(
            "client_concentration",
            Severity.WARN,
            f"{top} of {hashed} keyless events came from {busiest} client address(es): scripted traffic with a"
            " forged Origin can burn the quota; check the addresses and the per-client rate limit",
            top_clients_count=top,
            hashed_count=hashed,
            client_count=int(m["client_count"]),
        )
    if int(m["dedup_count"]) > 0:
        add("duplicates_blocked", Severity.INFO, f"{m['dedup_count']} duplicate deliveries blocked by idempotency")

    if snapshot.status == "missing":
        if month_closed and total > 0:
            add("snapshot_missing", Severity.WARN, "the month is over but has no invoice snapshot")
        elif not month_closed:
            add("month_open", Severity.INFO, "the month is still open: no snapshot yet")
    elif snapshot.problems:
        for code, text in sorted(snapshot.problems.items()):
            add(code, Severity.FAIL, text)
    else:
        add("snapshot_verified", Severity.INFO, f"snapshot {snapshot.snapshot_hash} re-verified from the ledger")

    if int(m["counter_drift_checks"]) > 0:
        add(
            "counter_drift_logged",
            Severity.WARN,
            f"reconcile found counter drift {m['counter_drift_checks']} time(s), at most {m['max_abs_counter_drift']}",
        )
    if int(m["redis_drift_checks"]) > 0:
        add(
            "redis_drift_logged",
            Severity.INFO,
            f"the Redis mirror drifted {m['redis_drift_checks']} time(s), at most {m['max_abs_redis_drift']}",
        )

    # Golden rule 2: every billable row has its outbox row, written in the same transaction.
    if int(m["accepted_without_outbox"]) > 0:
        missing = int(m["accepted_without_outbox"])
        add("accepted_without_outbox", Severity.FAIL, f"{missing} accepted rows have no outbox row")
    if int(m["outbox_without_ledger"]) > 0:
        add("outbox_without_ledger", Severity.FAIL, f"{m['outbox_without_ledger']} outbox rows have no ledger row")
    unpublished = int(m["unpublished_outbox"])
    if unpublished > 0 and m["relay_active"]:
        add("unpublished_outbox", Severity.WARN, f"{unpublished} accepted events were never published")
    elif unpublished > 0:
        add(
            "outbox_not_relayed",
            Severity.INFO,
            f"{unpublished} outbox rows wait: no row was ever published (no sink; the outbox table is the queue)",
        )
    return out


def fleet_verdict(audit: FleetAudit) -> Verdict:
    return verdict_of(audit.findings)
