"""RFC 6962 §2.1 Merkle tree over ledger leaves (SPEC §5). Pure: no I/O.

Leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``; a list of
``n > 1`` leaves is split at ``k``, the largest power of two smaller than ``n``; the root of no
leaves is ``SHA-256("")``. ``RootBuilder`` computes the root of a stream of leaves in O(log n)
memory, so a million-row month is never held in RAM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_ROOT",
    "InclusionProof",
    "RootBuilder",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class RootBuilder:
    """Streaming RFC 6962 root: push leaf hashes in order, then ``root()``.

    Keeps a stack of perfect subtrees (sizes strictly decreasing powers of two); merging them
    right-to-left at the end gives exactly the recursive definition's root.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash)
        self.size = 0

    def add_leaf(self, leaf: bytes) -> None:
        self.add_leaf_hash(leaf_hash(leaf))

    def add_leaf_hash(self, digest: bytes) -> None:
        size, node = 1, digest
        stack = self._stack
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            node = node_hash(left, node)
            size += left_size
        stack.append((size, node))
        self.size += 1

    def add_leaves(self, leaves: Iterable[bytes]) -> None:
        """Push many raw leaves in order: ``add_leaf`` for each, in one tight loop.

        This is the hot loop of a million-row freeze, so it keeps everything in locals instead
        of paying two method calls per leaf; the result is identical to ``add_leaf`` one by one.
        """
        stack = self._stack
        sha256 = hashlib.sha256
        added = 0
        for leaf in leaves:
            node = sha256(b"\x00" + leaf).digest()
            size = 1
            while stack and stack[-1][0] == size:
                left_size, left = stack.pop()
                node = sha256(b"\x01" + left + node).digest()
                size += left_size
            stack.append((size, node))
            added += 1
        self.size += added

    def root(self) -> bytes:
        """The RFC 6962 root of the leaves pushed so far (``SHA-256("")`` for none)."""
        if not self._stack:
            return EMPTY_ROOT
        _, node = self._stack[-1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """Root of the leaves (raw leaf bytes, not hashes), streamed."""
    builder = RootBuilder()
    builder.add_leaves(leaves)
    return builder.root()


@dataclass(frozen=True)
class InclusionProof:
    """RFC 6962 audit path: siblings bottom-up, as lowercase hex in JSON."""

    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "path": [p.hex() for p in self.path],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> InclusionProof:
        index, size, path = data["leaf_index"], data["tree_size"], data["path"]
        if (
            isinstance(index, bool)
            or isinstance(size, bool)
            or not isinstance(index, int)
            or not isinstance(size, int)
            or not isinstance(path, list)
        ):
            raise ValueError("inclusion proof needs integer leaf_index, tree_size and a path list")
        return cls(index, size, tuple(bytes.fromhex(str(p)) for p in path))


def _subtree_root(hashes: Sequence[bytes]) -> bytes:
    builder = RootBuilder()
    for digest in hashes:
        builder.add_leaf_hash(digest)
    return builder.root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> InclusionProof:
    """Audit path of leaf ``index`` in the tree of ``leaf_hashes`` (RFC 6962 §2.1.1 PATH)."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a tree of {size} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    # Walk top-down, collecting the sibling subtree roots; reversed at the end to bottom-up.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_subtree_root(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(_subtree_root(leaf_hashes[lo : lo + k]))
            lo, m = lo + k, m - k
    return InclusionProof(index, size, tuple(reversed(path)))


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True iff ``leaf`` sits at ``proof.leaf_index`` of a tree of ``proof.tree_size`` with ``root``.

    RFC 9162 §2.1.3.2 algorithm; every sibling must be consumed exactly, so a proof with extra,
    missing or reordered hashes fails instead of being accepted.
    """
    index, size = proof.leaf_index, proof.tree_size
    if size <= 0 or not 0 <= index < size:
        return False
    if any(len(p) != 32 for p in proof.path):
        return False
    fn, sn = index, size - 1
    node = leaf_hash(leaf)
    for sibling in proof.path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while (fn & 1) == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
