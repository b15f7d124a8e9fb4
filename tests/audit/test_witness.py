"""Witnessing: two nodes cosign each other's checkpoints, through an outage; a rewritten history is refused and kept.

The rules (`judge`) are tested on their own first, then two node processes
witness each other over HTTP, and last a forger holding a node's log key
offers a witness every kind of contradicting checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint

from mrx.keys import notes
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import Checkpoint, NoteSigner
from mrx.node import merkle
from mrx.node.storage.sqlite_log import Witnessed
from mrx.node.witness import AddCheckpoint, judge
from tests import factories
from tests.corridor import Db, Member, make_corridor
from tests.nodeproc import NodeProcess

ORIGIN = "mrx/CN-AKL"
LEAVES = [merkle.leaf_hash(f"record {i}".encode()) for i in range(40)]


class _Tiles:
    def __init__(self, hashes: list[bytes]) -> None:
        self.levels = {0: dict(enumerate(hashes))}
        for t in merkle.Frontier().append(hashes)[1]:
            self.levels.setdefault(t.level, {})[t.index] = t.hash

    def tile_hashes(self, level: int, start: int, count: int) -> list[bytes]:
        return [self.levels[level][i] for i in range(start, start + count) if i in self.levels.get(level, {})]


HONEST = _Tiles(LEAVES)
FORGED = _Tiles(LEAVES[:9] + [merkle.leaf_hash(b"rewritten")] + LEAVES[10:])


def _checkpoint(tree: _Tiles, size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, merkle.subtree_hash(tree, 0, size))


def _held(size: int) -> Witnessed:
    """What a witness holds after cosigning the honest log at ``size``."""
    return Witnessed(ORIGIN, size, _checkpoint(HONEST, size).root, "note")


@pytest.mark.parametrize(
    "held,old,new,tree,proof_from,expected",
    [
        (None, 0, 10, HONEST, None, (True, 200, False)),
        (10, 10, 20, HONEST, 10, (True, 200, False)),
        (20, 20, 20, HONEST, None, (True, 200, False)),  # the same checkpoint again: cosigned again
        (20, 10, 30, HONEST, 10, (False, 409, False)),  # the log is behind on what the witness holds
        (None, 5, 10, HONEST, 5, (False, 409, False)),
        (20, 20, 15, HONEST, None, (False, 409, True)),  # rolled back
        (10, 20, 15, HONEST, None, (False, 400, False)),  # old size beyond the checkpoint
        (20, 20, 20, FORGED, None, (False, 409, True)),  # same size, another root
        (5, 5, 30, FORGED, 5, (True, 200, False)),  # leaf 9 changed, but after size 5: a witness vouches for what it saw
        (15, 15, 30, FORGED, 15, (False, 422, True)),  # leaf 9 changed under a cosigned size 15
        (None, 0, 10, HONEST, 5, (False, 422, False)),  # a proof from 0 is empty
    ],
    ids=["first", "extends", "same-again", "behind", "never-held", "rolled-back", "old-too-big", "two-roots",
         "changed-after-held", "rewritten", "proof-from-zero"],
)
def test_judge(held, old, new, tree, proof_from, expected) -> None:
    proof = merkle.consistency_proof(tree, proof_from, new) if proof_from else []
    verdict = judge(None if held is None else _held(held), old, proof, _checkpoint(tree, new))
    assert (verdict.cosign, verdict.status, verdict.evidence) == expected, verdict.reason


def test_add_checkpoint_requests_round_trip_and_refuse_garbage() -> None:
    request = AddCheckpoint(5, tuple(merkle.consistency_proof(HONEST, 5, 9)), "note text\n\n— x AAAA\n")
    assert AddCheckpoint.parse(request.body()) == request
    for body in (b"old 05\n\nx", b"new 5\n\nx", b"old 5\n!!\n\nx", b"old 5\nx", b"\xff", b"old 1\n" + b"AA==\n" * 70 + b"\n"):
        with pytest.raises(Exception) as caught:
            AddCheckpoint.parse(body)
        assert getattr(caught.value, "code", "") == "witness-request-malformed"


# -- two nodes witnessing each other --------------------------------------------------


async def _post(session: aiohttp.ClientSession, member: Member, lock: str, seqs: range) -> None:
    events = [factories.seal_event(seq=s, lock=lock) for s in seqs]
    async with session.post(member.url + "/v1/seal-events", json={"events": events},
                            headers={"Authorization": f"Bearer {member.node.tokens['GW-1']}"}) as resp:
        assert resp.status == 200, await resp.text()


async def _checkpoint_text(session: aiohttp.ClientSession, member: Member) -> str:
    async with session.get(member.url + "/v1/log/checkpoint") as resp:
        return await resp.text()


async def _cosigned(session: aiohttp.ClientSession, log: Member, witness: Member, at_least: int, timeout: float = 20):
    """Wait until ``log``'s checkpoint, of at least ``at_least`` leaves, carries ``witness``'s cosignature."""
    vkeys = VkeySet(Vkey.from_string(log.log_key), Vkey.from_string(str(notes.VerifierKey.parse(witness.log_key).cosigning())))
    deadline = time.monotonic() + timeout
    while True:
        text = await _checkpoint_text(session, log)
        checkpoint = ScalesCheckpoint.from_text(text)
        if checkpoint.size >= at_least and len(vkeys.verify(checkpoint.signatures, checkpoint)) == 2:
            return checkpoint
        assert time.monotonic() < deadline, f"{log.node_id}'s checkpoint was not cosigned by {witness.node_id}: {text}"
        await asyncio.sleep(0.2)


def _size(member: Member) -> int:
    return Db(member).value("SELECT COUNT(*) FROM log_leaves")


async def test_two_nodes_witness_each_other_through_an_outage(tmp_path: Path) -> None:
    akl, dos = make_corridor(tmp_path, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")], witnessing={"checkpoint_seconds": 1})
    with NodeProcess(akl.node), NodeProcess(dos.node) as d:
        async with aiohttp.ClientSession() as session:
            await _post(session, akl, "LK-W-1", range(1, 51))
            await _post(session, dos, "LK-W-2", range(1, 11))
            first = await _cosigned(session, akl, dos, _size(akl))
            await _cosigned(session, dos, akl, _size(dos))
            d.stop()  # the witness goes away while the log grows
            await _post(session, akl, "LK-W-1", range(51, 151))
            await asyncio.sleep(1.5)  # a checkpoint run or two find the witness down
            with NodeProcess(dos.node):
                second = await _cosigned(session, akl, dos, _size(akl))
    assert second.size > first.size
    assert Db(dos).value("SELECT size FROM witnessed WHERE origin = 'mrx/CN-AKL'") == second.size
    assert not Db(dos).rows("SELECT * FROM witness_evidence")


async def test_a_witness_refuses_and_keeps_a_rewritten_history(tmp_path: Path) -> None:
    akl, dos = make_corridor(tmp_path, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")], witnessing={"checkpoint_seconds": 1})
    # A forger holding CN-AKL's log key (read from its key store) signs histories of its own.
    forger = NoteSigner("mrx/CN-AKL", KeyStore.open(akl.node.config.keys_path).note_key())
    stranger = NoteSigner("mrx/CN-AKL", Ed25519PrivateKey.generate())

    def body(tree: _Tiles, old: int, size: int, signer: NoteSigner = forger, proof_from: int | None = None) -> bytes:
        note = str(notes.sign_checkpoint(Checkpoint("mrx/CN-AKL", size, merkle.subtree_hash(tree, 0, size)), signer))
        start = old if proof_from is None else proof_from
        return AddCheckpoint(old, tuple(merkle.consistency_proof(tree, start, size) if start else ()), note).body()

    with NodeProcess(dos.node) as d:
        url = d.url + "/v1/log/witness/add-checkpoint"
        async with aiohttp.ClientSession() as session:

            async def offer(data: bytes) -> tuple[int, str]:
                async with session.post(url, data=data) as resp:
                    return resp.status, await resp.text()

            assert (await offer(body(HONEST, 0, 20)))[0] == 200
            status, text = await offer(body(HONEST, 0, 30))
            assert (status, text) == (409, "20\n")  # the witness says what it holds
            assert (await offer(body(FORGED, 20, 20)))[0] == 409  # another tree of size 20
            status, text = await offer(body(FORGED, 20, 30))
            assert status == 422 and "witness-proof-invalid" in text  # does not extend what was cosigned
            assert (await offer(body(HONEST, 20, 12, proof_from=0)))[0] == 409  # rolled back
            status, text = await offer(body(HONEST, 20, 30, signer=stranger))
            assert status == 403 and "witness-signature-invalid" in text
            other = NoteSigner("mrx/PL-MAA", Ed25519PrivateKey.generate())
            note = str(notes.sign_checkpoint(Checkpoint("mrx/PL-MAA", 1, LEAVES[0]), other))
            status, text = await offer(AddCheckpoint(0, (), note).body())
            assert status == 404 and "witness-unknown-log" in text
            status, text = await offer(b"old 0\n\nnot a note")
            assert status == 400 and "witness-request-malformed" in text
            status, cosignature = await offer(body(HONEST, 20, 30))  # the honest log goes on
            assert status == 200
            cosigned = notes.parse(str(notes.sign_checkpoint(_checkpoint(HONEST, 30), forger))).with_lines([cosignature])
            dos_witness = notes.VerifierKey.parse(dos.log_key).cosigning()
            assert dos_witness in notes.verify(cosigned, [dos_witness])
            async with session.get(d.url + "/v1/log/witness/evidence",
                                   headers={"Authorization": f"Bearer {dos.node.tokens['AUDIT']}"}) as resp:
                evidence = (await resp.json())["evidence"]
            async with session.get(d.url + "/metrics") as resp:
                metrics = await resp.text()
    assert [e["reason"].split(":")[0] for e in evidence] == [
        "the log offers a second tree of size 20 with another root",
        "the checkpoint does not extend the one of size 20 this witness cosigned (the consistency proof rebuilds old root "
        + merkle.subtree_hash(FORGED, 0, 20).hex() + ", not " + merkle.subtree_hash(HONEST, 0, 20).hex(),
        "the log offers size 12, smaller than the size 20 this witness cosigned",
    ]
    assert all(e["held_size"] == 20 and "mrx/CN-AKL" in e["request"] for e in evidence)
    assert 'mrx_witness_evidence_total{origin="mrx/CN-AKL"} 3.0' in metrics
    base64.b64decode(cosignature.split()[-1])
