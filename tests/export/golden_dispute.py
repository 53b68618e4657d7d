"""Regenerate the golden outputs of ``notebooks/dispute_evidence.ipynb`` from the audit sample.

    .venv/bin/python -m tests.export.golden_dispute

A private embedded PostgreSQL in a temp dir gets the deterministic sample (demo tenants, two
frozen, signed months); the notebook runs in place with its default parameters (demo-overage,
2026-10, staged from the database as the analyst role), volatile metadata is stripped, the server
stops. ``tests/export/test_dispute_notebook.py`` checks these outputs with nbval.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.notebooks.golden import strip_volatile
from tests.notebooks.sample_db import create_sample_database

ROOT = Path(__file__).resolve().parent.parent.parent
NOTEBOOK = ROOT / "notebooks" / "dispute_evidence.ipynb"
EXECUTION_TIMEOUT_S = 300


def main() -> int:
    import nbformat
    from nbclient import NotebookClient

    from kernel.db import embedded

    with tempfile.TemporaryDirectory(prefix="rk-golden-dispute-") as tmp:
        data_dir = Path(tmp) / "pg"
        server = embedded.start(data_dir)
        try:
            os.environ["DATABASE_URL"] = create_sample_database(server, "rk_dispute_golden")
            nb = nbformat.read(str(NOTEBOOK), as_version=4)
            NotebookClient(
                nb,
                timeout=EXECUTION_TIMEOUT_S,
                kernel_name="python3",
                resources={"metadata": {"path": str(NOTEBOOK.parent)}},
            ).execute()
            strip_volatile(nb)
            nbformat.write(nb, str(NOTEBOOK))
            print(f"golden outputs written: {NOTEBOOK.relative_to(ROOT)}")
        finally:
            embedded.stop(data_dir, mode="fast")
    return 0


if __name__ == "__main__":
    sys.exit(main())
