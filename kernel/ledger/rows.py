"""Canonical ledger rows: the exact leaf bytes of SPEC §5. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kernel.clock import format_utc

__all__ = ["BILLING_STATES", "LedgerLeaf", "leaf_bytes", "sort_key"]

BILLING_STATES = ("ACCEPTED", "OVERAGE", "REJECTED_QUOTA")


@dataclass(frozen=True)
class LedgerLeaf:
    """The three fields of a billable ledger row that the hash commits to."""

    idempotency_key: str
    created_at: str  # already formatted as YYYY-MM-DDTHH:MM:SS.ffffffZ
    billing_state: str

    @classmethod
    def from_row(cls, idempotency_key: str, created_at: datetime, billing_state: str) -> LedgerLeaf:
        return cls(idempotency_key, format_utc(created_at), billing_state)

    def to_bytes(self) -> bytes:
        return leaf_bytes(self.idempotency_key, self.created_at, self.billing_state)


def leaf_bytes(idempotency_key: str, created_at: str, billing_state: str) -> bytes:
    """UTF-8 of ``"{idempotency_key}\\t{created_at}\\t{billing_state}"``."""
    return f"{idempotency_key}\t{created_at}\t{billing_state}".encode()


def sort_key(created_at: str, idempotency_key: str) -> tuple[str, bytes]:
    """Leaf order: ``created_at`` then ``idempotency_key`` compared bytewise (SPEC §5).

    The formatted timestamp is fixed-width, so its string order is its time order.
    """
    return created_at, idempotency_key.encode("utf-8")
