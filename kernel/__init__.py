"""Revenue kernel: bills each usage event exactly once and makes every invoice verifiable."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
