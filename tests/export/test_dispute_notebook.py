"""The committed ``dispute_evidence`` notebook is clean and thin (nbval checks its golden outputs in
``tests/notebooks/test_nbval.py``, on the same demo data as the audit notebooks)."""

from __future__ import annotations

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK = ROOT / "notebooks" / "dispute_evidence.ipynb"


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
