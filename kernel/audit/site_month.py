"""One site-month, read side: the tables and figures a monthly audit notebook shows."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kernel.audit import queries
from kernel.audit.connect import AuditDB, pg_connection, read_frame, read_limited
from kernel.audit.display import Block, banner, figures_block, findings_block, table
from kernel.audit.findings import Finding, Verdict, findings_frame, verdict_of
from kernel.audit.fleet import METRIC_COLUMNS, audit_fleet, hard_cap_of
from kernel.audit.results import write_results
from kernel.audit.snapshots import SnapshotCheck
from kernel.clock import Clock
from kernel.errors import NotFound
from kernel.months import month_bounds, parse_year_month
from kernel.tenants import Site, resolve_site

__all__ = [
    "AREA_CODES",
    "MAX_TABLE_ROWS",
    "SiteMonthAudit",
    "audit_site_month",
    "daily_volume",
    "drift_block",
    "drift_history",
    "outbox_block",
    "outbox_problems",
    "plan_and_mode",
    "quota_timeline",
    "snapshot_chain",
    "usage_by_reason",
]

# Which finding codes each focused notebook judges on (the monthly audit judges on all of them).
AREA_CODES: dict[str, frozenset[str]] = {
    "drift": frozenset(
        {
            "counter_mismatch",
            "counter_breakdown_mismatch",
            "counter_missing",
            "counter_drift_logged",
            "redis_drift_logged",
            "no_activity",
        }
    ),
    "snapshot": frozenset(
        {
            "snapshot_missing",
            "month_open",
            "snapshot_verified",
            "snapshot_hash_mismatch",
            "snapshot_document_unreadable",
            "snapshot_document_mismatch",
            "merkle_root_mismatch",
            "snapshot_counts_mismatch",
            "snapshot_chain_broken",
            "signing_key_unknown",
            "signature_invalid",
            "no_activity",
        }
    ),
}
# Rows a notebook table shows at most (drift history, outbox problems, ledger rows).
MAX_TABLE_ROWS = 500
# Outbox rows the monthly audit lists under its one-sentence summary (the rest is counted).
OUTBOX_SHOWN_ROWS = 20


def _month_params(site: Site, year_month: str) -> dict[str, Any]:
    start, end = month_bounds(parse_year_month(year_month))
    return {"site_id": site.id, "year_month": year_month, "month_start": start, "month_end": end}


def plan_and_mode(site: Site) -> pd.DataFrame:
    """The site's plan and billing mode as a one-column table (values as strings)."""
    hard_cap = hard_cap_of(site.monthly_limit, site.soft_limit_enabled, site.hard_cap_multiplier)
    rows = {
        "site": site.public_id,
        "name": site.name,
        "billing_mode": site.billing_mode,
        "monthly_limit": str(site.monthly_limit),
        "soft_limit_enabled": str(site.soft_limit_enabled).lower(),
        "hard_cap_multiplier": str(site.hard_cap_multiplier),
        "hard_cap": str(hard_cap),
        "rate_limit_per_minute": str(site.rate_limit_per_minute),
    }
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="plan"))


def usage_by_reason(conn: AuditDB, site: Site, year_month: str) -> pd.DataFrame:
    """Events by billing state, billable flag and reason."""
    return read_frame(conn, queries.USAGE_BY_REASON, _month_params(site, year_month))


def daily_volume(conn: AuditDB, site: Site, year_month: str) -> pd.DataFrame:
    """Every day of the month (UTC): accepted, overage, rejected and non-billable events."""
    frame = read_frame(conn, queries.DAILY_VOLUME, _month_params(site, year_month))
    for column in ("accepted", "overage", "rejected", "non_billable"):
        frame[column] = frame[column].astype("int64")
    return frame


def quota_timeline(daily: pd.DataFrame, site: Site) -> pd.DataFrame:
    """Cumulative billable events per day against the monthly limit and the hard cap."""
    hard_cap = hard_cap_of(site.monthly_limit, site.soft_limit_enabled, site.hard_cap_multiplier)
    billable = (daily["accepted"] + daily["overage"]).cumsum()
    return pd.DataFrame(
        {
            "day": daily["day"],
            "cumulative_billable": billable.astype("int64"),
            "monthly_limit": site.monthly_limit,
            "hard_cap": hard_cap,
            "cumulative_rejected": daily["rejected"].cumsum().astype("int64"),
        }
    )


