"""``revkernel demo``."""

from __future__ import annotations

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.demo import run_demo

__all__ = ["register"]


@click.command("demo")
@pass_cli
def demo(cli: CliContext) -> None:
    """Load the deterministic demo tenants and data and run the month's jobs (repeatable)."""
    run_demo(cli.settings, click.echo)


def register(main: click.Group) -> None:
    main.add_command(demo)
