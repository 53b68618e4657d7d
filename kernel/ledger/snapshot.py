"""Snapshot documents and their hashes (SPEC §5). Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HASH_VERSION",
    "SnapshotDocument",
    "canonical_json",
    "snapshot_hash",
]

HASH_VERSION = 1


def canonical_json(value: Any) -> bytes:
    """Keys sorted, ``,`` and ``:`` without spaces, non-ASCII kept as UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SnapshotDocument:
    """The signed statement of one site-month: counts, Merkle root, chain link."""

    site_id: str
    year_month: str
    billable_count: int
    overage_count: int
    rejected_count: int
    non_billable_count: int
    merkle_root: str
    prev_snapshot_hash: str | None
    frozen_at: str  # formatted as created_at in the CSV
    hash_version: int = HASH_VERSION

    def __post_init__(self) -> None:
        # Canonical form is part of the hash: normalise here so every caller hashes the same bytes.
        object.__setattr__(self, "site_id", str(uuid.UUID(self.site_id)))
        object.__setattr__(self, "merkle_root", self.merkle_root.lower())
        if self.prev_snapshot_hash is not None:
            object.__setattr__(self, "prev_snapshot_hash", self.prev_snapshot_hash.lower())

    def to_dict(self) -> dict[str, Any]:
        return {
            "billable_count": self.billable_count,
            "frozen_at": self.frozen_at,
            "hash_version": self.hash_version,
            "merkle_root": self.merkle_root,
            "non_billable_count": self.non_billable_count,
            "overage_count": self.overage_count,
            "prev_snapshot_hash": self.prev_snapshot_hash,
            "rejected_count": self.rejected_count,
            "site_id": self.site_id,
            "year_month": self.year_month,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def snapshot_hash(self) -> str:
        return snapshot_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, document: bytes) -> SnapshotDocument:
        data = json.loads(document.decode("utf-8"))
        return cls(
            site_id=data["site_id"],
            year_month=data["year_month"],
            billable_count=int(data["billable_count"]),
            overage_count=int(data["overage_count"]),
            rejected_count=int(data["rejected_count"]),
            non_billable_count=int(data["non_billable_count"]),
            merkle_root=data["merkle_root"],
            prev_snapshot_hash=data["prev_snapshot_hash"],
            frozen_at=data["frozen_at"],
            hash_version=int(data["hash_version"]),
        )


def snapshot_hash(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()
