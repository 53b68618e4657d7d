"""The demo can never become a back door (issue 12 §1), attacked through the real CLI and database.

- `revkernel demo` against a database with a tenant it did not create refuses with one line and
  changes nothing, embedded or not; `--force` never overrides that.
- No demo credential can be computed from public strings: they are random, printed once, kept in
  a 0600 file; the derived tokens of earlier versions are revoked.
- The simulated crons run only on a demo-only database, and their history is true to the real
  clock (the watchtower of a `revkernel serve` started afterwards sees no overdue cron).
"""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.clock import SystemClock
from kernel.cron.runs import CronContext
from kernel.cron.watchtower import watchtower
from kernel.db.connect import Database
from kernel.demo import DemoRun, demo_steps
from kernel.demo.guard import DemoRefused
from kernel.demo.tenants import CREDENTIALS_FILE, DEMO_SITES, credential_name, read_credentials
from kernel.settings import Settings
from kernel.tenants import authenticate, create_site, issue_key


def _demo_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    assert settings.database_url is not None
    env = {"DATABASE_URL": settings.database_url, "REVKERNEL_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(main, ["demo", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _state(owner: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = owner.execute(
        "SELECT (SELECT count(*) FROM sites), (SELECT count(*) FROM api_keys), (SELECT count(*) FROM invoice_snapshot),"
        " (SELECT count(*) FROM cron_runs), (SELECT count(*) FROM schema_migrations),"
        " (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def _run_steps(settings: Settings, *names: str, force: bool = True) -> DemoRun:
    run = DemoRun(settings=settings, db=Database(settings), echo=lambda line: None, force=force)
    steps = dict(demo_steps())
    for name in names:
        steps[name](run)
    return run


def _customer_month(app_conn: psycopg.Connection[Any]) -> Any:
    """A real customer with usage in a demo month: what the demo's crons must never touch."""
    customer = create_site(app_conn, name="Real customer", monthly_limit=100, public_id="customer")
    app_conn.execute(
        "INSERT INTO ingest_idempotency (site_id, idempotency_key, idempotency_version, created_at, billable,"
        " billing_state, billing_reason, payload_hash) VALUES (%s, 'real', 2, '2026-09-15', true, 'ACCEPTED',"
        " 'within_quota', 'h')",
        (customer.site.id,),
    )
    return customer.site.id


@pytest.mark.parametrize("force", [False, True])
def test_demo_refuses_a_database_with_a_real_tenant(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any], force: bool
) -> None:
    _customer_month(app_conn)
    before = _state(owner_conn)
    code, out, err = _demo_cli(settings, *(["--force"] if force else []))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "site customer" in err and err.rstrip().endswith("[demo_refused]")
    assert _state(owner_conn) == before  # no demo site, key, snapshot, cron run or migration


def test_demo_refuses_a_database_with_an_operators_platform_token(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    issue_key(app_conn, site_id=None, role="admin", label="ops")
    code, _, err = _demo_cli(settings, "--force")
    assert code == 1 and "platform token" in err and "[demo_refused]" in err


def test_database_url_needs_force_and_force_needs_an_empty_database(
    settings: Settings, owner_conn: psycopg.Connection[Any]
) -> None:
    before = _state(owner_conn)
    code, _, err = _demo_cli(settings)
    assert code == 1 and "--force" in err and "[demo_refused]" in err
    assert _state(owner_conn) == before
    with pytest.raises(DemoRefused):
        _run_steps(settings, "database", force=False)


def test_demo_credentials_are_random_private_and_printed_once(
    settings: Settings, owner_conn: psycopg.Connection[Any]
) -> None:
    # A database from an earlier version holds tokens derived from public strings.
    derived = [
        f"rk_user_demo_{hashlib.sha256(f'revkernel-demo:{scope}:{role}'.encode()).hexdigest()[:32]}"
        for scope, role in (("platform", "admin"), ("demo-overage", "billing"))
    ]
    lines: list[str] = []
    run = DemoRun(settings=settings, db=Database(settings), echo=lines.append, force=True)
    steps = dict(demo_steps())
    steps["database"](run)
    with run.db.connect("app", autocommit=True) as app:
        issue_key(app, site_id=None, role="admin", secret=derived[0], label="demo")
    steps["tenants"](run)
    path = settings.data_dir / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = read_credentials(path)
    assert len(credentials) == 1 + 4 * len(DEMO_SITES)
    printed = "\n".join(lines)
    with run.db.connect("app", autocommit=True) as app:
        for name, secret in credentials.items():
            assert f"{name}={secret}" in printed  # printed once, when issued
            assert authenticate(app, secret) is not None
        for secret in derived:
            assert authenticate(app, secret) is None  # the derived token of the old version is revoked
    platform = credentials[credential_name("admin")]
    assert platform not in derived and len(set(credentials.values())) == len(credentials)
    # Again: nothing issued, nothing printed, nothing revoked.
    lines.clear()
    before = _state(owner_conn)
    steps["tenants"](run)
    assert read_credentials(path) == credentials and _state(owner_conn) == before
    assert not any("=rk_" in line for line in lines)
    # The file lost: new secrets, and the lost ones stop working.
    path.unlink()
    steps["tenants"](run)
    renewed = read_credentials(path)
    assert set(renewed) == set(credentials) and not set(renewed.values()) & set(credentials.values())
    with run.db.connect("app", autocommit=True) as app:
        assert authenticate(app, platform) is None
        assert authenticate(app, renewed[credential_name("admin")]) is not None


def test_crons_refuse_a_tenant_that_appeared_after_the_check(
    settings: Settings, app_conn: psycopg.Connection[Any], owner_conn: psycopg.Connection[Any]
) -> None:
    run = _run_steps(settings, "database", "tenants")
    customer = _customer_month(app_conn)  # a real tenant shows up while the demo runs
    with pytest.raises(DemoRefused):
        dict(demo_steps())["crons"](run)
    assert owner_conn.execute("SELECT count(*) FROM invoice_snapshot WHERE site_id = %s", (customer,)).fetchone() == (
        0,
    )
    assert owner_conn.execute("SELECT count(*) FROM cron_runs").fetchone() == (0,)


def test_demo_cron_history_is_true_to_the_real_clock(settings: Settings, owner_conn: psycopg.Connection[Any]) -> None:
    started = datetime.now(UTC)
    _run_steps(settings, "database", "tenants", "crons")
    runs = owner_conn.execute("SELECT name, started_at, finished_at FROM cron_runs ORDER BY id").fetchall()
    assert {r[0] for r in runs} >= {"invoice-freeze", "reconcile-usage", "idempotency-cleanup", "watchtower"}
    now = datetime.now(UTC)
    assert all(started - timedelta(seconds=1) <= r[1] <= r[2] <= now for r in runs), runs
    # What `revkernel serve` + `revkernel smoke` then see: no cron overdue by the real clock.
    ctx = CronContext(settings, SystemClock(), Database(settings), trigger="http")
    checks = watchtower(ctx)["checks"]
    assert checks["crons"]["overdue"] == [] and checks["crons"]["status"] != "alarm"
    # The snapshots themselves are on the demo's fixed instant: byte-deterministic documents.
    frozen = owner_conn.execute("SELECT DISTINCT frozen_at FROM invoice_snapshot").fetchall()
    assert all(f[0] < datetime(2026, 11, 2, tzinfo=UTC) for f in frozen)
