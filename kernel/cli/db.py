"""``revkernel db up|migrate|status|url|stop|lint``."""

from __future__ import annotations

from pathlib import Path

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.db import embedded, migrations
from kernel.db.lint import lint_files
from kernel.errors import InputError, MigrationError

__all__ = ["register"]


@click.group("db")
def db_group() -> None:
    """The store of record: the embedded PostgreSQL (default) or DATABASE_URL."""


@db_group.command("up")
@pass_cli
def db_up(cli: CliContext) -> None:
    """Start the embedded PostgreSQL (unless DATABASE_URL is set) and apply migrations."""
    with cli.db.connect("owner") as conn:
        applied = migrations.migrate(conn)
    where = "DATABASE_URL" if not cli.settings.embedded else f"embedded server in {cli.settings.pg_data_dir}"
    click.echo(f"database ready ({where}); {len(applied)} migration(s) applied")
    click.echo(f"url: {cli.db.uri('owner')}")


@db_group.command("migrate")
@pass_cli
def db_migrate(cli: CliContext) -> None:
    """Apply pending migrations in order; refuse edited ones."""
    with cli.db.connect("owner") as conn:
        applied = migrations.migrate(conn)
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("nothing to apply: schema is current")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def db_status(cli: CliContext, as_json: bool) -> None:
    """Applied and pending migrations with their SHA-256 checksums."""
    with cli.db.connect("owner") as conn:
        states = migrations.status(conn)
    if as_json:
        echo_json([s.__dict__ for s in states])
        return
    for s in states:
        at = s.applied_at.isoformat() if s.applied_at else "-"
        click.echo(f"{s.state:<8} {s.name:<32} {s.sha256[:16]}  {at}")
    pending = sum(1 for s in states if s.state == "pending")
    click.echo(f"{len(states) - pending} applied, {pending} pending")


@db_group.command("url")
@click.option(
    "--role",
    type=click.Choice(["owner", "app", "analyst"]),
    default="owner",
    show_default=True,
    help="Which role the URL connects as (analyst is read-only, for notebooks).",
)
@pass_cli
def db_url(cli: CliContext, role: str) -> None:
    """Print the connection string for psql, notebooks and SQLAlchemy."""
    click.echo(cli.db.uri(role, start=False))  # type: ignore[arg-type]


@db_group.command("stop")
@pass_cli
def db_stop(cli: CliContext) -> None:
    """Stop the embedded PostgreSQL (nothing to do with DATABASE_URL)."""
    if not cli.settings.embedded:
        raise InputError("DATABASE_URL is set: the kernel did not start that server", code="not_embedded")
    stopped = embedded.stop(cli.settings.pg_data_dir)
    click.echo("stopped" if stopped else "not running")


@db_group.command("lint")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def db_lint(files: tuple[Path, ...]) -> None:
    """Lint migrations (squawk + additive-only rules); default: every migration."""
    targets = list(files) or [m.path for m in migrations.discover()]
    problems = lint_files(targets)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        raise MigrationError(f"{len(problems)} migration lint problem(s)", code="migration_lint")
    click.echo(f"{len(targets)} migration(s) pass the lint")


def register(main: click.Group) -> None:
    main.add_command(db_group)
