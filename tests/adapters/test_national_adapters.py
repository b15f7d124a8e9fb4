"""National-system adapters in a real node process: file exchange (CSV, NCTS XML) in, webhook and files out.

One node at Małaszewicze runs three adapters from its ``mrx.toml``: ``files``
(CSV and NCTS-style XML in, mrx XML out), ``ncts`` (the same, partners'
control results out as CD018C) and ``webhook`` (events POSTed, HMAC-signed, to
a receiver in this test that fails for a while before it recovers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mrx.adapters import webhook
from mrx.schemas import codec
from mrx.schemas.messages import RecognitionDecision, UnsealAuthorization
from tests import factories
from tests.corridor import call, wait_until
from tests.nodeproc import NodeDir, NodeProcess, make_node

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "schemas" / "examples" / "ncts"
SECRET = "a-webhook-secret-of-the-test-1234"


class Receiver:
    """The national system's webhook endpoint: 500 for the first ``fail_first`` requests, then 200."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failing = len(receiver.requests) < receiver.fail_first
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "answered": 500 if failing else 200})
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mrx-events"

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["answered"] == 200]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=6)
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[tuple[NodeDir, NodeProcess]]:
    node_dir = make_node(tmp_path_factory.mktemp("plmaa"), "PL-MAA", "PLMAA")
    (node_dir.path / "webhook.secret").write_text(SECRET + "\n")
    text = node_dir.config_path.read_text()  # quick retries: the defaults are for real networks
    text = re.sub(r"(?m)^retry_max_seconds = .*$", "retry_max_seconds = 1.0\nretry_min_seconds = 0.1", text)
    node_dir.config_path.write_text(text)
    with node_dir.config_path.open("a") as fh:
        fh.write(f"""
[[adapters]]
name = "ncs-files"
kind = "files"
directory = "exchange/files"
poll_seconds = 0.1
settle_seconds = 0.1

[[adapters]]
name = "ncts"
kind = "ncts"
directory = "exchange/ncts"
poll_seconds = 0.1
settle_seconds = 0.1

[[adapters]]
name = "ncs-hook"
kind = "webhook"
url = "{receiver.url}"
secret_file = "webhook.secret"
""")
    with NodeProcess(node_dir) as running:
        yield node_dir, running


def _drop(folder: Path, name: str, content: bytes) -> None:
    """As a national system should: write under a hidden name, then rename into the inbox."""
    temporary = folder / f".{name}.part"
    temporary.write_bytes(content)
    temporary.rename(folder / name)


def _control_ids(node_dir: NodeDir) -> set[str]:
    with sqlite3.connect(f"file:{node_dir.database}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT control_id FROM control_results")}


def _report(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / f"{name}.report.json").read_text())


def test_a_csv_with_a_bad_row_keeps_the_good_rows_and_reports_the_bad_one_by_line(node) -> None:
    node_dir, _ = node
    base = node_dir.path / "exchange" / "files"
    wait_until(lambda: (base / "inbox").is_dir(), 10, "the inbox")
    header = "control_id,consignments,control_type,result,controlled_at,officer,container,seals_found,remarks\n"
    rows = [
        f"PL-CSV-0001,CIM:{factories.cim_note()},physical,A1,2026-11-22T08:00:00Z,Officer Nowak,"
        f"{factories.container()},ES-0001,\n",
        f"PL-CSV-0002,CIM:{factories.cim_note()},documentary,A2,2026-11-22T08:05:00Z,Officer Nowak,,,\"checked, ok\"\n",
        f"PL-CSV-0003,CIM:{factories.cim_note()},physical,Z9,2026-11-22T08:10:00Z,Officer Nowak,,,\n",  # bad code
        "PL-CSV-0004,not-a-consignment,physical,A1,2026-11-22T08:15:00Z,Officer Nowak,,,\n",  # bad reference
    ]
    _drop(base / "inbox", "control-results-20261122.csv", (header + "".join(rows)).encode())
    wait_until(lambda: (base / "failed" / "control-results-20261122.csv").exists(), 20, "the file to be filed away")
    report = _report(base / "failed", "control-results-20261122.csv")
    assert report["accepted_lines"] == [2, 3]
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(4, "validation-failed"), (5, "csv-row-invalid")]
    assert "result" in report["errors"][0]["detail"]
    assert {"PL-CSV-0001", "PL-CSV-0002"} <= _control_ids(node_dir)
    assert not {"PL-CSV-0003", "PL-CSV-0004"} & _control_ids(node_dir)
    assert not list((base / "inbox").iterdir())


def test_a_file_that_is_not_xml_is_failed_with_a_report_and_stores_nothing(node) -> None:
    node_dir, _ = node
    base = node_dir.path / "exchange" / "ncts"
    wait_until(lambda: (base / "inbox").is_dir(), 10, "the inbox")
    before = _control_ids(node_dir)
    _drop(base / "inbox", "CD018C-garbled.xml", b"this is not <xml")
    wait_until(lambda: (base / "failed" / "CD018C-garbled.xml").exists(), 20, "the file to be filed away")
    (error,) = _report(base / "failed", "CD018C-garbled.xml")["errors"]
    assert error["code"] == "ncts-not-xml"
    assert _control_ids(node_dir) == before


