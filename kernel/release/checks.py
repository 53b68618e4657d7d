"""Named pass/fail checks: the shared vocabulary of the gate, the smoke and the chaos run.

A check is a function that raises ``CheckFailed`` (through ``expect``) when the behaviour it
probes is wrong. ``run_check`` turns it into a ``CheckResult`` row; any other exception is a
failure too (a probe that cannot run has not passed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CheckFailed", "CheckResult", "expect", "render_markdown", "render_table", "run_check"]

DETAIL_MAX_CHARS = 1200


class CheckFailed(Exception):
    """The behaviour a check probes is not what the runbook requires."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    duration_ms: int

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def expect(condition: bool, message: str) -> None:
    """Fail the running check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def run_check(name: str, probe: Callable[[], str | None]) -> CheckResult:
    """Run one probe; its return value is the detail shown when it passes."""
    started = time.perf_counter()
    try:
        detail = probe() or "ok"
        passed = True
    except CheckFailed as exc:
        detail, passed = str(exc), False
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        detail, passed = f"{type(exc).__name__}: {first}", False
    elapsed_ms = int((time.perf_counter() - started) * 1000)
    return CheckResult(name, passed, detail[:DETAIL_MAX_CHARS], elapsed_ms)


def render_table(results: Sequence[CheckResult]) -> str:
    """A fixed-width pass/fail table for a terminal."""
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  {'-' * 40}"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.verdict:<6}  {r.detail}")
    failed = sum(1 for r in results if not r.passed)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def render_markdown(results: Sequence[CheckResult]) -> str:
    """The same table as Markdown, for evidence files."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.name} | {r.verdict} | {detail} |")
    return "\n".join(lines)
