"""``revkernel report monthly|drift|verify --year-month YYYY-MM [--site …] [--out reports] [--scheduler tcp://…]``."""

from __future__ import annotations

from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.reporting.fleet import NOTEBOOKS, ReportFailed, SiteOutcome, run_fleet_report
from kernel.reporting.render import DEFAULT_EXECUTION_TIMEOUT_S

__all__ = ["register"]


def _report_command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.option("--year-month", required=True, help="The UTC month to report, YYYY-MM.")
    @click.option("--site", "sites", multiple=True, help="Public id or UUID; repeat for several (default: all).")
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("reports"),
        show_default=True,
        help="Reports root; files go to <out>/<YYYY-MM>/.",
    )
    @click.option("--scheduler", default=None, help="Dask scheduler tcp://HOST:PORT (default: local process pool).")
    @click.option("--workers", type=click.IntRange(1, 256), default=None, help="Local pool size (default: cores).")
    @click.option(
        "--timeout",
        "timeout_s",
        type=click.IntRange(1, 3600),
        default=DEFAULT_EXECUTION_TIMEOUT_S,
        show_default=True,
        help="Per-cell execution timeout in seconds.",
    )
    @click.option("--no-progress", is_flag=True, help="No progress bar.")
    @pass_cli
    def command(
        cli: CliContext,
        year_month: str,
        sites: tuple[str, ...],
        out: Path,
        scheduler: str | None,
        workers: int | None,
        timeout_s: int,
        no_progress: bool,
    ) -> None:
        def show(outcome: SiteOutcome) -> None:
            if outcome.status != "rendered":
                click.echo(f"FAILED {outcome.public_id}: {outcome.error}", err=True)

        report = run_fleet_report(
            kind=kind,
            year_month=year_month,
            database_url=cli.db.uri("analyst"),
            out_root=out,
            sites=list(sites) or None,
            scheduler=scheduler,
            workers=workers,
            timeout_s=timeout_s,
            progress=not no_progress,
            on_outcome=show,
        )
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
        click.echo(f"{kind} {year_month}: {len(report.outcomes)} site(s): {counts}")
        click.echo(f"index: {report.index_path.resolve()}")
        if report.failed:
            raise ReportFailed(f"{len(report.failed)} site(s) failed to render; see {report.summary_path}")

    return command


@click.group("report")
def report_group() -> None:
    """Render the audit notebooks for a month into HTML reports with a fleet index."""


for _kind, _help in (
    ("monthly", "Monthly audit of every site (or --site): verdicts, red flags, charts."),
    ("drift", "Reconciliation drift (counters and Redis against the ledger) per site."),
    ("verify", "Independent re-verification of every site's invoice snapshot."),
):
    assert _kind in NOTEBOOKS
    report_group.add_command(_report_command(_kind, _help))


def register(main: click.Group) -> None:
    main.add_command(report_group)
