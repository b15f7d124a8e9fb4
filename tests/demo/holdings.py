"""What the corridor's nodes hold after a day, read from their SQLite files, and the checks an auditor makes on it.

The tests of issue 7 (test_demo.py: the calm day; test_chaos.py: the same day
through faulty links, with nodes killed) do not take the nodes' word for
anything. Once the day is over, `read` opens each node's database read-only
and takes its records (the signed JWS bytes), its outbox and its audit log's
leaves; the records' bodies are decoded with the schema codec, and the checks
below are this module's own code.

Each check returns its failures, one sentence each that names the check, the
node, the record and the container or consignment it is about, so a failed
test says what is wrong where; an empty list means the check holds.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tiles import leaf_hash
from tlog_scales.tlog import Checkpoint

from mrx.adapters.simulator import Journey
from mrx.keys import b64url
from mrx.node import demo
from mrx.schemas import codec
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import (
    Alarm,
    Body,
    ControlResult,
    Receipt,
    RecognitionDecision,
    SealEvent,
    UnsealAuthorization,
)


@dataclass(frozen=True)
class Record:
    """One record as a node holds it."""

    seq: int
    message_id: str
    message_type: str
    sender: str
    recipients: tuple[str, ...]
    digest: bytes
    jws: bytes

    @cached_property
    def body(self) -> Body:
        return codec.decode(b64url.decode(self.jws.split(b".")[1])).body

    def describe(self) -> str:
        """``SealEventNotification 0b3… from CN-CQI (container CSQU…)``: which record, and what it is about."""
        return f"{self.message_type} {self.message_id} from {self.sender} ({about(self.body)})"


@dataclass(frozen=True)
class OutboxRow:
    partner: str
    message_id: str
    state: str
    receipt_message_id: str | None


@dataclass
class Holdings:
    """One node's database after the day."""

    node_id: str
    records: list[Record]  # in the order stored
    outbox: list[OutboxRow]
    leaves: list[bytes]  # the audit log's leaves (each a record's JWS), in log order

    @cached_property
    def by_id(self) -> dict[str, Record]:
        return {r.message_id: r for r in self.records}

    def made(self, message_type: str) -> list[Record]:
        """The records of that type this node made, in the order it stored them."""
        return [r for r in self.records if r.sender == self.node_id and r.message_type == message_type]


def database(base: Path, node_id: str) -> sqlite3.Connection:
    """A node's database in the corridor's directory, opened read-only (the node may still be running); close it."""
    return sqlite3.connect(f"file:{base / node_id / 'data' / 'mrx.sqlite3'}?mode=ro", uri=True, timeout=10)


def read(base: Path) -> dict[str, Holdings]:
    """Each node's holdings, by node ID, from the corridor's directory."""
    out = {}
    for office in demo.OFFICES:
        db = database(base, office.node_id)
        try:
            records = [
                Record(seq, mid, kind, sender, tuple(recipients.split()), bytes(digest), bytes(jws))
                for seq, mid, kind, sender, recipients, digest, jws in db.execute(
                    "SELECT seq, message_id, message_type, sender, recipients, digest, jws FROM records ORDER BY seq"
                )
            ]
            outbox = [OutboxRow(*row) for row in db.execute(
                "SELECT partner, message_id, state, receipt_message_id FROM outbox ORDER BY id")]
            leaves = [bytes(jws) for (jws,) in db.execute(
                "SELECT r.jws FROM log_leaves l JOIN records r ON r.seq = l.record_seq ORDER BY l.leaf_index")]
        finally:
            db.close()
        out[office.node_id] = Holdings(office.node_id, records, outbox, leaves)
    return out


def about(body: Body) -> str:
    """The container or consignment a record is about, for a failure message."""
    if isinstance(body, SealEvent | Alarm):
        return f"container {body.container}"
    if isinstance(body, UnsealAuthorization):
        return f"container {body.container or '?'}, lock {body.lock_id}"
    if isinstance(body, RecognitionDecision):
        return f"container {' '.join(body.containers) or '?'}, consignment {body.consignment_refs[0].id}"
    if isinstance(body, ControlResult):
        return f"consignment {body.consignment_refs[0].id}"
    return "receipt for " + ", ".join(str(a.received_message_id) for a in body.acknowledgements)


# -- every node agrees on every record ---------------------------------------------------------------------------