def snapshot_chain(conn: AuditDB, site: Site) -> pd.DataFrame:
    """Every snapshot of the site in month order, with whether each links to the one before."""
    frame = read_frame(conn, queries.SNAPSHOT_CHAIN, {"site_id": site.id})
    return frame


def drift_history(conn: AuditDB, site: Site, year_month: str, *, limit: int = MAX_TABLE_ROWS) -> pd.DataFrame:
    """Every reconcile result for the site-month: ledger vs counter vs Redis, before correction.

    At most ``limit`` rows; ``frame.attrs["total_rows"]`` says how many there are in all.
    """
    return read_limited(conn, queries.DRIFT_HISTORY, {**_month_params(site, year_month), "limit": limit})


def outbox_problems(conn: AuditDB, site: Site, year_month: str, *, limit: int = MAX_TABLE_ROWS) -> pd.DataFrame:
    """Billable rows without an outbox row, unpublished outbox rows, outbox rows without a ledger row.

    At most ``limit`` rows; ``frame.attrs["total_rows"]`` says how many there are in all.
    """
    return read_limited(conn, queries.OUTBOX_PROBLEMS, {**_month_params(site, year_month), "limit": limit})


def drift_block(conn: AuditDB, site: Site, year_month: str) -> Block:
    """The drift history as a table that says when it is cut."""
    frame = drift_history(conn, site, year_month)
    return table(frame, total_rows=frame.attrs["total_rows"], empty="No reconcile run logged for this month.")


def outbox_block(conn: AuditDB, audit: SiteMonthAudit) -> Block:
    """Outbox integrity in one sentence, then the rows concerned (the table says when it is cut)."""
    frame = outbox_problems(conn, audit.site, audit.year_month, limit=OUTBOX_SHOWN_ROWS)
    total = int(frame.attrs["total_rows"])
    m = audit.metrics
    missing, orphans = int(m["accepted_without_outbox"]), int(m["outbox_without_ledger"])
    waiting = total - missing - orphans
    parts = [
        f"{missing:,} accepted row(s) without an outbox row",
        f"{orphans:,} outbox row(s) without a ledger row",
        f"{max(waiting, 0):,} outbox row(s) not published yet"
        + ("" if m["relay_active"] else " (no sink configured: the outbox table is the queue)"),
    ]
    sentence = "; ".join(parts) + "."
    rows = table(
        frame, total_rows=total, empty="Every accepted row has its outbox row and every outbox row its ledger row."
    )
    return Block(f"<p>{html.escape(sentence)}</p>{rows.html}", f"{sentence}\n{rows.text}")


