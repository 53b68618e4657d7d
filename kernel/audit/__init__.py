"""Read-side audit of the ledger (SPEC §6): DataFrames and typed findings for notebooks and reports.

Every function takes a connection (normally ``connect_analyst()``, the read-only analyst role), a
site and a ``year_month``. ``audit_fleet`` computes the findings of every site of a month with
set-based SQL; ``audit_site_month`` is the same audit restricted to one site.
"""

from __future__ import annotations

from kernel.audit.charts import (
    configure_display,
    daily_volume_chart,
    drift_chart,
    quota_timeline_chart,
    show,
    stacked_daily_chart,
)
from kernel.audit.connect import AuditDB, ReadOnlyQuery, analyst_engine, analyst_url, connect_analyst, query
from kernel.audit.display import Block, banner, figures_block, findings_block, table, verification_banner
from kernel.audit.findings import Finding, Severity, Verdict, findings_frame, verdict_of
from kernel.audit.fleet import FleetAudit, audit_fleet, hard_cap_of, site_findings
from kernel.audit.investigate import (
    Explorer,
    key_detail,
    key_detail_block,
    ledger_rows,
    one_line,
    reason_choices,
    site_choices,
    site_of,
)
from kernel.audit.results import read_results, results_document, write_results
from kernel.audit.site_month import (
    SiteMonthAudit,
    audit_site_month,
    daily_volume,
    drift_block,
    drift_history,
    outbox_block,
    outbox_problems,
    plan_and_mode,
    quota_timeline,
    snapshot_chain,
    usage_by_reason,
)
from kernel.audit.snapshots import SnapshotCheck, check_snapshot

__all__ = [
    "AuditDB",
    "Block",
    "Explorer",
    "Finding",
    "FleetAudit",
    "ReadOnlyQuery",
    "Severity",
    "SiteMonthAudit",
    "SnapshotCheck",
    "Verdict",
    "analyst_engine",
    "analyst_url",
    "audit_fleet",
    "audit_site_month",
    "banner",
    "check_snapshot",
    "configure_display",
    "connect_analyst",
    "daily_volume",
    "daily_volume_chart",
    "drift_block",
    "drift_chart",
    "drift_history",
    "figures_block",
    "findings_block",
    "findings_frame",
    "hard_cap_of",
    "key_detail",
    "key_detail_block",
    "ledger_rows",
    "one_line",
    "outbox_block",
    "outbox_problems",
    "plan_and_mode",
    "query",
    "quota_timeline",
    "quota_timeline_chart",
    "read_results",
    "reason_choices",
    "results_document",
    "show",
    "site_choices",
    "site_findings",
    "site_of",
    "snapshot_chain",
    "stacked_daily_chart",
    "table",
    "usage_by_reason",
    "verdict_of",
    "verification_banner",
    "write_results",
]
