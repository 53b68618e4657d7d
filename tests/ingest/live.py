"""A live ``revkernel serve`` in a subprocess, and an asyncio client pool that logs every answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import free_port

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def worker_pids(self) -> list[int]:
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def live_server(
    database_url: str,
    tmp: Path,
    *,
    workers: int = 2,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[LiveServer]:
    """Run ``revkernel serve --workers N`` on a free port until the block ends."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REVKERNEL_CLOCK", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(
        DATABASE_URL=database_url,
        REVKERNEL_DATA_DIR=str(tmp / "serve-data"),
        REVKERNEL_COMMIT="livecommit",
        REVKERNEL_REDIS_PREFIX=f"rk-test-{port}-{time.time_ns()}",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra_env or {})
    log_path = tmp / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server, workers)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: LiveServer, workers: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200 and len(server.worker_pids()) >= (
                workers if workers > 1 else 0
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"serve not ready after {START_TIMEOUT_S}s:\n{server.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)


@dataclass
class ClientLog:
    """Every final answer a client got, by event id, and every attempt's status."""

    final: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=dict)
    attempts: list[int] = field(default_factory=list)
    bodies_5xx: list[Any] = field(default_factory=list)
    degraded: int = 0


FINAL_STATUSES = (200, 429)
RETRY_PAUSE_S = 0.05
MAX_ATTEMPTS = 400


async def send_events(
    url: str,
    key: str,
    event_ids: list[str],
    *,
    clients: int,
    log: ClientLog,
    on_progress: Any = None,
    retry: bool = True,
) -> None:
    """``clients`` concurrent clients send one request per event id, retrying the same id on
    transport errors and 5xx (as deployed trackers do) until a final 200/429."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for event_id in event_ids:
        queue.put_nowait(event_id)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:

        async def client() -> None:
            while True:
                try:
                    event_id = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                for _attempt in range(MAX_ATTEMPTS):
                    try:
                        response = await http.post(
                            "/api/sync", json={"event_id": event_id, "ec": "load", "ea": "buy"}, headers=headers
                        )
                    except httpx.TransportError:
                        log.attempts.append(0)
                        await asyncio.sleep(RETRY_PAUSE_S)
                        continue
                    log.attempts.append(response.status_code)
                    if response.headers.get("x-opsmantik-degraded") == "ratelimit_local":
                        log.degraded += 1
                    if response.status_code >= 500:
                        try:
                            log.bodies_5xx.append(response.json())
                        except ValueError:
                            log.bodies_5xx.append({"status": response.status_code, "text": response.text[:200]})
                        if retry:
                            await asyncio.sleep(RETRY_PAUSE_S)
                            continue
                    log.final[event_id] = (response.status_code, response.json(), dict(response.headers))
                    break
                if on_progress is not None:
                    await on_progress(len(log.final))

        await asyncio.gather(*(client() for _ in range(clients)))