def disagreements(held: dict[str, Holdings]) -> list[str]:
    """Every record addressed to a node is held there once, with the digest its sender holds; none is held twice."""
    failures = []
    for node_id, holdings in held.items():
        for message_id, count in Counter(r.message_id for r in holdings.records).items():
            if count > 1:
                failures.append(f"agreement: {node_id} holds {holdings.by_id[message_id].describe()} {count} times")
    for sender, holdings in held.items():
        for record in holdings.records:
            if record.sender != sender:
                continue
            for recipient in record.recipients:
                theirs = held[recipient].by_id.get(record.message_id)
                if theirs is None:
                    failures.append(f"agreement: {recipient} lacks {record.describe()}, addressed to it")
                elif theirs.digest != record.digest:
                    failures.append(f"agreement: {recipient} holds {record.describe()} with another digest "
                                    f"({theirs.digest.hex()[:16]}…, {sender}'s is {record.digest.hex()[:16]}…)")
    return failures


def unverified(held: dict[str, Holdings], base: Path) -> list[str]:
    """Every record every node holds verifies, with joserfc, against its sender's published keys (its JWKS)."""
    keys = {o.node_id: KeySet.import_key_set(demo.Node(o, base / o.node_id, 0).keys().jwks()) for o in demo.OFFICES}
    failures = []
    for node_id, holdings in held.items():
        for record in holdings.records:
            try:
                jws.deserialize_compact(record.jws, keys[record.sender], algorithms=["EdDSA", "ES256"])
            except (JoseError, ValueError) as exc:
                failures.append(f"signature: {node_id} holds {record.describe()}, whose signature does not verify "
                                f"with {record.sender}'s keys ({exc})")
    return failures


def unreceipted(held: dict[str, Holdings]) -> list[str]:
    """Every outbox row is delivered, with a receipt signed by the partner it went to, naming the record's digest."""
    failures = []
    for node_id, holdings in held.items():
        for row in holdings.outbox:
            record = holdings.by_id[row.message_id]
            where = f"receipts: {node_id}'s delivery of {record.describe()} to {row.partner}"
            receipt = holdings.by_id.get(row.receipt_message_id or "")
            if row.state != "delivered":
                failures.append(f"{where} is {row.state}")
            elif receipt is None or not isinstance(receipt.body, Receipt):
                failures.append(f"{where} has no receipt record")
            elif receipt.sender != row.partner:
                failures.append(f"{where} holds a receipt from {receipt.sender}")
            elif (ack := receipt.body.acknowledgement(record.digest)) is None:
                failures.append(f"{where}: receipt {receipt.message_id} does not acknowledge the record's digest")
            elif ack.status is not ReceiptStatus.ACCEPTED or str(ack.received_message_id) != record.message_id:
                failures.append(f"{where}: receipt {receipt.message_id} says {ack.status.value} "
                                f"of {ack.received_message_id}")
    return failures


# -- what each border decided ------------------------------------------------------------------------------------


def decisions(held: dict[str, Holdings], day: demo.Day) -> dict[tuple[str, int], list[Record]]:
    """Each border's own decisions, by (border node ID, journey index), in the order it issued them."""
    journey = {j.consignment[1]: j.index for j in day.journeys}
    out: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for border in demo.BORDERS:
        for record in held[border.node_id].made("RecognitionDecisionNotification"):
            assert isinstance(record.body, RecognitionDecision)
            out[(border.node_id, journey[record.body.consignment_refs[0].id])].append(record)
    return out


def decided(record: Record) -> tuple[str, tuple[str, ...]]:
    """A decision's outcome and reason codes: what `demo.Expected` says it must be."""
    assert isinstance(record.body, RecognitionDecision)
    return record.body.outcome.value, tuple(r.code.value for r in record.body.reasons)


def wrong_decisions(held: dict[str, Holdings], day: demo.Day) -> list[str]:
    """Every border's latest decision on every container is the one the day's script requires, with its reasons."""
    latest = {key: records[-1] for key, records in decisions(held, day).items()}
    failures = []
    for border in demo.BORDERS:
        for journey in day.journeys:
            want = day.expected[(journey.index, border.locode)]
            record = latest.get((border.node_id, journey.index))
            if record is None:
                failures.append(f"decisions: {border.node_id} took no decision on {_journey(journey)}")
            elif decided(record) != (want.outcome, want.reasons):
                outcome, codes = decided(record)
                failures.append(f"decisions: {border.node_id} decided {outcome} {list(codes)} on {_journey(journey)} "
                                f"(record {record.message_id}), expected {want.outcome} {list(want.reasons)}")
    return failures


