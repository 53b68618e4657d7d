"""Release: the runbook's gate (§3), post-deploy smoke (§5) and the chaos drill, executable."""

from __future__ import annotations

from kernel.release.checks import CheckFailed, CheckResult, expect, render_table, run_check
from kernel.release.gate import GateOptions, GateReport, run_gate
from kernel.release.smoke import SmokeOptions, run_smoke

__all__ = [
    "CheckFailed",
    "CheckResult",
    "GateOptions",
    "GateReport",
    "SmokeOptions",
    "expect",
    "render_table",
    "run_check",
    "run_gate",
    "run_smoke",
]
