"""Reports: per-site report cost, fleet findings for 1,000 sites, fleet rendering throughput.

- ``site_report_ratio``: one site's monthly audit (papermill + offline HTML + sidecar) against a
  bare ``papermill`` run of a trivial notebook, same run, same kernel (goal <= 1.5x; medians).
- ``fleet_findings_1000_s``: ``audit_fleet`` over 1,000 generated sites (50 ledger rows each,
  frozen and signed, so every Merkle root is recomputed) as the analyst role (goal < 30 s).
- ``fleet_sites_per_minute``: ``run_fleet_report`` over the sample sites with the process pool.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import BenchContext

FLEET_SITES = 1_000
ROWS_PER_SITE = 50
YEAR_MONTH = "2026-10"
GOAL_SITE_RATIO = 1.5
GOAL_FLEET_FINDINGS_S = 30.0
REPEATS = 3
RENDER_TIMEOUT_S = 300

_SITES_SQL = """
INSERT INTO sites (id, public_id, name)
SELECT md5('bench-site-' || g)::uuid, 'bench-' || lpad(g::text, 5, '0'), 'Bench site ' || g
FROM generate_series(1, %(n)s) g;
INSERT INTO site_plans (site_id, monthly_limit) SELECT id, 40 FROM sites WHERE public_id LIKE 'bench-%%';
"""
_LEDGER_SQL = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,
    billing_state, billing_reason, event_category, event_action, payload_hash)
SELECT s.id, md5(s.id::text || i), 2, timestamptz '2026-10-01 00:00:00+00' + i * interval '13 hours'
       + (hashtext(s.id::text) & 1023) * interval '1 second',
       i <= 40, CASE WHEN i <= 40 THEN 'ACCEPTED' ELSE 'REJECTED_QUOTA' END,
       CASE WHEN i <= 40 THEN 'within_quota' ELSE 'rejected_quota' END, 'conversion', 'signup', md5('p' || i)
FROM sites s CROSS JOIN generate_series(1, %(rows)s) i
WHERE s.public_id LIKE 'bench-%%';
INSERT INTO ingest_outbox (site_id, idempotency_key, payload, created_at, published_at)
SELECT site_id, idempotency_key, '{}', created_at, created_at FROM ingest_idempotency WHERE billable;
INSERT INTO site_usage_monthly (site_id, year_month, event_count, rejected_count)
SELECT site_id, year_month, count(*) FILTER (WHERE billable), count(*) FILTER (WHERE NOT billable)
FROM ingest_idempotency GROUP BY site_id, year_month;
"""