@dataclass(frozen=True)
class SiteMonthAudit:
    """Everything the monthly audit concludes about one site-month."""

    site: Site
    year_month: str
    metrics: dict[str, Any]
    snapshot: SnapshotCheck
    findings: list[Finding]

    @property
    def site_id(self) -> str:
        return str(self.site.id)

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.findings)

    def findings_in(self, area: str | None = None) -> list[Finding]:
        """All findings, or only those of ``area`` (``drift`` or ``snapshot``)."""
        if area is None:
            return list(self.findings)
        codes = AREA_CODES[area]
        return [f for f in self.findings if f.code in codes]

    def findings_table(self, area: str | None = None) -> pd.DataFrame:
        frame: pd.DataFrame = findings_frame(self.findings_in(area))
        return frame

    def verdict_in(self, area: str | None = None) -> Verdict:
        return verdict_of(self.findings_in(area))

    def banner(self, kind: str, area: str | None = None) -> Block:
        """The verdict and red flags first: what a finance analyst reads at a glance."""
        return banner(
            title=f"{self.site.name} ({self.site.public_id})",
            subtitle=f"{kind} · {self.year_month} · billing mode {self.site.billing_mode}",
            verdict=self.verdict_in(area).value,
            findings=self.findings_in(area),
        )

    def figures(self) -> dict[str, str]:
        """The month's figures in words: billable, overage, rejected, non-billable, snapshot, drift."""
        m = self.metrics
        snapshot = {"verified": "verified", "failed": "FAILED", "missing": "none"}.get(self.snapshot.status, "?")
        if self.snapshot.status == "missing" and any(f.code == "month_open" for f in self.findings):
            snapshot = "month open"
        drifts = int(m["counter_drift_checks"])
        return {
            "billable (invoiced)": f"{int(m['billable_count']):,}",
            "of which overage": f"{int(m['overage_count']):,}",
            "rejected (never billed)": f"{int(m['rejected_count']):,}",
            "non-billable": f"{int(m['non_billable_count']):,}",
            "duplicates blocked": f"{int(m['dedup_count']):,}",
            "snapshot": snapshot,
            "counter drift": "none" if drifts == 0 else f"{drifts} run(s), at most {int(m['max_abs_counter_drift'])}",
        }

    def figures_block(self) -> Block:
        return figures_block(self.figures())

    def findings_block(self, area: str | None = None) -> Block:
        return findings_block(self.findings_in(area))

    def counters_block(self) -> Block:
        return table(self.counters_table().reset_index())

    def snapshot_block(self) -> Block:
        return table(self.snapshot_table().reset_index())

    def write_results(self, results_path: str, *, notebook: str, area: str | None = None) -> dict[str, Any]:
        """Write the notebook's JSON sidecar (nothing when ``results_path`` is empty) and return it."""
        return write_results(
            results_path,
            notebook=notebook,
            site_id=self.site_id,
            public_id=self.site.public_id,
            year_month=self.year_month,
            findings=self.findings_in(area),
            metrics=self.summary_metrics(),
        )

    def counters_table(self) -> pd.DataFrame:
        """Ledger recount next to the live counters and the snapshot, per figure."""
        m = self.metrics
        rows = [
            ("billable", m["billable_count"], m["counter_billable"], m["snap_billable_count"]),
            ("overage", m["overage_count"], m["counter_overage"], m["snap_overage_count"]),
            ("rejected", m["rejected_count"], m["counter_rejected"], m["snap_rejected_count"]),
            ("non_billable", m["non_billable_count"], m["counter_non_billable"], m["snap_non_billable_count"]),
        ]
        return pd.DataFrame(
            [
                {
                    "figure": name,
                    "ledger": str(ledger),
                    "counter": str(counter) if m["has_counter"] else "-",
                    "snapshot": "-" if snap is None else str(snap),
                }
                for name, ledger, counter, snap in rows
            ]
        ).set_index("figure")

    def snapshot_table(self) -> pd.DataFrame:
        """The snapshot re-verification, one check per row."""
        check = self.snapshot
        rows = [
            ("status", check.status),
            ("snapshot_hash", check.snapshot_hash or "-"),
            ("stored_merkle_root", check.stored_root or "-"),
            ("recomputed_merkle_root", check.recomputed_root),
            ("leaves", str(check.leaves)),
            ("key_id", check.key_id or "-"),
        ]
        rows += [(code, text) for code, text in sorted(check.problems.items())]
        return pd.DataFrame({"value": [v for _, v in rows]}, index=pd.Index([k for k, _ in rows], name="check"))

    def summary_metrics(self) -> dict[str, Any]:
        """JSON-ready key figures for the results sidecar."""
        out: dict[str, Any] = {}
        for column in METRIC_COLUMNS:
            value = self.metrics.get(column)
            out[column] = value if isinstance(value, bool | str) or value is None else int(value)
        out["snapshot"] = self.snapshot.to_json()
        return out


def audit_site_month(conn: AuditDB, site: str | Site, year_month: str, *, clock: Clock | None = None) -> SiteMonthAudit:
    """Audit one site-month: the fleet audit restricted to this site (same SQL, same rules).

    Args:
        conn: A connection as the analyst role.
        site: Public id, UUID string, or a resolved ``Site``.
        year_month: The ``YYYY-MM`` month.
        clock: Decides whether the month is over.
    """
    if isinstance(site, Site):
        resolved = site
    else:
        with pg_connection(conn) as pg:
            resolved = resolve_site(pg, site)
    fleet = audit_fleet(conn, year_month, site_ids=[resolved.id], clock=clock)
    sid = str(resolved.id)
    if not fleet.records:
        raise NotFound(
            f"site {resolved.public_id} did not exist in {year_month}: created later, nothing recorded that month",
            code="site_not_in_month",
        )
    return SiteMonthAudit(resolved, year_month, fleet.record_of(sid), fleet.snapshots[sid], fleet.findings_of(sid))
