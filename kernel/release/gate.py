"""``revkernel gate``: the runbook §3 release gate, executable.

Three parts, every one a behaviour, never a string search:

1. **Test gate** (§3.A): the whole pytest suite in a subprocess (the gate's own test is left out,
   or the gate would run itself forever).
2. **Migration safety** (§3.C): squawk and the additive-only rules over every migration.
3. **Invariants** (§3.B) against a throwaway PostgreSQL and the in-process app: a forced ledger
   failure answers 500 ``billing_gate_closed`` and publishes nothing (and a refused outbox write
   leaves no ledger row: one transaction); a quota rejection keeps
   its row ``billable=false``; quota and rate-limit 429s carry distinct headers; a duplicate is
   never published twice; every cron refuses an empty or placeholder secret; the rollback flag
   records events non-billable.

Evidence goes to ``reports/gate/<timestamp>.json`` and ``.md``; any failure makes the exit non-zero.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from kernel.clock import Clock, SystemClock
from kernel.db.lint import lint_files
from kernel.db.migrations import MIGRATIONS_DIR
from kernel.release import probes
from kernel.release.checks import CheckFailed, CheckResult, expect, run_check
from kernel.release.evidence import git_state, package_versions, write_evidence
from kernel.release.sandbox import Sandbox, sandbox
from kernel.settings import PROJECT_ROOT, Settings
from kernel.tenants import create_site

__all__ = ["GATE_TEST_FILE", "GateOptions", "GateReport", "run_gate"]

# The gate's own test runs the gate; the gate's test run leaves it out to avoid recursion.
GATE_TEST_FILE = "tests/release/test_gate.py"
TESTS_TIMEOUT_S = 1800
TESTS_WORKERS = 2
FAILING_LISTED = 8  # failing test ids named in the evidence
PLACEHOLDER_SECRETS = ("changeme", "default", "placeholder")
GATE_TRIGGER_FUNCTION_SQL = """
CREATE FUNCTION gate_refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'release gate: % write refused on purpose', TG_TABLE_NAME;
END;
$$;
"""
# Table names below are constants of this module, never input.
GATE_TRIGGER_SQL = (
    "CREATE TRIGGER gate_refuse_write BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION gate_refuse_write()"
)
GATE_TRIGGER_DROP_SQL = "DROP TRIGGER gate_refuse_write ON {table}"
ROLLBACK_DRIFT_SQL = "SELECT COUNT(*) FROM ingest_idempotency WHERE billable=true"


@dataclass(frozen=True)
class GateOptions:
    run_tests: bool = True
    reports_dir: Path = PROJECT_ROOT / "reports"
    migration_files: tuple[Path, ...] | None = None  # default: every file in sql/migrations
    pytest_args: tuple[str, ...] = ()
    test_workers: int = TESTS_WORKERS  # 0: no xdist
    echo: Callable[[str], None] = print


@dataclass
class GateReport:
    results: list[CheckResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    md_path: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)


def run_gate(options: GateOptions, clock: Clock | None = None) -> GateReport:
    """Run every part of the gate, write the evidence, and return the report."""
    clock = clock or SystemClock()
    started_at = clock.now()
    report = GateReport(meta={**git_state(), "versions": package_versions(), "started_at": started_at.isoformat()})

    def record(result: CheckResult) -> None:
        report.results.append(result)
        options.echo(f"  {result.verdict}  {result.name}: {result.detail}")

    if options.run_tests:
        record(run_check("tests", lambda: _run_test_suite(options.pytest_args, options.test_workers)))
    else:
        report.meta["tests"] = "skipped (--skip-tests)"
    record(run_check("migration lint", lambda: _lint(options.migration_files)))
    try:
        with sandbox(prefix="revkernel-gate-") as box:
            report.meta["versions"]["postgresql"] = box.server_version()
            for result in _invariants(box, report.meta.get("commit", "unknown")):
                record(result)
    except Exception as exc:  # the sandbox itself failed: that is a failed gate, said as such
        record(CheckResult("invariant sandbox", False, f"{type(exc).__name__}: {exc}"[:400], 0))
    report.json_path, report.md_path = write_evidence(
        "gate", report.results, report.meta, options.reports_dir, clock.now()
    )
    return report


_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def _run_test_suite(extra_args: tuple[str, ...], workers: int) -> str:
    parallel = ["-n", str(workers), "--dist", "loadfile"] if workers > 0 else []
    cmd = [sys.executable, "-m", "pytest", "-q", *parallel, f"--ignore={GATE_TEST_FILE}", *extra_args]
    try:
        out = subprocess.run(
            cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"the test suite did not finish within {TESTS_TIMEOUT_S}s") from exc
    tail = [line for line in out.stdout.strip().splitlines() if line.strip()]
    summary = tail[-1].strip("= ") if tail else "no output"
    counts = {kind: int(n) for n, kind in _SUMMARY.findall(summary)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    # Short-summary lines only ("FAILED tests/x.py::test - reason"), not log lines that say ERROR.
    failing = [
        parts[1]
        for parts in (line.split(" ", 2) for line in tail if line.startswith(("FAILED ", "ERROR ")))
        if len(parts) > 1 and ".py" in parts[1]
    ]
    listed = f"; failing: {', '.join(failing[:FAILING_LISTED])}" if failing else ""
    expect(out.returncode == 0 and failed == 0, f"pytest exit {out.returncode}: {summary}{listed}")
    expect(counts.get("passed", 0) > 0, f"no test passed: {summary}")
    return summary


def _lint(files: tuple[Path, ...] | None) -> str:
    paths = list(files) if files is not None else sorted(MIGRATIONS_DIR.glob("*.sql"))
    problems = lint_files(paths)
    expect(not problems, "; ".join(str(p) for p in problems[:5]))
    return f"{len(paths)} migration(s) clean"


@contextmanager
def _client(box: Sandbox, commit: str, **overrides: Any) -> Iterator[httpx.Client]:
    from litestar.testing import TestClient

    from kernel.app import create_app

    settings = Settings(
        database_url=box.owner,
        data_dir=box.data_dir,
        cron_secret=secrets.token_urlsafe(24),
        commit=commit,
    ).with_overrides(**overrides)
    with TestClient(create_app(settings)) as client:
        yield client


def _invariants(box: Sandbox, commit: str) -> list[CheckResult]:
    results: list[CheckResult] = []
    with psycopg.connect(box.owner, autocommit=True) as conn:
        secret = secrets.token_urlsafe(24)
        with _client(box, commit, cron_secret=secret) as client:
            tenants = probes.create_probe_tenants(conn, SystemClock().now())
            results.append(
                run_check(
                    "ledger write precedes publish (trigger)",
                    lambda: _gate_closed_trigger(client, conn, "ingest_idempotency"),
                )
            )
            results.append(
                run_check(
                    "ledger and outbox commit together",
                    lambda: _gate_closed_trigger(client, conn, "ingest_outbox"),
                )
            )
            results.append(
                run_check("ledger write precedes publish (no grant)", lambda: _gate_closed_grant(client, conn))
            )
            results.append(
                run_check("duplicate not published twice", lambda: probes.probe_duplicate(client, conn, tenants))
            )
            results.append(run_check("overage stays billable", lambda: probes.probe_overage(client, conn, tenants)))
            results.append(
                run_check(
                    "quota reject writes billable=false", lambda: probes.probe_quota_reject(client, conn, tenants)
                )
            )
            results.append(
                run_check(
                    "quota 429 and rate-limit 429 distinct", lambda: probes.probe_rate_limit(client, conn, tenants)
                )
            )
        results.append(run_check("cron auth rejects an empty secret", lambda: _cron_empty_secret(box, commit)))
        results.append(run_check("rollback flag records non-billable", lambda: _rollback_flag(box, commit, conn)))
    return results


def _fresh_site(conn: psycopg.Connection[Any], label: str) -> tuple[uuid.UUID, str]:
    new = create_site(conn, name=f"gate {label}", public_id=f"gate-{label}-{secrets.token_hex(3)}", monthly_limit=1000)
    return new.site.id, new.ingest_key


def _site_writes(conn: psycopg.Connection[Any], site_id: uuid.UUID) -> tuple[int, int, int]:
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM ingest_idempotency WHERE site_id = %(s)s),
               (SELECT count(*) FROM ingest_outbox WHERE site_id = %(s)s),
               (SELECT coalesce(sum(event_count + overage_count + rejected_count + non_billable_count), 0)
                FROM site_usage_monthly WHERE site_id = %(s)s)
        """,
        {"s": site_id},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _expect_gate_closed(
    client: httpx.Client, conn: psycopg.Connection[Any], site_id: uuid.UUID, key: str, event_id: str
) -> None:
    response = probes.post_event(client, key, event_id)
    expect(
        response.status_code == 500, f"a refused ledger write answered {response.status_code}: {response.text[:160]}"
    )
    try:
        body = response.json()
    except ValueError:
        body = {}
    expect(
        body.get("ok") is False and body.get("status") == "billing_gate_closed",
        f"500 body must be ok=false, status=billing_gate_closed: {response.text[:160]}",
    )
    ledger, outbox, counted = _site_writes(conn, site_id)
    expect(outbox == 0, f"published {outbox} outbox row(s) without a ledger row (golden rule 2)")
    expect(ledger == 0 and counted == 0, f"ledger rows {ledger}, counted {counted} after a refused write")


