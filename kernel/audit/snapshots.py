"""Independent re-verification of invoice snapshots (SPEC §5): recount, re-hash, re-check.

The freeze cron computed the snapshot; this module recomputes everything from the ledger with
the pure ``kernel.ledger`` module and compares (TIGER_STYLE: the same invariant on two paths).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernel.ledger import RootBuilder, SnapshotDocument, leaf_bytes, snapshot_hash, verify_signature

__all__ = ["SnapshotCheck", "check_snapshot"]


@dataclass(frozen=True)
class SnapshotCheck:
    """The outcome of re-verifying one site-month's snapshot against the ledger."""

    site_id: str
    year_month: str
    status: str  # verified | failed | missing
    snapshot_hash: str | None
    stored_root: str | None
    recomputed_root: str
    leaves: int
    key_id: str | None
    problems: dict[str, str] = field(default_factory=dict)  # code -> explanation

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "leaves": self.leaves,
            "problems": dict(sorted(self.problems.items())),
            "recomputed_root": self.recomputed_root,
            "snapshot_hash": self.snapshot_hash,
            "status": self.status,
            "stored_root": self.stored_root,
        }


def _same(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a.lower(), b.lower())


def check_snapshot(metrics: Mapping[str, Any], builder: RootBuilder | None) -> SnapshotCheck:
    """Compare one fleet-metrics row's snapshot with the recount and the recomputed root.

    Args:
        metrics: A row of ``FLEET_METRICS`` (ledger counts, snapshot columns, previous snapshot,
            signing key, archive).
        builder: The Merkle root builder fed with this site-month's leaves in leaf order, or
            None when the site has no billable rows.
    """
    site_id, year_month = str(metrics["site_id"]), str(metrics["year_month"])
    recomputed = (builder or RootBuilder()).root().hex()
    leaves = builder.size if builder is not None else 0
    if not metrics["has_snapshot"]:
        return SnapshotCheck(site_id, year_month, "missing", None, None, recomputed, leaves, None)

    problems: dict[str, str] = {}
    stored_root = str(metrics["snap_merkle_root"])
    document_text = str(metrics["snap_document"])
    document_bytes = document_text.encode("utf-8")
    stored_hash = str(metrics["snap_snapshot_hash"])

    if not _same(snapshot_hash(document_bytes), stored_hash):
        problems["snapshot_hash_mismatch"] = "SHA-256 of the stored document is not the stored snapshot_hash"
    try:
        document: SnapshotDocument | None = SnapshotDocument.from_bytes(document_bytes)
    except (ValueError, KeyError, TypeError) as exc:
        document = None
        problems["snapshot_document_unreadable"] = f"the stored document is not a snapshot document: {exc}"
    if document is not None:
        columns = {
            "billable_count": metrics["snap_billable_count"],
            "overage_count": metrics["snap_overage_count"],
            "rejected_count": metrics["snap_rejected_count"],
            "non_billable_count": metrics["snap_non_billable_count"],
            "merkle_root": stored_root,
            "prev_snapshot_hash": metrics["snap_prev_snapshot_hash"],
            "site_id": site_id,
            "year_month": year_month,
        }
        differ = sorted(k for k, v in columns.items() if document.to_dict()[k] != v)
        if differ:
            problems["snapshot_document_mismatch"] = f"document and columns differ on {', '.join(differ)}"

    archived = leaves == 0 and metrics.get("archive_merkle_root") is not None
    if archived:
        # Cleanup removed the rows after archiving them; the archive's root stands in for them.
        if not _same(str(metrics["archive_merkle_root"]), stored_root):
            problems["merkle_root_mismatch"] = "the archived month's Merkle root is not the snapshot's"
    else:
        if not _same(recomputed, stored_root):
            problems["merkle_root_mismatch"] = (
                f"ledger root {recomputed[:16]}… is not the snapshot's {stored_root[:16]}…"
            )
        recount = {
            "billable_count": (metrics["billable_count"], metrics["snap_billable_count"]),
            "overage_count": (metrics["overage_count"], metrics["snap_overage_count"]),
            "rejected_count": (metrics["rejected_count"], metrics["snap_rejected_count"]),
            "non_billable_count": (metrics["non_billable_count"], metrics["snap_non_billable_count"]),
        }
        differ = sorted(k for k, (ledger, snap) in recount.items() if int(ledger) != int(snap))
        if differ:
            problems["snapshot_counts_mismatch"] = f"ledger recount differs from the snapshot on {', '.join(differ)}"

    if not _same(metrics["snap_prev_snapshot_hash"], metrics["expected_prev_snapshot_hash"]):
        expected = metrics["expected_prev_snapshot_hash"] or "null (first snapshot)"
        problems["snapshot_chain_broken"] = f"prev_snapshot_hash does not link to the previous snapshot ({expected})"

    key_id = str(metrics["snap_key_id"])
    public_key = metrics["snap_public_key"]
    if public_key is None:
        problems["signing_key_unknown"] = f"key {key_id} is not in signing_keys"
    elif not verify_signature(bytes.fromhex(str(public_key)), document_bytes, str(metrics["snap_signature"])):
        problems["signature_invalid"] = f"Ed25519 signature does not verify with key {key_id}"

    status = "failed" if problems else "verified"
    return SnapshotCheck(site_id, year_month, status, stored_hash, stored_root, recomputed, leaves, key_id, problems)


def feed_leaf(builder: RootBuilder, idempotency_key: str, created_at: str, billing_state: str) -> None:
    """Add one ledger row (``created_at`` already formatted) to a root builder."""
    builder.add_leaf(leaf_bytes(idempotency_key, created_at, billing_state))
