"""Evidence bundles and the auditor's search, end to end on two witnessing nodes; `mrx verify` names each fault.

Then `evidence.verify` and `evidence.load` in process, on a bundle of one node's records: checked a chunk
at a time with the verdicts of one at a time, and read from its file as `json.load` would read it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tlog_scales.tiles import leaf_hash as scales_leaf_hash
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint
from tlog_scales.tlog import InclusionProof

from mrx.keys import notes
from mrx.keys.jws import JwsError, verify_compact
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import Checkpoint, NoteSigner
from mrx.node import auditlog, evidence
from mrx.node.inputs import SealEventIn
from mrx.node.records import RecordError, RecordSigner, Refusal, TrustedKey, check_records, own_keys, verify_record
from mrx.node.storage.sqlite import SqliteStore
from mrx.node.storage.sqlite_rows import insert_records
from mrx.schemas import codec
from mrx.schemas.messages import Receipt
from mrx.schemas.xml import XmlError
from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until
from tests.nodeproc import NodeProcess

slow = pytest.mark.slow  # the tests that start the two nodes

CONTAINER = factories.container(serial=777_001)
OTHER = factories.container(serial=777_002)
MRN = "26CN000000000012A1"


def _mrx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrx.node.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory):
    """CN-AKL sealed and tracked CONTAINER (and OTHER) and sent the records to KZ-DOS; each witnesses the other."""
    base = tmp_path_factory.mktemp("evidence")
    akl, dos = make_corridor(base, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")], witnessing={"checkpoint_seconds": 1})
    with NodeProcess(akl.node), NodeProcess(dos.node):
        national = akl.node.tokens["NCS"]
        itinerary = {"consignment": {"type": "MRN", "id": MRN}, "offices": ["CNAKL", "KZDOS"],
                     "containers": [CONTAINER]}
        assert call(akl.url + "/v1/itineraries", national, itinerary)[0] == 200
        events = [factories.seal_event(seq=1, type="sealed", lock="LK-EV-1", container=CONTAINER, seal="ES-EV-1")]
        events += [factories.seal_event(seq=s, lock="LK-EV-1", container=CONTAINER, seal="ES-EV-1") for s in (2, 3, 4)]
        events += [factories.seal_event(seq=s, lock="LK-EV-2", container=OTHER, seal="ES-EV-2") for s in (1, 2)]
        status, body = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"], {"events": events})
        assert status == 200 and body["accepted"] == 6, body
        wait_until(lambda: Db(akl).outbox_states() == {"delivered": 4}, 20, "the container's records delivered")
        size = Db(akl).value("SELECT COUNT(*) FROM log_leaves")
        dos_witness = str(notes.VerifierKey.parse(dos.log_key).cosigning())

        def cosigned() -> bool:
            with urllib.request.urlopen(akl.url + "/v1/log/checkpoint") as resp:
                note = notes.parse(resp.read())
            witness = notes.VerifierKey.parse(dos_witness)
            return Checkpoint.from_text(note.text).size >= size and witness in notes.verify(note, [witness])

        wait_until(cosigned, 20, "CN-AKL's checkpoint cosigned by KZ-DOS")
        audit = akl.node.tokens["AUDIT"]
        searches = {
            name: call(f"{akl.url}/v1/audit/records?{urllib.parse.urlencode(q)}", audit)
            for name, q in {
                "container": {"container": CONTAINER}, "seal": {"seal": "ES-EV-2"},
                "consignment": {"consignment": f"MRN:{MRN}"}, "page": {"container": CONTAINER, "limit": 2},
                "future": {"since": "2099-01-01T00:00:00Z"}, "naive": {"since": "2026-01-01T00:00:00"},
            }.items()
        }
        status, over_http = call(f"{akl.url}/v1/audit/evidence?container={CONTAINER}", audit)
        assert status == 200, over_http
        out = base / "bundle.json"
        done = _mrx("evidence", "--config", str(akl.node.config_path), "--container", CONTAINER, "--out", str(out))
        assert done.returncode == 0, done.stderr
    return {"akl": akl, "dos": dos, "bundle": json.loads(out.read_text()), "path": out, "http": over_http,
            "searches": searches, "dos_witness": dos_witness}


def _verify(path: Path, corridor: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    akl: Member = corridor["akl"]
    dos: Member = corridor["dos"]
    return _mrx("verify", str(path), "--log-key", akl.log_key, "--witness-key", corridor["dos_witness"],
                "--anchor", f"CN-AKL={akl.anchor}", "--anchor", f"KZ-DOS={dos.anchor}", *extra)


@slow
def test_the_bundle_holds_the_containers_records_and_the_partners_receipts(corridor: dict) -> None:
    bundle = corridor["bundle"]
    types = [_type(r["jws"]) for r in bundle["records"]]
    assert types.count("SealEventNotification") == 4  # OTHER's events are not in it
    # KZ-DOS's receipts, as CN-AKL keeps them, acknowledge each of the four (one receipt may answer several).
    events = {hashlib.sha256(r["jws"].encode()).digest() for r in bundle["records"]
              if _type(r["jws"]) == "SealEventNotification"}
    acknowledged = {
        ack.received_digest
        for r in bundle["records"] if _type(r["jws"]) == "Receipt"
        for ack in _receipt(r["jws"]).acknowledgements if ack.status.value == "ACCEPTED"
    }
    assert events <= acknowledged
    assert set(bundle["key_statements"]) == {"CN-AKL", "KZ-DOS"}
    assert corridor["http"]["records"] == bundle["records"]  # the API gives the same bundle


def _receipt(jws: str) -> Receipt:
    body = codec.decode(base64.urlsafe_b64decode(jws.split(".")[1] + "==")).body
    assert isinstance(body, Receipt)
    return body


def _type(jws: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))
    return header["typ"].removeprefix("vnd.mrx.").removesuffix("+xml")


@slow
def test_mrx_verify_passes_every_check_of_an_honest_bundle(corridor: dict) -> None:
    done = _verify(corridor["path"], corridor)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout and "FAIL" not in done.stdout
    for check in ("checkpoint: signature", "cosignature: cosigned", "KZ-DOS: keys", "integrity", "key valid",
                  "inclusion"):
        assert check in done.stdout


@slow
def test_an_independent_verifier_accepts_the_bundles_proofs(corridor: dict) -> None:
    bundle = corridor["bundle"]
    checkpoint = ScalesCheckpoint.from_text(bundle["checkpoint"])
    for record in bundle["records"]:
        leaf = scales_leaf_hash(record["jws"].encode())
        proof = [base64.b64decode(h) for h in record["inclusion"]]
        InclusionProof(record["leaf_index"], checkpoint.size, proof).check(leaf, checkpoint.root_hash)


@slow
def test_search_finds_by_container_seal_consignment_and_time(corridor: dict) -> None:
    s = corridor["searches"]
    container = [r["message_type"] for r in s["container"][1]["records"]]
    assert container.count("SealEventNotification") == 4
    assert [r["message_type"] for r in s["seal"][1]["records"]] == ["SealEventNotification"] * 2
    assert len(s["consignment"][1]["records"]) == 1  # the sealing event names the consignment
    page = s["page"][1]
    assert len(page["records"]) == 2 and "after=" in page["next"]
    assert s["future"][1]["records"] == []
    assert s["naive"][0] == 400 and s["naive"][1]["code"] == "invalid-parameter"


def _tampered(corridor: dict, tmp_path: Path, change) -> Path:
    bundle = copy.deepcopy(corridor["bundle"])
    change(bundle)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(bundle))
    return path


def _flip_payload(bundle: dict) -> None:
    header, payload, signature = bundle["records"][0]["jws"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[raw.index(b"<")] = ord("(")
    bundle["records"][0]["jws"] = ".".join([header, base64.urlsafe_b64encode(raw).decode().rstrip("="), signature])


def _swap_leaves(bundle: dict) -> None:
    a, b = bundle["records"][0], bundle["records"][1]
    a["leaf_index"], b["leaf_index"] = b["leaf_index"], a["leaf_index"]


def _drop_cosignature(bundle: dict) -> None:
    note = notes.parse(bundle["checkpoint"])
    bundle["checkpoint"] = note.text + "\n" + note.signatures[0].line


@slow
@pytest.mark.parametrize(
    "change,named",
    [
        (_flip_payload, "integrity: jws-bad-signature"),
        (_swap_leaves, "inclusion: leaf"),
        (lambda b: b["records"][0]["inclusion"].pop(), "inclusion: leaf"),
        (lambda b: b.update(checkpoint=b["checkpoint"].replace("\n", "\n1", 1).replace("\n1", "\n", 1)
                            .replace(b["checkpoint"].split("\n")[2], base64.b64encode(b"\1" * 32).decode())),
         "checkpoint: signature"),
        (_drop_cosignature, "cosignature: no valid cosignature"),
        (lambda b: b["key_statements"].update({"KZ-DOS": b["key_statements"]["CN-AKL"]}), "KZ-DOS: keys"),
        (lambda b: b.update(format="something else"), "bundle: format"),
    ],
    ids=["record-altered", "leaves-swapped", "proof-cut", "checkpoint-altered", "cosignature-removed",
         "keys-swapped", "not-a-bundle"],
)
def test_mrx_verify_names_the_record_and_the_check_that_failed(corridor: dict, tmp_path: Path, change,
                                                               named: str) -> None:
    done = _verify(_tampered(corridor, tmp_path, change), corridor)
    assert done.returncode == 1, done.stdout
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failures and any(named in line for line in failures), done.stdout


@slow
def test_a_wrong_log_key_fails_the_checkpoint(corridor: dict) -> None:
    done = _mrx("verify", str(corridor["path"]), "--log-key", corridor["dos"].log_key)
    assert done.returncode == 1 and "FAIL  checkpoint: signature" in done.stdout


@slow
def test_consistency_with_a_checkpoint_the_auditor_holds(corridor: dict, tmp_path: Path) -> None:
    akl: Member = corridor["akl"]
    bundle = corridor["bundle"]
    held = notes.parse(bundle["checkpoint"])
    held_path = tmp_path / "held.checkpoint"
    held_path.write_text(str(held))
    done = _verify(corridor["path"], corridor, "--since", str(held_path))
    assert done.returncode == 0 and "consistency: the same checkpoint" in done.stdout, done.stdout
    # An older checkpoint: the bundle must carry a proof from it. One made with --since does.
    with NodeProcess(akl.node):
        size = Checkpoint.from_text(held.text).size
        status, _ = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"],
                         {"events": [factories.seal_event(seq=5, lock="LK-EV-1", container=CONTAINER, seal="ES-EV-1")]})
        assert status in (200, 201), _
    newer = tmp_path / "newer.json"
    made = _mrx("evidence", "--config", str(akl.node.config_path), "--container", CONTAINER, "--out", str(newer),
                "--since", str(held_path))
    assert made.returncode == 0, made.stderr
    assert json.loads(newer.read_text())["consistency"]["from"] == size
    done = _mrx("verify", str(newer), "--log-key", akl.log_key, "--since", str(held_path))
    assert "ok    checkpoint: consistency: extends the checkpoint" in done.stdout, done.stdout
    # The stopped node signed a checkpoint for the new record that no witness has seen yet: said, not hidden.
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failures == ["FAIL  mrx/KZ-DOS: cosignature: no valid cosignature"] and done.returncode == 1
    without = tmp_path / "without.json"
    assert _mrx("evidence", "--config", str(akl.node.config_path), "--container", CONTAINER, "--out",
                str(without)).returncode == 0
    done = _mrx("verify", str(without), "--log-key", akl.log_key, "--since", str(held_path))
    assert done.returncode == 1 and "no consistency proof from size" in done.stdout, done.stdout


@slow
def test_a_forged_cosignature_fails_only_its_own_check(corridor: dict, tmp_path: Path) -> None:
    def forge(bundle: dict) -> None:
        note = notes.parse(bundle["checkpoint"])
        log_line, witness_line = (s.line for s in note.signatures)
        signature = base64.b64decode(witness_line.split()[-1])
        forged = signature[:-1] + bytes([signature[-1] ^ 1])
        bundle["checkpoint"] = note.text + "\n" + log_line + witness_line.rsplit(" ", 1)[0] + " " + \
            base64.b64encode(forged).decode() + "\n"

    done = _verify(_tampered(corridor, tmp_path, forge), corridor)
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert done.returncode == 1 and len(failures) == 1, done.stdout
    assert failures[0].startswith("FAIL  mrx/KZ-DOS: cosignature:") and "does not verify" in failures[0]
    assert "ok    checkpoint: signature" in done.stdout


# -- evidence.verify and evidence.load in process ---------------------------------

RECORDS = 20
CHUNK = 8  # three chunks, the last one short


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bundle of RECORDS seal events signed by CN-AKL, as read from its file, and the keys behind it."""
    base = tmp_path_factory.mktemp("offline")
    keys = KeyStore.create(base / "keys")
    signer = RecordSigner("CN-AKL", lambda: keys.signing_key)
    now = datetime.now(UTC)
    records = [signer.sign(SealEventIn.model_validate(factories.seal_event(seq=s)).to_domain("GW-1", now))
               for s in range(1, RECORDS + 1)]

    async def store() -> None:
        s = await SqliteStore.open(base / "mrx.sqlite3")
        await s.log_write(lambda db: insert_records(db, records, "2026-11-22T00:00:00Z", deliver=False))
        await s.close()

    asyncio.run(store())
    log = NoteSigner("mrx/CN-AKL", Ed25519PrivateKey.generate())
    db = sqlite3.connect(base / "mrx.sqlite3")
    head = auditlog.tree_head(db)
    note = str(notes.sign_checkpoint(Checkpoint(log.name, head.size, head.root), log))
    bundle = evidence.build(db, node_id="CN-AKL", log_key=log.verifier, witness_keys=[], checkpoint=(head.size, note),
                            key_statements={"CN-AKL": keys.statements()},
                            message_ids=[str(r.message_id) for r in records])
    db.close()
    path = base / "bundle.json"
    path.write_text(json.dumps(bundle, indent=1) + "\n")
    return {"bundle": json.loads(path.read_bytes()), "path": path, "log_key": log.verifier, "keys": keys}


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evidence, "CHUNK", CHUNK)


