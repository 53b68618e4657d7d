"""render_notebook: papermill into a temp dir, the results sidecar, offline HTML that a browser shows."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from kernel.db.connect import Database
from kernel.reporting import NotebookFailed, render_notebook, render_site
from kernel.reporting.fleet import NOTEBOOKS_DIR, SiteTask
from kernel.reporting.render import _EXTERNAL_RESOURCE

from .conftest import screenshot


def write_notebook(path: Path, *sources: str) -> Path:
    params = new_code_cell('results_path = ""')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, *(new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_monthly_audit_renders_offline(sample_db: Database, tmp_path: Path, chromium: str) -> None:
    result = render_notebook(
        NOTEBOOKS_DIR / "monthly_audit.ipynb",
        {"site": "demo-hardcap", "year_month": "2026-10", "database_url": sample_db.uri("analyst")},
        tmp_path / "out",
        timeout_s=120,
    )
    assert result.verdict == "warn"
    sidecar = json.loads(result.results_path.read_text())
    assert sidecar["red_flags"] == ["retry_storm"] and sidecar["public_id"] == "demo-hardcap"
    assert sidecar["metrics"]["rejected_count"] == 140 and sidecar["metrics"]["snapshot"]["status"] == "verified"
    html = result.html_path.read_text()
    assert "connect_analyst" not in html  # no code cells
    assert _EXTERNAL_RESOURCE.search(html) is None
    # Daily volume and quota timeline, as inline SVG data URIs.
    charts = [base64.b64decode(m).decode() for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)]
    assert [c.split('aria-label="')[1].split('"')[0] for c in charts] == ["Daily volume (UTC)", "Quota timeline"]

    png = tmp_path / "shot.png"
    screenshot(chromium, result.html_path, png, tmp_path / "profile")
    pixels = np.asarray(Image.open(png).convert("L"), dtype="float64")
    assert pixels.std() > 10  # text, tables and charts, not a blank page


def test_failing_cell_keeps_the_error_notebook(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "boom.ipynb", "raise RuntimeError('ledger unreachable')")
    with pytest.raises(NotebookFailed) as failed:
        render_notebook(notebook, {}, tmp_path / "out", timeout_s=60)
    assert "ledger unreachable" in failed.value.message
    assert failed.value.ipynb_path.exists()

    outcome = render_site(
        SiteTask("monthly", "boom", "00000000-0000-0000-0000-000000000000", str(notebook), {}, str(tmp_path / "o2"), 60)
    )
    assert (outcome.status, outcome.verdict) == ("failed", "error")
    assert outcome.ipynb is not None and Path(outcome.ipynb).exists()


def test_notebook_without_sidecar_is_a_failure(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "silent.ipynb", "print('no results written')")
    with pytest.raises(NotebookFailed) as failed:
        render_notebook(notebook, {}, tmp_path / "out", timeout_s=60)
    assert failed.value.code == "results_missing"


@pytest.mark.slow
def test_investigate_runs_headless_without_its_widgets(sample_db: Database, tmp_path: Path) -> None:
    result = render_notebook(
        NOTEBOOKS_DIR / "investigate.ipynb",
        {
            "site": "demo-overage",
            "year_month": "2026-10",
            "database_url": sample_db.uri("analyst"),
            "billing_state": "OVERAGE",
        },
        tmp_path / "out",
        timeout_s=120,
    )
    assert result.verdict == "fail"  # the sample's tampered counter
    assert result.results["red_flags"] == ["counter_drift_logged", "counter_mismatch"]
    nb = nbformat.read(str(result.ipynb_path), as_version=4)
    widget_cells = [c for c in nb.cells if "skip-execution" in c.metadata.get("tags", [])]
    assert widget_cells and all(c.execution_count is None and not c.outputs for c in widget_cells)
    rows_cell = next(c for c in nb.cells if c.cell_type == "code" and "ledger_rows(" in c.source)
    assert "OVERAGE" in rows_cell.outputs[0]["data"]["text/plain"]


def test_kernel_that_never_starts_is_retried_once_then_reported(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "any.ipynb", "x = 1")
    with pytest.raises(NotebookFailed) as failed:
        render_notebook(notebook, {}, tmp_path / "out", timeout_s=30, kernel_name="no-such-kernel")
    assert failed.value.code == "kernel_start_failed"
    assert "failed 2 times" in failed.value.message