def _expect_recovers(
    client: httpx.Client, conn: psycopg.Connection[Any], site_id: uuid.UUID, key: str, event_id: str
) -> None:
    # The client's retry after the gate reopens is a first write, not a duplicate of a failed one.
    retry = probes.post_event(client, key, event_id)
    expect(retry.status_code == 200, f"retry after the ledger came back answered {retry.status_code}")
    expect(retry.headers.get("x-opsmantik-dedup") is None, "the retry of a failed write was treated as a duplicate")
    expect(_site_writes(conn, site_id)[:2] == (1, 1), "the retry did not write exactly one ledger and outbox row")


def _gate_closed_trigger(client: httpx.Client, conn: psycopg.Connection[Any], table: str) -> str:
    """A trigger refuses the INSERT into ``table``: the whole ledger transaction must fail."""
    site_id, key = _fresh_site(conn, "trigger")
    event_id = f"gate-trigger-{secrets.token_hex(4)}"
    conn.execute(GATE_TRIGGER_FUNCTION_SQL)
    conn.execute(GATE_TRIGGER_SQL.format(table=table))
    try:
        _expect_gate_closed(client, conn, site_id, key, event_id)
    finally:
        conn.execute(GATE_TRIGGER_DROP_SQL.format(table=table))
        conn.execute("DROP FUNCTION gate_refuse_write()")
    _expect_recovers(client, conn, site_id, key, event_id)
    return f"{table} INSERT refused: 500 billing_gate_closed, 0 ledger/outbox rows; the retry billed once"