def _verdicts(bundle: object, offline: dict, **options: object) -> list[tuple[str, str, bool, str]]:
    verdicts = evidence.verify(bundle, log_key=offline["log_key"], **options)
    return [(v.subject, v.check, v.ok, v.detail) for v in verdicts]


def test_every_record_has_its_three_verdicts_in_order_a_chunk_at_a_time(offline: dict, chunked: None) -> None:
    progress: list[tuple[int, int]] = []
    verdicts = _verdicts(offline["bundle"], offline, progress=lambda done, total: progress.append((done, total)))
    assert [check for _, check, _, _ in verdicts[:2]] == ["signature", "keys"]
    ids = [r["message_id"] for r in offline["bundle"]["records"]]
    assert [(subject, check) for subject, check, _, _ in verdicts[2:]] == [
        (i, check) for i in ids for check in ("integrity", "key valid", "inclusion")
    ]
    assert all(ok for _, _, ok, _ in verdicts), [v for v in verdicts if not v[2]]
    assert progress == [(8, RECORDS), (16, RECORDS), (20, RECORDS)]


def test_a_faulty_record_fails_alone_whatever_its_chunk(offline: dict, chunked: None) -> None:
    honest = _by_record(_verdicts(offline["bundle"], offline))
    bundle = copy.deepcopy(offline["bundle"])
    _flip_payload_of(bundle["records"][9])
    bundle["records"][13]["message_id"] = bundle["records"][14]["message_id"]
    bundle["records"][17]["jws"] = "not.a.jws"
    faulty = _by_record(_verdicts(bundle, offline))
    assert len(faulty) == RECORDS
    changed = {i: [(check, ok) for _, check, ok, _ in faulty[i]] for i in range(RECORDS) if faulty[i] != honest[i]}
    assert changed == {
        9: [("integrity", False), ("inclusion", False)],  # altered, so not the leaf it claims either
        13: [("integrity", False), ("inclusion", True)],  # the JWS is another record's
        17: [("integrity", False), ("inclusion", False)],
    }
    assert "jws-bad-signature" in faulty[9][0][3] and "the record is message" in faulty[13][0][3]
    assert "jws-malformed" in faulty[17][0][3]


