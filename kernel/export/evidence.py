"""What the ``dispute_evidence`` notebook shows: library calls only, the notebook just displays.

The notebook reads a staged packet directory (``evidence_dir``, as the packet builder passes it),
or, opened by hand with an empty ``evidence_dir``, stages one itself from the database with the
read-only analyst role. Either way the checks are those of the offline verifier.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.audit.findings import Finding, Severity
from kernel.audit.results import write_results
from kernel.clock import SystemClock, format_utc
from kernel.export.csv import EXPORT_COLUMNS, neutralise_cell
from kernel.export.packet import parse_disputed_keys, stage_evidence
from kernel.export.verify import MANIFEST_NAME, Check, Verification, verify_directory

__all__ = [
    "NOTEBOOK_NAME",
    "DisputeEvidence",
    "checks_frame",
    "daily_frame",
    "disputed_frame",
    "disputed_rows",
    "load_evidence",
    "summary_frame",
    "write_evidence_results",
]

NOTEBOOK_NAME = "dispute_evidence"
# Rows per pandas chunk when the notebook reads the CSV: memory stays bounded for any month.
FRAME_CHUNK_ROWS = 200_000


@dataclass(frozen=True)
class DisputeEvidence:
    """A staged packet directory, its manifest and the verifier's outcome on it."""

    directory: Path
    manifest: dict[str, Any]
    verification: Verification

    @property
    def csv_path(self) -> Path:
        return self.directory / str(self.manifest["csv"]["name"])


def load_evidence(
    site: str,
    year_month: str,
    *,
    disputed_keys: str = "",
    evidence_dir: str = "",
    trusted_keys: str = "",
    database_url: str = "",
) -> DisputeEvidence:
    """Load (or, with no ``evidence_dir``, stage from the database) and verify a site-month's evidence.

    Args:
        site: Site UUID or public id (used when staging).
        year_month: ``YYYY-MM``.
        disputed_keys: Comma-separated idempotency keys (used when staging).
        evidence_dir: A staged packet directory; empty to stage one now.
        trusted_keys: Comma-separated public keys (hex or C2SP verifier keys) the signature must come from.
        database_url: Where to stage from (empty: the configured database), as the analyst role.
    """
    trusted = [k for k in trusted_keys.split(",") if k.strip()]
    if evidence_dir:
        directory = Path(evidence_dir)
    else:
        from kernel.audit.connect import connect_analyst

        directory = Path(tempfile.mkdtemp(prefix="revkernel-evidence-"))
        with connect_analyst(database_url) as conn:
            stage_evidence(
                conn,
                site_ref=site,
                year_month=year_month,
                disputed_keys=parse_disputed_keys(disputed_keys),
                directory=directory,
                generated_at=format_utc(SystemClock().now()),
            )
    manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    return DisputeEvidence(directory, manifest, verify_directory(directory, trusted_keys=trusted))


def summary_frame(evidence: DisputeEvidence) -> Any:
    """Counts of the CSV next to the signed snapshot's, one row per kind."""
    import pandas as pd

    document = json.loads(evidence.manifest["snapshot"]["document"])
    counts = evidence.manifest["counts"]
    signed = {
        "rows": document["billable_count"] + document["rejected_count"] + document["non_billable_count"],
        "billable": document["billable_count"],
        "overage": document["overage_count"],
        "rejected": document["rejected_count"],
        "non_billable": document["non_billable_count"],
    }
    rows = [{"kind": k, "csv": counts[k], "snapshot": signed[k], "agree": counts[k] == signed[k]} for k in signed]
    return pd.DataFrame(rows, columns=["kind", "csv", "snapshot", "agree"])


def checks_frame(evidence: DisputeEvidence) -> Any:
    """The verifier's table: check, result, reason, detail."""
    import pandas as pd

    rows = [
        {"check": c.name, "result": "pass" if c.ok else "FAIL", "reason": c.reason or "", "detail": c.detail}
        for c in evidence.verification.checks
    ]
    return pd.DataFrame(rows, columns=["check", "result", "reason", "detail"])