def test_an_ncts_file_and_a_csv_itinerary_are_processed(node) -> None:
    node_dir, _ = node
    base = node_dir.path / "exchange" / "ncts"
    wait_until(lambda: (base / "inbox").is_dir(), 10, "the inbox")
    example = EXAMPLES / "CD018C--seals-intact-at-malaszewicze.xml"
    _drop(base / "inbox", "cd018c-1.xml", example.read_bytes())
    wait_until(lambda: (base / "processed" / "cd018c-1.xml").exists(), 20, "the NCTS file to be processed")
    files = node_dir.path / "exchange" / "files"
    _drop(files / "inbox", "itineraries-1.csv",
          f"consignment,offices,containers\nCIM:{factories.cim_note()},CNCQI PLMAA DEDUI,{factories.container()}\n"
          .encode())
    wait_until(lambda: (files / "processed" / "itineraries-1.csv").exists(), 20, "the itinerary file")
    assert not (files / "failed" / "itineraries-1.csv.report.json").exists()


def test_a_half_written_or_hidden_file_is_never_read(node) -> None:
    node_dir, _ = node
    inbox = node_dir.path / "exchange" / "files" / "inbox"
    wait_until(lambda: inbox.is_dir(), 10, "the inbox")
    (inbox / ".control-results-partial.csv.part").write_text("control_id,consignm")
    (inbox / "control-results-upload.tmp").write_text("control_id,consignm")
    # A file that keeps growing (pauses shorter than settle_seconds) is not taken until it stops: append to it
    # across many polls, each row a complete line, so a file read early would show as missing rows.
    growing = inbox / "control-results-growing.csv"
    with growing.open("w") as fh:
        fh.write("control_id,consignments,control_type,result,controlled_at,officer\n")
        for i in range(30):
            fh.flush()
            threading.Event().wait(0.03)
            fh.write(f"PL-GROW-{i:04d},CIM:{factories.cim_note()},physical,A1,2026-11-22T09:00:00Z,O\n")
    wait_until(lambda: not growing.exists(), 20, "the finished file to be taken")
    assert (inbox.parent / "processed" / "control-results-growing.csv").exists()
    assert {f"PL-GROW-{i:04d}" for i in range(30)} <= _control_ids(node_dir)
    assert (inbox / ".control-results-partial.csv.part").exists() and (inbox / "control-results-upload.tmp").exists()


def test_outbound_events_reach_a_webhook_that_failed_for_a_while_in_order_signed_and_in_the_outbox(
    node, receiver: Receiver
) -> None:
    node_dir, running = node
    token = node_dir.tokens["NCS"]
    now = datetime.now(timezone.utc)
    issued = []
    for i in range(3):
        status, answer = call(running.url + "/v1/unseal-authorizations", token, {
            "lock_id": f"LK-PL-{i}", "seal_id": f"ES-{i}", "container": factories.container(),
            "officer": "Officer Nowak", "valid_from": now.isoformat(), "valid_to": (now + timedelta(hours=2)).isoformat(),
        })
        assert status == 201, answer
        issued.append(answer["message_id"])
    status, arrival = call(running.url + "/v1/arrivals", token, {
        "consignments": [{"type": "CIM", "id": factories.cim_note()}], "arrived_at": now.isoformat(),
    })
    assert status == 200, arrival
    decisions = [d["message_id"] for d in arrival["decisions"]]
    expected = set(issued) | set(decisions)

    wait_until(lambda: expected <= {r["headers"]["Mrx-Delivery"] for r in receiver.delivered()}, 60,
               "every event delivered once the receiver recovers")
    assert sum(1 for r in receiver.requests if r["answered"] == 500) == receiver.fail_first
    delivered = [r for r in receiver.delivered() if r["headers"]["Mrx-Delivery"] in expected]
    for request in delivered:
        headers, body = request["headers"], request["body"]
        stamp = int(headers["Mrx-Signature"].split(",")[0].removeprefix("t="))
        assert hmac.compare_digest(headers["Mrx-Signature"], webhook.signature(SECRET.encode(), stamp, body))
        event = json.loads(body)
        assert event["message_id"] == headers["Mrx-Delivery"] and event["kind"] == headers["Mrx-Event"]
        message = codec.decode(event["xml"].encode())
        assert isinstance(message.body, UnsealAuthorization | RecognitionDecision)
        assert event["record"].split(".")[1]  # the compact JWS travels with it
    seqs = [json.loads(r["body"])["seq"] for r in delivered]
    assert seqs == sorted(seqs)  # commit order, retries included
    assert len({r["headers"]["Mrx-Delivery"] for r in delivered}) == len(delivered)  # none delivered twice

    # The same events, one XML file each, written atomically in the files adapter's outbox.
    outbox = node_dir.path / "exchange" / "files" / "outbox"
    wait_until(lambda: sum(1 for p in outbox.glob("*.xml") if any(m in p.name for m in expected)) == len(expected),
               20, "the outbox files")
    for path in outbox.glob("*.xml"):
        assert isinstance(codec.decode(path.read_bytes()).body, UnsealAuthorization | RecognitionDecision)
    assert not list(outbox.glob(".*"))


def test_a_node_restarted_resumes_delivery_where_its_cursor_was(node, receiver: Receiver) -> None:
    node_dir, running = node
    running.stop()
    try:
        before = len(receiver.delivered())
        with NodeProcess(node_dir) as again:
            status, arrival = call(again.url + "/v1/arrivals", node_dir.tokens["NCS"], {
                "consignments": [{"type": "CIM", "id": factories.cim_note(70301)}],
                "arrived_at": datetime.now(timezone.utc).isoformat(),
            })
            assert status == 200, arrival
            (decision,) = arrival["decisions"]
            wait_until(lambda: decision["message_id"] in {r["headers"]["Mrx-Delivery"] for r in receiver.delivered()},
                       30, "the new decision")
        ids = [r["headers"]["Mrx-Delivery"] for r in receiver.delivered()]
        assert len(ids) == len(set(ids)) == before + 1  # nothing delivered before was sent again
    finally:
        running.start()
