"""The Jupyter kernel the notebooks ask for: ``revkernel`` ("Python (revkernel)"), this venv's Python.

The committed notebooks name it in their metadata, so JupyterLab and a plain ``pytest --nbval``
start the project's interpreter without asking. ``make venv`` (and so ``make demo`` and
``make lab``) installs it into the virtualenv with ``python -m kernel.reporting.kernelspec``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["KERNEL_DISPLAY_NAME", "KERNEL_SPEC_NAME", "install_kernelspec"]

KERNEL_SPEC_NAME = "revkernel"
KERNEL_DISPLAY_NAME = "Python (revkernel)"


def install_kernelspec(prefix: str = sys.prefix) -> Path:
    """Install (or refresh) the ``revkernel`` kernelspec under ``prefix``; return its directory."""
    from ipykernel.kernelspec import install

    return Path(install(kernel_name=KERNEL_SPEC_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=prefix))


if __name__ == "__main__":
    print(f"jupyter kernel {KERNEL_SPEC_NAME!r} ({KERNEL_DISPLAY_NAME}) installed in {install_kernelspec()}")
