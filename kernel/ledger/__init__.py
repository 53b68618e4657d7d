"""Ledger hash specification v1 (SPEC §5): canonical rows, Merkle tree, snapshots, signatures.

Pure functions only (no I/O): freeze, verification, export, notebooks and the offline verifier
all use this one implementation.
"""

from __future__ import annotations

from kernel.ledger.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    RootBuilder,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)
from kernel.ledger.rows import BILLING_STATES, LedgerLeaf, leaf_bytes, sort_key
from kernel.ledger.signing import SigningKey, key_id, verify_signature
from kernel.ledger.snapshot import HASH_VERSION, SnapshotDocument, canonical_json, snapshot_hash

__all__ = [
    "BILLING_STATES",
    "EMPTY_ROOT",
    "HASH_VERSION",
    "InclusionProof",
    "LedgerLeaf",
    "RootBuilder",
    "SigningKey",
    "SnapshotDocument",
    "canonical_json",
    "inclusion_proof",
    "key_id",
    "leaf_bytes",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "snapshot_hash",
    "sort_key",
    "verify_inclusion",
    "verify_signature",
]
