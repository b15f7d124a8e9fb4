"""Bad input from partners, each case over real HTTP against a node process.

The node under test is Alashankou (CN-AKL). Its partners Dostyk (KZ-DOS) and
Almaty (KZ-ALA) are played by the test: each has a real key store, and a
small HTTP server in this process publishes its key-set statements, which
the node follows from the anchors in its config. The test signs records and
requests with those keys as a partner node would, and also as a partner
that has gone wrong or an attacker on the network would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiohttp import web
from mrx.keys.jws import SigningKey, parse_compact
from mrx.keys.keyring import KeyStore
from mrx.keys.keyset import sign_statement
from mrx.node.inputs import SealEventIn
from mrx.node.partners import ON_DEMAND_INTERVAL, sign_request
from mrx.node.records import RecordSigner, own_keys, verify_record
from mrx.schemas import codec
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import Acknowledgement, Receipt, SealEvent

from tests import factories
from tests.corridor import Db, Member, call, free_port, wait_until, write_partners
from tests.nodeproc import NodeProcess, make_node

EXCHANGE = "/v1/exchange/messages"


@dataclass
class FakePartner:
    """A partner node as far as the node under test can see: keys, statements, signed messages."""

    node_id: str
    office: str
    keys: KeyStore
    port: int = field(default_factory=free_port)
    statements: list[bytes] | None = None  # None: serve the key store's own chain
    # How it answers the node's deliveries (`answer`); None: 503, as a partner not ready yet.
    answering: Callable[[list[bytes]], dict[str, Any]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> SigningKey:
        return self.keys.signing_key

    @property
    def anchor(self) -> str:
        return self.key.kid

    def served(self) -> list[bytes]:
        return self.statements if self.statements is not None else self.keys.statements()

    def record(self, *, to: tuple[str, ...] = ("CN-AKL",), key: SigningKey | None = None,
               at: datetime | None = None, message_id: UUID | None = None) -> bytes:
        event = SealEventIn.model_validate(factories.seal_event(lock="LK-P")).to_domain(
            "GW-P", datetime.now(timezone.utc)
        )
        signer = RecordSigner(self.node_id, lambda: key or self.key,
                              clock=(lambda: at) if at else (lambda: datetime.now(timezone.utc)),
                              new_id=(lambda: message_id) if message_id else uuid4)
        return signer.sign(event, recipients=to).jws

    def receipts(self, tokens: list[bytes], *, withhold: str = "", receipt: int = 0) -> dict[str, Any]:
        """An answer to a delivery, as a partner's receiver gives it: one receipt for the batch, each result
        pointing at it (``receipt``: the index it gives). It acknowledges every message, but not the seal
        events of lock ``withhold``."""
        now = datetime.now(timezone.utc)
        messages = [codec.decode(parse_compact(t, max_bytes=len(t) + 1).payload) for t in tokens]
        acks = tuple(
            Acknowledgement(m.header.message_id, hashlib.sha256(t).digest(), ReceiptStatus.ACCEPTED, now)
            for t, m in zip(tokens, messages, strict=True)
            if not (isinstance(m.body, SealEvent) and m.body.lock_id == withhold)
        )
        signed = RecordSigner(self.node_id, lambda: self.key).sign(Receipt(acks), recipients=("CN-AKL",))
        results = [{"index": i, "status": "accepted", "receipt": receipt} for i in range(len(tokens))]
        return {"accepted": len(tokens), "duplicate": 0, "rejected": 0, "deferred": 0,
                "receipts": [signed.jws.decode()], "results": results}


def _serve(partners: list[FakePartner]) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start() -> None:
        for partner in partners:
            async def statements(request: web.Request, partner: FakePartner = partner) -> web.Response:
                return web.json_response({"statements": [t.decode() for t in partner.served()]})

            async def deliveries(request: web.Request, partner: FakePartner = partner) -> web.Response:
                if partner.answering is None:
                    return web.json_response({"code": "unavailable"}, status=503)
                tokens = [m.encode() for m in (await request.json())["messages"]]
                return web.json_response(partner.answering(tokens))

            app = web.Application()
            app.router.add_get("/.well-known/mrx-key-statements", statements)
            app.router.add_post(EXCHANGE, deliveries)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", partner.port).start()
            runners.append(runner)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


@dataclass
class Setup:
    node: Member
    dos: FakePartner
    ala: FakePartner


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("partner-input")
    dos = FakePartner("KZ-DOS", "KZDOS", KeyStore.create(base / "dos-keys"))
    ala = FakePartner("KZ-ALA", "KZALA", KeyStore.create(base / "ala-keys"))
    node = Member(make_node(base / "akl", "CN-AKL", "CNAKL"), "CN-AKL", "CNAKL", free_port())
    write_partners(node, [dos, ala])
    serving = _serve([dos, ala])
    next(serving)
    with NodeProcess(node.node):
        yield Setup(node, dos, ala)
    next(serving, None)


def _post(setup: Setup, body: bytes, auth: str | None, path: str = EXCHANGE, method: str = "POST") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    request = urllib.request.Request(setup.node.url + path, data=body if method == "POST" else None,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _send(setup: Setup, messages: list[bytes], *, partner: FakePartner | None = None, iss: str | None = None,
          aud: str = "CN-AKL", key: SigningKey | None = None) -> tuple[int, Any]:
    partner = partner or setup.dos
    body = json.dumps({"messages": [m.decode() for m in messages]}).encode()
    auth = sign_request(key or partner.key, iss or partner.node_id, aud, "POST", EXCHANGE, body)
    return _post(setup, body, auth)


def _acknowledgement(setup: Setup, answer: dict[str, Any], index: int) -> Acknowledgement:
    """How the node's receipt acknowledges message ``index`` of a batch, the receipt verified with the
    node's keys; it is addressed to the partner that sent, and acknowledges the bytes of the result's digest."""
    result = answer["results"][index]
    keyring = KeyStore.open(setup.node.node.config.keys_path).keyring()
    token = answer["receipts"][result["receipt"]]
    verified = verify_record(token.encode(), own_keys("CN-AKL", keyring), max_xml_bytes=262_144)
    assert isinstance(verified.message.body, Receipt)
    assert verified.message.header.recipients == ("KZ-DOS",)
    ack = verified.message.body.acknowledgement(bytes.fromhex(result["digest"]))
    assert ack is not None, f"receipt {result['receipt']} does not acknowledge message {index}"
    return ack


def _held(setup: Setup, token: bytes) -> int:
    return Db(setup.node).value("SELECT COUNT(*) FROM records WHERE jws = ?", (token,))


# -- who is calling ---------------------------------------------------------------


def test_a_request_without_a_partner_signature_is_401(setup: Setup) -> None:
    status, problem = _post(setup, b'{"messages":["x"]}', None)
    assert (status, problem["code"]) == (401, "partner-unknown")
    status, problem = _post(setup, b'{"messages":["x"]}', "Bearer something")
    assert (status, problem["code"]) == (401, "partner-unknown")


def test_an_unknown_partner_is_401(setup: Setup) -> None:
    stranger = KeyStore.create(Path(setup.node.node.path.parent / "stranger-keys"))
    body = json.dumps({"messages": [setup.dos.record().decode()]}).encode()
    status, problem = _post(setup, body, sign_request(stranger.signing_key, "PL-MAL", "CN-AKL", "POST", EXCHANGE, body))
    assert (status, problem["code"]) == (401, "partner-unknown")
    assert problem["type"] == "urn:mrx:problem:partner-unknown" and "PL-MAL" in problem["detail"]


def test_a_partner_signing_as_another_is_403(setup: Setup) -> None:
    record = setup.dos.record()
    status, problem = _send(setup, [record], iss="KZ-DOS", key=setup.ala.key)
    assert (status, problem["code"]) == (403, "partner-impersonation")
    assert _held(setup, record) == 0


def test_a_request_for_another_node_is_403(setup: Setup) -> None:
    status, problem = _send(setup, [setup.dos.record()], aud="KZ-ALA")
    assert (status, problem["code"]) == (403, "request-wrong-audience")


def test_a_replayed_request_is_refused_and_a_replayed_message_gets_its_first_receipt(setup: Setup) -> None:
    record = setup.dos.record()
    body = json.dumps({"messages": [record.decode()]}).encode()
    auth = sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, body)
    status, first = _post(setup, body, auth)
    assert status == 200 and first["accepted"] == 1, first
    status, problem = _post(setup, body, auth)
    assert (status, problem["code"]) == (409, "request-replayed")
    status, again = _send(setup, [record])  # the same message in a new, properly signed request
    assert again["results"][0]["status"] == "duplicate"
    assert again["receipts"][again["results"][0]["receipt"]] == first["receipts"][first["results"][0]["receipt"]]
    assert _held(setup, record) == 1


def test_an_old_request_is_refused(setup: Setup) -> None:
    body = json.dumps({"messages": [setup.dos.record().decode()]}).encode()
    auth = sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, body, now=time.time() - 3600)
    status, problem = _post(setup, body, auth)
    assert (status, problem["code"]) == (401, "request-expired")


def test_a_request_whose_body_was_changed_is_refused(setup: Setup) -> None:
    body = json.dumps({"messages": [setup.dos.record().decode()]}).encode()
    auth = sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, body)
    other = json.dumps({"messages": [setup.dos.record().decode()]}).encode()
    status, problem = _post(setup, other, auth)
    assert (status, problem["code"]) == (401, "request-signature-invalid")


# -- what is in the batch -----------------------------------------------------------


def test_one_bad_message_among_good_ones_gets_its_own_negative_receipt(setup: Setup) -> None:
    good = [setup.dos.record(), setup.dos.record()]
    header, payload, signature = setup.dos.record().split(b".")
    other_payload = setup.dos.record().split(b".")[1]
    forged = b".".join([header, other_payload, signature])  # a signature over a different payload
    status, body = _send(setup, [good[0], forged, good[1]])
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    bad = body["results"][1]
    assert bad["problem"]["code"] == "jws-bad-signature" and bad["problem"]["status"] == 401
    rejected = _acknowledgement(setup, body, 1)
    assert rejected.status.value == "REJECTED" and rejected.errors[0].code == "jws-bad-signature"
    assert rejected.received_digest == hashlib.sha256(forged).digest()
    assert [_held(setup, g) for g in good] == [1, 1] and _held(setup, forged) == 0
    for index, token in ((0, good[0]), (2, good[1])):
        accepted = _acknowledgement(setup, body, index)
        assert accepted.status.value == "ACCEPTED" and accepted.received_digest == hashlib.sha256(token).digest()
    # One signed receipt answers the batch: one signature for the sender to verify, not three.
    assert len(body["receipts"]) == 1 and {r["receipt"] for r in body["results"]} == {0}


def test_a_message_addressed_to_another_node_is_refused_with_403(setup: Setup) -> None:
    record = setup.dos.record(to=("KZ-ALA",))
    status, body = _send(setup, [record])
    result = body["results"][0]
    assert (result["status"], result["problem"]["code"], result["problem"]["status"]) == (
        "rejected", "exchange-not-addressed", 403,
    )
    assert _acknowledgement(setup, body, 0).errors[0].code == "exchange-not-addressed"
    assert _held(setup, record) == 0


def test_a_record_made_by_another_partner_is_not_relayed(setup: Setup) -> None:
    record = setup.ala.record()
    status, body = _send(setup, [record])  # Dostyk forwards Almaty's record
    assert body["results"][0]["problem"]["code"] == "exchange-sender-mismatch"
    assert _held(setup, record) == 0


def test_retired_and_revoked_keys_sign_nothing_new(setup: Setup) -> None:
    old = setup.dos.key
    before = datetime.now(timezone.utc) - timedelta(seconds=30)
    setup.dos.keys.rotate()  # the old key is retired now (its window closes)
    # A request with the new key makes the node fetch the statements that announce it
    # (on-demand fetches are rate-limited per partner).
    time.sleep(ON_DEMAND_INTERVAL + 0.1)
    status, body = _send(setup, [setup.dos.record()])
    assert body["results"][0]["status"] == "accepted", body
    retired = setup.dos.record(key=old)  # signed after its window closed
    status, body = _send(setup, [retired])
    assert body["results"][0]["problem"]["code"] == "record-key-not-valid"
    setup.dos.keys.revoke(old.kid, at=before - timedelta(minutes=1))  # compromised since before then
    time.sleep(ON_DEMAND_INTERVAL + 0.1)
    probe = SigningKey.generate()  # an unknown kid makes the node look at the partner's keys again
    _send(setup, [setup.dos.record(key=probe)])
    while_valid_before = setup.dos.record(key=old, at=before)
    status, body = _send(setup, [while_valid_before])
    assert body["results"][0]["problem"]["code"] == "record-key-not-valid", body
    assert _held(setup, retired) == 0 and _held(setup, while_valid_before) == 0


def test_keys_swapped_without_an_announcement_are_not_believed(setup: Setup) -> None:
    thieves = KeyStore.create(setup.node.node.path.parent / "thief-keys")
    thief = thieves.signing_key
    chain = setup.ala.keys.statements()
    setup.ala.statements = chain + [
        sign_statement(thief, len(chain) + 1, datetime.now(timezone.utc), thieves.keyring())
    ]
    time.sleep(ON_DEMAND_INTERVAL + 0.1)
    try:
        status, body = _send(setup, [setup.ala.record(key=thief)], partner=setup.ala, key=thief)
        assert (status, body["code"]) == (401, "request-signature-invalid"), body
        status, body = _send(setup, [setup.ala.record()], partner=setup.ala)  # the genuine key still works
        assert body["results"][0]["status"] == "accepted", body
    finally:
        setup.ala.statements = None
    with urllib.request.urlopen(setup.node.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'mrx_partner_key_refresh_total{outcome="keyset-untrusted-signer",partner="KZ-ALA"}' in metrics


# -- catch-up -------------------------------------------------------------------------


def test_catch_up_serves_only_the_callers_records(setup: Setup) -> None:
    node, tokens = setup.node, setup.node.node.tokens
    to_dostyk, to_almaty = factories.container(serial=200001), factories.container(serial=200002)
    for office, container, ref in (("KZDOS", to_dostyk, "26CN00000000000DA1"), ("KZALA", to_almaty, "26CN00000000000AA1")):
        itinerary = {"consignment": {"type": "MRN", "id": ref}, "offices": ["CNAKL", office], "containers": [container]}
        assert call(node.url + "/v1/itineraries", tokens["NCS"], itinerary)[0] == 200
    events = [factories.seal_event(seq=n + 1, lock="LK-C", container=c) for n, c in enumerate((to_dostyk, to_almaty))]
    status, body = call(node.url + "/v1/seal-events", tokens["GW-1"], {"events": events})
    assert body["accepted"] == 2, body
    for_dostyk = Db(node).value("SELECT jws FROM records WHERE recipients = 'KZ-DOS' AND message_type = 'SealEventNotification'")

    def pull(path: str) -> tuple[int, Any]:
        auth = sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "GET", path, b"")
        return _post(setup, b"", auth, path=path, method="GET")

    status, problem = pull("/v1/exchange/partners/KZ-ALA/messages")
    assert (status, problem["code"]) == (403, "forbidden")
    status, page = pull("/v1/exchange/partners/KZ-DOS/messages?limit=1")
    assert status == 200 and page["messages"] == [bytes(for_dostyk).decode()] and page["more"] is False
    status, page = pull(f"/v1/exchange/partners/KZ-DOS/messages?cursor={page['cursor']}")
    assert status == 200 and page["messages"] == [] and page["more"] is False
    # Not a position this node issues: letters, 19 digits, and a superscript two and a fullwidth one (which
    # str.isdigit takes for digits, and int() does not).
    for cursor in ("x1", "1" * 19, "%C2%B2", "%EF%BC%91"):
        status, problem = pull(f"/v1/exchange/partners/KZ-DOS/messages?cursor={cursor}")
        assert (status, problem["code"]) == (400, "invalid-parameter"), (cursor, problem)


def test_an_oversized_or_malformed_batch_is_refused_whole(setup: Setup) -> None:
    huge = b'{"messages":["' + b"a" * (1_048_576 + 1) + b'"]}'
    status, problem = _post(setup, huge, sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, huge))
    assert (status, problem["code"]) == (413, "body-too-large")
    for body, code in ((b'{"messages": [', "invalid-json"), (b'{"messages": []}', "validation-failed"),
                       (b'{"messages": ["a"], "messages": ["b"]}', "duplicate-json-key")):
        status, problem = _post(setup, body, sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, body))
        assert problem["code"] == code, (body, problem)
    before = Db(setup.node).value("SELECT COUNT(*) FROM records")
    many = json.dumps({"messages": ["x"] * 1001}).encode()
    status, problem = _post(setup, many, sign_request(setup.dos.key, "KZ-DOS", "CN-AKL", "POST", EXCHANGE, many))
    assert (status, problem["code"]) == (413, "batch-too-large")
    assert Db(setup.node).value("SELECT COUNT(*) FROM records") == before


def test_two_copies_in_one_batch_are_stored_once(setup: Setup) -> None:
    record = setup.dos.record()
    status, body = _send(setup, [record, record])
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate"], body
    assert body["results"][0]["receipt"] == body["results"][1]["receipt"] == 0 and len(body["receipts"]) == 1
    assert _held(setup, record) == 1


def test_a_record_under_an_id_the_node_holds_is_refused_and_the_rest_of_its_batch_kept(setup: Setup) -> None:
    """Only the store's transaction sees that the ID is the node's own record's: the batch's receipt is signed
    again, so that it acknowledges the good record as ACCEPTED and the other as REJECTED, never both ACCEPTED."""
    event = factories.seal_event(lock="LK-OWN")
    status, body = call(setup.node.url + "/v1/seal-events", setup.node.node.tokens["GW-1"], event)
    assert status == 201, body
    own = UUID(body["message_id"])
    good, clash = setup.dos.record(), setup.dos.record(message_id=own)
    status, body = _send(setup, [good, clash])
    assert status == 200 and [r["status"] for r in body["results"]] == ["accepted", "rejected"], body
    assert body["results"][1]["problem"]["code"] == "exchange-message-id-conflict"
    assert len(body["receipts"]) == 1
    assert _acknowledgement(setup, body, 0).status.value == "ACCEPTED"
    refused = _acknowledgement(setup, body, 1)
    assert refused.status.value == "REJECTED" and refused.errors[0].code == "exchange-message-id-conflict"
    assert (_held(setup, good), _held(setup, clash)) == (1, 0)
    assert Db(setup.node).value("SELECT message_type FROM records WHERE message_id = ?", (str(own),)) == (
        "SealEventNotification"
    )


# -- what the node makes of a partner's receipts ------------------------------------


def _deliver_two(setup: Setup, serial: int, locks: tuple[str, str]) -> list[str]:
    """Two seal events whose records CN-AKL addresses to KZ-DOS (their container's itinerary); their IDs."""
    container = factories.container(serial=serial)
    itinerary = {"consignment": {"type": "MRN", "id": f"26CN{serial:012d}A1"},
                 "offices": ["CNAKL", "KZDOS"], "containers": [container]}
    assert call(setup.node.url + "/v1/itineraries", setup.node.node.tokens["NCS"], itinerary)[0] == 200
    events = [factories.seal_event(lock=lock, container=container) for lock in locks]
    status, body = call(setup.node.url + "/v1/seal-events", setup.node.node.tokens["GW-1"], {"events": events})
    assert status == 200 and body["accepted"] == 2, body
    return [r["message_id"] for r in body["results"]]


def _outbox(setup: Setup, message_id: str) -> tuple[str, str | None, str | None]:
    return Db(setup.node).rows(
        "SELECT state, last_error, receipt_message_id FROM outbox WHERE partner = 'KZ-DOS' AND message_id = ?",
        (message_id,),
    )[0]


def test_a_receipt_that_does_not_acknowledge_a_record_does_not_deliver_it(setup: Setup) -> None:
    """KZ-DOS answers a batch with one receipt that leaves a record out: that record is not delivered (and is
    sent again), the other is; once a receipt acknowledges it, it is delivered too."""
    setup.dos.answering = lambda tokens: setup.dos.receipts(tokens, withhold="LK-NOACK")
    try:
        kept, left_out = _deliver_two(setup, 880_001, ("LK-ACK", "LK-NOACK"))
        wait_until(lambda: _outbox(setup, kept)[0] == "delivered"
                   and "receipt-invalid" in (_outbox(setup, left_out)[1] or ""), 20, "one delivered, one not")
        state, error, receipt = _outbox(setup, left_out)
        assert state != "delivered" and receipt is None
        assert error == "receipt-invalid: it answers other bytes than those sent"
        setup.dos.answering = setup.dos.receipts
        wait_until(lambda: _outbox(setup, left_out)[0] == "delivered", 20, "the record left out, delivered")
        receipt_id = _outbox(setup, left_out)[2]
        jws = Db(setup.node).value("SELECT jws FROM records WHERE message_id = ?", (receipt_id,))
        sent = Db(setup.node).value("SELECT jws FROM records WHERE message_id = ?", (left_out,))
        body = codec.decode(parse_compact(bytes(jws), max_bytes=len(jws) + 1).payload).body
        assert isinstance(body, Receipt) and body.acknowledgement(hashlib.sha256(bytes(sent)).digest()) is not None
    finally:
        setup.dos.answering = None


def test_an_answer_naming_a_receipt_it_does_not_hold_is_refused_whole(setup: Setup) -> None:
    setup.dos.answering = lambda tokens: setup.dos.receipts(tokens, receipt=1)  # there is only receipts[0]
    try:
        first, second = _deliver_two(setup, 880_002, ("LK-IDX-1", "LK-IDX-2"))
        wait_until(lambda: "bad-response" in (_outbox(setup, second)[1] or ""), 20, "the answer refused")
        assert {_outbox(setup, m)[0] for m in (first, second)} <= {"queued", "in-flight"}
        setup.dos.answering = setup.dos.receipts
        wait_until(lambda: {_outbox(setup, m)[0] for m in (first, second)} == {"delivered"}, 20, "both delivered")
    finally:
        setup.dos.answering = None
