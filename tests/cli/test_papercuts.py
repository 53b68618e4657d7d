"""CLI papercuts: options a command cannot honour are refused, every option explains itself."""

from __future__ import annotations

import click
import psycopg
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.settings import Settings


def _run(settings: Settings, *args: str) -> click.testing.Result:
    env = {"DATABASE_URL": settings.database_url or "", "REVKERNEL_DATA_DIR": str(settings.data_dir)}
    return CliRunner().invoke(main, list(args), env=env)


def test_every_option_of_every_command_has_help_text() -> None:
    missing: list[str] = []
    stack: list[tuple[list[str], click.Command]] = [(["revkernel"], main)]
    options = 0
    while stack:
        path, command = stack.pop()
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                options += 1
                if not (param.help or "").strip():
                    missing.append(f"{' '.join(path)} {'/'.join(param.opts)}")
        if isinstance(command, click.Group):
            stack.extend(([*path, name], sub) for name, sub in command.commands.items())
    assert options > 40
    assert not missing, missing


@pytest.mark.parametrize("name", ["watchtower", "reconcile-usage", "invoice-freeze", "publish-outbox"])
def test_dry_run_is_refused_by_crons_that_cannot_honour_it(settings: Settings, name: str) -> None:
    result = _run(settings, "cron", "run", name, "--dry-run")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --dry-run is not supported by {name}: only idempotency-cleanup can run without changing "
        "anything [dry_run_unsupported]"
    ]
    # Refused before it ran: nothing recorded, nothing locked.
    with psycopg.connect(settings.database_url or "") as conn:
        assert conn.execute("SELECT count(*) FROM cron_runs").fetchone() == (0,)


def test_dry_run_is_honoured_by_cleanup(settings: Settings) -> None:
    result = _run(settings, "cron", "run", "idempotency-cleanup", "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"dry_run": true' in result.stdout


def test_year_month_is_refused_where_it_means_nothing(settings: Settings) -> None:
    result = _run(settings, "cron", "run", "watchtower", "--year-month", "2026-01")
    assert result.exit_code == 1
    assert "[option_unsupported]" in result.stderr