def _journey(journey: Journey) -> str:
    return f"container {journey.container} (journey {journey.index}, consignment {journey.consignment[1]})"


# -- nothing issued twice ----------------------------------------------------------------------------------------


def reissued(held: dict[str, Holdings], day: demo.Day) -> list[str]:
    """No decision the same as the border's previous one on the container; no two alarms of a node for one cause."""
    failures = []
    for (node_id, _), records in decisions(held, day).items():
        for before, after in pairwise(records):
            if _what_was_decided(before) == _what_was_decided(after):
                failures.append(f"reissued: {node_id} issued {after.describe()}, the same as its previous "
                                f"decision {before.message_id}")
    for node_id, holdings in held.items():
        causes: dict[tuple[str, str, frozenset[str]], Record] = {}
        for record in holdings.made("AlarmNotification"):
            body = record.body
            assert isinstance(body, Alarm)
            cause = (body.alarm_type.value, body.container, frozenset(map(str, body.evidence)))
            if cause in causes:
                failures.append(f"reissued: {node_id} raised {record.describe()} for the cause of its alarm "
                                f"{causes[cause].message_id} ({body.alarm_type.value})")
            causes.setdefault(cause, record)
    return failures


def _what_was_decided(record: Record) -> tuple[object, ...]:
    """A decision without its ID and time: outcome, inspection, verdict, agreement, containers, reasons and evidence."""
    body = record.body
    assert isinstance(body, RecognitionDecision)
    return (body.outcome, body.control_result_message_id, body.seal_chain_verdict, body.agreement_id, body.containers,
            tuple((r.code, r.description, r.evidence) for r in body.reasons))


def alarms(held: dict[str, Holdings], day: demo.Day) -> Counter[tuple[str, str, int]]:
    """How many alarms each node raised, by (node ID, alarm type, journey index)."""
    journey = {j.container: j.index for j in day.journeys}
    found: Counter[tuple[str, str, int]] = Counter()
    for node_id, holdings in held.items():
        for record in holdings.made("AlarmNotification"):
            assert isinstance(record.body, Alarm)
            found[(node_id, record.body.alarm_type.value, journey[record.body.container])] += 1
    return found


# -- the audit logs ----------------------------------------------------------------------------------------------


def unwitnessed(held: dict[str, Holdings], checkpoints: dict[str, str], base: Path) -> list[str]:
    """Each node's latest checkpoint: signed by the node and cosigned by its three partners (verified with
    tlog-scales), over a tree whose leaves are every record the node holds, each once, and whose root it names."""
    keys = {o.node_id: demo.Node(o, base / o.node_id, 0).log_key() for o in demo.OFFICES}
    failures = []
    for node_id, holdings in held.items():
        checkpoint = Checkpoint.from_text(checkpoints[node_id])
        signers = [Vkey.from_string(str(keys[node_id]))]
        signers += [Vkey.from_string(str(k.cosigning())) for n, k in keys.items() if n != node_id]
        verified = {vkey.name for vkey, _ in VkeySet(*signers).verify(checkpoint.signatures, checkpoint)}
        if missing := sorted({v.name for v in signers} - verified):
            failures.append(f"checkpoint: {node_id}'s checkpoint of {checkpoint.size} lacks a valid signature "
                            f"of {', '.join(missing)}")
        if Counter(holdings.leaves) != Counter(r.jws for r in holdings.records):
            failures.append(f"checkpoint: {node_id}'s log leaves are not its {len(holdings.records)} records, "
                            "each once")
        if checkpoint.size != len(holdings.leaves):
            failures.append(f"checkpoint: {node_id}'s latest checkpoint covers {checkpoint.size} of the "
                            f"{len(holdings.leaves)} records in its log")
        elif checkpoint.root_hash != tree_hash([leaf_hash(leaf) for leaf in holdings.leaves]):
            failures.append(f"checkpoint: {node_id}'s checkpoint of {checkpoint.size} names a root that is not "
                            "the tree hash of its log's leaves")
    return failures


def tree_hash(hashes: list[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)  # the largest power of two below the count
    return hashlib.sha256(b"\x01" + tree_hash(hashes[:split]) + tree_hash(hashes[split:])).digest()


def failed(failures: Iterable[str], shown: int = 20) -> str:
    """Failures for an assertion message: how many, and the first ``shown`` of them, one a line."""
    failures = list(failures)
    more = f"\n… and {len(failures) - shown} more" if len(failures) > shown else ""
    return f"{len(failures)} failed:\n" + "\n".join(failures[:shown]) + more
