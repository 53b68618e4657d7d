"""The monthly fleet report: findings for every site in set-based SQL, rendering fanned out.

``run_fleet_report`` audits the month once for all sites (``kernel.audit.audit_fleet``), then
renders one notebook per site in a local process pool sized to the cores, or on a Dask cluster
(``scheduler="tcp://host:port"``; the output directory must then be on a filesystem the workers
share). A site whose notebook fails is reported as failed with its error notebook kept, never
skipped. The index (``<out>/<YYYY-MM>/index.html``) and ``summary.json`` cover every site.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kernel.audit import FleetAudit, audit_fleet, connect_analyst
from kernel.clock import Clock
from kernel.errors import InputError, KernelError
from kernel.months import parse_year_month
from kernel.reporting import queries
from kernel.reporting.index import adjacent_months, write_index
from kernel.reporting.render import DEFAULT_EXECUTION_TIMEOUT_S, NotebookFailed, render_notebook
from kernel.settings import PROJECT_ROOT
from kernel.tenants import resolve_site

__all__ = [
    "NOTEBOOKS",
    "NOTEBOOKS_DIR",
    "FleetReport",
    "ReportFailed",
    "SiteOutcome",
    "SiteTask",
    "render_site",
    "run_fleet_report",
]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = {
    "monthly": "monthly_audit.ipynb",
    "drift": "reconciliation_drift.ipynb",
    "verify": "snapshot_verification.ipynb",
}
# Seconds to wait for a Dask scheduler to answer before giving up.
DASK_CONNECT_TIMEOUT_S = 30


class ReportFailed(KernelError):
    """At least one site's notebook failed to render (the others were rendered and indexed)."""

    code = "report_failed"


@dataclass(frozen=True)
class SiteTask:
    """One notebook to render for one site (picklable: it travels to pool or Dask workers)."""

    kind: str
    public_id: str
    site_id: str
    notebook: str
    parameters: dict[str, str]
    out_dir: str
    timeout_s: int


@dataclass(frozen=True)
class SiteOutcome:
    kind: str
    public_id: str
    site_id: str
    status: str  # rendered | failed
    verdict: str  # pass | warn | fail | error
    html: str | None = None
    ipynb: str | None = None
    results: str | None = None
    red_flags: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class FleetReport:
    kind: str
    year_month: str
    out_dir: Path
    index_path: Path
    summary_path: Path
    outcomes: list[SiteOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[SiteOutcome]:
        return [o for o in self.outcomes if o.status != "rendered"]

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "warn": 0, "fail": 0, "error": 0, "no_activity": 0}
        for outcome in self.outcomes:
            out[outcome.verdict] = out.get(outcome.verdict, 0) + 1
        return out


def render_site(task: SiteTask) -> SiteOutcome:
    """Render one site's notebook; every failure becomes a ``failed`` outcome, never an exception."""
    try:
        result = render_notebook(
            Path(task.notebook), task.parameters, Path(task.out_dir), timeout_s=task.timeout_s, name=task.public_id
        )
    except NotebookFailed as exc:
        return SiteOutcome(
            task.kind,
            task.public_id,
            task.site_id,
            status="failed",
            verdict="error",
            ipynb=str(exc.ipynb_path),
            error=exc.message,
        )
    except Exception as exc:  # a worker must report, not die: the index shows every site
        return SiteOutcome(
            task.kind,
            task.public_id,
            task.site_id,
            status="failed",
            verdict="error",
            error=f"{type(exc).__name__}: {exc}",
        )
    return SiteOutcome(
        task.kind,
        task.public_id,
        task.site_id,
        status="rendered",
        verdict=result.verdict,
        html=str(result.html_path),
        ipynb=str(result.ipynb_path),
        results=str(result.results_path),
        red_flags=tuple(result.results.get("red_flags", ())),
    )


def _run_local(tasks: Sequence[SiteTask], workers: int) -> Iterator[tuple[SiteTask, SiteOutcome]]:
    # spawn: workers start clean, without the parent's database connections or threads.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(render_site, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                yield task, future.result()
            except Exception as exc:  # the worker process died
                yield task, _lost(task, exc)


def _run_dask(tasks: Sequence[SiteTask], scheduler: str) -> Iterator[tuple[SiteTask, SiteOutcome]]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    try:
        client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT_S)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise KernelError(
            f"cannot reach the Dask scheduler at {scheduler}: {exc}", code="scheduler_unreachable"
        ) from exc
    with client:
        futures = [
            client.submit(render_site, task, pure=False, key=f"render-{task.kind}-{task.site_id}") for task in tasks
        ]
        by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for future in dask_completed(futures):  # type: ignore[no-untyped-call]
            task = by_key[future.key]
            try:
                yield task, future.result()
            except Exception as exc:  # the worker died or lost the task
                yield task, _lost(task, exc)


def _lost(task: SiteTask, exc: BaseException) -> SiteOutcome:
    return SiteOutcome(
        task.kind, task.public_id, task.site_id, "failed", "error", error=f"worker lost: {type(exc).__name__}: {exc}"
    )


def _select_sites(fleet_conn: Any, sites: Sequence[str] | None) -> list[str] | None:
    if not sites:
        return None
    return [str(resolve_site(fleet_conn, ref).id) for ref in sites]


