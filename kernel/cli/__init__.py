"""``revkernel``: the command line. Thin: every command calls a function of the packages.

Every command has ``--help``, exits non-zero on failure and prints one clear line
(``error: …``) instead of a traceback, unless ``--debug`` is given.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from kernel.cli.context import CliContext
from kernel.errors import KernelError

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2


class KernelGroup(click.Group):
    """A click group that turns every error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KernelError as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: {exc.message} [{exc.code}]", err=True)
            ctx.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if _debug(ctx):
                raise
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"error: unexpected {type(exc).__name__}: {detail} (rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_FAILURE)


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


@click.group(cls=KernelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Revenue kernel workbench: bill every usage event exactly once, and prove it."""
    ctx.obj = CliContext.from_env(debug=debug)


def _register() -> None:
    # Each bounded context contributes its command group; imported here so `--help` lists all.
    from kernel.cli import db, demo, tenants

    for module in (db, tenants, demo):
        module.register(main)
    for name in ("serve", "cron", "report", "dispute", "release", "verify"):
        try:
            module = __import__(f"kernel.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"kernel.cli.{name}":
                raise
            continue
        module.register(main)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
