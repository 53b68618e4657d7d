"""SPEC §5 ledger hash v1 against the committed vectors, plus property tests of the proofs."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.ledger import (
    EMPTY_ROOT,
    InclusionProof,
    LedgerLeaf,
    RootBuilder,
    SigningKey,
    SnapshotDocument,
    inclusion_proof,
    key_id,
    leaf_bytes,
    leaf_hash,
    merkle_root,
    sort_key,
    verify_inclusion,
    verify_signature,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "ledger_hash_v1.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def test_vectors_file_is_what_the_generator_writes(vectors: dict[str, Any]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", VECTORS_PATH.with_name("generate_ledger_hash_v1.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == vectors


def test_leaf_hashes_and_roots_match_vectors(vectors: dict[str, Any]) -> None:
    leaves = [entry["leaf"].encode("utf-8") for entry in vectors["leaves"]]
    for entry, leaf in zip(vectors["leaves"], leaves, strict=True):
        assert leaf_hash(leaf).hex() == entry["leaf_hash"]
    assert EMPTY_ROOT.hex() == vectors["empty_root"] == hashlib.sha256(b"").hexdigest()
    sizes = [tree["size"] for tree in vectors["trees"]]
    assert sizes == [0, 1, 2, 3, 4, 5, 7, 8, 1000]
    for tree in vectors["trees"]:
        n = tree["size"]
        assert merkle_root(leaves[:n]).hex() == tree["root"], f"size {n}"
        builder = RootBuilder()
        for entry in vectors["leaves"][:n]:
            builder.add_leaf_hash(bytes.fromhex(entry["leaf_hash"]))
        assert builder.root().hex() == tree["root"] and builder.size == n


def test_inclusion_proofs_match_vectors(vectors: dict[str, Any]) -> None:
    hashes = [bytes.fromhex(entry["leaf_hash"]) for entry in vectors["leaves"]]
    # Every leaf of every tree up to 8 leaves (30 proofs), and 7 positions of the 1000-leaf tree.
    assert len(vectors["proofs"]) == 37
    for case in vectors["proofs"]:
        n, m = case["tree_size"], case["leaf_index"]
        proof = inclusion_proof(hashes[:n], m)
        assert proof.to_json() == {"leaf_index": m, "tree_size": n, "path": case["path"]}
        root = bytes.fromhex(case["root"])
        assert verify_inclusion(case["leaf"].encode("utf-8"), InclusionProof.from_json(proof.to_json()), root)


def test_leaf_bytes_format_and_order() -> None:
    created = datetime(2026, 3, 1, 0, 0, 5, 7, tzinfo=UTC)
    leaf = LedgerLeaf.from_row("evt-1", created, "OVERAGE")
    assert leaf.created_at == "2026-03-01T00:00:05.000007Z"
    assert leaf.to_bytes() == b"evt-1\t2026-03-01T00:00:05.000007Z\tOVERAGE"
    assert leaf_bytes("\u00e7", "t", "ACCEPTED") == "\u00e7\tt\tACCEPTED".encode()
    # Bytewise key order, not locale order: "B" < "a" < "\u00e7" in UTF-8.
    rows = [("t", "a"), ("t", "\u00e7"), ("t", "B"), ("s", "z")]
    assert sorted(rows, key=lambda r: sort_key(*r)) == [("s", "z"), ("t", "B"), ("t", "a"), ("t", "\u00e7")]


def test_snapshot_document_hash_and_signature_match_vectors(vectors: dict[str, Any]) -> None:
    snap = vectors["snapshot"]
    doc = SnapshotDocument(**snap["fields"])
    assert doc.to_bytes().decode("utf-8") == snap["document"]
    assert doc.snapshot_hash == snap["snapshot_hash"]
    assert SnapshotDocument.from_bytes(snap["document"].encode("utf-8")) == doc
    key = SigningKey.from_seed(bytes.fromhex(snap["signing_seed"]))
    assert key.public_key.hex() == snap["public_key"]
    assert key.key_id == key_id(key.public_key) == snap["key_id"]
    assert key.sign(doc.to_bytes()) == snap["signature"]
    public = bytes.fromhex(snap["public_key"])
    assert verify_signature(public, doc.to_bytes(), snap["signature"])
    assert not verify_signature(public, doc.to_bytes() + b" ", snap["signature"])
    assert not verify_signature(public, doc.to_bytes(), "00" * 64)
    assert not verify_signature(b"short", doc.to_bytes(), snap["signature"])


def test_snapshot_document_refuses_malformed_or_non_canonical_input(vectors: dict[str, Any]) -> None:
    fields = dict(vectors["snapshot"]["fields"])
    for bad in (
        {"billable_count": -1},
        {"billable_count": True},
        {"overage_count": 8},
        {"merkle_root": "ab"},
        {"year_month": "2026-13"},
        {"frozen_at": "2026-04-01T00:05:00Z"},
        {"hash_version": 2},
        {"site_id": "not-a-uuid"},
    ):
        with pytest.raises(ValueError):
            SnapshotDocument(**{**fields, **bad})
    upper = SnapshotDocument(**{**fields, "site_id": fields["site_id"].upper()})
    assert upper.site_id == fields["site_id"]
    spaced = json.dumps(fields, sort_keys=True).encode()
    with pytest.raises(ValueError, match="canonical"):
        SnapshotDocument.from_bytes(spaced)
    with pytest.raises(ValueError, match="keys"):
        SnapshotDocument.from_bytes(json.dumps({**fields, "extra": 1}).encode())


def test_inclusion_proof_rejects_out_of_range_index() -> None:
    with pytest.raises(ValueError):
        inclusion_proof([leaf_hash(b"a")], 1)
    with pytest.raises(ValueError):
        InclusionProof.from_json({"leaf_index": True, "tree_size": 1, "path": []})


_leaf_lists = st.lists(st.binary(min_size=0, max_size=24), min_size=1, max_size=70, unique=True)


@settings(max_examples=150, deadline=None)
@given(leaves=_leaf_lists, data=st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(leaf) for leaf in leaves]
    root = merkle_root(leaves)
    n = len(leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(hashes, index)
    assert verify_inclusion(leaves[index], proof, root)

    # A changed leaf fails.
    other = data.draw(st.binary(max_size=24).filter(lambda b: b != leaves[index]), label="other leaf")
    assert not verify_inclusion(other, proof, root)
    # A changed index fails (leaves are unique, so no other position holds the same leaf).
    if n > 1:
        moved = data.draw(st.integers(0, n - 1).filter(lambda i: i != index), label="moved index")
        assert not verify_inclusion(leaves[index], InclusionProof(moved, n, proof.path), root)
    # A changed sibling fails.
    if proof.path:
        pos = data.draw(st.integers(0, len(proof.path) - 1), label="sibling")
        bit = data.draw(st.integers(0, 255), label="bit")
        sibling = bytearray(proof.path[pos])
        sibling[bit // 8] ^= 1 << (bit % 8)
        tampered = (*proof.path[:pos], bytes(sibling), *proof.path[pos + 1 :])
        assert not verify_inclusion(leaves[index], InclusionProof(index, n, tampered), root)
        # A missing or extra sibling fails too.
        assert not verify_inclusion(leaves[index], InclusionProof(index, n, proof.path[:-1]), root)
    assert not verify_inclusion(leaves[index], InclusionProof(index, n, (*proof.path, root)), root)
    # An index past the tree never verifies. (A different tree size with the same path shape can:
    # RFC 6962 binds the size through the signed snapshot's billable_count, not through the path.)
    assert not verify_inclusion(leaves[index], InclusionProof(n, n, proof.path), root)


@settings(max_examples=100, deadline=None)
@given(leaves=st.lists(st.binary(max_size=16), max_size=80))
def test_streaming_root_equals_recursive_definition(leaves: list[bytes]) -> None:
    def mth(items: list[bytes]) -> bytes:
        if not items:
            return hashlib.sha256(b"").digest()
        if len(items) == 1:
            return leaf_hash(items[0])
        k = 1
        while k * 2 < len(items):
            k *= 2
        return hashlib.sha256(b"\x01" + mth(items[:k]) + mth(items[k:])).digest()

    assert merkle_root(leaves) == mth(leaves)
    one_by_one = RootBuilder()
    for leaf in leaves:
        one_by_one.add_leaf(leaf)
    assert one_by_one.root() == mth(leaves) and one_by_one.size == len(leaves)
