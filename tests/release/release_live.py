"""A live `revkernel serve` subprocess for the release tests (real uvicorn, real sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from kernel.settings import PROJECT_ROOT, Settings

READY_TIMEOUT_S = 60.0


@contextmanager
def live_server(
    settings: Settings, port: int, log_path: Path, *, workers: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run `revkernel serve` on ``port`` against ``settings``' database; yield its base URL."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("REVKERNEL_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    assert settings.database_url is not None
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "CRON_SECRET": settings.cron_secret,
            "REVKERNEL_COMMIT": settings.commit,
            "REVKERNEL_DATA_DIR": str(settings.data_dir),
            **(extra_env or {}),
        }
    )
    revkernel = Path(sys.executable).parent / "revkernel"
    cmd = [str(revkernel), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"revkernel serve exited {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"revkernel serve not ready: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield base_url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
