"""Regenerate the committed notebooks' golden outputs from the deterministic demo data.

    .venv/bin/python tests/notebooks/golden.py

Starts a private embedded PostgreSQL in a temp dir, loads the real `make demo` data into it (the
demo tenants, two months of traffic over HTTP, frozen and reconciled), executes every notebook in
place with nbclient (not papermill: no injected cells), strips volatile metadata and stops the
server. nbval then checks these outputs in ``make test`` (tests/notebooks/test_nbval.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# Every committed notebook with golden outputs, all from the same demo data.
NOTEBOOKS = [
    ROOT / "notebooks" / f"{name}.ipynb"
    for name in ("monthly_audit", "reconciliation_drift", "snapshot_verification", "investigate", "dispute_evidence")
]
EXECUTION_TIMEOUT_S = 300
sys.path.insert(0, str(ROOT))
from kernel.reporting.kernelspec import KERNEL_DISPLAY_NAME, KERNEL_SPEC_NAME  # noqa: E402


def strip_volatile(nb: object) -> None:
    """Drop execution timings and papermill metadata; keep outputs and tags."""
    cells = nb.cells  # type: ignore[attr-defined]
    for cell in cells:
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    metadata = nb.metadata  # type: ignore[attr-defined]
    metadata.pop("papermill", None)
    metadata.pop("widgets", None)
    metadata["language_info"] = {"name": "python"}
    # The kernel `make lab` installs (and JupyterLab and a plain `pytest --nbval` start).
    metadata["kernelspec"] = {"display_name": KERNEL_DISPLAY_NAME, "language": "python", "name": KERNEL_SPEC_NAME}


def regenerate(database_url: str) -> None:
    import nbformat
    from nbclient import NotebookClient

    os.environ["DATABASE_URL"] = database_url
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        NotebookClient(
            nb, timeout=EXECUTION_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        strip_volatile(nb)
        nbformat.write(nb, str(path))
        print(f"golden outputs written: {path.relative_to(ROOT)}")


def main() -> int:
    sys.path.insert(0, str(HERE))
    from demo_db import create_demo_database

    from kernel.db import embedded

    with tempfile.TemporaryDirectory(prefix="rk-golden-") as tmp:
        data_dir = Path(tmp) / "pg"
        server = embedded.start(data_dir)
        try:
            regenerate(create_demo_database(server, "rk_golden", Path(tmp) / "data"))
        finally:
            embedded.stop(data_dir, mode="fast")
    return 0


if __name__ == "__main__":
    sys.exit(main())
