"""Snapshot documents and their hashes (SPEC §5). Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import re
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
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_YEAR_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_FORMATTED_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_COUNTS = ("billable_count", "overage_count", "rejected_count", "non_billable_count")


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
        # A document that hashes but means nothing (a bool count, a short root) is refused here,
        # so freeze and every verifier reject the same malformed input.
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.overage_count > self.billable_count:
            raise ValueError("overage_count cannot exceed billable_count (overage rows are billable)")
        if not _HEX64.match(self.merkle_root):
            raise ValueError(f"merkle_root must be 64 lowercase hex characters, got {self.merkle_root!r}")
        if self.prev_snapshot_hash is not None and not _HEX64.match(self.prev_snapshot_hash):
            raise ValueError(f"prev_snapshot_hash must be 64 hex characters, got {self.prev_snapshot_hash!r}")
        if not _YEAR_MONTH.match(self.year_month):
            raise ValueError(f"year_month must be YYYY-MM, got {self.year_month!r}")
        if not _FORMATTED_UTC.match(self.frozen_at):
            raise ValueError(f"frozen_at must be YYYY-MM-DDTHH:MM:SS.ffffffZ, got {self.frozen_at!r}")
        if self.hash_version != HASH_VERSION:
            raise ValueError(f"unsupported hash_version {self.hash_version!r}; this code implements {HASH_VERSION}")

    def counts(self) -> dict[str, int]:
        """The counts the document states, under the names of the dispute CSV's tally."""
        return {
            "rows": self.billable_count + self.rejected_count + self.non_billable_count,
            "billable": self.billable_count,
            "overage": self.overage_count,
            "rejected": self.rejected_count,
            "non_billable": self.non_billable_count,
        }

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
        """Parse a stored document; refuse one that is not exactly in canonical form.

        A verifier hashes the bytes it was given, so bytes that parse to the same values but
        differ from the canonical encoding (spaces, key order, escapes) are a different document.
        """
        data = json.loads(document.decode("utf-8"))
        if not isinstance(data, dict) or set(data) != set(_DOCUMENT_KEYS):
            raise ValueError(f"snapshot document must have exactly the keys {sorted(_DOCUMENT_KEYS)}")
        parsed = cls(
            site_id=data["site_id"],
            year_month=data["year_month"],
            billable_count=data["billable_count"],
            overage_count=data["overage_count"],
            rejected_count=data["rejected_count"],
            non_billable_count=data["non_billable_count"],
            merkle_root=data["merkle_root"],
            prev_snapshot_hash=data["prev_snapshot_hash"],
            frozen_at=data["frozen_at"],
            hash_version=data["hash_version"],
        )
        if parsed.to_bytes() != document:
            raise ValueError("snapshot document is not in canonical form (SPEC §5)")
        return parsed


_DOCUMENT_KEYS = (
    "billable_count",
    "frozen_at",
    "hash_version",
    "merkle_root",
    "non_billable_count",
    "overage_count",
    "prev_snapshot_hash",
    "rejected_count",
    "site_id",
    "year_month",
)


def snapshot_hash(document: bytes) -> str:
    """Lowercase hex SHA-256 of the canonical document bytes."""
    return hashlib.sha256(document).hexdigest()