def disputed_frame(evidence: DisputeEvidence) -> Any:
    """One row per disputed key: what the ledger says and whether its proof reaches the signed root."""
    import pandas as pd

    outcome = {
        c.name.removeprefix("inclusion:"): c for c in evidence.verification.checks if c.name.startswith("inclusion:")
    }
    rows = []
    for entry in evidence.manifest["disputed"]:
        check = outcome.get(str(entry["idempotency_key"]))
        rows.append(
            {
                "idempotency_key": entry["idempotency_key"],
                "status": entry["status"],
                "created_at": entry.get("created_at", ""),
                "billing_state": entry.get("billing_state", ""),
                "proof": _proof_cell(entry["status"], check),
            }
        )
    return pd.DataFrame(rows, columns=["idempotency_key", "status", "created_at", "billing_state", "proof"])


def _csv_chunks(evidence: DisputeEvidence, columns: list[str]) -> Iterator[Any]:
    """The CSV read by pandas' C parser in bounded chunks, every cell as text."""
    import pandas as pd

    yield from pd.read_csv(
        evidence.csv_path,
        usecols=columns,
        dtype=str,
        keep_default_na=False,
        chunksize=FRAME_CHUNK_ROWS,
        encoding="utf-8",
    )


def _proof_cell(status: str, check: Check | None) -> str:
    if check is None or not check.ok:
        return "FAILED"
    return {"billable": "verified", "not_billable": "none needed: not billed"}.get(status, "none: no such event")


def daily_frame(evidence: DisputeEvidence) -> Any:
    """Rows per UTC day of the CSV: billable, rejected and other non-billable."""
    import pandas as pd

    parts = []
    for chunk in _csv_chunks(evidence, ["created_at", "billable", "billing_state"]):
        kind = chunk["billing_state"].where(chunk["billing_state"] == "REJECTED_QUOTA", "non_billable")
        kind = kind.where(chunk["billable"] != "true", "billable").replace("REJECTED_QUOTA", "rejected")
        parts.append(pd.crosstab(chunk["created_at"].str[:10], kind))
    columns = ["billable", "rejected", "non_billable"]
    if not parts:
        return pd.DataFrame(columns=columns).rename_axis("day")
    frame = pd.concat(parts).groupby(level=0).sum().reindex(columns=columns, fill_value=0)
    return frame.rename_axis("day").rename_axis(None, axis=1).sort_index()


def disputed_rows(evidence: DisputeEvidence) -> Any:
    """The disputed keys' full CSV rows, as exported (formula-protected cells keep their apostrophe)."""
    import pandas as pd

    wanted = {neutralise_cell(str(d["idempotency_key"])) for d in evidence.manifest["disputed"]}
    found = [chunk[chunk["idempotency_key"].isin(wanted)] for chunk in _csv_chunks(evidence, list(EXPORT_COLUMNS))]
    found = [f for f in found if not f.empty]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(EXPORT_COLUMNS))


def _findings(evidence: DisputeEvidence) -> list[Finding]:
    site_id = str(evidence.manifest["site_id"])
    public_id = str(evidence.manifest.get("public_id", ""))
    year_month = str(evidence.manifest["year_month"])
    found = [
        Finding(site_id, public_id, year_month, f"evidence_{c.reason}", Severity.FAIL, f"{c.name}: {c.detail}")
        for c in evidence.verification.checks
        if not c.ok
    ]
    for entry in evidence.manifest["disputed"]:
        if entry["status"] != "billable":
            found.append(
                Finding(
                    site_id,
                    public_id,
                    year_month,
                    f"disputed_{entry['status']}",
                    Severity.INFO,
                    f"{entry['idempotency_key']}: {entry['status'].replace('_', ' ')}",
                )
            )
    return found


def write_evidence_results(evidence: DisputeEvidence, results_path: str) -> dict[str, Any]:
    """Write the notebook's JSON sidecar: verdict ``fail`` when any verifier check fails."""
    counts = evidence.manifest["counts"]
    return write_results(
        results_path,
        notebook=NOTEBOOK_NAME,
        site_id=str(evidence.manifest["site_id"]),
        public_id=str(evidence.manifest.get("public_id", "")),
        year_month=str(evidence.manifest["year_month"]),
        findings=_findings(evidence),
        metrics={
            "counts": counts,
            "csv_sha256": evidence.manifest["csv"]["sha256"],
            "disputed": [
                {"idempotency_key": d["idempotency_key"], "status": d["status"]} for d in evidence.manifest["disputed"]
            ],
            "merkle_root": evidence.manifest["merkle_root"],
            "snapshot_hash": evidence.manifest["snapshot"]["snapshot_hash"],
            "verified": evidence.verification.ok,
        },
    )