def run_fleet_report(
    *,
    kind: str,
    year_month: str,
    database_url: str = "",
    out_root: Path = PROJECT_ROOT / "reports",
    sites: Sequence[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    timeout_s: int = DEFAULT_EXECUTION_TIMEOUT_S,
    progress: bool = True,
    clock: Clock | None = None,
    on_outcome: Callable[[SiteOutcome], None] | None = None,
) -> FleetReport:
    """Render ``kind`` (monthly, drift, verify) for every site (or ``sites``) of ``year_month``.

    Args:
        kind: Which notebook: ``monthly``, ``drift`` or ``verify``.
        year_month: The ``YYYY-MM`` month.
        database_url: Analyst connection string; empty uses the kernel's configured database.
        out_root: Reports root; files go to ``<out_root>/<YYYY-MM>/``.
        sites: Public ids or UUIDs; None renders every site.
        scheduler: ``tcp://host:port`` of a Dask scheduler; None uses a local process pool.
        workers: Local pool size; defaults to the number of cores.
        timeout_s: Per-cell execution timeout of each notebook.
        progress: Show a tqdm progress bar on stderr.
        clock: Decides whether the month is over (for the fleet findings).
        on_outcome: Called with each site's outcome as it completes.
    """
    from tqdm import tqdm  # type: ignore[import-untyped]

    from kernel.audit.connect import analyst_url

    if kind not in NOTEBOOKS:
        raise InputError(f"report kind must be one of {', '.join(NOTEBOOKS)}", code="invalid_report_kind")
    parse_year_month(year_month)
    if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://")):
        raise InputError("--scheduler must look like tcp://HOST:PORT", code="invalid_scheduler")
    url = analyst_url(database_url)
    with connect_analyst(url) as conn:
        site_ids = _select_sites(conn, sites)
        fleet = audit_fleet(conn, year_month, site_ids=site_ids, clock=clock)
        previous = _billable_by_site(conn, adjacent_months(year_month)[0], site_ids)
    month_dir = out_root / year_month
    kind_dir = month_dir / kind
    notebook = NOTEBOOKS_DIR / NOTEBOOKS[kind]
    tasks = [
        SiteTask(
            kind=kind,
            public_id=str(r["public_id"]),
            site_id=str(r["site_id"]),
            notebook=str(notebook),
            parameters={
                "site": str(r["site_id"]),
                "year_month": year_month,
                "database_url": url,
                "results_path": str(kind_dir / f"{r['public_id']}.results.json"),
            },
            out_dir=str(kind_dir),
            timeout_s=timeout_s,
        )
        for r in fleet.records
    ]
    report = FleetReport(kind, year_month, month_dir, month_dir / "index.html", month_dir / "summary.json")
    if tasks:
        runner: Iterable[tuple[SiteTask, SiteOutcome]]
        if scheduler:
            runner = _run_dask(tasks, scheduler)
        else:
            runner = _run_local(tasks, max(1, min(workers or os.cpu_count() or 1, len(tasks))))
        with tqdm(total=len(tasks), desc=f"{kind} {year_month}", unit="site", disable=not progress) as bar:
            for _, outcome in runner:
                report.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
                bar.update(1)
    report.outcomes.sort(key=lambda o: o.public_id)
    _write_summary(report, fleet, previous)
    return report


def _billable_by_site(conn: Any, year_month: str, site_ids: Sequence[str] | None) -> dict[str, int]:
    params = {"year_month": year_month, "site_ids": None if site_ids is None else [uuid.UUID(s) for s in site_ids]}
    return {str(r[0]): int(r[1]) for r in conn.execute(queries.BILLABLE_BY_SITE, params).fetchall()}


def _figures(record: dict[str, Any], fleet: FleetAudit, previous: dict[str, int]) -> dict[str, Any]:
    """The index's per-site figures: the month's counts, snapshot and drift, the previous month's billable."""
    sid = str(record["site_id"])
    check = fleet.snapshots[sid]
    snapshot = {"verified": "verified", "failed": "FAILED", "missing": "none"}.get(check.status, check.status)
    figures: dict[str, Any] = {
        key: int(record[key])
        for key in ("billable_count", "overage_count", "rejected_count", "non_billable_count", "dedup_count")
    }
    figures.update(snapshot=snapshot, drift_checks=int(record["counter_drift_checks"]))
    figures["previous_billable_count"] = previous.get(sid)
    return figures


def _write_summary(report: FleetReport, fleet: FleetAudit, previous: dict[str, int]) -> None:
    """Merge this kind into ``summary.json`` (other kinds of the month are kept) and rewrite the index."""
    report.out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if report.summary_path.exists():
        try:
            summary = json.loads(report.summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise KernelError(f"{report.summary_path} is not JSON: {exc}", code="summary_malformed") from exc
    fleet_sites = {
        str(r["public_id"]): {
            "site_id": str(r["site_id"]),
            "name": str(r["name"]),
            "billing_mode": str(r["billing_mode"]),
            "verdict": v,
            "findings": [f.to_json() for f in fleet.findings_of(str(r["site_id"])) if f.is_red_flag],
            "figures": _figures(r, fleet, previous),
        }
        for r, v in zip(fleet.records, fleet.verdicts()["verdict"], strict=True)
    }
    # Sites outside this run (a --site subset) keep their earlier entries.
    previous_sites: dict[str, Any] = summary.get("sites", {})
    for public_id, entry in fleet_sites.items():
        entry["reports"] = dict(previous_sites.get(public_id, {}).get("reports", {}))
    fleet_sites = {**previous_sites, **fleet_sites}
    for outcome in report.outcomes:
        data = asdict(outcome)
        for key in ("html", "ipynb", "results"):
            if data[key] is not None:
                data[key] = os.path.relpath(data[key], report.out_dir)
        data["red_flags"] = list(outcome.red_flags)
        fleet_sites.setdefault(outcome.public_id, {"reports": {}})["reports"][outcome.kind] = data
    summary = {
        "year_month": report.year_month,
        "sites": dict(sorted(fleet_sites.items())),
        "runs": {**summary.get("runs", {}), report.kind: {"counts": report.counts(), "failed": len(report.failed)}},
    }
    tmp = report.summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, report.summary_path)
    write_index(report.index_path, summary)
