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
        if "ipywidgets" in cell.source:
            assert {"skip-execution", "nbval-skip"} <= set(cell.metadata.get("tags", []))
        elif "parameters" not in cell.metadata.get("tags", []):
            assert cell.outputs, f"{name}: a cell without golden output"


@pytest.mark.slow
def test_nbval_golden_outputs(pg_server: str, tmp_path: Path) -> None:
    database_url = create_demo_database(pg_server, f"nbval_{uuid.uuid4().hex[:10]}", tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env["DATABASE_URL"] = database_url
    notebooks = [str(ROOT / "notebooks" / f"{name}.ipynb") for name in (*AUDIT_NOTEBOOKS, "dispute_evidence")]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-sanitize-with",
            str(HERE / "sanitize.cfg"),
            "--nbval-current-env",
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
