"""The JSON results sidecar a notebook writes through the library (never scraped from outputs).

Every notebook ends with ``write_results(results_path, ...)``; the report runner, the fleet index
and the dispute packet read the sidecar with ``read_results``. The document is deterministic for
the same data (sorted keys, no wall-clock time), so it can be diffed month over month.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kernel.audit.findings import Finding, Verdict, verdict_of
from kernel.errors import InputError

__all__ = ["RESULTS_VERSION", "read_results", "results_document", "write_results"]

RESULTS_VERSION = 1


def results_document(
    *,
    notebook: str,
    site_id: str,
    public_id: str,
    year_month: str,
    findings: Iterable[Finding],
    metrics: Mapping[str, Any] | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """The sidecar's content: verdict, findings (worst first) and the notebook's key figures."""
    found = list(findings)
    final = verdict if verdict is not None else verdict_of(found)
    return {
        "findings": [f.to_json() for f in found],
        "metrics": dict(metrics or {}),
        "notebook": notebook,
        "public_id": public_id,
        "red_flags": sorted({f.code for f in found if f.is_red_flag}),
        "results_version": RESULTS_VERSION,
        "site_id": site_id,
        "verdict": final.value,
        "year_month": year_month,
    }


def write_results(
    results_path: str | os.PathLike[str],
    *,
    notebook: str,
    site_id: str,
    public_id: str,
    year_month: str,
    findings: Iterable[Finding],
    metrics: Mapping[str, Any] | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """Write the results sidecar to ``results_path`` (skipped when it is empty) and return it.

    Args:
        results_path: Where to write; ``""`` (a notebook opened by hand) writes nothing.
        notebook: The notebook's name, e.g. ``monthly_audit``.
        site_id: The site's UUID.
        public_id: The site's public id.
        year_month: The audited month.
        findings: The findings shown in the notebook.
        metrics: Key figures (JSON-serialisable) for the index and the packet.
        verdict: Overrides the verdict computed from the findings.
    """
    document = results_document(
        notebook=notebook,
        site_id=site_id,
        public_id=public_id,
        year_month=year_month,
        findings=findings,
        metrics=metrics,
        verdict=verdict,
    )
    if str(results_path):
        path = Path(results_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return document


def read_results(results_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sidecar written by ``write_results``; ``InputError`` when missing or malformed."""
    path = Path(results_path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"no results sidecar at {path}", code="results_missing") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"results sidecar {path} is not JSON: {exc}", code="results_malformed") from exc
    if not isinstance(document, dict) or document.get("verdict") not in {v.value for v in Verdict}:
        raise InputError(f"results sidecar {path} has no verdict", code="results_malformed")
    return document
