"""``revkernel gate``, ``revkernel smoke`` and ``revkernel chaos``: the release runbook, executable."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.db.connect import Database
from kernel.release.checks import render_table
from kernel.settings import PROJECT_ROOT

__all__ = ["register"]

EXIT_FAILED = 1


def _quiet_http_logs() -> None:
    # The probes make hundreds of requests; their per-request INFO lines would drown the table.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.command("gate")
@click.option("--skip-tests", is_flag=True, help="Skip the pytest run (quick: lint and invariants only).")
@click.option(
    "--reports-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "reports",
    show_default=True,
    help="Where reports/gate/<timestamp>.json and .md go.",
)
@click.option("--pytest-arg", "pytest_args", multiple=True, help="Extra argument for the pytest run (repeatable).")
def gate_command(skip_tests: bool, reports_dir: Path, pytest_args: tuple[str, ...]) -> None:
    """Release gate (runbook §3): tests, migration lint, invariants on a throwaway database."""
    from kernel.release.gate import GateOptions, run_gate

    _quiet_http_logs()

    click.echo("release gate: tests, migration lint, invariants (throwaway PostgreSQL + in-process app)")
    report = run_gate(
        GateOptions(run_tests=not skip_tests, reports_dir=reports_dir, pytest_args=pytest_args, echo=click.echo)
    )
    click.echo("")
    click.echo(render_table(report.results))
    click.echo(f"evidence: {report.json_path} and {report.md_path}")
    if not report.passed:
        click.echo("gate FAILED: do not deploy", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo("gate passed")


@click.command("smoke")
@click.option("--url", required=True, help="Base URL of the live instance, e.g. http://127.0.0.1:8000.")
@click.option(
    "--cron-secret", envvar="CRON_SECRET", required=True, help="The instance's CRON_SECRET (env CRON_SECRET)."
)
@click.option(
    "--admin-token", envvar="REVKERNEL_ADMIN_TOKEN", default=None, help="Platform admin token for the export."
)
@click.option(
    "--database-url",
    default=None,
    help="Owner URL of the instance's PostgreSQL (default: the kernel's settings) for the smoke sites and SQL checks.",
)
@click.option("--expect-commit", default=None, help="Fail unless x-opsmantik-commit starts with this.")
@click.option(
    "--reports-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "reports",
    show_default=True,
    help="Where reports/smoke/<timestamp>.json goes.",
)
@pass_cli
def smoke_command(
    cli: CliContext,
    url: str,
    cron_secret: str,
    admin_token: str | None,
    database_url: str | None,
    expect_commit: str | None,
    reports_dir: Path,
) -> None:
    """Post-deploy smoke (runbook §5) against a live instance, on a dedicated smoke site."""
    from kernel.release.smoke import SmokeOptions, failure_lines, run_smoke

    _quiet_http_logs()

    settings = cli.settings if database_url is None else cli.settings.with_overrides(database_url=database_url)
    options = SmokeOptions(
        url=url,
        cron_secret=cron_secret,
        admin_token=admin_token,
        expect_commit=expect_commit,
        reports_dir=reports_dir,
    )
    results = run_smoke(options, Database(settings))
    click.echo(render_table(results))
    if not all(r.passed for r in results):
        for line in failure_lines(results):
            click.echo(line, err=True)
        click.echo("smoke FAILED: roll back (runbook §6)", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo("smoke passed")


@click.command("chaos")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients.")
@click.option("--duration", "duration_s", default=60.0, show_default=True, help="Seconds of load.")
@click.option(
    "--reports-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "reports",
    show_default=True,
    help="Where reports/chaos/<timestamp>.json and the server log go.",
)
def chaos_command(clients: int, duration_s: float, reports_dir: Path) -> None:
    """Chaos drill: load with retries while a worker, PostgreSQL, Redis and the sink fail."""
    from kernel.release.chaos import ChaosOptions, run_chaos

    _quiet_http_logs()

    report = run_chaos(ChaosOptions(clients=clients, duration_s=duration_s, reports_dir=reports_dir), echo=click.echo)
    click.echo(render_table(report.results))
    click.echo(f"report: {report.path}")
    if not report.passed:
        raise SystemExit(EXIT_FAILED)


def register(main: click.Group) -> None:
    main.add_command(gate_command)
    main.add_command(smoke_command)
    main.add_command(chaos_command)
