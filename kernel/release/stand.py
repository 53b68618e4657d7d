"""The chaos drill's stand: private servers on 127.0.0.1 that the drill may break.

An embedded PostgreSQL in a temporary directory, a ``redis-server`` with persistence off, a
webhook sink that checks the relay's HMAC signature, and ``revkernel serve --workers 2``, all on
free ports; never the machine's shared 5432 or 6379.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from kernel.cron.relay import sign_webhook
from kernel.db import embedded, migrations
from kernel.db.urls import role_conninfo
from kernel.release.checks import expect
from kernel.settings import PROJECT_ROOT

__all__ = [
    "HOST",
    "Servers",
    "WebhookSink",
    "free_port",
    "ready",
    "stand",
    "start_redis",
    "stop_process",
    "worker_pids",
]

HOST = "127.0.0.1"
CHAOS_DB = "revkernel_chaos"
SERVE_READY_TIMEOUT_S = 60.0
REDIS_START_TIMEOUT_S = 10.0
SERVE_STOP_TIMEOUT_S = 20.0
PROCESS_STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- the webhook sink --------------------------------------------------------------------------


class WebhookSink:
    """A local HTTP server that records every delivered event, and can be stopped and restarted."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.secret = secret
        self.bad_signatures = 0
        self.flaky_until = 0.0  # monotonic time until which deliveries are recorded but answered 500
        self.deliveries: list[tuple[str, str]] = []  # (site_id, idempotency_key) in arrival order
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def start(self) -> None:
        """Listen on the sink's port (again, after ``stop``)."""
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                signed = sign_webhook(sink.secret, self.headers.get("x-revkernel-timestamp", ""), body)
                if not hmac.compare_digest(signed, self.headers.get("x-revkernel-signature", "")):
                    with sink._lock:
                        sink.bad_signatures += 1
                    self.send_response(401)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                sink.record(body)
                if time.monotonic() < sink.flaky_until:
                    # Received but answered as failed: the relay must redeliver (at least once),
                    # and the redelivery must not overtake anything.
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="chaos-sink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: the relay's deliveries are refused until ``start``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record(self, body: bytes) -> None:
        """Note every event of one delivered webhook body, in arrival order."""
        try:
            document = json.loads(body)
        except ValueError:
            return
        events = _events_of(document)
        with self._lock:
            self.requests += 1
            for event in events:
                self.deliveries.append((str(event.get("site_id")), str(event.get("idempotency_key"))))

    def snapshot(self) -> list[tuple[str, str]]:
        """Every (site_id, idempotency_key) delivered so far, redeliveries included."""
        with self._lock:
            return list(self.deliveries)


def _events_of(document: Any) -> list[dict[str, Any]]:
    """The delivered events of one webhook body: ``{"site_id", "events": [{"idempotency_key", ...}]}``."""
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        return []
    site_id = document.get("site_id")
    found: list[dict[str, Any]] = []
    for item in document["events"]:
        if isinstance(item, dict) and "idempotency_key" in item:
            found.append({"site_id": item.get("site_id", site_id), "idempotency_key": item["idempotency_key"]})
    return found


# --- the servers -------------------------------------------------------------------------------


@dataclass
class Servers:
    """The stand's processes and where they listen."""

    root: Path
    pg_dir: Path
    owner: str
    redis_port: int
    redis: subprocess.Popen[bytes] | None
    sink: WebhookSink
    serve: subprocess.Popen[bytes] | None
    serve_port: int
    cron_secret: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.serve_port}"


def start_redis(port: int, root: Path) -> subprocess.Popen[bytes]:
    """A private ``redis-server`` on ``port`` with persistence off; returns once it listens."""
    binary = shutil.which("redis-server")
    expect(binary is not None, "redis-server is not installed (apt-get install redis-server)")
    assert binary is not None
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not listen on {port}")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal a process of the stand and wait for it; SIGKILL when it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=PROCESS_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=PROCESS_STOP_TIMEOUT_S)


def _serve_env(servers: Servers) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVKERNEL_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DATABASE_URL": servers.owner,
            "REDIS_URL": f"redis://{HOST}:{servers.redis_port}/0",
            "CRON_SECRET": servers.cron_secret,
            "REVKERNEL_DATA_DIR": str(servers.root / "data"),
            "REVKERNEL_WEBHOOK_URL": servers.sink.url,
            "REVKERNEL_WEBHOOK_SECRET": servers.sink.secret,
            "REVKERNEL_COMMIT": "chaos",
        }
    )
    return env


def _start_serve(servers: Servers) -> subprocess.Popen[bytes]:
    revkernel = Path(sys.executable).parent / "revkernel"
    log = servers.log_path.open("ab")
    proc = subprocess.Popen(
        [str(revkernel), "serve", "--host", HOST, "--port", str(servers.serve_port), "--workers", "2"],
        env=_serve_env(servers),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"revkernel serve exited with {proc.returncode}; see {servers.log_path}")
        try:
            if httpx.get(f"{servers.base_url}/readyz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"revkernel serve was not ready within {SERVE_READY_TIMEOUT_S}s; see {servers.log_path}")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes below ``parent``: descendants with no children of their own."""
    descendants: list[int] = []
    stack = [parent]
    while stack:
        for child in _children(stack.pop()):
            stack.append(child)
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                descendants.append(child)
    return [pid for pid in descendants if not _children(pid)]


@contextmanager
def stand(echo: Callable[[str], None], keep_log: Path) -> Iterator[Servers]:
    """Start every server of the stand; stop them all and remove their files afterwards.

    The service's log is copied to ``keep_log`` so that a failed drill can be read afterwards.
    """
    root = Path(tempfile.mkdtemp(prefix="revkernel-chaos-"))
    pg_dir = root / "pg"
    sink = WebhookSink(free_port(), secrets.token_urlsafe(24))
    servers = Servers(
        root=root,
        pg_dir=pg_dir,
        owner="",
        redis_port=free_port(),
        redis=None,
        sink=sink,
        serve=None,
        serve_port=free_port(),
        cron_secret=secrets.token_urlsafe(24),
        log_path=root / "serve.log",
    )
    try:
        server = embedded.start(pg_dir)
        with psycopg.connect(role_conninfo(server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CHAOS_DB)))
        servers.owner = role_conninfo(server, dbname=CHAOS_DB)
        with psycopg.connect(servers.owner) as conn:
            migrations.migrate(conn)
        servers.redis = start_redis(servers.redis_port, root)
        sink.start()
        servers.serve = _start_serve(servers)
        echo(f"chaos: serve on {servers.base_url} (2 workers), PostgreSQL in {pg_dir}, redis :{servers.redis_port}")
        yield servers
    finally:
        if servers.serve is not None and servers.serve.poll() is None:
            os.killpg(servers.serve.pid, signal.SIGTERM)
            try:
                servers.serve.wait(timeout=SERVE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(servers.serve.pid, signal.SIGKILL)
                servers.serve.wait(timeout=PROCESS_STOP_TIMEOUT_S)
        stop_process(servers.redis)
        sink.stop()
        if servers.log_path.exists():
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(servers.log_path, keep_log)
        try:
            embedded.stop(pg_dir, mode="immediate")
        except Exception as exc:  # reported, never hidden: the temp dir is removed either way
            echo(f"chaos: PostgreSQL did not stop cleanly: {exc}")
        shutil.rmtree(root, ignore_errors=True)


def ready(servers: Servers) -> bool:
    """True when the service answers its readiness probe."""
    try:
        return httpx.get(f"{servers.base_url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
