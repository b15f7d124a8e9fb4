"""Records travel between real node processes, and every delivery is proven by a receipt.

Three nodes on loopback, each the others' partner: Alashankou (CN-AKL),
Dostyk (KZ-DOS), Almaty (KZ-ALA). The national system of each registers the
consignment's itinerary; records made at a node reach the nodes downstream of
it, byte for byte, and the sender holds a signed receipt for each delivery
that a JOSE library that is not ours verifies with the receiver's published
JWKS.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from mrx.schemas import codec
from mrx.schemas.messages import Receipt
from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until
from tests.nodeproc import NodeProcess

SPECS = [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS"), ("KZ-ALA", "KZALA")]
CONTAINER = factories.container()
ITINERARY = {
    "consignment": {"type": "CIM", "id": factories.cim_note()},
    "offices": ["CNAKL", "KZDOS", "KZALA"],
    "containers": [CONTAINER],
}


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory):
    members = make_corridor(tmp_path_factory.mktemp("corridor"), SPECS)
    procs = [NodeProcess(m.node).start() for m in members]
    yield members
    for proc in procs:
        proc.stop()


def _jwks(member: Member) -> KeySet:
    with urllib.request.urlopen(member.url + "/.well-known/jwks.json", timeout=10) as response:
        return KeySet.import_key_set(json.loads(response.read()))


def test_records_reach_every_node_downstream_with_verified_receipts(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    for member in corridor:
        status, body = call(member.url + "/v1/itineraries", member.node.tokens["NCS"], ITINERARY)
        assert status == 200, body
    status, body = call(akl.url + "/v1/itineraries", akl.node.tokens["NCS"], ITINERARY)
    assert body["recipients"] == ["KZ-DOS", "KZ-ALA"]

    status, made = call(akl.url + "/v1/control-results", akl.node.tokens["NCS"], factories.control_result())
    assert status == 201, made
    events = [factories.seal_event(seq=i + 1, lock="LK-1", container=CONTAINER) for i in range(5)]
    status, ingested = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"], {"events": events})
    assert ingested["accepted"] == 5, ingested
    # Reported through Dostyk's gateways past the border (not at the office, which would be an arrival: a decision).
    past_dostyk = [factories.seal_event(seq=6, lock="LK-1", container=CONTAINER, location={"locode": "KZSAR"})]
    status, ingested = call(dos.url + "/v1/seal-events", dos.node.tokens["GW-1"], {"events": past_dostyk})
    assert ingested["accepted"] == 1, ingested

    made_at_akl = Db(akl).records_from("CN-AKL")
    assert len(made_at_akl) == 6
    wait_until(lambda: Db(akl).outbox_states() == {"delivered": 12}, 30, "Alashankou's deliveries")
    wait_until(lambda: Db(dos).outbox_states() == {"delivered": 1}, 30, "Dostyk's delivery to Almaty")

    # Byte for byte, in the order made, at both nodes downstream.
    assert Db(dos).records_from("CN-AKL") == made_at_akl
    assert Db(ala).records_from("CN-AKL") == made_at_akl
    assert Db(ala).records_from("KZ-DOS", "SealEventNotification") == Db(dos).records_from(
        "KZ-DOS", "SealEventNotification"
    )
    # Nothing flows upstream under route_to = "downstream".
    assert Db(akl).records_from("KZ-DOS", "SealEventNotification") == []

    # Every hop holds the receiver's receipt, which joserfc verifies with the receiver's JWKS.
    for sender, receivers in ((akl, (dos, ala)), (dos, (ala,))):
        rows = Db(sender).rows(
            "SELECT o.partner, m.jws, r.jws FROM outbox o JOIN records m ON m.message_id = o.message_id"
            " JOIN records r ON r.message_id = o.receipt_message_id"
        )
        assert {partner for partner, _, _ in rows} == {r.node_id for r in receivers}
        keys = {r.node_id: _jwks(r) for r in receivers}
        for partner, sent, receipt_jws in rows:
            token = jws.deserialize_compact(bytes(receipt_jws), keys[partner], algorithms=["EdDSA", "ES256"])
            receipt = codec.decode(token.payload).body
            assert isinstance(receipt, Receipt)
            ack = receipt.acknowledgement(hashlib.sha256(bytes(sent)).digest())
            assert ack is not None and ack.status.value == "ACCEPTED"


def test_outbox_is_visible_to_the_operator(corridor: list[Member]) -> None:
    akl = corridor[0]
    status, page = call(akl.url + "/v1/outbox?partner=KZ-DOS&state=delivered", akl.node.tokens["AUDIT"])
    assert status == 200
    assert page["items"] and all(i["state"] == "delivered" and i["receipt"] for i in page["items"])
    status, problem = call(akl.url + "/v1/outbox?state=lost", akl.node.tokens["AUDIT"])
    assert (status, problem["code"]) == (400, "invalid-parameter")


def test_metrics_show_the_background_jobs(corridor: list[Member]) -> None:
    with urllib.request.urlopen(corridor[0].url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'mrx_job_runs_total{job="keys",outcome="ok"}' in text
    assert 'mrx_job_runs_total{job="sweep",outcome="ok"}' in text
    assert 'mrx_outbox_messages{partner="KZ-DOS",state="queued"}' in text  # its value lags by one sweep
    assert 'mrx_exchange_sent_total{outcome="delivered",partner="KZ-DOS"}' in text
    assert 'mrx_partner_key_statement_sequence{partner="KZ-DOS"} 1.0' in text