def _gate_closed_grant(client: httpx.Client, conn: psycopg.Connection[Any]) -> str:
    site_id, key = _fresh_site(conn, "grant")
    event_id = f"gate-grant-{secrets.token_hex(4)}"
    conn.execute("REVOKE INSERT ON ingest_idempotency FROM revkernel_app")
    try:
        _expect_gate_closed(client, conn, site_id, key, event_id)
    finally:
        conn.execute("GRANT INSERT ON ingest_idempotency TO revkernel_app")
    _expect_recovers(client, conn, site_id, key, event_id)
    return "500 billing_gate_closed with INSERT revoked, 0 outbox rows; recovered after the grant"


def cron_operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document under ``/api/cron/``."""
    found: list[tuple[str, str]] = []
    for path, item in sorted(dict(openapi.get("paths", {})).items()):
        if not path.startswith("/api/cron/"):
            continue
        for method in sorted(item):
            if method.lower() in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), path))
    return found


def _cron_empty_secret(box: Sandbox, commit: str) -> str:
    checked = 0
    real = secrets.token_urlsafe(24)
    # (configured CRON_SECRET, what a caller sends): an unset or placeholder secret closes every
    # cron whatever is sent, even the same placeholder; a real one is not matched by an empty bearer.
    attempts: list[tuple[str, tuple[str | None, ...]]] = [
        ("", (None, "Bearer ", "Bearer")),
        *[(p, (None, "Bearer ", f"Bearer {p}")) for p in PLACEHOLDER_SECRETS],
        (real, (None, "Bearer ", "Bearer", f"Bearer {real[:-1]}")),
    ]
    operations: list[tuple[str, str]] = []
    for configured, sent in attempts:
        with _client(box, commit, cron_secret=configured) as client:
            operations = cron_operations(client.get("/schema/openapi.json").json())
            expect(bool(operations), "the OpenAPI document lists no /api/cron/ endpoint")
            for method, path in operations:
                for value in sent:
                    header = {} if value is None else {"Authorization": value}
                    response = client.request(method, path, headers=header)
                    expect(
                        response.status_code == 403,
                        f"{method} {path} with configured secret {configured!r} and {header or 'no header'} "
                        f"answered {response.status_code}",
                    )
                    body = response.json()
                    expect(body.get("code") == probes.CRON_FORBIDDEN_CODE, f"{method} {path}: body {body}")
                    checked += 1
    return f"{checked} requests to {len(operations)} cron endpoints: all 403 CRON_FORBIDDEN"


def _rollback_flag(box: Sandbox, commit: str, conn: psycopg.Connection[Any]) -> str:
    site_id, key = _fresh_site(conn, "rollback")
    before = conn.execute(ROLLBACK_DRIFT_SQL).fetchone()
    with _client(box, commit, billing_enabled=False) as client:
        event_id = f"gate-rollback-{secrets.token_hex(4)}"
        response = probes.post_event(client, key, event_id)
        expect(response.status_code == 200, f"with BILLING_ENABLED=false ingest answered {response.status_code}")
    row = probes.ledger_row(conn, site_id, event_id)
    expect(row is not None, "with billing disabled the event was not recorded at all")
    assert row is not None
    expect(
        row["billable"] is False and row["billing_reason"] == "billing_disabled",
        f"with billing disabled the row is {row}",
    )
    after = conn.execute(ROLLBACK_DRIFT_SQL).fetchone()
    expect(before == after, f"the runbook drift count moved from {before} to {after}")
    assert after is not None
    return f"row billable=false (billing_disabled); drift count {after[0]} unchanged"
