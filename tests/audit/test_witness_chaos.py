"""Witnessing under chaos: a faulty network, a SIGKILLed log, a log restored from a backup.

Two node processes, Alashankou (CN-AKL) and Dostyk (KZ-DOS), witness each
other's audit logs (docs/audit.md, "Witnesses") with a checkpoint every
second, on loopback:

- through fault proxies (`tests.faultproxy`) that disturb every request
  between them and lose half, both logs keep growing and each ends up
  cosigned by the other, with no false alarm on either side; a witness that
  gets every request twice still cosigns;
- a log SIGKILLed while it grows and is witnessed comes back, grows on and is
  cosigned again, consistently with what its witness held;
- a log restored from a real backup of its database and grown again past what
  its witness cosigned is refused, the witness keeps the evidence, and an
  auditor holding the old cosigned checkpoint catches the rewrite with
  ``mrx verify --since``.

Cosignatures are checked with the independent verifier ``tlog-scales``, as an
auditor would; every wait polls with a generous deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint
from tlog_scales.tlog import ConsistencyProof, ConsistencyProofInvalid

from mrx.node.witness import AddCheckpoint
from tests import factories
from tests.corridor import Db, Member, make_corridor, write_partners
from tests.faultproxy import FAULT_KINDS, FaultProxyProcess
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

SPECS = [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")]
WITNESSING = {"checkpoint_seconds": 1}
AKL_ORIGIN = "mrx/CN-AKL"
DEADLINE = 90.0  # seconds; generous, the machine is shared


# -- helpers ---------------------------------------------------------------------------


def _session() -> aiohttp.ClientSession:
    """A client that opens a connection per request: the nodes it talks to are stopped, killed and restarted."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _post(session: aiohttp.ClientSession, member: Member, lock: str, seqs: range) -> int:
    """Seal events from one lock, made into records at ``member``; how many it accepted."""
    events = [factories.seal_event(seq=s, lock=lock) for s in seqs]
    async with session.post(member.url + "/v1/seal-events", json={"events": events},
                            headers={"Authorization": f"Bearer {member.node.tokens['GW-1']}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body["accepted"]


async def _get(session: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return text


async def _checkpoint_text(session: aiohttp.ClientSession, member: Member) -> str:
    return await _get(session, member.url + "/v1/log/checkpoint")


def _witness_vkey(witness: Member) -> Vkey:
    """The witness's cosigning key (type 0x04), as docs/audit.md tells a verifier to build it."""
    published = Vkey.from_string(witness.log_key)
    return Vkey(published.name, None, 4, published.pubkey)


def _signers(text: str, log: Member, witness: Member) -> set[str]:
    """Whose valid signatures ``log``'s checkpoint ``text`` carries ("log", "witness"), verified by tlog-scales."""
    checkpoint = ScalesCheckpoint.from_text(text)
    log_vkey, witness_vkey = Vkey.from_string(log.log_key), _witness_vkey(witness)
    verified = VkeySet(log_vkey, witness_vkey).verify(checkpoint.signatures, checkpoint)
    return {"log" if vkey.sig_type == log_vkey.sig_type else "witness" for vkey, _ in verified}


async def _cosigned(session: aiohttp.ClientSession, log: Member, witness: Member, at_least: int,
                    timeout: float = DEADLINE) -> str:
    """Wait until ``log``'s latest checkpoint, of at least ``at_least`` leaves, carries ``witness``'s cosignature."""
    deadline = time.monotonic() + timeout
    while True:
        text = await _checkpoint_text(session, log)
        if ScalesCheckpoint.from_text(text).size >= at_least and _signers(text, log, witness) == {"log", "witness"}:
            return text
        assert time.monotonic() < deadline, f"{log.node_id}'s checkpoint was not cosigned by {witness.node_id}: {text}"
        await asyncio.sleep(0.2)


async def _evidence(session: aiohttp.ClientSession, witness: Member) -> list[dict]:
    """What ``witness`` kept as evidence against the logs it witnesses (GET /v1/log/witness/evidence)."""
    async with session.get(witness.url + "/v1/log/witness/evidence",
                           headers={"Authorization": f"Bearer {witness.node.tokens['AUDIT']}"}) as resp:
        assert resp.status == 200
        return (await resp.json())["evidence"]


async def _metric(session: aiohttp.ClientSession, member: Member, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = await _get(session, member.url + "/metrics")
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _size(member: Member) -> int:
    return Db(member).value("SELECT COUNT(*) FROM log_leaves")


def _held_by(witness: Member, origin: str = AKL_ORIGIN) -> tuple[int, str] | None:
    """(size, note) of the latest checkpoint of ``origin`` that ``witness`` cosigned."""
    rows = Db(witness).rows("SELECT size, note FROM witnessed WHERE origin = ?", (origin,))
    return rows[0] if rows else None


def _copy_database(source: Path, target: Path) -> None:
    """Copy a (stopped) node's SQLite database with the online backup API: what an operator's backup job does."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _mrx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrx.node.cli", *args], capture_output=True, text=True, timeout=120)


async def _no_false_alarm(session: aiohttp.ClientSession, log: Member, witness: Member) -> None:
    """``witness`` kept no evidence against ``log``, and ``log`` never concluded that it had forked."""
    assert await _evidence(session, witness) == []
    assert await _metric(session, witness, "mrx_witness_evidence_total") == 0
    assert await _metric(session, log, "mrx_log_cosignatures_total", outcome="conflict") == 0


# -- 1. a faulty network ----------------------------------------------------------------


async def test_witnessing_through_a_network_that_loses_half_the_requests(tmp_path: Path) -> None:
    """Both links go through fault proxies that disturb every request and lose half of them.

    Each request between the nodes suffers one fault drawn uniformly among the
    six kinds: half are lost (dropped before the witness sees them, answered
    by the witness with the answer thrown away, or failed with a 503), the
    other half are delivered twice, late, or after the request behind them.
    Records keep being made at both nodes the whole time. In the end each
    node's latest checkpoint, covering its whole log, carries a valid
    cosignature by the other (checked with tlog-scales); the faults did hit
    the witnessing requests, yet no witness kept evidence and no log
    concluded it had been forked: a lost request, a lost answer or a request
    delivered twice or late is never mistaken for a rewritten history.
    """
    akl, dos = make_corridor(tmp_path, SPECS, witnessing=WITNESSING)
    with FaultProxyProcess(target=dos.url, rate=1.0, faults=FAULT_KINDS, seed=11) as to_dos, \
            FaultProxyProcess(target=akl.url, rate=1.0, faults=FAULT_KINDS, seed=12) as to_akl:
        write_partners(akl, [dos], urls={"KZ-DOS": to_dos.url}, log=WITNESSING)
        write_partners(dos, [akl], urls={"CN-AKL": to_akl.url}, log=WITNESSING)
        with NodeProcess(akl.node), NodeProcess(dos.node):
            async with _session() as session:
                for round_ in range(20):  # about 10 s of growth: several checkpoint runs at each node
                    seqs = range(10 * round_ + 1, 10 * round_ + 11)
                    await _post(session, akl, "LK-F-1", seqs)
                    await _post(session, dos, "LK-F-2", seqs[:4])
                    await asyncio.sleep(0.5)
                akl_final = await _cosigned(session, akl, dos, _size(akl))
                dos_final = await _cosigned(session, dos, akl, _size(dos))
                akl_failed = await _metric(session, akl, "mrx_log_cosignatures_total", witness="KZ-DOS") - \
                    await _metric(session, akl, "mrx_log_cosignatures_total", witness="KZ-DOS", outcome="cosigned")
                dos_failed = await _metric(session, dos, "mrx_log_cosignatures_total", witness="CN-AKL") - \
                    await _metric(session, dos, "mrx_log_cosignatures_total", witness="CN-AKL", outcome="cosigned")
                await _no_false_alarm(session, akl, dos)
                await _no_false_alarm(session, dos, akl)
            stats = {"to KZ-DOS": to_dos.stats(), "to CN-AKL": to_akl.stats()}
    print(f"\nfaults injected: { {k: s['faults'] for k, s in stats.items()} }; "
          f"failed cosignature requests: CN-AKL {akl_failed:.0f}, KZ-DOS {dos_failed:.0f}")
    lost = ("drop", "drop-response", "error")
    assert all(s["clean"] == 0 and sum(s["faults"][kind] for kind in lost) > 0 for s in stats.values()), stats
    assert akl_failed > 0 and dos_failed > 0, "the faults never hit a witnessing request"
    assert ScalesCheckpoint.from_text(akl_final).size == 200 and ScalesCheckpoint.from_text(dos_final).size == 80
    assert _held_by(dos)[0] == 200 and _held_by(akl, "mrx/KZ-DOS")[0] == 80


async def test_a_witness_whose_answers_are_always_delivered_twice_still_cosigns(tmp_path: Path) -> None:
    """Every request to the witness arrives twice: the second copy finds the checkpoint already cosigned.

    The witness then answers the copy 409 naming the size it holds, which is
    the size of the very checkpoint offered (the first answer was lost). The
    log must take that as "ask again from that size", not as a fork: its
    checkpoint ends up cosigned, without an alarm on either side.
    """
    akl, dos = make_corridor(tmp_path, SPECS, witnessing=WITNESSING)
    with NodeProcess(dos.node), FaultProxyProcess(target=dos.url, rate=1.0, faults=("duplicate",)) as to_dos:
        write_partners(akl, [dos], urls={"KZ-DOS": to_dos.url}, log=WITNESSING)
        with NodeProcess(akl.node):
            async with _session() as session:
                await _post(session, akl, "LK-D-1", range(1, 21))
                first = await _cosigned(session, akl, dos, 20)
                await _post(session, akl, "LK-D-1", range(21, 31))
                second = await _cosigned(session, akl, dos, 30)
                await _no_false_alarm(session, akl, dos)
    assert ScalesCheckpoint.from_text(first).size == 20 and ScalesCheckpoint.from_text(second).size == 30
    assert _held_by(dos)[0] == 30


# -- 2. the log SIGKILLed mid-stream ---------------------------------------------------


async def test_a_log_killed_mid_stream_is_cosigned_again_after_restart(tmp_path: Path) -> None:
    """CN-AKL is SIGKILLed while records are being made and its checkpoints cosigned; it restarts and grows.

    Whatever moment the kill hit (a checkpoint signed but not yet sent, a
    cosignature given but not yet stored), KZ-DOS goes on to cosign CN-AKL's
    new checkpoints; the last one it held before the kill is a prefix of the
    new one (its consistency proof, served by CN-AKL, checks with
    tlog-scales); every record acknowledged before the kill is a leaf of the
    log; and KZ-DOS kept no evidence.
    """
    akl, dos = make_corridor(tmp_path, SPECS, witnessing=WITNESSING)
    acknowledged: list[str] = []  # message IDs of the records CN-AKL acknowledged
    stop = asyncio.Event()

    async def keep_making_records(session: aiohttp.ClientSession) -> None:
        seq = 1
        while not stop.is_set():
            events = [factories.seal_event(seq=s, lock="LK-K-1") for s in range(seq, seq + 10)]
            try:
                async with session.post(akl.url + "/v1/seal-events", json={"events": events},
                                        headers={"Authorization": f"Bearer {akl.node.tokens['GW-1']}"}) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    acknowledged.extend(r["message_id"] for r in body["results"] if r["status"] == "accepted")
            except aiohttp.ClientError:  # the node is down, or died in the middle of this request
                await asyncio.sleep(0.2)
            seq += 10
            await asyncio.sleep(0.05)

    with NodeProcess(dos.node):
        akl_proc = NodeProcess(akl.node).start()
        maker: asyncio.Task[None] | None = None
        try:
            async with _session() as session:
                maker = asyncio.create_task(keep_making_records(session))
                await _cosigned(session, akl, dos, 30)
                first_held = _held_by(dos)[0]
                deadline = time.monotonic() + DEADLINE
                while _held_by(dos)[0] == first_held:  # a second cosigning while records keep coming
                    assert time.monotonic() < deadline, "KZ-DOS cosigned no second checkpoint"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.4)  # somewhere in the next checkpoint run, or between two
                akl_proc.kill()
                acknowledged_before_kill = list(acknowledged)
                held_size, held_note = _held_by(dos)  # what the witness vouched for when the log died
                await asyncio.sleep(1.0)  # records are refused while the node is down
                akl_proc = NodeProcess(akl.node).start()
                await _cosigned(session, akl, dos, held_size + 100)  # it grows on, witnessed again
                stop.set()
                await maker
                final = await _cosigned(session, akl, dos, _size(akl))
                final_size = ScalesCheckpoint.from_text(final).size
                proof = await _get(session, f"{akl.url}/v1/log/consistency?from={held_size}&to={final_size}",
                                   akl.node.tokens["AUDIT"])
                await _no_false_alarm(session, akl, dos)
        finally:
            stop.set()
            if maker is not None and not maker.done():
                maker.cancel()
            akl_proc.stop()
    held = ScalesCheckpoint.from_text(held_note)
    held.verify(Vkey.from_string(akl.log_key))  # what KZ-DOS held is CN-AKL's own signed word
    hashes = [base64.b64decode(h) for h in json.loads(proof)["proof"]]
    ConsistencyProof(held_size, final_size, hashes).check(held.root_hash, ScalesCheckpoint.from_text(final).root_hash)
    assert _held_by(dos)[0] == final_size == _size(akl)
    logged = Db(akl).rows("SELECT r.message_id FROM records r JOIN log_leaves l ON l.record_seq = r.seq")
    assert set(acknowledged_before_kill) <= {m for (m,) in logged}
    print(f"\nkilled at {len(acknowledged_before_kill)} acknowledged records, KZ-DOS holding size {held_size}; "
          f"cosigned again up to {final_size}")


# -- 3. rolled back and re-grown from a restored database ---------------------------


async def test_a_log_restored_from_a_backup_and_regrown_is_refused_and_caught(tmp_path: Path) -> None:
    """CN-AKL's database is restored from a backup taken at size n, after KZ-DOS cosigned size m > n.

    CN-AKL then makes other records and grows past m. Its history is now
    another one: KZ-DOS refuses to cosign (the consistency proof CN-AKL
    sends from m does not verify), keeps the request as evidence naming the
    conflict with the checkpoint of size m it holds (GET
    /v1/log/witness/evidence, mrx_witness_evidence_total), and CN-AKL's
    new checkpoint carries no KZ-DOS cosignature. The evidence speaks for
    itself: both checkpoints are signed by CN-AKL's log key, and the proof
    in the request fails with tlog-scales too. An auditor who kept the
    cosigned checkpoint of size m catches the rewrite offline: ``mrx verify
    BUNDLE --since`` on a bundle made after the restore fails its
    consistency check, while the checkpoint of size n (before the backup) is
    still extended.
    """
    akl, dos = make_corridor(tmp_path, SPECS, witnessing=WITNESSING)
    backup = tmp_path / "akl-backup.sqlite"
    held_n, held_m = tmp_path / "n.checkpoint", tmp_path / "m.checkpoint"
    container = factories.container()
    with NodeProcess(dos.node):
        async with _session() as session:
            with NodeProcess(akl.node):  # grow to n, cosigned
                await _post(session, akl, "LK-R-1", range(1, 21))
                n = _size(akl)
                held_n.write_text(await _cosigned(session, akl, dos, n))
            _copy_database(akl.node.database, backup)  # the stopped node's database at size n

            with NodeProcess(akl.node):  # grow to m, cosigned: the auditor keeps this checkpoint
                await _post(session, akl, "LK-R-1", range(21, 51))
                m = _size(akl)
                held_m.write_text(await _cosigned(session, akl, dos, m))
            assert _held_by(dos)[0] == m > n

            _copy_database(backup, akl.node.database)  # the operator restores the backup
            assert _size(akl) == n

            with NodeProcess(akl.node):  # other records: the log re-grows past m
                await _post(session, akl, "LK-R-2", range(1, m - n + 31))
                grown = _size(akl)
                assert grown > m
                deadline = time.monotonic() + DEADLINE
                while not any("does not extend" in e["reason"] for e in await _evidence(session, dos)):
                    assert time.monotonic() < deadline, "KZ-DOS kept no evidence of the rewritten history"
                    await asyncio.sleep(0.2)
                while ScalesCheckpoint.from_text(latest := await _checkpoint_text(session, akl)).size < grown:
                    assert time.monotonic() < deadline, "CN-AKL signed no checkpoint of its re-grown log"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.5)  # two more checkpoint runs, each asking KZ-DOS again
                latest = await _checkpoint_text(session, akl)
                evidence = await _evidence(session, dos)
                counted = await _metric(session, dos, "mrx_witness_evidence_total", origin=AKL_ORIGIN)
                refused = await _metric(session, akl, "mrx_log_cosignatures_total", witness="KZ-DOS", outcome="422")

    # The witness refused: its held checkpoint did not move, the log's new one is not cosigned.
    assert _held_by(dos)[0] == m
    assert ScalesCheckpoint.from_text(latest).size == grown
    assert _signers(latest, akl, dos) == {"log"}
    assert refused >= 1

    # The evidence: every entry names the checkpoint of size m it contradicts, and is counted.
    assert evidence and counted == len(evidence)
    old_root = ScalesCheckpoint.from_text(held_m.read_text()).root_hash
    rewrites = [e for e in evidence if e["reason"].startswith(f"the checkpoint does not extend the one of size {m} ")]
    assert rewrites, [e["reason"] for e in evidence]
    for entry in evidence:
        assert entry["origin"] == AKL_ORIGIN and entry["held_size"] == m
        assert ScalesCheckpoint.from_text(entry["held_note"]).root_hash == old_root
        assert "rolled back" in entry["reason"] or entry in rewrites  # below m, or past it on another history
    request = AddCheckpoint.parse(rewrites[-1]["request"].encode())
    offered = ScalesCheckpoint.from_text(request.note)
    offered.verify(Vkey.from_string(akl.log_key))  # signed by CN-AKL itself: proof of its misbehaviour
    assert request.old_size == m < offered.size
    with pytest.raises(ConsistencyProofInvalid):
        ConsistencyProof(m, offered.size, list(request.proof)).check(old_root, offered.root_hash)

    # The auditor: a bundle made after the restore does not extend the checkpoint of size m they hold.
    config = str(akl.node.config_path)
    for since, bundle in ((held_m, tmp_path / "since-m.json"), (held_n, tmp_path / "since-n.json")):
        made = _mrx("evidence", "--config", config, "--container", container, "--out", str(bundle),
                    "--since", str(since))
        assert made.returncode == 0, made.stderr
    caught = _mrx("verify", str(tmp_path / "since-m.json"), "--log-key", akl.log_key, "--since", str(held_m))
    assert caught.returncode == 1, caught.stdout + caught.stderr
    failed = [line for line in caught.stdout.splitlines() if line.startswith("FAIL")]
    assert any(line.startswith("FAIL  checkpoint: consistency: ") for line in failed), caught.stdout
    assert any(line.startswith("FAIL  mrx/KZ-DOS: cosignature") for line in failed), caught.stdout
    before = _mrx("verify", str(tmp_path / "since-n.json"), "--log-key", akl.log_key, "--since", str(held_n))
    assert f"ok    checkpoint: consistency: extends the checkpoint of size {n} you hold" in before.stdout, before.stdout
    print(f"\nn={n}, m={m}, re-grown to {grown}; KZ-DOS kept {len(evidence)} evidence: "
          f"{[e['reason'][:60] for e in evidence]}\n" + "\n".join(failed))
