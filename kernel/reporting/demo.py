"""Demo step "reports": render the demo month's three reports for every site and print the index path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kernel.reporting.fleet import ReportFailed, run_fleet_report
from kernel.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from kernel.demo import DemoRun

__all__ = ["DEMO_REPORT_MONTH", "render_demo_reports"]

# The demo traffic covers 2026-09 and 2026-10, both closed and frozen; October has the stories.
DEMO_REPORT_MONTH = "2026-10"
# The index links every site's three reports.
DEMO_REPORT_KINDS = ("monthly", "drift", "verify")


def render_demo_reports(run: DemoRun) -> Path:
    """Render the monthly audit, drift and snapshot verification of every site for the demo month.

    Reports go to ``REVKERNEL_REPORTS_DIR`` when set, else ``<project>/reports``; returns the index.
    """
    out_root = Path(run.settings.extra.get("REVKERNEL_REPORTS_DIR") or PROJECT_ROOT / "reports")
    failed = 0
    report = None
    for kind in DEMO_REPORT_KINDS:
        report = run_fleet_report(
            kind=kind,
            year_month=DEMO_REPORT_MONTH,
            database_url=run.db.uri("analyst"),
            out_root=out_root,
        )
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items() if v)
        run.echo(f"reports: {kind} {DEMO_REPORT_MONTH} for {len(report.outcomes)} site(s): {counts}")
        if kind == "monthly":
            for outcome in report.outcomes:
                flags = ", ".join(outcome.red_flags) or "-"
                run.echo(f"  {outcome.verdict:<5} {outcome.public_id:<14} {flags}")
        failed += len(report.failed)
    assert report is not None
    run.echo(f"reports: index {report.index_path.resolve()}")
    if failed:
        raise ReportFailed(f"{failed} demo report(s) failed to render; see {report.summary_path}")
    return report.index_path
