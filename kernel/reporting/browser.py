"""Headless Chromium driven over the DevTools protocol: what a reader's browser does with a page.

Used by ``make screenshots`` (README images) and the page tests: open a page with the network
cut off (every host name resolves nowhere, no proxy reaches anything), optionally with JavaScript
off, at a given window size; then evaluate an expression in it, list every URL it requested,
and capture a PNG. Chromium comes from Debian's ``chromium`` package (``ensure_chromium``
installs it when running as root).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kernel.errors import KernelError

__all__ = ["BROWSER_TIMEOUT_S", "Page", "ensure_chromium", "open_page"]

# Seconds to wait for Chromium to start, a page to load, or one protocol answer.
BROWSER_TIMEOUT_S = 60.0
APT_TIMEOUT_S = 900
# Flags of a quiet, offline, throwaway browser (no first-run, no background fetches, no GPU).
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--hide-scrollbars",
    # Every host name resolves nowhere and every request goes to a proxy that does not answer:
    # only file:// and loopback (which Chromium never proxies) load.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
)


class BrowserError(KernelError):
    code = "browser_failed"


def ensure_chromium() -> str:
    """Path of Chromium; installs Debian's ``chromium`` with apt-get when root and missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=APT_TIMEOUT_S, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            env=env,
            capture_output=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
        found = shutil.which("chromium")
    if found is None:
        raise BrowserError("chromium is not installed (apt-get install chromium)", code="chromium_missing")
    return found


class Page:
    """One browser tab: navigate, evaluate, capture (a thin DevTools-protocol client)."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._next_id = 0
        self.requested: list[str] = []  # every URL the page asked for, in order
        self.failed: list[str] = []  # requests that did not load (the network is cut off)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        while True:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requested.append(str(params["request"]["url"]))
        elif method == "Network.loadingFailed":
            self.failed.append(str(params.get("errorText")))

    def wait_for(self, expression: str, timeout_s: float = BROWSER_TIMEOUT_S) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (DevTools runs it with JS off too)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} raised: {answer['exceptionDetails'].get('text')}")
        return answer.get("result", {}).get("value")

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            width, height = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def open_page(
    url: str | None = None, *, width: int = 1400, height: int = 900, javascript: bool = True
) -> Iterator[Page]:
    """A headless Chromium tab, offline, ``width`` x ``height``; navigates to ``url`` when given."""
    from websockets.sync.client import connect

    chromium = ensure_chromium()
    # Chromium's helper processes may still write to the profile for a moment after it quit.
    with tempfile.TemporaryDirectory(prefix="revkernel-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [chromium, *_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + BROWSER_TIMEOUT_S
            while not port_file.exists() or not port_file.read_text().strip():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BrowserError("chromium did not start")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            targets = _json_get(f"http://127.0.0.1:{port}/json/list")
            target = next(t for t in targets if t.get("type") == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=BROWSER_TIMEOUT_S) as socket:
                page = Page(socket)
                page.call("Page.enable")
                page.call("Network.enable")
                page.call(
                    "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
                )
                if not javascript:
                    page.call("Emulation.setScriptExecutionDisabled", value=True)
                if url is not None:
                    page.goto(url)
                yield page
        finally:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()


def _json_get(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=BROWSER_TIMEOUT_S) as answer:  # noqa: S310 (loopback DevTools)
        return json.loads(answer.read())
