"""A node's audit log end to end: a real node process, its HTTP API and the ``mrx log``/``mrx verify`` commands.

Everything the node emits is checked with tlog-scales, an independent
implementation of the C2SP formats, as well as with mrx's own verifier.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from tlog_scales.backend import LocalBackend
from tlog_scales.reader import TilesReader
from tlog_scales.signing import Vkey
from tlog_scales.tiles import leaf_hash as scales_leaf_hash
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint
from tlog_scales.tlog import ConsistencyProof, InclusionProof

from mrx.node import auditlog, merkle
from tests import factories
from tests.nodeproc import NodeDir, NodeProcess, make_node

pytestmark = pytest.mark.slow


async def _post_events(session: aiohttp.ClientSession, url: str, token: str, lock: str, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 100):
        events = [factories.seal_event(seq=s + 1, lock=lock) for s in range(start, min(count, start + 100))]
        async with session.post(url + "/v1/seal-events", json={"events": events},
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        ids += [r["message_id"] for r in body["results"]]
    return ids


async def _text(session: aiohttp.ClientSession, method: str, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return text


def _mrx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrx.node.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A node that logged 300 seal events, then 40 more after a first checkpoint; stopped afterwards."""
    node_dir = make_node(tmp_path_factory.mktemp("log") / "node")
    facts: dict = {"node": node_dir}

    async def run() -> None:
        with NodeProcess(node_dir) as node:
            async with aiohttp.ClientSession() as session:
                audit = node_dir.tokens["AUDIT"]
                async with session.get(node.url + "/.well-known/mrx") as resp:
                    facts["discovery"] = (await resp.json())["log"]
                facts["ids"] = await _post_events(session, node.url, node_dir.tokens["GW-1"], "LK-LOG-1", 300)
                facts["first"] = await _text(session, "POST", node.url + "/v1/log/checkpoint", audit)
                facts["ids"] += await _post_events(session, node.url, node_dir.tokens["GW-1"], "LK-LOG-2", 40)
                facts["second"] = await _text(session, "POST", node.url + "/v1/log/checkpoint", audit)
                facts["public"] = await _text(session, "GET", node.url + "/v1/log/checkpoint")
                facts["proofs"] = {
                    i: await _text(session, "GET", f"{node.url}/v1/log/proofs/{facts['ids'][i]}", audit)
                    for i in (0, 1, 255, 256, 299, 339)
                }
                first_size = int(facts["first"].split("\n")[1])
                second_size = int(facts["second"].split("\n")[1])
                async with session.get(
                    f"{node.url}/v1/log/consistency?from={first_size}&to={second_size}",
                    headers={"Authorization": f"Bearer {audit}"},
                ) as resp:
                    facts["consistency"] = await resp.json()
                async with session.get(f"{node.url}/v1/log/consistency?from=5&to={second_size + 1}",
                                       headers={"Authorization": f"Bearer {audit}"}) as resp:
                    facts["too_far"] = (resp.status, await resp.json())

    asyncio.run(run())
    return facts


def _vkey(facts: dict) -> Vkey:
    return Vkey.from_string(facts["discovery"]["verifier_key"])


def _records(node: NodeDir) -> list[bytes]:
    with sqlite3.connect(node.database) as db:
        return [bytes(r[0]) for r in db.execute("SELECT jws FROM records ORDER BY seq")]