def _by_record(verdicts: list[tuple[str, str, bool, str]]) -> list[list[tuple[str, str, bool, str]]]:
    """The records' verdicts (after the checkpoint's and the keys'), one list per record, in order."""
    records: list[list[tuple[str, str, bool, str]]] = [[]]
    for verdict in verdicts[2:]:
        records[-1].append(verdict)
        if verdict[1] == "inclusion":
            records.append([])
    return records[:-1]


@pytest.mark.parametrize("also_bad_checkpoint", [False, True])
def test_a_malformed_record_in_the_last_chunk_is_a_malformed_bundle(offline: dict, chunked: None,
                                                                    also_bad_checkpoint: bool) -> None:
    bundle = copy.deepcopy(offline["bundle"])
    bundle["records"][RECORDS - 1]["inclusion"][0] = "not base64!"
    if also_bad_checkpoint:
        bundle["checkpoint"] = bundle["checkpoint"].replace("\n", "\n1", 1)
    [verdict] = _verdicts(bundle, offline)
    assert verdict[:3] == ("bundle", "format", False) and "not an mrx-evidence/1 bundle" in verdict[3]


def test_check_records_refuses_as_verify_record_would(offline: dict) -> None:
    keys: KeyStore = offline["keys"]
    lookup = own_keys("CN-AKL", keys.keyring())
    good = offline["bundle"]["records"][0]["jws"].encode()
    payload = verify_compact(good, lookup).payload
    typ = "vnd.mrx.SealEventNotification+xml"
    not_yet = replace(lookup(keys.signing_key.kid).key, valid_from=datetime.now(UTC) + timedelta(days=1))
    tokens = [
        good,
        good[:-2] + (b"AA" if good[-2:] != b"AA" else b"QQ"),  # another signature
        keys.signing_key.sign(b'<SealEventNotification xmlns="urn:mrx:datamodel:MRX:1"/>', typ),  # signed, XSD-invalid
        keys.signing_key.sign(payload, "vnd.mrx.Receipt+xml"),  # the typ of another message type
    ]
    results = check_records(tokens, lookup, max_xml_bytes=48_000)
    header, _ = results[0]
    assert str(header.message_id) == offline["bundle"]["records"][0]["message_id"]
    for token, result in zip(tokens[1:], results[1:], strict=True):
        with pytest.raises((JwsError, XmlError, RecordError)) as raised:
            verify_record(token, lookup, max_xml_bytes=48_000)
        assert result == Refusal(str(raised.value.code), raised.value.detail)
    assert [r.code for r in results[1:]] == ["jws-bad-signature", "xml-schema-invalid", "record-type-mismatch"]
    [later] = check_records([good], lambda kid: TrustedKey("CN-AKL", not_yet), max_xml_bytes=48_000)
    assert isinstance(later, Refusal) and later.code == "record-key-not-valid"


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_load_reads_a_bundle_as_json_does_whatever_the_block_size(offline: dict, chunked: None,
                                                                  monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(evidence._JsonReader, "_BLOCK", block)
    loaded = evidence.load(offline["path"])
    records = loaded["records"]
    assert len(records) == RECORDS
    assert list(records) == offline["bundle"]["records"] and list(records) == offline["bundle"]["records"]  # re-read
    assert {k: v for k, v in loaded.items() if k != "records"} == {
        k: v for k, v in offline["bundle"].items() if k != "records"
    }
    assert _verdicts(loaded, offline) == _verdicts(offline["bundle"], offline)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5e3, -0.0, 1234567890123456789], "records": [], "b": {"c": "\\u00e9\\n\\"", "d": null}}',
        '\ufeff{"records": [{"x": 1}, [2], "3", 4, true], "records": [{"y": 12345678}], "z": false}',
        '  { }  ',
        '[1, 2, 3]',
        '"not an object"',
    ],
    ids=["values", "bom-and-repeated-key", "empty", "array", "string"],
)
@pytest.mark.parametrize("block", [1, 3, 1 << 20])
def test_load_agrees_with_json_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, block: int) -> None:
    monkeypatch.setattr(evidence._JsonReader, "_BLOCK", block)
    path = tmp_path / "b.json"
    path.write_bytes(text.encode())
    loaded = evidence.load(path)
    if isinstance(loaded, dict) and "records" in loaded:
        loaded = {**loaded, "records": list(loaded["records"])}
    assert loaded == json.loads(path.read_bytes())


@pytest.mark.parametrize(
    "data",
    [b'{"records": [1, 2', b'{"records": [1, 2]} x', b'[1] 2', b'{"a": 1,}', b'{"a" 1}', b'{1: 2}',
     b'{"records": [1 2]}', b'{"a": "\xff"}', b'{"a": "\xc3', b""],
    ids=["truncated", "extra-data", "extra-data-after-array", "trailing-comma", "no-colon", "number-key", "no-comma",
         "not-utf8", "cut-in-utf8", "empty"],
)
def test_load_refuses_what_json_load_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "b.json"
    path.write_bytes(data)
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        evidence.load(path)


def _flip_payload_of(record: dict) -> None:
    header, payload, signature = record["jws"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[raw.index(b"<")] = ord("(")
    record["jws"] = ".".join([header, base64.urlsafe_b64encode(raw).decode().rstrip("="), signature])
