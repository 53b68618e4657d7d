"""Evidence files of a release run: ``reports/<kind>/<timestamp>.json`` and ``.md``.

The JSON is the record (commit, versions, every check with its verdict); the Markdown is the same
for a human reading the release ticket.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kernel.release.checks import CheckResult, render_markdown
from kernel.settings import PROJECT_ROOT

__all__ = ["git_state", "package_versions", "timestamp_slug", "write_evidence"]

GIT_TIMEOUT_S = 10
MAX_SAME_SECOND_RUNS = 100
TRACKED_PACKAGES = ("revkernel", "litestar", "uvicorn", "psycopg", "pytest", "schemathesis", "squawk-cli")


def timestamp_slug(instant: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ``: sortable, safe in file names."""
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a release decision depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state() -> dict[str, Any]:
    """The work tree's commit and whether it has uncommitted changes (evidence of what was gated)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {
        "commit": head.strip() if head else "unknown",
        "dirty": bool(status.strip()) if status is not None else None,
    }


def write_evidence(
    kind: str,
    results: Sequence[CheckResult],
    meta: dict[str, Any],
    reports_dir: Path,
    finished_at: datetime,
) -> tuple[Path, Path]:
    """Write the JSON and Markdown evidence of one run; return both paths."""
    target = reports_dir / kind
    target.mkdir(parents=True, exist_ok=True)
    slug = timestamp_slug(finished_at)
    passed = all(r.passed for r in results) and bool(results)
    document = {
        "kind": kind,
        "passed": passed,
        "finished_at": finished_at.astimezone(UTC).isoformat(),
        **meta,
        "checks": [r.as_dict() for r in results],
    }
    json_path = target / f"{slug}.json"
    for n in range(1, MAX_SAME_SECOND_RUNS):
        if not json_path.exists():
            break
        json_path = target / f"{slug}-{n}.json"
    json_path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    lines = [
        f"# {kind} {slug}: {'PASSED' if passed else 'FAILED'}",
        "",
        f"- commit: `{meta.get('commit', 'unknown')}`" + (" (uncommitted changes)" if meta.get("dirty") else ""),
    ]
    if "tests" in meta:
        lines.append(f"- tests: {meta['tests']}")
    for name, version in sorted(dict(meta.get("versions", {})).items()):
        lines.append(f"- {name}: {version}")
    lines += ["", render_markdown(results), ""]
    md_path = json_path.with_suffix(".md")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return json_path, md_path
