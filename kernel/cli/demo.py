"""``revkernel demo``."""

from __future__ import annotations

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.demo import run_demo

__all__ = ["register"]


@click.command("demo")
@click.option(
    "--force",
    is_flag=True,
    help="Load into DATABASE_URL (not the embedded server); only an empty database is accepted.",
)
@pass_cli
def demo(cli: CliContext, force: bool) -> None:
    """Load the deterministic demo tenants and data and run the month's jobs (repeatable).

    Refuses a database that holds a tenant the demo did not create. Credentials are random,
    printed once and kept in <data dir>/demo-credentials.env (mode 0600).
    """
    run_demo(cli.settings, click.echo, force=force)


def register(main: click.Group) -> None:
    main.add_command(demo)
