"""Reports (SPEC §6): papermill rendering, offline HTML without code, the fleet index."""

from __future__ import annotations

from kernel.reporting.fleet import NOTEBOOKS, FleetReport, SiteOutcome, SiteTask, render_site, run_fleet_report
from kernel.reporting.index import render_index, write_index
from kernel.reporting.render import NotebookFailed, RenderResult, notebook_to_html, render_notebook

__all__ = [
    "NOTEBOOKS",
    "FleetReport",
    "NotebookFailed",
    "RenderResult",
    "SiteOutcome",
    "SiteTask",
    "notebook_to_html",
    "render_index",
    "render_notebook",
    "render_site",
    "run_fleet_report",
    "write_index",
]
