"""The month manifest: what an export contains and how it relates to the signed snapshot."""

from __future__ import annotations

import uuid
from typing import Any

from kernel.export.csv import EXPORT_COLUMNS, CsvDigest, export_filename
from kernel.export.queries import SnapshotRecord
from kernel.ledger import HASH_VERSION, SnapshotDocument

__all__ = ["MANIFEST_VERSION", "month_manifest", "snapshot_disagreements"]

MANIFEST_VERSION = 1


def snapshot_disagreements(digest: CsvDigest, document: SnapshotDocument) -> list[str]:
    """How the CSV's rows differ from the snapshot's counts and root (empty when they agree)."""
    found: list[str] = []
    expected = document.counts()
    for name, value in digest.counts().items():
        if expected[name] != value:
            found.append(f"{name}: CSV has {value}, snapshot says {expected[name]}")
    if digest.merkle_root != document.merkle_root:
        found.append(f"merkle_root: CSV gives {digest.merkle_root}, snapshot says {document.merkle_root}")
    return found


def month_manifest(
    site_id: uuid.UUID,
    year_month: str,
    digest: CsvDigest,
    snapshot: SnapshotRecord | None,
    *,
    generated_at: str,
) -> dict[str, Any]:
    """The manifest of one export: row counts, the CSV's SHA-256, the snapshot and the Merkle root.

    ``snapshot_matches`` is null for an open month, else whether the exported rows give exactly
    the snapshot's counts and root (a false here means the ledger changed after the freeze).
    """
    disagreements = snapshot_disagreements(digest, snapshot.parsed) if snapshot is not None else []
    return {
        "counts": digest.counts(),
        "csv": {
            "bytes": digest.byte_count,
            "columns": list(EXPORT_COLUMNS),
            "name": export_filename(site_id, year_month),
            "sha256": digest.sha256,
        },
        "frozen": snapshot is not None,
        "generated_at": generated_at,
        "hash_version": HASH_VERSION,
        "manifest_version": MANIFEST_VERSION,
        "merkle_root": digest.merkle_root,
        "row_count": digest.row_count,
        "site_id": str(site_id),
        "snapshot": snapshot.to_json() if snapshot is not None else None,
        "snapshot_disagreements": disagreements,
        "snapshot_matches": None if snapshot is None else not disagreements,
        "year_month": year_month,
    }
