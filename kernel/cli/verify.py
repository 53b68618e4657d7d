"""``revkernel verify``: the whole-store check, with a pass/fail table and evidence under reports/."""

from __future__ import annotations

from pathlib import Path

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.settings import PROJECT_ROOT

__all__ = ["register"]

EXIT_FAILED = 1
PRINTED_FAILURES = 20


@click.command("verify")
@click.option(
    "--reports-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "reports",
    show_default=True,
    help="Where reports/verify/<timestamp>.json and .md go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@pass_cli
def verify_command(cli: CliContext, reports_dir: Path, as_json: bool, progress: bool | None) -> None:
    """Check the whole store: snapshots, chains, signatures, archives, counters. Exit 1 on any failure."""
    from kernel.audit import connect_analyst
    from kernel.audit.store import verify_store
    from kernel.cli.db import progress_bars
    from kernel.clock import SystemClock, clock_from_spec
    from kernel.release.evidence import git_state, package_versions, write_evidence

    with connect_analyst(settings=cli.settings) as conn:
        report = verify_store(conn, clock=clock_from_spec(cli.settings.clock), progress=progress_bars(progress))
    meta = {**git_state(), "versions": package_versions(), **report.to_json()}
    json_path, md_path = write_evidence("verify", report.results, meta, reports_dir, SystemClock().now())
    if as_json:
        echo_json({**report.to_json(), "checks": [r.as_dict() for r in report.results], "evidence": str(json_path)})
    else:
        from kernel.release.checks import render_table

        click.echo(render_table(report.results))
        for failure in report.failures[:PRINTED_FAILURES]:
            click.echo(f"FAIL {failure.line()}")
        if len(report.failures) > PRINTED_FAILURES:
            click.echo(f"… and {len(report.failures) - PRINTED_FAILURES} more failure(s) in the evidence")
        for note in report.notes[:PRINTED_FAILURES]:
            click.echo(f"note: {note}")
        click.echo(f"evidence: {json_path} and {md_path}")
    if not report.passed:
        click.echo(f"verify FAILED: {len(report.failures)} failure(s)", err=True)
        raise SystemExit(EXIT_FAILED)


def register(main: click.Group) -> None:
    main.add_command(verify_command)
