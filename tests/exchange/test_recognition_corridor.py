"""Mutual recognition across three real node processes (docs/recognition.md).

Alashankou (CN-AKL) inspects and seals; Dostyk (KZ-DOS) and Almaty (KZ-ALA)
recognise its inspections under their agreements, Almaty also accepting
Dostyk's unseal authorisations. Every decision is a signed record that a
JOSE library that is not ours verifies with the deciding node's JWKS, and
that reaches the inspecting node and the next node on the itinerary.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from mrx.schemas import codec
from mrx.schemas.messages import RecognitionDecision, UnsealAuthorization
from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until
from tests.nodeproc import NodeProcess

SPECS = [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS"), ("KZ-ALA", "KZALA")]
T0 = factories.T0
INSPECTED_AT = (T0 - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")


def _agreement(partner: str, unseal_offices: list[str]) -> str:
    return (
        f'\n[[agreements]]\nid = "{partner}-MRA-2026"\npartner = "{partner}"\n'
        'control_types = ["physical", "non-intrusive"]\nresult_codes = ["A1", "A2"]\n'
        'excluded_hs_prefixes = ["93"]\nmax_age_hours = 720\nrequire_intact_chain = true\n'
        f"unseal_offices = {json.dumps(unseal_offices)}\n"
    )


@pytest.fixture(scope="module")
def corridor(tmp_path_factory: pytest.TempPathFactory):
    members = make_corridor(tmp_path_factory.mktemp("recognition"), SPECS)
    akl, dos, ala = members
    with dos.node.config_path.open("a") as fh:
        fh.write(_agreement("CN-AKL", []))
    with ala.node.config_path.open("a") as fh:
        fh.write(_agreement("CN-AKL", ["KZDOS"]))
    procs = [NodeProcess(m.node).start() for m in members]
    yield members
    for proc in procs:
        proc.stop()


class Journey:
    """One consignment in one container, its lock numbering its events."""

    def __init__(self, corridor: list[Member], number: int) -> None:
        self.corridor = corridor
        self.cim = factories.cim_note(70300 + number)
        self.container = factories.container(serial=400000 + number)
        self.lock = f"LK-{number}"
        self.seq = 0
        self.ref = {"type": "CIM", "id": self.cim}

    def register(self) -> None:
        itinerary = {"consignment": self.ref, "offices": ["CNAKL", "KZDOS", "KZALA"], "containers": [self.container]}
        for member in self.corridor:
            status, body = call(member.url + "/v1/itineraries", member.node.tokens["NCS"], itinerary)
            assert status == 200, body

    def inspect(self, **overrides: Any) -> None:
        akl = self.corridor[0]
        result = factories.control_result(
            f"CN-AKL-{self.lock}", consignment_refs=[self.ref], controlled_at=INSPECTED_AT,
            transport_equipment=[{"container": self.container, "seals_affixed": [{"id": "ES-0001", "type": "2"}]}],
            **overrides,
        )
        status, body = call(akl.url + "/v1/control-results", akl.node.tokens["NCS"], result)
        assert status == 201, body

    def report(self, member: Member, type: str = "position", locode: str = "CNURC", **fields: Any) -> str:
        self.seq += 1
        event = factories.seal_event(
            seq=self.seq, lock=self.lock, type=type, container=self.container, location={"locode": locode}, **fields
        )
        if type == "sealed":
            event["consignment_refs"] = [self.ref]
        status, body = call(member.url + "/v1/seal-events", member.node.tokens["GW-1"], {"events": [event]})
        assert status == 200 and body["accepted"] == 1, body
        return body["results"][0]["message_id"]

    def view(self, member: Member) -> dict[str, Any]:
        status, body = call(f"{member.url}/v1/consignments/CIM/{urllib.request.quote(self.cim)}", member.node.tokens["NCS"])
        assert status == 200, body
        return body

    def latest_decision(self, member: Member) -> dict[str, Any] | None:
        own = [d for d in self.view(member)["decisions"] if d["sender"] == member.node_id]
        return own[-1] if own else None


def _jwks(member: Member) -> KeySet:
    with urllib.request.urlopen(member.url + "/.well-known/jwks.json", timeout=10) as response:
        return KeySet.import_key_set(json.loads(response.read()))


def _delivered(member: Member) -> None:
    wait_until(lambda: set(Db(member).outbox_states()) <= {"delivered"}, 30, f"{member.node_id}'s deliveries")


def _decided(journey: Journey, member: Member, outcome: str) -> dict[str, Any]:
    try:
        wait_until(lambda: (journey.latest_decision(member) or {}).get("outcome") == outcome, 30, "a decision")
    except AssertionError:
        view = journey.view(member)
        raise AssertionError(
            f"{member.node_id} did not decide {outcome} on {journey.cim}: decisions {view['decisions']}, "
            f"now {view['evaluation_now']}, arrival {view['arrival']}"
        ) from None
    decision = journey.latest_decision(member)
    assert decision is not None
    return decision


def test_an_inspection_is_recognised_at_the_next_borders_through_an_authorised_unseal(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    journey = Journey(corridor, 1)
    journey.register()
    journey.inspect()
    journey.report(akl, "sealed", "CNAKL", seal="ES-0001", sealing_party="CU")
    for _ in range(3):
        journey.report(akl)
    _delivered(akl)

    # Arrival at Dostyk: its gateway reports the lock at the office.
    arrival = journey.report(dos, locode="KZDOS")
    decision = _decided(journey, dos, "RECOGNISED")
    assert decision["reasons"] == [] and decision["seal_chain_verdict"] == "INTACT"
    assert decision["agreement_id"] == "CN-AKL-MRA-2026"
    view = journey.view(dos)
    assert view["arrival"]["trigger_message_id"] == arrival
    assert [c["signature"] for c in view["control_results"]] == ["valid"]
    assert view["seal_chains"][0]["verdict"] == "INTACT" and len(view["seal_chains"][0]["events"]) == 5

    # The decision is signed, verifies with a library that is not ours, and reaches the inspecting node and Almaty.
    _delivered(dos)
    for member in (akl, ala):
        held = Db(member).rows(
            "SELECT jws FROM records WHERE message_id = ?", (decision["message_id"],)
        )
        assert len(held) == 1, member.node_id
        token = jws.deserialize_compact(bytes(held[0][0]), _jwks(dos), algorithms=["EdDSA", "ES256"])
        body = codec.decode(token.payload).body
        assert isinstance(body, RecognitionDecision) and body.outcome.value == "RECOGNISED"

    # Dostyk's officer authorises opening the lock; the gateway fetches the authorisation, and a library that is
    # not ours verifies it with Dostyk's published keys alone.
    now = datetime.now(timezone.utc)
    request = {
        "lock_id": journey.lock, "seal_id": "ES-0001", "container": journey.container, "officer": "Officer Seitkali",
        "valid_from": (T0 - timedelta(hours=1)).isoformat(), "valid_to": (now + timedelta(hours=2)).isoformat(),
    }
    status, issued = call(dos.url + "/v1/unseal-authorizations", dos.node.tokens["NCS"], request)
    assert status == 201, issued
    assert issued["recipients"] == ["KZ-ALA"]
    status, listed = call(f"{dos.url}/v1/unseal-authorizations?lock_id={journey.lock}", dos.node.tokens["GW-1"])
    (fetched,) = listed["authorizations"]
    assert fetched["state"] == "valid"
    token = jws.deserialize_compact(fetched["jws"].encode(), _jwks(dos), algorithms=["EdDSA", "ES256"])
    authorisation = codec.decode(token.payload).body
    assert isinstance(authorisation, UnsealAuthorization) and len(authorisation.nonce) >= 22

    # Opened on it at Dostyk, re-sealed by customs with a new seal, on to Almaty.
    journey.report(dos, "unsealed", "KZDOS", authorization_id=issued["authorization_id"])
    journey.report(dos, "sealed", "KZDOS", seal="ES-0002", sealing_party="CU")
    journey.report(dos, seal="ES-0002")
    status, listed = call(f"{dos.url}/v1/unseal-authorizations?lock_id={journey.lock}", dos.node.tokens["GW-1"])
    assert listed["authorizations"][0]["state"] == "used"
    _delivered(dos)
    journey.report(ala, locode="KZALA", seal="ES-0002")
    decision = _decided(journey, ala, "RECOGNISED")
    assert decision["seal_chain_verdict"] == "INTACT"
    status, alarms = call(f"{ala.url}/v1/alarms?container={journey.container}", ala.node.tokens["NCS"])
    assert alarms["alarms"] == []  # an authorised opening raises none, here or upstream


def test_tamper_raises_an_alarm_that_travels_and_the_next_border_does_not_recognise(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    journey = Journey(corridor, 2)
    journey.register()
    journey.inspect()
    journey.report(akl, "sealed", "CNAKL", seal="ES-0001", sealing_party="CU")
    tamper = journey.report(akl, "tamper", condition="4")
    journey.report(akl)
    _delivered(akl)

    status, alarms = call(f"{akl.url}/v1/alarms?container={journey.container}", akl.node.tokens["NCS"])
    (alarm,) = alarms["alarms"]
    assert alarm["type"] == "TAMPER" and alarm["evidence"] == [tamper]
    wait_until(
        lambda: call(f"{dos.url}/v1/alarms?container={journey.container}", dos.node.tokens["NCS"])[1]["alarms"],
        30, "the alarm at Dostyk",
    )

    journey.report(dos, locode="KZDOS")
    decision = _decided(journey, dos, "NOT_RECOGNISED")
    assert [r["code"] for r in decision["reasons"]] == ["SEAL_CHAIN_BROKEN"]
    assert tamper in decision["reasons"][0]["evidence"]
    # Dostyk raises its own alarm on the broken chain; an officer acknowledges it.
    status, alarms = call(f"{dos.url}/v1/alarms?open=true&container={journey.container}", dos.node.tokens["NCS"])
    broken = [a for a in alarms["alarms"] if a["raised_by"] == "KZ-DOS"]
    assert [a["type"] for a in broken] == ["SEAL_CHAIN_BROKEN"]
    status, acked = call(
        f"{dos.url}/v1/alarms/{broken[0]['alarm_id']}/acknowledgement", dos.node.tokens["NCS"], {"officer": "Officer Nur"}
    )
    assert status == 200 and acked["acknowledged_by"] == "Officer Nur"
    status, alarms = call(f"{dos.url}/v1/alarms?open=true&container={journey.container}", dos.node.tokens["NCS"])
    assert [a for a in alarms["alarms"] if a["raised_by"] == "KZ-DOS"] == []


def test_an_arrival_before_the_control_result_is_decided_again_when_it_comes(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    journey = Journey(corridor, 3)
    journey.register()
    journey.report(akl, "sealed", "CNAKL", seal="ES-0001", sealing_party="CU")
    journey.report(akl)
    _delivered(akl)
    journey.report(dos, locode="KZDOS")
    decision = _decided(journey, dos, "NOT_RECOGNISED")
    assert [r["code"] for r in decision["reasons"]] == ["NO_CONTROL_RESULT"]

    journey.inspect()  # reaches Dostyk after the arrival
    decision = _decided(journey, dos, "RECOGNISED")
    assert [d["outcome"] for d in journey.view(dos)["decisions"] if d["sender"] == "KZ-DOS"] == [
        "NOT_RECOGNISED", "RECOGNISED"
    ]


def test_national_targeting_wins_and_an_on_demand_decision_says_so(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    journey = Journey(corridor, 4)
    journey.register()
    journey.inspect()
    journey.report(akl, "sealed", "CNAKL", seal="ES-0001", sealing_party="CU")
    _delivered(akl)
    path = f"{dos.url}/v1/consignments/CIM/{urllib.request.quote(journey.cim)}"
    status, body = call(path + "/targeting", dos.node.tokens["NCS"], {"reference": "KZ-RISK-7", "reason": "profile 12"})
    assert status == 200 and body["decision"] is None  # not arrived yet: stored for the decision
    status, decision = call(path + "/decision", dos.node.tokens["NCS"], method="POST")
    assert status == 200, decision
    assert decision["outcome"] == "NOT_RECOGNISED"
    assert "NATIONAL_TARGETING" in [r["code"] for r in decision["reasons"]]
    # The same evidence again: the same decision, and none issued; the answer is the one stored.
    status, again = call(path + "/decision", dos.node.tokens["NCS"], method="POST")
    assert again["issued"] is False and again["reasons"] == decision["reasons"]
    assert {k: again[k] for k in ("message_id", "decision_id", "decided_at")} == {
        k: decision[k] for k in ("message_id", "decision_id", "decided_at")
    }
    assert Db(dos).value("SELECT COUNT(*) FROM records WHERE message_id = ?", (again["message_id"],)) == 1


def test_bad_recognition_input_gets_problems(corridor: list[Member]) -> None:
    dos = corridor[1]
    token = dos.node.tokens["NCS"]
    cases = [
        ("/v1/consignments/CIM/not%20a%20note!", None, 400, "invalid-parameter"),
        ("/v1/consignments/XYZ/123", None, 400, "invalid-parameter"),
        ("/v1/arrivals", {"consignments": [], "arrived_at": "2026-11-22T04:00:00Z"}, 422, "validation-failed"),
        ("/v1/unseal-authorizations", {"lock_id": "LK-1", "seal_id": "ES-1", "container": factories.container(),
                                       "officer": "O", "valid_from": "2026-11-22T05:00:00Z",
                                       "valid_to": "2026-11-22T04:00:00Z"}, 422, "validation-failed"),
        ("/v1/alarms/not-a-uuid/acknowledgement", {"officer": "O"}, 400, "invalid-parameter"),
        ("/v1/alarms/8a4f1e3c-0000-4000-8000-000000000000/acknowledgement", {"officer": "O"}, 404, "not-found"),
    ]
    for path, body, status, code in cases:
        got, problem = call(dos.url + path, token, body)
        assert (got, problem["code"]) == (status, code), (path, problem)
        assert problem["detail"]
    # A gateway sees only its own locks' authorisations.
    got, problem = call(f"{dos.url}/v1/unseal-authorizations?lock_id=OTHER-1", dos.node.tokens["GW-1"])
    assert (got, problem["code"]) == (403, "lock-out-of-scope")


def test_a_gap_back_filled_from_the_lock_log_turns_unknown_into_recognised(corridor: list[Member]) -> None:
    akl, dos, ala = corridor
    journey = Journey(corridor, 5)
    journey.register()
    journey.inspect()
    journey.report(akl, "sealed", "CNAKL", seal="ES-0001", sealing_party="CU")
    journey.seq += 1  # event 2 is lost to a radio outage, for now
    journey.report(akl)
    _delivered(akl)
    journey.report(dos, locode="KZDOS")
    decision = _decided(journey, dos, "NOT_RECOGNISED")
    assert [r["code"] for r in decision["reasons"]] == ["SEAL_CHAIN_UNKNOWN"]
    assert f"event 2 of lock {journey.lock} has not been received" in decision["reasons"][0]["description"]

    # The gateway uploads the lock's stored log: event 2 arrives late, and Dostyk decides again.
    late = factories.seal_event(seq=2, lock=journey.lock, container=journey.container, location={"locode": "CNURC"})
    status, body = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"], {"events": [late]})
    assert body["results"][0]["order"] == "late", body
    _decided(journey, dos, "RECOGNISED")
