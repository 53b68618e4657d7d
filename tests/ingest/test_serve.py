"""`revkernel serve`: refuses a busy port with one line, before starting anything."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_port_in_use_is_one_line_error(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=180,
            env={"PATH": "/usr/bin:/bin", "REVKERNEL_DATA_DIR": str(tmp_path / "data")},
        )
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: port {port} on 127.0.0.1 is already in use [port_in_use]"
    assert not (tmp_path / "data").exists()  # nothing was started


def test_serve_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "serve", "--help"], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0
    for option in ("--host", "--port", "--workers", "--scheduler"):
        assert option in out.stdout
