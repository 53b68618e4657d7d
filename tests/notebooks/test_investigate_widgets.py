"""The investigate notebook's widgets in a real Jupyter kernel, after Run All, as JupyterLab runs them.

Run All executes every cell, the explorer's too, and the last cell disposes the engine; then the
test acts as the user: it changes the site, the month and the filters and clicks the buttons,
in the same kernel.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from kernel.audit.sample import seed_demo_sample
from kernel.db.connect import Database

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "investigate.ipynb"
USER_ACTIONS = """
c = explorer.controls
c["state"].value = "REJECTED_QUOTA"
c["rows"].click()
print("rows:", type(explorer.last).__name__, "<table" in explorer.last.html, "REJECTED_QUOTA" in explorer.last.html)
c["site"].value = "demo-off"
print("reasons:", list(c["reason"].options))
c["site"].value = "demo-hardcap"
c["month"].value = "2026-13"
print("month:", explorer.last)
c["month"].value = "2026-10"
c["key"].value = "no-such-key"
c["drill"].click()
print("key:", explorer.last)
"""


@pytest.mark.slow
def test_widgets_keep_working_after_run_all(database: Database) -> None:
    with database.connect("owner", autocommit=True) as conn:
        seed_demo_sample(conn)
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source += f"\ndatabase_url = {database.uri('analyst')!r}"
        cell.metadata.pop("tags", None)  # JupyterLab's Run All runs the widget cell too
    nb.cells.append(new_code_cell(USER_ACTIONS))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    widget_cell = next(c for c in nb.cells if "explorer.widget(" in c.source)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget_cell.outputs)
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    lines = printed.strip().splitlines()
    assert lines[0] == "rows: Block True True"
    assert lines[1] == "reasons: ['', 'billing_disabled']"  # the reason list follows the site
    assert lines[2] == "month: error: year_month must be YYYY-MM, got '2026-13' [invalid_year_month]"
    assert lines[3] == "key: error: no ledger row 'no-such-key' for site demo-hardcap [unknown_idempotency_key]"
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
