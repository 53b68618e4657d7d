"""``revkernel cron run NAME`` and ``revkernel cron scheduler``: the crons without HTTP."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.clock import clock_from_spec
from kernel.cron.jobs import run_named
from kernel.cron.runs import CRON_NAMES, CronContext
from kernel.cron.scheduler import Scheduler
from kernel.errors import InputError, KernelError

__all__ = ["DRY_RUN_CRONS", "YEAR_MONTH_CRONS", "register"]

# The crons that take each option (the same ones whose HTTP endpoints take ?dry_run / ?year_month).
DRY_RUN_CRONS = ("idempotency-cleanup",)
YEAR_MONTH_CRONS = ("invoice-freeze",)


@click.group("cron")
def cron_group() -> None:
    """The billing crons of SPEC §4.2 (the same functions as the /api/cron endpoints)."""


@cron_group.command("run")
@click.argument("name", type=click.Choice(CRON_NAMES))
@click.option("--year-month", default=None, help="invoice-freeze only: the month to freeze (default: previous month).")
@click.option("--dry-run", is_flag=True, help="idempotency-cleanup only: change nothing, list what would go.")
@pass_cli
def cron_run(cli: CliContext, name: str, year_month: str | None, dry_run: bool) -> None:
    """Run one cron now (recorded in cron_runs, under the cron's lock); prints its JSON result.

    Exits non-zero when the run failed (the JSON still says why). An option the cron cannot honour
    is refused before anything runs, never silently ignored.
    """
    if dry_run and name not in DRY_RUN_CRONS:
        raise InputError(
            f"--dry-run is not supported by {name}: only {', '.join(DRY_RUN_CRONS)} can run without changing anything",
            code="dry_run_unsupported",
        )
    if year_month is not None and name not in YEAR_MONTH_CRONS:
        raise InputError(f"--year-month applies to {', '.join(YEAR_MONTH_CRONS)} only", code="option_unsupported")
    ctx = CronContext(cli.settings, clock_from_spec(cli.settings.clock), cli.db, trigger="cli")
    result = run_named(ctx, name, year_month=year_month, dry_run=dry_run)
    echo_json(result)
    if not result.get("ok"):
        raise KernelError(str(result.get("error") or f"cron {name} failed"), code="cron_failed")


@cron_group.command("scheduler")
@pass_cli
def cron_scheduler(cli: CliContext) -> None:
    """Run the built-in scheduler in the foreground (no HTTP); one leader across processes."""
    scheduler = Scheduler(cli.settings, clock_from_spec(cli.settings.clock), cli.db)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scheduler.start()
    click.echo("scheduler running; SIGTERM or Ctrl-C stops it", err=True)
    done.wait()
    scheduler.stop()


def register(main: click.Group) -> None:
    main.add_command(cron_group)