def test_every_record_is_a_leaf_in_commit_order(logged: dict) -> None:
    node: NodeDir = logged["node"]
    with sqlite3.connect(node.database) as db:
        leaves = db.execute("SELECT l.leaf_index, l.leaf_hash, r.jws FROM log_leaves l JOIN records r "
                            "ON r.seq = l.record_seq ORDER BY l.leaf_index").fetchall()
        (records,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
    assert len(leaves) == records >= 340
    assert [i for i, _, _ in leaves] == list(range(records))
    assert all(bytes(h) == merkle.leaf_hash(bytes(jws)) for _, h, jws in leaves)


def test_checkpoints_verify_with_tlog_scales(logged: dict) -> None:
    assert logged["discovery"]["origin"] == "mrx/CN-AKL"
    for note in (logged["first"], logged["second"], logged["public"]):
        ScalesCheckpoint.from_text(note).verify(_vkey(logged))
    assert logged["public"] == logged["second"]


def test_inclusion_proofs_verify_with_tlog_scales(logged: dict) -> None:
    records = _records(logged["node"])
    with sqlite3.connect(logged["node"].database) as db:
        index_of = dict(db.execute("SELECT r.message_id, l.leaf_index FROM records r JOIN log_leaves l "
                                   "ON l.record_seq = r.seq").fetchall())
    for i, text in logged["proofs"].items():
        proof = auditlog.parse_tlog_proof(text)
        assert proof.index == index_of[logged["ids"][i]]
        checkpoint = ScalesCheckpoint.from_text(proof.checkpoint_note)
        checkpoint.verify(_vkey(logged))
        leaf = scales_leaf_hash(records[proof.index])
        InclusionProof(proof.index, checkpoint.size, proof.proof).check(leaf, checkpoint.root_hash)


def test_consistency_proof_verifies_with_tlog_scales(logged: dict) -> None:
    first, second = (ScalesCheckpoint.from_text(logged[k]) for k in ("first", "second"))
    body = logged["consistency"]
    assert (body["from"], body["to"]) == (first.size, second.size) and first.size < second.size
    hashes = [base64.b64decode(h) for h in body["proof"]]
    ConsistencyProof(first.size, second.size, hashes).check(first.root_hash, second.root_hash)
    status, problem = logged["too_far"]
    assert status == 400 and problem["code"] == "invalid-parameter" and "latest" in problem["detail"]


@pytest.fixture(scope="module")
def exported(logged: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiles"
    done = _mrx("log", "export", "--config", str(logged["node"].config_path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_the_export_reads_with_tlog_scales(logged: dict, exported: Path) -> None:
    records = _records(logged["node"])
    reader = TilesReader(LocalBackend(exported))
    checkpoint = reader.get_checkpoint()
    checkpoint.verify(_vkey(logged))
    assert checkpoint.size == len(records)
    assert reader.calculate_root_hash() == checkpoint.root_hash
    for index in (0, 255, 256, len(records) - 1):
        assert reader.get_entry(index) == records[index]
        reader.get_inclusion_proof(index, checkpoint.size).check(scales_leaf_hash(records[index]), checkpoint.root_hash)


def test_log_checkpoint_command_prints_the_latest_checkpoint(logged: dict) -> None:
    done = _mrx("log", "checkpoint", "--config", str(logged["node"].config_path))
    assert done.returncode == 0, done.stderr
    ScalesCheckpoint.from_text(done.stdout).verify(_vkey(logged))
    assert int(done.stdout.split("\n")[1]) == len(_records(logged["node"]))


def test_mrx_verify_accepts_the_export(logged: dict, exported: Path) -> None:
    done = _mrx("verify", "--log", str(exported), "--log-key", logged["discovery"]["verifier_key"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    checkpoint signature" in done.stdout


def _tampered(exported: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(exported, copy)
    change(copy)
    return copy


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _swap_first_two_entries(copy: Path) -> None:
    bundle = copy / "tile/entries/000"
    entries = auditlog.read_entries(bundle.read_bytes(), 256, bundle)
    entries[0], entries[1] = entries[1], entries[0]
    bundle.write_bytes(b"".join(len(e).to_bytes(2, "big") + e for e in entries))


def _drop_last_entry(copy: Path) -> None:
    bundle = copy / "tile/entries/000"
    entries = auditlog.read_entries(bundle.read_bytes(), 256, bundle)
    bundle.write_bytes(b"".join(len(e).to_bytes(2, "big") + e for e in entries[:-1]))


def _rewrite_root(copy: Path) -> None:
    """Claim another root in the signed checkpoint: a history the log key never signed."""
    note = (copy / "checkpoint").read_text()
    (copy / "checkpoint").write_text(note.replace(note.split("\n")[2], base64.b64encode(b"\0" * 32).decode()))


@pytest.mark.parametrize(
    "change,named",
    [
        (lambda c: _flip_byte(c / "tile/entries/000", 100), "entry 0 does not hash"),
        (lambda c: _flip_byte(c / "tile/0/000", 40), "entry 1 does not hash"),
        (_swap_first_two_entries, "entry 0 does not hash"),
        (_drop_last_entry, "holds 255 entries, not 256"),
        (lambda c: (c / "tile/0/001.p").rename(c / "elsewhere"), "missing"),
        (_rewrite_root, "does not verify"),
    ],
    ids=["record-byte", "leaf-hash", "reordered", "deleted", "tile-missing", "checkpoint-rewritten"],
)
def test_mrx_verify_names_what_was_tampered_with(logged: dict, exported: Path, tmp_path: Path, change, named: str) -> None:
    copy = _tampered(exported, tmp_path, change)
    done = _mrx("verify", "--log", str(copy), "--log-key", logged["discovery"]["verifier_key"])
    assert done.returncode == 1, done.stdout
    assert "FAIL" in done.stdout and named in done.stdout, done.stdout
