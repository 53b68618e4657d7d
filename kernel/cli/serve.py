"""``revkernel serve``: the Litestar app on uvicorn (uvloop + httptools), N worker processes.

Settings come from the environment (``kernel.settings``), so every option is handed to the
workers as an environment variable: ``--scheduler`` sets ``REVKERNEL_SCHEDULER=1``. Before any
worker starts, ``serve``
- checks that the port is free (one-line error otherwise),
- starts the embedded PostgreSQL when there is no ``DATABASE_URL`` (once, not once per worker) and
  refuses a database whose schema is behind the code (migrate first, then deploy),
- points ``PROMETHEUS_MULTIPROC_DIR`` at ``<data dir>/prometheus`` (or ``REVKERNEL_METRICS_DIR``),
  wiped, so ``/metrics`` sums the samples of every worker of this run (SPEC §4.4).

uvicorn's default asyncio + h11 stack never sets TCP_NODELAY with several workers
(Kludex/uvicorn#3149, see BASELINES.md); uvloop + httptools do not have the problem.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

import click

from kernel.cli.context import CliContext, pass_cli
from kernel.errors import ConfigError

__all__ = ["register"]

APP_FACTORY = "kernel.app:create_app"
MAX_WORKERS = 64
GRACEFUL_SHUTDOWN_S = 10
# uvicorn kills a worker that does not answer its supervisor's ping within this long (default 5 s):
# on a loaded machine a starting worker still importing the app misses it and is restarted forever.
WORKER_HEALTHCHECK_TIMEOUT_S = 60


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use", code="port_in_use") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", code="bad_address") from exc


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, MAX_WORKERS), help="Worker processes.")
@click.option("--scheduler", is_flag=True, help="Run the built-in cron scheduler (one leader across instances).")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="uvicorn log level.",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@pass_cli
def serve(
    cli: CliContext, host: str, port: int, workers: int, scheduler: bool, log_level: str, access_log: bool
) -> None:
    """Serve the API (POST /api/sync, crons, exports, /metrics) with uvicorn."""
    import uvicorn

    from kernel.db import migrations

    _check_port_free(host, port)
    with cli.db.connect("owner") as conn:
        migrations.require_current(conn)
    metrics_dir = Path(cli.settings.extra.get("REVKERNEL_METRICS_DIR") or cli.settings.data_dir / "prometheus")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["REVKERNEL_DATA_DIR"] = str(cli.settings.data_dir)
    if scheduler:
        os.environ["REVKERNEL_SCHEDULER"] = "1"
    click.echo(f"serving on http://{host}:{port} with {workers} worker(s)", err=True)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S,
    )


def register(main: click.Group) -> None:
    main.add_command(serve)
