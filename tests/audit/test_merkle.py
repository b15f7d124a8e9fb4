"""The audit log's Merkle tree against an RFC 6962 reference written here, and against tlog-scales.

The reference hashes the leaves directly, by the RFC's recursive definitions
(MTH, PATH, PROOF), with no tiles and no frontier: if mrx's storage layout
or its arithmetic were wrong, the two would disagree.
"""

from __future__ import annotations

import functools
import hashlib
import random

import pytest
from mrx.node import merkle
from mrx.node.merkle import Frontier, ProofError, TileHash
from tlog_scales.tlog import (
    ConsistencyProof,
    ConsistencyProofInvalid,
    InclusionProof,
    InclusionProofInvalid,
)

MAX_SIZE = 300


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


LEAVES = tuple(f"record {i}".encode() * (1 + i % 3) for i in range(MAX_SIZE))


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) of RFC 6962 §2.1, over LEAVES."""
    n = hi - lo
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + LEAVES[lo])
    k = _split(n)
    return _h(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]) of RFC 6962 §2.1.1."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return ref_path(m, lo, lo + k) + [ref_mth(lo + k, hi)]
    return ref_path(m - k, lo + k, hi) + [ref_mth(lo, lo + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[0:n]) of RFC 6962 §2.1.2."""

    def subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if b else [ref_mth(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return subproof(m, lo, lo + k, b) + [ref_mth(lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [ref_mth(lo, lo + k)]

    return [] if m in (0, n) else subproof(m, 0, n, True)


class Tiles:
    """A `HashSource` kept the way the node keeps it: leaf hashes, plus what `Frontier.append` completes."""

    def __init__(self) -> None:
        self.levels: dict[int, dict[int, bytes]] = {0: {}}

    def add_leaves(self, first: int, hashes: list[bytes]) -> None:
        for i, h in enumerate(hashes):
            self.levels[0][first + i] = h

    def add(self, completed: list[TileHash]) -> None:
        for t in completed:
            assert t.index not in self.levels.setdefault(t.level, {}), "a tile hash is written once"
            self.levels[t.level][t.index] = t.hash

    def tile_hashes(self, level: int, start: int, count: int) -> list[bytes]:
        row = self.levels.get(level, {})
        return [row[i] for i in range(start, start + count) if i in row]


@pytest.fixture(scope="module")
def grown() -> tuple[list[bytes], Tiles, list[Frontier]]:
    """300 leaves appended in uneven batches, with the frontier after each size."""
    leaves = list(LEAVES)
    tiles, frontiers, frontier = Tiles(), [Frontier()], Frontier()
    i = 0
    for batch in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 69]:  # sums to 300; crosses 256
        hashes = [merkle.leaf_hash(leaf) for leaf in leaves[i : i + batch]]
        tiles.add_leaves(i, hashes)
        for h in hashes:  # one at a time too, to keep every intermediate frontier
            frontier, completed = frontier.append([h])
            tiles.add(completed)
            frontiers.append(frontier)
        i += batch
    return leaves, tiles, frontiers


def test_batch_append_equals_one_at_a_time(grown) -> None:
    leaves, _, frontiers = grown
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    at_once, completed = Frontier().append(hashes)
    assert at_once == frontiers[-1]
    assert [(t.level, t.index) for t in completed] == [(1, 0)]  # 300 leaves complete one level-1 tile hash


def test_every_root_and_loaded_frontier_matches_the_reference(grown) -> None:
    leaves, tiles, frontiers = grown
    for size in range(MAX_SIZE + 1):
        root = ref_mth(0, size)
        assert frontiers[size].root() == root, size
        assert Frontier.load(size, tiles) == frontiers[size], size
        assert merkle.subtree_hash(tiles, 0, size) == root, size


def test_inclusion_proofs_for_every_leaf_of_every_size(grown) -> None:
    leaves, tiles, _ = grown
    for size in range(1, MAX_SIZE + 1):
        root = ref_mth(0, size)
        for index in range(size):
            proof = merkle.inclusion_proof(tiles, index, size)
            assert proof == ref_path(index, 0, size), (index, size)
            leaf = merkle.leaf_hash(leaves[index])
            merkle.verify_inclusion(leaf, index, size, proof, root)
            InclusionProof(index, size, proof).check(leaf, root)  # tlog-scales agrees


def test_the_shared_inclusion_verifier_agrees_for_every_leaf_of_every_size(grown) -> None:
    """Leaves in a scrambled order, so that most proofs stop at a subtree an earlier one proved."""
    leaves, tiles, _ = grown
    order = random.Random(6962)
    for size in range(1, MAX_SIZE + 1):
        verifier = merkle.InclusionVerifier(size, ref_mth(0, size))
        indices = list(range(size))
        order.shuffle(indices)
        for index in indices:
            verifier.verify(merkle.leaf_hash(leaves[index]), index, merkle.inclusion_proof(tiles, index, size))


@pytest.mark.parametrize("size", [2, 7, 256, 300])
def test_a_warm_shared_verifier_still_refuses_a_wrong_leaf_or_index(grown, size: int) -> None:
    leaves, tiles, _ = grown
    verifier = merkle.InclusionVerifier(size, ref_mth(0, size))
    for index in range(size):  # every path proven
        verifier.verify(merkle.leaf_hash(leaves[index]), index, merkle.inclusion_proof(tiles, index, size))
    other = merkle.leaf_hash(b"a record that was never logged")
    for index in range(size):
        proof = merkle.inclusion_proof(tiles, index, size)
        with pytest.raises(ProofError):
            verifier.verify(other, index, proof)
        with pytest.raises(ProofError):
            verifier.verify(merkle.leaf_hash(leaves[index]), (index + 1) % size, proof)
    with pytest.raises(ProofError):
        verifier.verify(merkle.leaf_hash(leaves[0]), size, [])


def test_consistency_proofs_for_every_pair_of_sizes(grown) -> None:
    leaves, tiles, _ = grown
    roots = [ref_mth(0, n) for n in range(MAX_SIZE + 1)]
    for new in range(MAX_SIZE + 1):
        for old in range(new + 1):
            proof = merkle.consistency_proof(tiles, old, new)
            assert proof == ref_proof(old, new), (old, new)
            merkle.verify_consistency(old, new, proof, roots[old], roots[new])
            ConsistencyProof(old, new, proof).check(roots[old], roots[new])  # tlog-scales agrees


@pytest.mark.parametrize("index,size", [(0, 1), (5, 6), (7, 300), (255, 256), (299, 300)])
def test_a_wrong_inclusion_proof_is_refused_by_both(grown, index: int, size: int) -> None:
    leaves, tiles, _ = grown
    root = ref_mth(0, size)
    proof = merkle.inclusion_proof(tiles, index, size)
    leaf = merkle.leaf_hash(leaves[index])
    other = merkle.leaf_hash(b"a record that was never logged")
    for bad_leaf, bad_index, bad_proof in [
        (other, index, proof),
        (leaf, (index + 1) % size if size > 1 else 1, proof),
        (leaf, index, proof[:-1] if proof else [root]),
        (leaf, index, [*proof, root]),
    ]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(bad_leaf, bad_index, size, bad_proof, root)
        with pytest.raises((InclusionProofInvalid, AssertionError)):
            InclusionProof(bad_index, size, bad_proof).check(bad_leaf, root)


@pytest.mark.parametrize("old,new", [(1, 2), (3, 7), (4, 8), (100, 300), (256, 257)])
def test_a_rewritten_history_fails_consistency(grown, old: int, new: int) -> None:
    leaves, tiles, _ = grown
    rewritten = Tiles()
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves[:new]]
    hashes[old - 1] = merkle.leaf_hash(b"changed after the checkpoint")
    rewritten.add_leaves(0, hashes)
    rewritten.add(Frontier().append(hashes)[1])
    old_root, new_root = ref_mth(0, old), merkle.subtree_hash(rewritten, 0, new)
    proof = merkle.consistency_proof(rewritten, old, new)
    with pytest.raises(ProofError, match="not a prefix|new root"):
        merkle.verify_consistency(old, new, proof, old_root, new_root)
    with pytest.raises(ConsistencyProofInvalid):
        ConsistencyProof(old, new, proof).check(old_root, new_root)


def test_same_size_different_roots_is_a_fork() -> None:
    with pytest.raises(ProofError, match="rewritten"):
        merkle.verify_consistency(5, 5, [], _h(b"a"), _h(b"b"))


def test_frontier_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="frontier hashes"):
        Frontier(3, (_h(b"x"),))