def _trivial_notebook(path: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell('results_path = ""')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("x = 1\nx")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _site_report_cost(analyst_url: str, work: Path) -> dict[str, Any]:
    import papermill

    from kernel.reporting.fleet import NOTEBOOKS_DIR
    from kernel.reporting.render import notebook_to_html, render_notebook

    trivial = _trivial_notebook(work / "trivial.ipynb")
    bare: list[float] = []
    full: list[float] = []
    html: list[float] = []
    for i in range(REPEATS):
        started = time.perf_counter()
        papermill.execute_notebook(
            str(trivial), str(work / f"bare-{i}.ipynb"), kernel_name="python3", progress_bar=False, log_output=False
        )
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        rendered = render_notebook(
            NOTEBOOKS_DIR / "monthly_audit.ipynb",
            {"site": "demo-hardcap", "year_month": YEAR_MONTH, "database_url": analyst_url},
            work / f"site-{i}",
            timeout_s=RENDER_TIMEOUT_S,
        )
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        notebook_to_html(rendered.ipynb_path)
        html.append(time.perf_counter() - started)
    ratio = statistics.median(full) / statistics.median(bare)
    return {
        "bare_papermill_trivial_s": round(statistics.median(bare), 3),
        "site_report_s": round(statistics.median(full), 3),
        "site_report_html_part_s": round(statistics.median(html), 3),
        "site_report_ratio": round(ratio, 2),
        "site_report_goal_ratio": GOAL_SITE_RATIO,
        "site_report_goal_met": ratio <= GOAL_SITE_RATIO,
    }


def _fleet_findings(ctx: BenchContext) -> dict[str, Any]:
    from kernel.audit import audit_fleet, connect_analyst
    from kernel.audit.sample import freeze_site_month
    from kernel.db.connect import Database

    settings = ctx.fresh_database()
    db = Database(settings)
    with db.connect("owner", autocommit=True) as conn:
        # One statement per execute: bound parameters cannot span several statements.
        for statement in _SITES_SQL.split(";"):
            if statement.strip():
                conn.execute(statement, {"n": FLEET_SITES})
        for statement in _LEDGER_SQL.split(";"):
            if statement.strip():
                conn.execute(statement, {"rows": ROWS_PER_SITE})
        site_ids = [r[0] for r in conn.execute("SELECT id FROM sites ORDER BY id").fetchall()]
        with conn.transaction():
            for site_id in site_ids:
                freeze_site_month(conn, site_id, YEAR_MONTH)
    with connect_analyst(db.uri("analyst")) as conn:
        started = time.perf_counter()
        fleet = audit_fleet(conn, YEAR_MONTH)
        elapsed = time.perf_counter() - started
    verified = sum(1 for c in fleet.snapshots.values() if c.verified)
    return {
        "fleet_sites": len(fleet.records),
        "fleet_ledger_rows": FLEET_SITES * ROWS_PER_SITE,
        "fleet_snapshots_verified": verified,
        "fleet_findings": len(fleet.findings),
        "fleet_findings_1000_s": round(elapsed, 3),
        "fleet_findings_goal_s": GOAL_FLEET_FINDINGS_S,
        "fleet_findings_goal_met": elapsed < GOAL_FLEET_FINDINGS_S and verified == FLEET_SITES,
    }


def _fleet_rendering(analyst_url: str, work: Path) -> dict[str, Any]:
    import os

    from kernel.reporting.fleet import run_fleet_report

    started = time.perf_counter()
    report = run_fleet_report(
        kind="monthly",
        year_month=YEAR_MONTH,
        database_url=analyst_url,
        out_root=work / "fleet",
        progress=False,
        timeout_s=RENDER_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - started
    return {
        "fleet_render_sites": len(report.outcomes),
        "fleet_render_failed": len(report.failed),
        "fleet_render_errors": sorted({str(o.error) for o in report.failed})[:3],
        "fleet_render_workers": os.cpu_count() or 1,
        "fleet_render_s": round(elapsed, 2),
        "fleet_sites_per_minute": round(len(report.outcomes) * 60 / elapsed, 1),
    }


def _sample_database(ctx: BenchContext) -> str:
    from kernel.audit.sample import MonthPlan, freeze_site_month, seed_demo_sample, seed_site_month
    from kernel.db.connect import Database
    from kernel.tenants import create_site

    db = Database(ctx.fresh_database())
    with db.connect("owner", autocommit=True) as conn:
        seed_demo_sample(conn)
        # Four more sites, so the pool has more sites than cores.
        for i in range(4):
            site = create_site(conn, name=f"Extra {i}", public_id=f"extra-{i}", monthly_limit=300).site.id
            seed_site_month(conn, site, YEAR_MONTH, MonthPlan(accepted=250, non_billable=30))
            freeze_site_month(conn, site, YEAR_MONTH)
    return db.uri("analyst")


def run(ctx: BenchContext) -> dict[str, Any]:
    result: dict[str, Any] = _fleet_findings(ctx)
    analyst_url = _sample_database(ctx)
    with tempfile.TemporaryDirectory(prefix="rk-bench-reports-") as tmp:
        work = Path(tmp)
        result.update(_site_report_cost(analyst_url, work))
        result.update(_fleet_rendering(analyst_url, work))
    return result
