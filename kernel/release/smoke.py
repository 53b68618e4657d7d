"""``revkernel smoke``: the runbook §5 post-deploy smoke against a live instance.

It creates its own dedicated smoke sites (through the database the instance uses: give
``--database-url``, or run where the kernel's settings point at it), then walks the runbook:
commit header, cron auth, duplicate, overage, quota reject, rate limit, reconciliation proof,
dispute export, invoice freeze and watchtower. Each is one row of a pass/fail table; the exit
code is non-zero when any row failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kernel.clock import Clock, SystemClock
from kernel.db.connect import Database, connect_url
from kernel.release import probes
from kernel.release.checks import CheckResult, run_check
from kernel.release.evidence import write_evidence

__all__ = ["SMOKE_CHECKS", "SmokeOptions", "failure_lines", "run_smoke"]

REQUEST_TIMEOUT_S = 30.0
# A failure summary line stays readable in a terminal or a CI log.
FAILURE_LINE_CHARS = 200
SMOKE_CHECKS = (
    "commit header",
    "cron auth",
    "smoke sites",
    "duplicate",
    "overage",
    "quota reject",
    "rate limit",
    "reconciliation",
    "dispute export",
    "invoice freeze",
    "watchtower",
)


@dataclass(frozen=True)
class SmokeOptions:
    url: str
    cron_secret: str
    admin_token: str | None = None
    expect_commit: str | None = None
    reports_dir: Path | None = None


def run_smoke(
    options: SmokeOptions,
    db: Database,
    *,
    clock: Clock | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run every smoke check in runbook order; write evidence when ``reports_dir`` is set."""
    clock = clock or SystemClock()
    results: list[CheckResult] = []

    def record(result: CheckResult) -> None:
        results.append(result)
        if echo is not None:
            echo(f"  {result.verdict}  {result.name}: {result.detail}")

    secret = options.cron_secret
    with (
        httpx.Client(base_url=options.url.rstrip("/"), timeout=REQUEST_TIMEOUT_S) as client,
        # Never start an embedded server here: the smoke must use the instance's own database.
        connect_url(db.conninfo("owner", start=False), autocommit=True) as conn,
    ):
        record(run_check("commit header", lambda: probes.probe_commit_header(client, options.expect_commit)))
        record(run_check("cron auth", lambda: probes.probe_cron_auth(client, secret)))
        holder: dict[str, probes.ProbeTenants] = {}

        def make_sites() -> str:
            holder["t"] = probes.create_probe_tenants(conn, clock.now())
            t = holder["t"]
            return f"quota site {t.quota_public_id} ({t.quota_site_id}), rate site smoke-{t.tag}-r"

        record(run_check("smoke sites", make_sites))
        tenant_checks: list[tuple[str, Callable[[probes.ProbeTenants], str]]] = [
            ("duplicate", lambda t: probes.probe_duplicate(client, conn, t)),
            ("overage", lambda t: probes.probe_overage(client, conn, t)),
            ("quota reject", lambda t: probes.probe_quota_reject(client, conn, t)),
            ("rate limit", lambda t: probes.probe_rate_limit(client, conn, t)),
            ("reconciliation", lambda t: probes.probe_reconciliation(client, conn, t, secret)),
            (
                "dispute export",
                lambda t: probes.probe_dispute_export(client, conn, t, options.admin_token or t.billing_token),
            ),
            ("invoice freeze", lambda t: probes.probe_invoice_freeze(client, conn, t, secret)),
        ]
        for name, check in tenant_checks:
            if "t" not in holder:
                record(CheckResult(name, False, "not run: the smoke sites could not be created", 0))
                continue
            tenants = holder["t"]
            record(run_check(name, _bound(check, tenants)))
        record(run_check("watchtower", lambda: probes.probe_watchtower(client, secret)))
    if options.reports_dir is not None:
        meta: dict[str, Any] = {"url": options.url, "commit": _commit_of(results)}
        write_evidence("smoke", results, meta, options.reports_dir, clock.now())
    return results


def failure_lines(results: list[CheckResult]) -> list[str]:
    """One line per failed check, ``FAIL <check>: <what went wrong>``, for the end of the output."""
    lines = []
    for r in results:
        if not r.passed:
            first = (r.detail.strip().splitlines() or ["failed"])[0]
            lines.append(f"FAIL {r.name}: {first[:FAILURE_LINE_CHARS]}")
    return lines


def _bound(check: Callable[[probes.ProbeTenants], str], tenants: probes.ProbeTenants) -> Callable[[], str]:
    return lambda: check(tenants)


def _commit_of(results: list[CheckResult]) -> str:
    for r in results:
        if r.name == "commit header" and r.detail.startswith("commit "):
            return r.detail.removeprefix("commit ")
    return "unknown"
