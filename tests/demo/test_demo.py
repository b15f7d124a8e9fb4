"""The corridor end to end (issue 7): ``mrx demo``'s day, checked from the outside.

The demo checks itself and exits non-zero when something does not check out;
these tests do not take its word for it. After a day played by four node
processes, they read each node's SQLite file read-only, as an auditor would,
and check with their own code and with tools that are not mrx's:

- every border's latest decision on every container is the one the day's
  script requires, with the same reasons (decoded from the signed record);
- every node agrees on every record: a record addressed to a node is held
  there, byte for byte, and no node holds a record twice;
- every outbox row is delivered and its receipt is a `Receipt` record signed
  by the partner it was sent to;
- every node's last checkpoint carries its own signature and its three
  partners' cosignatures, verified with tlog-scales.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tlog_scales.signing import Vkey, VkeySet
from tlog_scales.tlog import Checkpoint as ScalesCheckpoint

from mrx.keys import b64url
from mrx.node import demo
from mrx.schemas import codec
from mrx.schemas.messages import RecognitionDecision

CONTAINERS = 12


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path / 'data' / 'mrx.sqlite3'}?mode=ro", uri=True)


def _payload(jws: bytes) -> bytes:
    return b64url.decode(jws.split(b".")[1])


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, demo.DayResult]:
    base = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    result = demo.run_day(base, seed=7, containers=CONTAINERS, out=out)
    print(out.getvalue())
    return base, result


def test_the_day_checks_out(day: tuple[Path, demo.DayResult]) -> None:
    _, result = day
    assert result.checks.failures == []
    assert len(result.arrivals) == CONTAINERS * len(demo.BORDERS)
    assert all(a.seconds is not None for a in result.arrivals)


def test_every_border_decided_what_the_script_requires(day: tuple[Path, demo.DayResult]) -> None:
    base, result = day
    by_container = {j.consignment[1]: j for j in result.day.journeys}
    for border in demo.BORDERS:
        with _db(base / border.node_id) as db:
            rows = db.execute(
                "SELECT jws FROM records WHERE message_type = 'RecognitionDecisionNotification' AND sender = ? ORDER BY seq",
                (border.node_id,),
            ).fetchall()
        latest = {}
        for (jws,) in rows:
            body = codec.decode(_payload(bytes(jws))).body
            assert isinstance(body, RecognitionDecision)
            latest[body.consignment_refs[0].id] = body
        assert set(latest) == set(by_container), border.node_id
        for cim, body in latest.items():
            want = result.day.expected[(by_container[cim].index, border.locode)]
            assert (body.outcome.value, tuple(r.code.value for r in body.reasons)) == (want.outcome, want.reasons), (
                border.node_id, cim)
    outcomes = {(i, b): e.outcome for (i, b), e in result.day.expected.items()}
    assert demo.NOT_RECOGNISED in outcomes.values() and demo.RECOGNISED in outcomes.values()
    assert result.day.expected[(result.day.opened, "PLMAA")].outcome == demo.RECOGNISED  # the authorised opening
    assert "SEAL_CHAIN_BROKEN" in result.day.expected[(result.day.tampered, "KZDOS")].reasons


def test_every_node_holds_every_record_addressed_to_it_once_and_byte_for_byte(
    day: tuple[Path, demo.DayResult],
) -> None:
    base, _ = day
    held: dict[str, dict[str, bytes]] = {}
    addressed: dict[str, set[str]] = {o.node_id: set() for o in demo.OFFICES}
    for office in demo.OFFICES:
        with _db(base / office.node_id) as db:
            rows = db.execute("SELECT message_id, sender, recipients, digest FROM records").fetchall()
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids)), f"{office.node_id} holds a record twice"
        held[office.node_id] = {r[0]: bytes(r[3]) for r in rows}
        for message_id, sender, recipients, _ in rows:
            if sender == office.node_id:
                for recipient in recipients.split():
                    addressed[recipient].add(message_id)
    for node_id, wanted in addressed.items():
        missing = wanted - set(held[node_id])
        assert not missing, f"{node_id} lacks {len(missing)} records addressed to it"
        for message_id in wanted:
            sender_digest = next(h[message_id] for n, h in held.items() if n != node_id and message_id in h)
            assert held[node_id][message_id] == sender_digest


def test_every_record_sent_is_delivered_with_the_partners_signed_receipt(day: tuple[Path, demo.DayResult]) -> None:
    base, _ = day
    for office in demo.OFFICES:
        with _db(base / office.node_id) as db:
            rows = db.execute(
                "SELECT o.partner, o.state, r.message_type, r.sender FROM outbox o "
                "LEFT JOIN records r ON r.message_id = o.receipt_message_id"
            ).fetchall()
        assert rows or office is demo.OFFICES[-1], office.node_id
        for partner, state, receipt_type, receipt_sender in rows:
            assert (state, receipt_type, receipt_sender) == ("delivered", "Receipt", partner), office.node_id


def test_every_checkpoint_is_cosigned_by_the_three_partners(day: tuple[Path, demo.DayResult]) -> None:
    base, result = day
    keys = {o.node_id: demo.Node(o, base / o.node_id, 0).log_key() for o in demo.OFFICES}
    for node_id, text in result.checkpoints.items():
        checkpoint = ScalesCheckpoint.from_text(text)
        log = Vkey.from_string(str(keys[node_id]))
        witnesses = [Vkey.from_string(str(k.cosigning())) for n, k in keys.items() if n != node_id]
        verified = VkeySet(log, *witnesses).verify(checkpoint.signatures, checkpoint)
        assert len(verified) == 4, (node_id, text)
        with _db(base / node_id) as db:
            (records,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        assert checkpoint.size >= records  # every record is a leaf (receipts and decisions included)


def test_mrx_demo_is_the_readme_command_and_cleans_up_after_itself(tmp_path: Path) -> None:
    """The command itself, as a person runs it: a separate process, exit 0, its directory kept on request."""
    keep = tmp_path / "kept"
    run = subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", "demo", "--containers", "3", "--keep", str(keep)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert ", 0 failed" in run.stdout and "released without re-inspection" in run.stdout
    assert {p.name for p in keep.iterdir()} >= {o.node_id for o in demo.OFFICES}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(keep) not in ps, "a node of the demo is still running"
    refused = subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", "demo", "--keep", str(keep)], capture_output=True, text=True,
    )
    assert refused.returncode == 1 and "not empty" in refused.stderr
