"""``make screenshots``: the README's pictures, taken in headless Chromium from the demo's own output.

- ``docs/screenshots/fleet-index.png``: the demo month's fleet index (``reports/2026-10/index.html``);
- ``docs/screenshots/site-report-warn.png``: the top of a WARN site report (``demo-hardcap``'s audit);
- ``docs/screenshots/investigate.png``: the ``investigate`` notebook in a real JupyterLab, after
  *Run All*, with its explorer widgets.

Run ``make demo`` first (the reports and the database come from it). Every picture is a 1400 px
wide window, offline (the pages load nothing from the network).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernel.errors import KernelError
from kernel.reporting.browser import Page, open_page
from kernel.reporting.demo import DEMO_REPORT_MONTH
from kernel.settings import PROJECT_ROOT

__all__ = ["SCREENSHOTS_DIR", "take_screenshots"]

SCREENSHOTS_DIR = PROJECT_ROOT / "docs" / "screenshots"
WINDOW_PX = 1400
# The site report is long: the picture shows its first screen (banner, figures, findings).
SITE_REPORT_HEIGHT_PX = 1300
LAB_START_TIMEOUT_S = 120.0
RUN_ALL_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _reports(reports_dir: Path) -> tuple[Path, Path]:
    index = reports_dir / DEMO_REPORT_MONTH / "index.html"
    site = reports_dir / DEMO_REPORT_MONTH / "monthly" / "demo-hardcap.html"
    if not index.exists() or not site.exists():
        raise KernelError(f"no demo reports in {reports_dir}: run `make demo` first", code="demo_reports_missing")
    return index, site


def _shoot_lab(out: Path, analyst_url: str) -> Path:
    """Open investigate.ipynb in JupyterLab, Run All, wait for the widgets, capture the notebook."""
    port = _free_port()
    token = os.urandom(12).hex()
    with tempfile.TemporaryDirectory(prefix="revkernel-lab-") as home:
        env = {
            **os.environ,
            "ANALYST_DATABASE_URL": analyst_url,
            "JUPYTER_CONFIG_DIR": str(Path(home) / "config"),
            "JUPYTER_RUNTIME_DIR": str(Path(home) / "runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(Path(home) / "workspaces"),
        }
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--notebook-dir={PROJECT_ROOT / 'notebooks'}",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        lab = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/lab/tree/investigate.ipynb?token={token}&reset"
            with open_page(None, width=WINDOW_PX, height=1600) as page:
                deadline = time.monotonic() + LAB_START_TIMEOUT_S
                while True:
                    try:
                        page.goto(url)
                        page.wait_for("document.querySelector('.jp-Notebook .jp-Cell') !== null", timeout_s=60)
                        break
                    except KernelError:
                        if time.monotonic() > deadline or lab.poll() is not None:
                            raise
                        time.sleep(1)
                # The kernel the notebook asks for starts; then Run All, as a user would.
                _run_all(page)
                page.wait_for("document.querySelector('.widget-dropdown select') !== null", timeout_s=RUN_ALL_TIMEOUT_S)
                # After Run All (whose last cell disposed the engine), the explorer still answers.
                page.wait_for("document.querySelector('.jp-Notebook').innerText.includes('verdict: ')", timeout_s=60)
                page.evaluate(
                    "(() => { const state = document.querySelectorAll('.widget-dropdown select')[1];"
                    " state.value = 'REJECTED_QUOTA'; state.dispatchEvent(new Event('change', {bubbles: true}));"
                    " Array.from(document.querySelectorAll('.widget-button'))"
                    ".find(b => b.textContent.trim() === 'Show rows').click(); })()"
                )
                page.wait_for("document.querySelector('.widget-output table') !== null", timeout_s=RUN_ALL_TIMEOUT_S)
                time.sleep(1)  # let the table paint
                page.evaluate("document.querySelector('.widget-dropdown').scrollIntoView({block: 'start'})")
                time.sleep(1)
                return page.screenshot(out, full_page=False)
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait()


_NOTEBOOK_JS = "Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.title.label === 'investigate.ipynb')"


def _run_all(page: Page) -> None:
    """Run > Run All Cells: the command the menu runs (the app is exposed for this page only)."""
    page.wait_for(f"window.jupyterapp !== undefined && !!({_NOTEBOOK_JS})")
    page.evaluate(f"window.jupyterapp.shell.activateById(({_NOTEBOOK_JS}).id)")
    # The notebook's own kernel ("Python (revkernel)") must be up before Run All.
    page.wait_for(
        f"(() => {{ const s = ({_NOTEBOOK_JS}).sessionContext;"
        " return !!(s.session && s.session.kernel && s.session.kernel.status === 'idle'); })()",
        timeout_s=LAB_START_TIMEOUT_S,
    )
    # Dismiss the "Jupyter news?" toast so it does not cover the notebook.
    page.evaluate(
        "Array.from(document.querySelectorAll('.jp-toast-button')).filter(b => b.textContent.trim() === 'No')"
        ".forEach(b => b.click())"
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def take_screenshots(reports_dir: Path = PROJECT_ROOT / "reports", out_dir: Path = SCREENSHOTS_DIR) -> list[Path]:
    """Take the three README screenshots; return their paths."""
    from kernel.audit.connect import analyst_url

    index, site = _reports(reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = []
    with open_page(index.as_uri(), width=WINDOW_PX) as page:
        taken.append(page.screenshot(out_dir / "fleet-index.png"))
    with open_page(site.as_uri(), width=WINDOW_PX, height=SITE_REPORT_HEIGHT_PX) as page:
        taken.append(page.screenshot(out_dir / "site-report-warn.png", full_page=False))
    taken.append(_shoot_lab(out_dir / "investigate.png", analyst_url()))
    return taken


if __name__ == "__main__":
    for path in take_screenshots():
        print(f"screenshot: {path.relative_to(PROJECT_ROOT)}")
