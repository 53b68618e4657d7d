"""Migration lint: squawk plus the project's additive-only rules (SPEC §3, runbook §3.C).

Squawk (``squawk-cli``) knows PostgreSQL locking; the project rules cover what it does not
enforce as errors for us: no DROP, no TRUNCATE or RENAME, no column type rewrite, no enum value
removal or rename, and no ``NOT NULL`` without a default on a table that already exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kernel.errors import ConfigError
from kernel.settings import PROJECT_ROOT

__all__ = ["LintProblem", "lint_files", "project_rules", "squawk"]

SQUAWK_CONFIG = PROJECT_ROOT / ".squawk.toml"
SQUAWK_TIMEOUT_S = 60


@dataclass(frozen=True)
class LintProblem:
    path: Path
    line: int  # 1-based
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def _strip_comments(text: str) -> str:
    # Keep line numbers: blank out comments and string literals, never remove newlines.
    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    text = re.sub(r"\$\$.*?\$\$", blank, text, flags=re.S)  # function bodies
    text = re.sub(r"'(?:[^']|'')*'", blank, text)
    text = re.sub(r"--[^\n]*", blank, text)
    return re.sub(r"/\*.*?\*/", blank, text, flags=re.S)


_CREATE_TABLE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:\w+\.)?\"?(\w+)\"?", re.I)
_RULES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "no-drop",
        re.compile(r"\bDROP\b(?!\s+NOT\s+NULL)", re.I),
        "DROP is destructive; migrations are additive only",
    ),
    ("no-truncate", re.compile(r"(?:^|;)\s*TRUNCATE\b", re.I | re.M), "TRUNCATE destroys data"),
    (
        "no-rename",
        re.compile(r"\bRENAME\b(?!\s+VALUE)", re.I),
        "RENAME breaks clients that use the old name",
    ),
    (
        "no-type-rewrite",
        re.compile(r"\bALTER\s+COLUMN\s+\"?\w+\"?\s+(?:SET\s+DATA\s+)?TYPE\b", re.I),
        "changing a column type rewrites the table and breaks readers",
    ),
    (
        "no-enum-value-removal",
        re.compile(r"\bALTER\s+TYPE\s+\S+\s+RENAME\s+VALUE\b", re.I),
        "renaming an enum value removes the old value",
    ),
    (
        "no-set-not-null",
        re.compile(r"\bALTER\s+COLUMN\s+\"?\w+\"?\s+SET\s+NOT\s+NULL\b", re.I),
        "SET NOT NULL on an existing column can fail on old rows and locks the table",
    ),
]
_ADD_COLUMN = re.compile(
    r"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?:\w+\.)?\"?(\w+)\"?\s+(.*?);",
    re.I | re.S,
)


def project_rules(path: Path) -> list[LintProblem]:
    """The additive-only rules over one migration file."""
    text = _strip_comments(path.read_text(encoding="utf-8"))
    problems: list[LintProblem] = []

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    for rule, pattern, message in _RULES:
        for match in pattern.finditer(text):
            problems.append(LintProblem(path, line_of(match.start()), rule, message))
    created = {m.group(1).lower() for m in _CREATE_TABLE.finditer(text)}
    for match in _ADD_COLUMN.finditer(text):
        table, body = match.group(1).lower(), match.group(2)
        if table in created:
            continue
        for clause in re.split(r",\s*(?=ADD\b)", body, flags=re.I):
            adds_column = re.match(r"\s*ADD\s+(?!CONSTRAINT)", clause, re.I) is not None
            required = re.search(r"\bNOT\s+NULL\b", clause, re.I) is not None
            defaulted = re.search(r"\bDEFAULT\b|\bGENERATED\b", clause, re.I) is not None
            if adds_column and required and not defaulted:
                problem = f"NOT NULL column without DEFAULT on existing table {table}"
                problems.append(LintProblem(path, line_of(match.start()), "no-required-column", problem))
    return sorted(problems, key=lambda p: (p.line, p.rule))


def _squawk_binary() -> str:
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return str(beside)
    found = shutil.which("squawk")
    if found is None:
        raise ConfigError("squawk is not installed: run `make venv` (it comes with squawk-cli)")
    return found


def squawk(paths: list[Path]) -> list[LintProblem]:
    """Run squawk with the project config; every finding is a problem."""
    if not paths:
        return []
    cmd = [_squawk_binary(), "--config", str(SQUAWK_CONFIG), "--reporter", "json", *map(str, paths)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SQUAWK_TIMEOUT_S, check=False)
    if out.returncode not in (0, 1):
        detail = (out.stderr.strip().splitlines() or ["no output"])[0]
        raise ConfigError(f"squawk failed: {detail}")
    findings = json.loads(out.stdout or "[]")
    return [
        LintProblem(Path(f["file"]), int(f["line"]) + 1, f"squawk:{f['rule_name']}", f["message"]) for f in findings
    ]


def lint_files(paths: list[Path]) -> list[LintProblem]:
    problems = squawk(paths)
    for path in paths:
        problems.extend(project_rules(path))
    return problems
