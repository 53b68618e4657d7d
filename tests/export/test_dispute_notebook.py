"""The committed ``dispute_evidence`` notebook: clean, thin, and its golden outputs hold (nbval)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.sample_db import create_sample_database

ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK = ROOT / "notebooks" / "dispute_evidence.ipynb"
SANITIZE = ROOT / "tests" / "notebooks" / "sanitize.cfg"
NBVAL_TIMEOUT_S = 600


def test_committed_notebook_is_clean_with_string_parameters() -> None:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "papermill" not in nb.metadata
    assert 'site = "demo-overage"' in params[0].source and 'year_month = "2026-10"' in params[0].source
    for line in params[0].source.splitlines()[1:]:
        assert ' = "' in line  # every parameter a quoted string
    for cell in code:
        assert "datetime.now" not in cell.source
        if cell is not params[0]:
            assert cell.outputs, "a cell without golden output"


@pytest.mark.slow
def test_nbval_golden_outputs(pg_server: str) -> None:
    database_url = create_sample_database(pg_server, f"nbval_dispute_{uuid.uuid4().hex[:10]}")
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env["DATABASE_URL"] = database_url
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-sanitize-with", str(SANITIZE), "--nbval-current-env",
         "-p", "no:cacheprovider", "-p", "no:xdist", "-q", str(NOTEBOOK)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=NBVAL_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
