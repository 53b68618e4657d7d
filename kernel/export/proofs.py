"""Inclusion proofs for many disputed rows of a large month, from one pass over its leaf hashes.

``kernel.ledger.inclusion_proof`` recomputes the sibling subtrees from the leaves for every proof
(a full pass over the month each time). Here the tree's levels are built once — RFC 6962's split
at the largest power of two gives the same tree as pairing nodes level by level and carrying an
unpaired last node up unchanged — and each proof is then read off in O(log n). The hashing is
``kernel.ledger.node_hash``; every proof is checked with ``kernel.ledger.verify_inclusion``
against the month's root before it is used, and the levels' top must be that root.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernel.ledger import EMPTY_ROOT, InclusionProof, node_hash

__all__ = ["HASH_BYTES", "MerkleLevels"]

HASH_BYTES = 32


class MerkleLevels:
    """All levels of the tree over packed 32-byte leaf hashes (about 2 x the leaves' bytes)."""

    def __init__(self, leaf_hashes: bytes | bytearray) -> None:
        assert len(leaf_hashes) % HASH_BYTES == 0, "packed leaf hashes come in 32-byte units"
        self.size = len(leaf_hashes) // HASH_BYTES
        level = bytes(leaf_hashes)
        self.levels: list[bytes] = [level]
        while len(level) > HASH_BYTES:
            count = len(level) // HASH_BYTES
            upper = bytearray()
            for at in range(0, (count - 1) * HASH_BYTES, 2 * HASH_BYTES):
                upper += node_hash(level[at : at + HASH_BYTES], level[at + HASH_BYTES : at + 2 * HASH_BYTES])
            if count % 2:
                upper += level[(count - 1) * HASH_BYTES :]  # the unpaired last node goes up as is
            level = bytes(upper)
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1] if self.size else EMPTY_ROOT

    def proof(self, index: int) -> InclusionProof:
        """The RFC 6962 audit path of leaf ``index``, siblings bottom-up."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} outside a tree of {self.size} leaves")
        path: list[bytes] = []
        position = index
        for level in self.levels[:-1]:
            sibling = position ^ 1
            if sibling * HASH_BYTES < len(level):
                path.append(level[sibling * HASH_BYTES : (sibling + 1) * HASH_BYTES])
            position >>= 1
        return InclusionProof(index, self.size, tuple(path))

    def proofs(self, indices: Iterable[int]) -> dict[int, InclusionProof]:
        return {index: self.proof(index) for index in indices}
