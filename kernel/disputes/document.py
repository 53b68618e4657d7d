"""The correction document: the signed statement of a credit after finality. Pure: no I/O.

A correction never edits the snapshot it corrects. It is a new document, in the canonical JSON of
SPEC §5's snapshot document (``kernel.ledger.canonical_json``: keys sorted, ``,`` and ``:`` with
no spaces, non-ASCII kept as UTF-8, integers as numbers, hashes as lowercase hex, ``site_id`` and
``case_id`` as lowercase hyphenated UUIDs, instants as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), with the
keys:

| key | value |
|---|---|
| ``correction_version`` | ``1`` |
| ``case_id`` | the dispute case that ended in this credit |
| ``site_id``, ``year_month`` | the corrected site-month |
| ``snapshot_hash`` | the ``snapshot_hash`` of that month's invoice snapshot (the chain link to the invoice) |
| ``prev_correction_hash`` | the ``correction_hash`` of the site's previous correction (any month), or null |
| ``outcome`` | ``upheld`` or ``partially_upheld`` |
| ``credited_keys`` | the credited events' keys, unique, sorted by UTF-8 bytes; empty for a credit by count |
| ``credited_count`` | events credited: the number of ``credited_keys``, or the count of a credit by count (> 0) |
| ``reason`` | why the credit was given (1-2000 characters) |
| ``issued_at`` | when the correction was written |

``correction_hash`` = lowercase hex SHA-256 of those bytes; the Ed25519 signature (same keys and
key ids as snapshots) is over the same bytes. A site's corrections form one chain through
``prev_correction_hash``; the first one has null. Every credited key must be a billable row of the
snapshot: the evidence packet carries an RFC 6962 inclusion proof of each against the snapshot's
Merkle root, and the offline verifier refuses a credit it cannot prove.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from kernel.ledger import canonical_json, snapshot_hash

__all__ = [
    "CORRECTION_VERSION",
    "CREDIT_OUTCOMES",
    "MAX_CREDITED_KEYS",
    "MAX_REASON_CHARS",
    "CorrectionDocument",
    "correction_hash",
    "credit_key_order",
]

CORRECTION_VERSION = 1
CREDIT_OUTCOMES = ("upheld", "partially_upheld")
# A correction names at most this many events (each carries a proof in the packet, ~1.5 KB);
# a larger credit is a credit by count.
MAX_CREDITED_KEYS = 1000
MAX_REASON_CHARS = 2000
MAX_KEY_CHARS = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_YEAR_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_FORMATTED_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_KEYS = (
    "case_id",
    "correction_version",
    "credited_count",
    "credited_keys",
    "issued_at",
    "outcome",
    "prev_correction_hash",
    "reason",
    "site_id",
    "snapshot_hash",
    "year_month",
)


def credit_key_order(key: str) -> bytes:
    """The order of ``credited_keys``: the keys' UTF-8 bytes (as the ledger's ``COLLATE "C"``)."""
    return key.encode("utf-8")


def correction_hash(document: bytes) -> str:
    """Lowercase hex SHA-256 of the canonical document bytes (the snapshot rule of SPEC §5)."""
    return snapshot_hash(document)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CorrectionDocument:
    """A validated correction: the writer and every verifier build this one object."""

    case_id: str
    site_id: str
    year_month: str
    snapshot_hash: str
    prev_correction_hash: str | None
    outcome: str
    credited_keys: tuple[str, ...]
    credited_count: int
    reason: str
    issued_at: str
    correction_version: int = CORRECTION_VERSION

    def __post_init__(self) -> None:
        # Canonical form is part of the hash: normalise here so every caller hashes the same bytes.
        object.__setattr__(self, "case_id", str(uuid.UUID(str(self.case_id))))
        object.__setattr__(self, "site_id", str(uuid.UUID(str(self.site_id))))
        object.__setattr__(self, "credited_keys", tuple(self.credited_keys))
        if self.correction_version != CORRECTION_VERSION:
            raise ValueError(f"unsupported correction_version {self.correction_version!r}")
        if not isinstance(self.year_month, str) or not _YEAR_MONTH.match(self.year_month):
            raise ValueError(f"year_month must be YYYY-MM, got {self.year_month!r}")
        if not isinstance(self.snapshot_hash, str) or not _HEX64.match(self.snapshot_hash):
            raise ValueError("snapshot_hash must be 64 lowercase hex characters")
        prev = self.prev_correction_hash
        if prev is not None and (not isinstance(prev, str) or not _HEX64.match(prev)):
            raise ValueError("prev_correction_hash must be null or 64 lowercase hex characters")
        if self.outcome not in CREDIT_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(CREDIT_OUTCOMES)}, got {self.outcome!r}")
        if not isinstance(self.issued_at, str) or not _FORMATTED_UTC.match(self.issued_at):
            raise ValueError("issued_at must be YYYY-MM-DDTHH:MM:SS.ffffffZ")
        if not isinstance(self.reason, str) or not 1 <= len(self.reason) <= MAX_REASON_CHARS:
            raise ValueError(f"reason must be 1-{MAX_REASON_CHARS} characters")
        keys = self.credited_keys
        if len(keys) > MAX_CREDITED_KEYS:
            raise ValueError(f"at most {MAX_CREDITED_KEYS} credited keys per correction")
        if any(not isinstance(k, str) or not 1 <= len(k) <= MAX_KEY_CHARS for k in keys):
            raise ValueError("credited keys must be idempotency keys (1-200 characters)")
        ordered = sorted(set(keys), key=credit_key_order)
        if list(keys) != ordered:
            raise ValueError("credited_keys must be unique and sorted by their UTF-8 bytes")
        if not _is_count(self.credited_count) or self.credited_count <= 0:
            raise ValueError("credited_count must be a positive integer")
        if keys and self.credited_count != len(keys):
            raise ValueError(f"credited_count {self.credited_count} is not the {len(keys)} credited keys")

    @property
    def by_count(self) -> bool:
        """True for a credit of a number of events that names none of them."""
        return not self.credited_keys

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "correction_version": self.correction_version,
            "credited_count": self.credited_count,
            "credited_keys": list(self.credited_keys),
            "issued_at": self.issued_at,
            "outcome": self.outcome,
            "prev_correction_hash": self.prev_correction_hash,
            "reason": self.reason,
            "site_id": self.site_id,
            "snapshot_hash": self.snapshot_hash,
            "year_month": self.year_month,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def correction_hash(self) -> str:
        return correction_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, document: bytes) -> CorrectionDocument:
        """Parse stored or received bytes; refuse anything not exactly in canonical form."""
        data = json.loads(document.decode("utf-8"))
        if not isinstance(data, dict) or set(data) != set(_KEYS):
            raise ValueError(f"correction document must have exactly the keys {sorted(_KEYS)}")
        keys = data["credited_keys"]
        if not isinstance(keys, list):
            raise ValueError("credited_keys must be a list")
        parsed = cls(
            case_id=data["case_id"],
            site_id=data["site_id"],
            year_month=data["year_month"],
            snapshot_hash=data["snapshot_hash"],
            prev_correction_hash=data["prev_correction_hash"],
            outcome=data["outcome"],
            credited_keys=tuple(keys),
            credited_count=data["credited_count"],
            reason=data["reason"],
            issued_at=data["issued_at"],
            correction_version=data["correction_version"],
        )
        if parsed.to_bytes() != document:
            raise ValueError("correction document is not in canonical form")
        return parsed
