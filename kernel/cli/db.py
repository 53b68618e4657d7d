"""``revkernel db up|migrate|status|url|stop|lint|backup|restore``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


def progress_bars(show: bool | None) -> Any:
    """A tqdm bar on stderr (shown on a terminal unless --no-progress), like the report runner's."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    def make(total: int, unit: str, desc: str) -> Any:
        return tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, file=sys.stderr, mininterval=0.5)

    return make


@db_group.command("backup")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A new or empty directory for the backup.",
)
@click.option(
    "--include-signing-key",
    is_flag=True,
    help="Also copy the snapshot signing key (0600). Better: keep it in a secret store of its own.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@pass_cli
def db_backup(cli: CliContext, out_dir: Path, include_signing_key: bool, progress: bool | None) -> None:
    """One consistent backup (pg_dump custom format), the ledger archives and a manifest; safe while serving."""
    from kernel.backup import backup_database

    result = backup_database(
        cli.settings, cli.db, out_dir, include_signing_key=include_signing_key, progress=progress_bars(progress)
    )
    manifest = result.manifest
    if include_signing_key:
        click.echo(
            f"warning: {result.out_dir / 'signing' / 'ed25519.seed'} holds the snapshot signing key (mode 0600): "
            "whoever reads it can sign invoices; store this backup encrypted, or keep the key apart",
            err=True,
        )
    click.echo(
        f"backup {result.out_dir}: snapshot {manifest['created_at']}, {len(manifest['tables'])} tables, "
        f"{result.total_rows} rows, {len(manifest['archives'])} archive(s), {len(manifest['files'])} files, "
        f"{result.total_bytes} bytes"
    )
    click.echo(f"manifest: {result.out_dir / 'manifest.json'}")
    if result.damaged:
        for problem in result.damaged:
            click.echo(f"damaged: {problem}", err=True)
        raise InputError(
            f"backup written, but {len(result.damaged)} archive(s) are missing or damaged in the store: "
            "run `revkernel verify`",
            code="store_damaged",
        )


@db_group.command("restore")
@click.argument("backup_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@pass_cli
def db_restore(cli: CliContext, backup_dir: Path, progress: bool | None) -> None:
    """Check a backup and restore it into an empty data directory (or an empty DATABASE_URL database)."""
    from kernel.backup import restore_backup

    result = restore_backup(cli.settings, cli.db, backup_dir, progress=progress_bars(progress))
    rows = sum(result.tables.values())
    click.echo(
        f"restored {result.backup.root} into {result.target}: {len(result.tables)} tables, {rows} rows, "
        f"{result.archives_restored} archive(s); row counts, snapshot hashes and migration checksums match the manifest"
    )
    if result.signing_key_restored:
        click.echo("signing key restored (mode 0600)")
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.pending_migrations:
        click.echo(f"note: {len(result.pending_migrations)} migration(s) pending: run `revkernel db migrate`")
    click.echo("next: `revkernel verify` checks the whole restored store")


def register(main: click.Group) -> None:
    main.add_command(db_group)
