"""The Merkle tree of the audit log: RFC 6962 / RFC 9162 hashing, proofs, and their verification.

Pure: hashes in, hashes out. Where the tree's hashes are kept is the
caller's business (`mrx.node.storage`, or a tiles export on disk); this
module reads them through a `HashSource`.

Hashing (RFC 9162 §2.1.1)::

    leaf  = SHA-256(0x00 || entry)          entry = the exact JWS bytes of a record
    node  = SHA-256(0x01 || left || right)
    MTH({}) = SHA-256("")

MTH(D[0:n]) splits at the largest power of two smaller than n, so every left
subtree is perfect and aligned: its size is a power of two and its start a
multiple of it. That is what makes storage in **tiles** work (C2SP
``tlog-tiles``): only the hashes at heights 0, 8, 16, … are kept, the
"tile levels" 0, 1, 2, …: level ``l`` holds, for each ``i``, the hash of the
perfect subtree over leaves ``[i·256^l, (i+1)·256^l)``. That is about
``n · 256/255`` hashes for ``n`` leaves. The hash of any other perfect
subtree, of height ``8l + r`` with ``0 < r < 8``, is rebuilt from the
``2^r ≤ 128`` level-``l`` hashes under it.

Appending (`Frontier`)
    The log's growing edge is its compact range: one hash per set bit of the
    size, the roots of the perfect subtrees that make up ``D[0:n]``, largest
    first: at most 64 hashes, however long the log. Appending a leaf merges
    equal-height roots as a binary counter carries, so it costs O(1) hashes
    amortised and O(log n) at worst, reads nothing, and hands back the
    tile-level hashes it completed, for the caller to store. The root of
    the current tree is a fold of the frontier. Memory never grows with the
    log. `Frontier.append` returns a new value: the caller adopts it only once
    the transaction that stores the leaves has committed.

Proofs
    `subtree_hash` computes MTH(D[start:end]) for the ranges that proofs need
    (RFC 9162 §2.1.3.1 and §2.1.4.1 recurse into exactly those), reading each
    perfect aligned piece from the source in one range read: O(log n) reads
    of at most 128 hashes each. `inclusion_proof` and `consistency_proof`
    follow the RFC's recursive definitions (PATH and SUBPROOF), and
    `verify_inclusion` and `verify_consistency` are the RFC's verification
    algorithms, step for step, for `mrx verify` and for witnesses;
    `InclusionVerifier` is the first for many leaves of one tree at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

HASH_SIZE = 32
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """The RFC 6962 hash of a leaf whose data is ``entry``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(hashes: Sequence[bytes]) -> bytes:
    """MTH of a sequence of subtree hashes taken as leaves' hashes (RFC 6962 splitting): the root above them."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(root_of(hashes[:k]), root_of(hashes[k:]))


@dataclass(frozen=True, slots=True)
class TileHash:
    """A hash to keep: the perfect subtree over leaves ``[index·256^level, (index+1)·256^level)``."""

    level: int  # tile level ≥ 1 (level 0, the leaf hashes, the caller keeps with the leaves)
    index: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Frontier:
    """The right edge of a tree of ``size`` leaves: its perfect subtrees' roots, largest first."""

    size: int = 0
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.hashes) != self.size.bit_count():
            raise ValueError(f"a tree of {self.size} leaves has {self.size.bit_count()} frontier hashes, "
                             f"not {len(self.hashes)}")

    def root(self) -> bytes:
        """MTH(D[0:size])."""
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root

    def append(self, leaf_hashes: Iterable[bytes]) -> tuple[Frontier, list[TileHash]]:
        """The frontier after appending ``leaf_hashes``, and the tile-level hashes completed on the way."""
        size, stack, completed = self.size, list(self.hashes), []
        for carry in leaf_hashes:
            height = 0
            while size >> height & 1:  # a perfect subtree of this height is waiting on the left: merge
                carry = node_hash(stack.pop(), carry)
                height += 1
                if height % TILE_HEIGHT == 0:
                    completed.append(TileHash(height // TILE_HEIGHT, size >> height, carry))
            stack.append(carry)
            size += 1
        return Frontier(size, tuple(stack)), completed

    @classmethod
    def load(cls, size: int, source: HashSource) -> Frontier:
        """The frontier of the stored tree of ``size`` leaves, read from ``source`` (at most 64 subtree hashes)."""
        hashes, start = [], 0
        for height in reversed(range(size.bit_length())):
            if size >> height & 1:
                hashes.append(subtree_hash(source, start, start + (1 << height)))
                start += 1 << height
        return cls(size, tuple(hashes))


class HashSource(Protocol):
    """Where the tree's tile-level hashes are read from."""

    def tile_hashes(self, level: int, start: int, count: int) -> Sequence[bytes]:
        """``count`` consecutive hashes of tile level ``level`` from index ``start``; all of them must exist."""
        ...


def subtree_hash(source: HashSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) of a range RFC 6962's recursion produces (left parts perfect and aligned)."""
    size = end - start
    if size <= 0:
        if size == 0:
            return EMPTY_ROOT
        raise ValueError(f"empty range [{start}, {end})")
    if size & (size - 1) == 0 and start % size == 0:  # perfect and aligned: read it from its tile level
        height = size.bit_length() - 1
        level, rest = divmod(height, TILE_HEIGHT)
        count = 1 << rest
        hashes = list(source.tile_hashes(level, start >> (level * TILE_HEIGHT), count))
        if len(hashes) != count:
            raise LookupError(f"tile level {level} lacks hashes for leaves [{start}, {end})")
        while len(hashes) > 1:  # a perfect subtree: pair up level by level
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]
    k = _split(size)
    return node_hash(subtree_hash(source, start, start + k), subtree_hash(source, start + k, end))


def inclusion_proof(source: HashSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1: the audit path, leaf's sibling first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")

    def path(m: int, start: int, end: int) -> list[bytes]:
        if end - start == 1:
            return []
        k = _split(end - start)
        if m < k:
            return path(m, start, start + k) + [subtree_hash(source, start + k, end)]
        return path(m - k, start + k, end) + [subtree_hash(source, start, start + k)]

    return path(index, 0, size)


def consistency_proof(source: HashSource, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when there is nothing to prove."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} to {new_size} leaves")
    if old_size in (0, new_size):
        return []

    def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        if m == end - start:
            return [] if complete else [subtree_hash(source, start, end)]
        k = _split(end - start)
        if m <= k:
            return subproof(m, start, start + k, complete) + [subtree_hash(source, start + k, end)]
        return subproof(m - k, start + k, end, False) + [subtree_hash(source, start, start + k)]

    return subproof(old_size, 0, new_size, True)


class ProofError(Exception):
    """A proof that does not prove what it claims; the message says which step failed."""


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: `ProofError` unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``."""
    InclusionVerifier(size, root).verify(leaf, index, proof)  # nothing proven yet: the RFC's algorithm, whole


class InclusionVerifier:
    """`verify_inclusion` for many leaves of one tree, sharing the work their proofs have in common.

    Each node a proof climbs through is named by its height and index (the
    RFC's ``fn`` after as many halvings). Once a proof has reached the root,
    every node on its path is known to be in the tree with the hash it had;
    a later proof that climbs into one of them stops there, proven if its hash
    agrees and refuted if not. For a bundle of consecutive records that is one
    or two hashes per record instead of ~log2(size). Memory: at most one hash
    per node proven, about twice the number of leaves verified.
    """

    def __init__(self, size: int, root: bytes) -> None:
        self.size, self.root = size, root
        self._proven: dict[tuple[int, int], bytes] = {}

    def verify(self, leaf: bytes, index: int, proof: Sequence[bytes]) -> None:
        """`ProofError` unless ``proof`` shows leaf hash ``leaf`` at ``index`` in this tree."""
        if index >= self.size or index < 0:
            raise ProofError(f"leaf index {index} is not below the tree size {self.size}")
        proven = self._proven
        fn, sn, r, height = index, self.size - 1, leaf, 0
        path: list[tuple[tuple[int, int], bytes]] = []
        for p in proof:
            if sn == 0:
                raise ProofError("the inclusion proof is longer than the tree is high")
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                while not fn & 1 and fn:
                    fn, sn, height = fn >> 1, sn >> 1, height + 1
            else:
                r = node_hash(r, p)
            fn, sn, height = fn >> 1, sn >> 1, height + 1
            known = proven.get((height, fn))
            if known is not None:
                if known != r:
                    raise ProofError(f"the inclusion proof leads to a subtree hash {r.hex()} that disagrees with "
                                     f"the one other proofs put at height {height}, index {fn}")
                proven.update(path)
                return
            path.append(((height, fn), r))
        if sn != 0:
            raise ProofError("the inclusion proof is shorter than the tree is high")
        if r != self.root:
            raise ProofError(f"the inclusion proof leads to root {r.hex()}, not {self.root.hex()}")
        proven.update(path)


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """RFC 9162 §2.1.4.2: `ProofError` unless ``proof`` shows the tree ``old_root`` is a prefix of ``new_root``."""
    if old_size > new_size or old_size < 0:
        raise ProofError(f"a tree of {new_size} leaves cannot extend one of {old_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("a tree is consistent with itself without proof; this proof is not empty")
        if old_root != new_root:
            raise ProofError(f"two trees of {old_size} leaves have different roots: history was rewritten")
        return
    if old_size == 0:
        if proof:
            raise ProofError("the empty tree is consistent with every tree without proof; this proof is not empty")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the trees require")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the trees require")
    if fr != old_root:
        raise ProofError(f"the consistency proof rebuilds old root {fr.hex()}, not {old_root.hex()}: "
                         "the older tree is not a prefix of the newer one")
    if sr != new_root:
        raise ProofError(f"the consistency proof rebuilds new root {sr.hex()}, not {new_root.hex()}")


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)
