"""The real ``promtool`` (Debian package ``prometheus``), installed when the test runs as root.

Missing promtool skips the test on a developer machine and fails it under ``CI=true``: the rules,
the dashboard and the exposition format are only proven by Prometheus's own checker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

APT_TIMEOUT_S = 900


def promtool_or_skip() -> str:
    """Path of ``promtool``; installs the ``prometheus`` package with apt-get when root and missing."""
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=APT_TIMEOUT_S, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus"],
            env=env,
            capture_output=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
        found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required under CI=true (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def promtool(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_or_skip(), *map(str, args)],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
