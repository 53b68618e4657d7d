"""Regenerate ``tests/vectors/ledger_hash_v1.json`` (SPEC §5, hash version 1).

    .venv/bin/python tests/vectors/generate_ledger_hash_v1.py

Deliberately independent of ``kernel.ledger``: the tree, the audit paths and the canonical JSON
are written here straight from RFC 6962 §2.1 and SPEC §5 (recursive definitions, no streaming),
so the committed vectors check the kernel's implementation rather than echo it. Only the
Ed25519 signature uses ``cryptography`` directly (Ed25519 is deterministic: same seed, same bytes).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OUT = Path(__file__).with_name("ledger_hash_v1.json")
SIZES = (0, 1, 2, 3, 4, 5, 7, 8, 1000)
LEAF_COUNT = 1000
PROOF_INDICES_1000 = (0, 1, 2, 511, 512, 998, 999)
SIGNING_SEED = bytes(range(32))  # public test seed: never use it for a real key
BASE = datetime(2026, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, recursively."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), bottom-up."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def leaf_text(i: int) -> str:
    created_at = (BASE + timedelta(milliseconds=1500 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if i % 3 == 0:  # version 1: derived key, lowercase hex SHA-256
        key = hashlib.sha256(f"vector-{i}".encode()).hexdigest()
    elif i == 7:  # the spec hashes UTF-8; pin that with one non-ASCII key
        key = "client-\u00e7a\u011fr\u0131-7"
    else:  # version 2: client key
        key = f"evt_{i:05d}:web"
    state = "OVERAGE" if i % 5 == 4 else "ACCEPTED"
    return f"{key}\t{created_at}\t{state}"


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build() -> dict[str, object]:
    texts = [leaf_text(i) for i in range(LEAF_COUNT)]
    leaves = [t.encode("utf-8") for t in texts]
    trees = [{"size": n, "root": mth(leaves[:n]).hex()} for n in SIZES]
    proofs = []
    for n in SIZES:
        indices = range(n) if n <= 8 else PROOF_INDICES_1000
        for m in indices:
            proofs.append(
                {
                    "tree_size": n,
                    "leaf_index": m,
                    "leaf": texts[m],
                    "path": [h.hex() for h in path(m, leaves[:n])],
                    "root": mth(leaves[:n]).hex(),
                }
            )
    key = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    document = {
        "billable_count": 7,
        "frozen_at": "2026-04-01T00:05:00.000000Z",
        "hash_version": 1,
        "merkle_root": mth(leaves[:7]).hex(),
        "non_billable_count": 3,
        "overage_count": 1,
        "prev_snapshot_hash": sha256(b"previous snapshot").hex(),
        "rejected_count": 2,
        "site_id": "0b7e3c1a-5d2f-4e6a-9c8b-1f2e3d4c5b6a",
        "year_month": "2026-03",
    }
    doc_bytes = canonical(document)
    return {
        "hash_version": 1,
        "description": (
            "SPEC §5 ledger hash v1. leaves[i] is the leaf text (UTF-8 encoded for hashing); "
            "leaf_hash = SHA-256(0x00 || leaf); trees[j].root is the RFC 6962 root of the first "
            "`size` leaves; proofs give RFC 6962 audit paths bottom-up; snapshot.document is the "
            "canonical JSON whose SHA-256 is snapshot_hash, signed with Ed25519 (test seed)."
        ),
        "empty_root": sha256(b"").hex(),
        "leaves": [{"leaf": t, "leaf_hash": sha256(b"\x00" + b).hex()} for t, b in zip(texts, leaves, strict=True)],
        "trees": trees,
        "proofs": proofs,
        "snapshot": {
            "fields": document,
            "document": doc_bytes.decode("utf-8"),
            "snapshot_hash": hashlib.sha256(doc_bytes).hexdigest(),
            "signing_seed": SIGNING_SEED.hex(),
            "public_key": public.hex(),
            "key_id": hashlib.sha256(public).hexdigest()[:16],
            "signature": key.sign(doc_bytes).hex(),
        },
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
