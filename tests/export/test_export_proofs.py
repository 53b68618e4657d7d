"""The level-built proofs are exactly kernel.ledger's RFC 6962 proofs, for every size and index."""

from __future__ import annotations

import hashlib

from kernel.export.proofs import MerkleLevels
from kernel.ledger import EMPTY_ROOT, inclusion_proof, leaf_hash, merkle_root, verify_inclusion


def test_levels_give_the_ledger_modules_root_and_proofs_for_every_size_up_to_70() -> None:
    for size in range(0, 71):
        leaves = [f"k{i}\t2026-10-01T00:00:00.{i:06d}Z\tACCEPTED".encode() for i in range(size)]
        hashes = [leaf_hash(leaf) for leaf in leaves]
        levels = MerkleLevels(b"".join(hashes))
        assert levels.root == merkle_root(leaves), size
        for index in range(size):
            proof = levels.proof(index)
            assert proof == inclusion_proof(hashes, index), (size, index)
            assert verify_inclusion(leaves[index], proof, levels.root)
    assert MerkleLevels(b"").root == EMPTY_ROOT == hashlib.sha256(b"").digest()
