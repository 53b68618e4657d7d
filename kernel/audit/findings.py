"""Typed findings of an audit and the verdict they add up to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["NO_ACTIVITY_CODE", "Finding", "Severity", "Verdict", "findings_frame", "verdict_of"]


class Severity(StrEnum):
    """How bad a finding is: ``fail`` breaks a golden rule, ``warn`` needs a look, ``info`` is context."""

    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


class Verdict(StrEnum):
    """``no_activity``: nothing to judge (no ledger row); never shown as PASS."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"
    FAIL = "fail"
    NO_ACTIVITY = "no_activity"


# The finding that says a site-month has no ledger row at all (kernel.audit.fleet).
NO_ACTIVITY_CODE = "no_activity"


_RANK = {Severity.INFO: 0, Severity.WARN: 1, Severity.FAIL: 2}


@dataclass(frozen=True)
class Finding:
    """One observation about a site-month, with a stable ``code`` and a severity."""

    site_id: str
    public_id: str
    year_month: str
    code: str
    severity: Severity
    message: str
    value: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "public_id": self.public_id,
            "severity": self.severity.value,
            "site_id": self.site_id,
            "value": self.value,
            "year_month": self.year_month,
        }

    @property
    def is_red_flag(self) -> bool:
        return self.severity is not Severity.INFO


def verdict_of(findings: Iterable[Finding]) -> Verdict:
    """``fail`` if any finding fails, ``warn`` if any warns; else ``no_activity`` for an empty
    month and ``pass`` otherwise (info never changes it)."""
    found = list(findings)
    worst = max((_RANK[f.severity] for f in found), default=0)
    if worst == 0 and any(f.code == NO_ACTIVITY_CODE for f in found):
        return Verdict.NO_ACTIVITY
    return {0: Verdict.PASS, 1: Verdict.WARN, 2: Verdict.FAIL}[worst]


def findings_frame(findings: Iterable[Finding]) -> Any:
    """The findings as a DataFrame (severity, code, message), worst first, for notebooks."""
    import pandas as pd

    rows = [
        {"severity": f.severity.value, "code": f.code, "message": f.message}
        for f in sorted(findings, key=lambda f: (-_RANK[f.severity], f.code))
    ]
    return pd.DataFrame(rows, columns=["severity", "code", "message"])
