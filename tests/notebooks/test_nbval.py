"""nbval over the committed audit notebooks, against a database loaded by the real demo pipeline.

The golden outputs come from ``tests/notebooks/golden.py`` (same demo data); hashes, key ids, UUIDs,
timestamps and paths are sanitised (``sanitize.cfg``) so only what an analyst reads is compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.reporting.kernelspec import install_kernelspec

from .demo_db import create_demo_database

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
AUDIT_NOTEBOOKS = ("monthly_audit", "reconciliation_drift", "snapshot_verification", "investigate")
NBVAL_TIMEOUT_S = 600


@pytest.mark.parametrize("name", AUDIT_NOTEBOOKS)
def test_committed_notebook_is_clean(name: str) -> None:
    nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
    tags = [set(c.metadata.get("tags", [])) for c in nb.cells]
    assert sum("parameters" in t for t in tags) == 1  # one parameters cell, no papermill-injected one
    assert not any("injected-parameters" in t for t in tags)
    assert "papermill" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    defaults: dict[str, object] = {}
    exec(compile(params.source, f"{name}:parameters", "exec"), {}, defaults)
    # Every parameter is a quoted string, and the defaults point at the demo data.
    assert all(isinstance(v, str) for v in defaults.values())
    assert defaults["site"] == "demo-hardcap" and defaults["year_month"] == "2026-10"
    for cell in code:
        if "ipywidgets" in cell.source or ".widget(" in cell.source:
            assert {"skip-execution", "nbval-skip"} <= set(cell.metadata.get("tags", []))
        elif "parameters" not in cell.metadata.get("tags", []):
            assert cell.outputs, f"{name}: a cell without golden output"


@pytest.mark.slow
def test_nbval_golden_outputs(pg_server: str, tmp_path: Path) -> None:
    """nbval run the way its docs show (``pytest --nbval``, the kernel named in the notebooks), after
    the demo load and after a user created a site of their own, as on a machine after `make demo`."""
    database_url = create_demo_database(pg_server, f"nbval_{uuid.uuid4().hex[:10]}", tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env["DATABASE_URL"] = database_url
    env["REVKERNEL_DATA_DIR"] = str(tmp_path / "data")
    made = CliRunner().invoke(main, ["site", "create", "--name", "My own shop", "--monthly-limit", "50"], env=env)
    assert made.exit_code == 0, made.output
    install_kernelspec()  # what `make venv` does: the notebooks ask for this kernel by name
    notebooks = [str(ROOT / "notebooks" / f"{name}.ipynb") for name in (*AUDIT_NOTEBOOKS, "dispute_evidence")]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-sanitize-with",
            str(HERE / "sanitize.cfg"),
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-q",
            *notebooks,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=NBVAL_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_notebooks_ask_for_the_kernel_the_project_installs() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    install_kernelspec()
    for name in (*AUDIT_NOTEBOOKS, "dispute_evidence"):
        nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
        spec = KernelSpecManager().get_kernel_spec(nb.metadata.kernelspec.name)
        assert spec.display_name == nb.metadata.kernelspec.display_name == "Python (revkernel)"
        # It runs this virtualenv's interpreter, where the kernel package is installed.
        assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("name", (*AUDIT_NOTEBOOKS, "dispute_evidence"))
def test_committed_charts_and_tables_display_in_jupyterlab(name: str) -> None:
    # JupyterLab renders SVG output only in trusted notebooks, so a chart must come with a
    # sanitiser-safe HTML image; and no table may fall back to an object's repr.
    nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    for output in outputs:
        data = output.get("data", {})
        assert "object at 0x" not in data.get("text/plain", ""), data.get("text/plain")
        assert "<IPython.core.display" not in data.get("text/plain", "")
        if "image/svg+xml" in data:
            assert data["text/html"].startswith('<img src="data:image/svg+xml;base64,')
        if "text/html" in data and "<table" in data["text/html"]:
            assert "<th></th>" not in data["text/html"] and "<th>index</th>" not in data["text/html"]
