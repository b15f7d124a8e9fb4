"""The recognition rules, case by case along the corridor (docs/recognition.md).

Every case is a story: CN-AKL inspects a consignment at Alashankou and seals
its container; the lock reports every 30 minutes across Kazakhstan; the
container arrives at Almaty (KZALA), whose node decides. Each case changes
the story and states the decision it must get, with its reason codes. Then a
property: any arrival order of the same records gives the same decision.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrx.node.agreements import Agreement, Inspection, agreement
from mrx.node.recognition import Case, Decision, decide
from mrx.node.sealchain import Authorisation, ChainEvent, ChainRules, Finding, evaluate
from mrx.node.storage import Targeting
from mrx.schemas.codes import (
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    DecisionOutcome,
    DecisionReason,
    SealActionCode,
    SealChainVerdict,
    SealConditionCode,
    SealEventType,
    SealTypeCode,
)
from mrx.schemas.messages import ConsignmentReference, ControlResult, Seal, TransportEquipment

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)  # the inspection at Alashankou
CONTAINER = "CSQU3054383"
LOCK = "LK-CN-0001"
SEAL = "ES-0001"
NEW_SEAL = "ES-0002"
CIM = ConsignmentReference(ConsignmentReferenceType.CIM, "33 216102 0033 70268 8")
RULES = ChainRules(reporting_period=timedelta(hours=1), clock_tolerance=timedelta(minutes=5))
LEGS = 20  # position reports after sealing, 30 minutes apart; the last is at Almaty
ARRIVAL = T0 + timedelta(minutes=5 + 30 * LEGS)

R = DecisionReason
RECOGNISED, NOT = DecisionOutcome.RECOGNISED, DecisionOutcome.NOT_RECOGNISED


def _id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"mrx-test:{name}")


def standard_agreement(**terms: Any) -> Agreement:
    defaults: dict[str, Any] = dict(
        control_types=(ControlType.PHYSICAL, ControlType.NON_INTRUSIVE),
        result_codes=(ControlResultCode.A1, ControlResultCode.A2),
        excluded_hs_prefixes=("93", "2844"),
        max_age=timedelta(hours=72),
        require_intact_chain=True,
        unseal_offices=("KZDOS",),
    )
    return agreement("CN-KZ-2026", "CN-AKL", **{**defaults, **terms})


def inspection(
    name: str = "inspection",
    *,
    result: ControlResultCode = ControlResultCode.A1,
    control_type: ControlType = ControlType.PHYSICAL,
    at: datetime = T0,
    hs: tuple[str, ...] = ("8471", "8517"),
    sender: str = "CN-AKL",
    affixed: str = SEAL,
) -> Inspection:
    return Inspection(
        _id(name),
        sender,
        ControlResult(
            control_id=f"CN-AKL-{name}",
            consignment_refs=(CIM,),
            office="CNAKL",
            control_type=control_type,
            result=result,
            controlled_at=at,
            officer="Officer Wang",
            transport_equipment=(
                TransportEquipment(
                    CONTAINER, (Seal(affixed, SealActionCode.AFFIXED, type=SealTypeCode.ELECTRONIC),)
                ),
            ),
            hs_codes=hs,
        ),
    )


def event(seq: int, kind: SealEventType = SealEventType.POSITION, **changes: Any) -> ChainEvent:
    device_time = T0 + timedelta(minutes=5 + 30 * (seq - 1))
    base = ChainEvent(
        message_id=_id(f"event-{seq}"),
        lock_id=LOCK,
        lock_sequence=seq,
        seal_id=SEAL,
        container=CONTAINER,
        event_type=kind,
        device_time=device_time,
        receipt_time=device_time + timedelta(seconds=20),
        locode="CNAKL" if seq == 1 else ("KZALA" if seq == LEGS + 1 else None),
    )
    return replace(base, **changes)


def journey() -> list[ChainEvent]:
    """Sealed at Alashankou, then a report every 30 minutes up to the arrival at Almaty."""
    return [event(1, SealEventType.SEALED)] + [event(seq) for seq in range(2, LEGS + 2)]


def authorisation(name: str = "auth", *, office: str = "KZDOS", lock: str = LOCK, seal: str = SEAL,
                  valid_from: datetime = T0, valid_to: datetime = ARRIVAL) -> Authorisation:
    return Authorisation(_id(name), _id(f"{name}-record"), lock, seal, office, valid_from, valid_to)


def unseal_and_reseal(seq: int, auth: str = "auth", office: str = "KZDOS") -> list[ChainEvent]:
    """At event ``seq`` the lock is unsealed on an authorisation, then re-sealed with a new seal."""
    return [
        event(seq, SealEventType.UNSEALED, locode=office, authorization_id=_id(auth)),
        event(seq + 1, SealEventType.SEALED, locode=office, seal_id=NEW_SEAL),
    ] + [event(s, seal_id=NEW_SEAL) for s in range(seq + 2, LEGS + 2)]


@dataclass
class Story:
    events: list[ChainEvent] = field(default_factory=journey)
    inspections: list[Inspection] = field(default_factory=lambda: [inspection()])
    authorisations: list[Authorisation] = field(default_factory=list)
    targeting: list[Targeting] = field(default_factory=list)
    invalid_signatures: dict[uuid.UUID, str] = field(default_factory=dict)
    agreements: list[Agreement] = field(default_factory=lambda: [standard_agreement()])
    at: datetime = ARRIVAL

    def case(self) -> Case:
        return Case(
            office="KZALA",
            consignment_refs=(CIM,),
            at=self.at,
            trigger=_id(f"event-{LEGS + 1}"),
            containers=(CONTAINER,),
            inspections=tuple(self.inspections),
            invalid_signatures=self.invalid_signatures,
            events=tuple(self.events),
            authorisations={a.authorization_id: a for a in self.authorisations},
            targeting=tuple(self.targeting),
        )

    def decide(self) -> Decision:
        return decide(self.case(), {a.partner: a for a in self.agreements}, RULES)


def _with(events: list[ChainEvent], seq: int, **changes: Any) -> list[ChainEvent]:
    return [replace(e, **changes) if e.lock_sequence == seq else e for e in events]


def _without(events: list[ChainEvent], *seqs: int) -> list[ChainEvent]:
    return [e for e in events if e.lock_sequence not in seqs]


def _replaced_from(seq: int, tail: list[ChainEvent]) -> list[ChainEvent]:
    return [e for e in journey() if e.lock_sequence < seq] + tail


CASES: dict[str, tuple[Story, DecisionOutcome, set[DecisionReason], SealChainVerdict | None]] = {
    "happy path": (Story(), RECOGNISED, set(), SealChainVerdict.INTACT),
    "tamper in transit": (
        Story(events=_with(journey(), 9, event_type=SealEventType.TAMPER)), NOT, {R.SEAL_CHAIN_BROKEN},
        SealChainVerdict.BROKEN,
    ),
    "housing breach reported with a broken seal": (
        Story(events=_with(journey(), 9, event_type=SealEventType.HOUSING_BREACH, condition=SealConditionCode.BROKEN)),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "authorised unseal at Dostyk, re-sealed by customs with a new seal": (
        Story(events=_replaced_from(8, unseal_and_reseal(8)), authorisations=[authorisation()]),
        RECOGNISED, set(), SealChainVerdict.INTACT,
    ),
    "authorisation replayed for a second opening": (
        Story(
            events=_replaced_from(8, unseal_and_reseal(8)[:2] + [
                event(10, SealEventType.UNSEALED, locode="KZDOS", seal_id=NEW_SEAL, authorization_id=_id("auth")),
                event(11, SealEventType.SEALED, locode="KZDOS", seal_id="ES-0003"),
            ] + [event(s, seal_id="ES-0003") for s in range(12, LEGS + 2)]),
            authorisations=[authorisation()],
        ),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "authorisation for another lock": (
        Story(events=_replaced_from(8, unseal_and_reseal(8)), authorisations=[authorisation(lock="LK-CN-0002")]),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "authorisation expired before the opening": (
        Story(
            events=_replaced_from(8, unseal_and_reseal(8)),
            authorisations=[authorisation(valid_to=T0 + timedelta(hours=1))],
        ),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "authorisation for another office than where the lock was opened": (
        Story(events=_replaced_from(8, unseal_and_reseal(8, office="KZSAR")), authorisations=[authorisation()]),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "authorisation of an office the agreement does not accept": (
        Story(
            events=_replaced_from(8, unseal_and_reseal(8, office="KZSAR")),
            authorisations=[authorisation(office="KZSAR")],
        ),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "unsealed citing an authorisation not received (yet)": (
        Story(events=_replaced_from(8, unseal_and_reseal(8))), NOT, {R.SEAL_CHAIN_UNKNOWN}, SealChainVerdict.UNKNOWN,
    ),
    "unsealed citing no authorisation": (
        Story(events=_replaced_from(8, [event(8, SealEventType.UNSEALED, locode="KZDOS"),
                                        *unseal_and_reseal(8)[1:]])),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "an opening after the arrival is not what was decided on": (
        Story(events=journey() + [event(LEGS + 2, SealEventType.OPENED, locode="KZALA")]),
        RECOGNISED, set(), SealChainVerdict.INTACT,
    ),
    "opened while sealed": (
        Story(events=_with(journey(), 12, event_type=SealEventType.OPENED)), NOT, {R.SEAL_CHAIN_BROKEN},
        SealChainVerdict.BROKEN,
    ),
    "left open after an authorised unseal": (
        Story(
            events=_replaced_from(8, [event(8, SealEventType.UNSEALED, locode="KZDOS", authorization_id=_id("auth"))]
                                  + [event(s) for s in range(9, LEGS + 2)]),
            authorisations=[authorisation()],
        ),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "seal ID changed without an opening": (
        Story(events=_replaced_from(10, [event(s, seal_id=NEW_SEAL) for s in range(10, LEGS + 2)])),
        NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "seal affixed by customs missing on arrival": (
        Story(inspections=[inspection(affixed="ES-0999")]), NOT, {R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "sequence gap not yet filled": (
        Story(events=_without(journey(), 10, 11)), NOT, {R.SEAL_CHAIN_UNKNOWN}, SealChainVerdict.UNKNOWN,
    ),
    "sequence gap back-filled from the lock's stored log": (
        Story(events=_without(journey(), 10, 11) + [e for e in journey() if e.lock_sequence in (10, 11)]),
        RECOGNISED, set(), SealChainVerdict.INTACT,
    ),
    "no report for longer than the reporting period": (
        Story(events=[e if e.lock_sequence < 10 else replace(e, device_time=e.device_time + timedelta(hours=2),
                                                              receipt_time=e.receipt_time + timedelta(hours=2))
                      for e in journey()], at=ARRIVAL + timedelta(hours=2)),
        NOT, {R.SEAL_CHAIN_UNKNOWN}, SealChainVerdict.UNKNOWN,
    ),
    "lock silent since before the arrival": (
        Story(events=[e for e in journey() if e.lock_sequence <= 15]), NOT, {R.SEAL_CHAIN_UNKNOWN},
        SealChainVerdict.UNKNOWN,
    ),
    "clock skew: the lock dates an event after it was received": (
        Story(events=_with(journey(), 7, device_time=event(7).device_time + timedelta(minutes=20))),
        NOT, {R.SEAL_CHAIN_UNKNOWN}, SealChainVerdict.UNKNOWN,
    ),
    "clock skew within tolerance": (
        Story(events=_with(journey(), 7, device_time=event(7).device_time + timedelta(minutes=4))),
        RECOGNISED, set(), SealChainVerdict.INTACT,
    ),
    "two records claim one sequence number": (
        Story(events=journey() + [replace(event(6), message_id=_id("impostor"), locode="KZSAR")]),
        NOT, {R.SEAL_CHAIN_UNKNOWN}, SealChainVerdict.UNKNOWN,
    ),
    "lock malfunction": (
        Story(events=_with(journey(), 14, event_type=SealEventType.MALFUNCTION)), NOT, {R.SEAL_CHAIN_UNKNOWN},
        SealChainVerdict.UNKNOWN,
    ),
    "duplicate events": (Story(events=journey() + journey()[3:9]), RECOGNISED, set(), SealChainVerdict.INTACT),
    "reordered events": (Story(events=list(reversed(journey()))), RECOGNISED, set(), SealChainVerdict.INTACT),
    "result B1": (
        Story(inspections=[inspection(result=ControlResultCode.B1)]), NOT, {R.RESULT_NOT_SATISFACTORY},
        SealChainVerdict.INTACT,
    ),
    "B1, then a satisfactory re-inspection": (
        Story(inspections=[inspection("first", result=ControlResultCode.B1, at=T0 - timedelta(hours=2)), inspection()]),
        RECOGNISED, set(), SealChainVerdict.INTACT,
    ),
    "HS code out of scope": (
        Story(inspections=[inspection(hs=("8471", "930200"))]), NOT, {R.OUTSIDE_AGREEMENT_SCOPE},
        SealChainVerdict.INTACT,
    ),
    "control type not recognised": (
        Story(inspections=[inspection(control_type=ControlType.DOCUMENTARY)]), NOT, {R.OUTSIDE_AGREEMENT_SCOPE},
        SealChainVerdict.INTACT,
    ),
    "inspection older than the agreement allows": (
        Story(agreements=[standard_agreement(max_age=timedelta(hours=6))]), NOT, {R.TOO_OLD}, SealChainVerdict.INTACT,
    ),
    "partner key revoked before it signed the control result": (
        Story(invalid_signatures={_id("inspection"): "key k1 was revoked as of 2026-11-19T00:00:00Z"}),
        NOT, {R.SIGNATURE_INVALID}, SealChainVerdict.INTACT,
    ),
    "no agreement with the inspecting partner": (
        Story(inspections=[inspection(sender="MN-ZAM")]), NOT, {R.OUTSIDE_AGREEMENT_SCOPE}, SealChainVerdict.INTACT,
    ),
    "arrival before the control result has been received": (
        Story(inspections=[]), NOT, {R.NO_CONTROL_RESULT}, None,
    ),
    "national targeting wins over a good inspection": (
        Story(targeting=[Targeting("KZ-RISK-77", "risk profile 12: declared value", T0)]), NOT,
        {R.NATIONAL_TARGETING}, SealChainVerdict.INTACT,
    ),
    "several reasons at once": (
        Story(inspections=[inspection(result=ControlResultCode.B1, hs=("2844",))],
              events=_with(journey(), 9, event_type=SealEventType.TAMPER)),
        NOT, {R.RESULT_NOT_SATISFACTORY, R.OUTSIDE_AGREEMENT_SCOPE, R.SEAL_CHAIN_BROKEN}, SealChainVerdict.BROKEN,
    ),
    "chain not required by the agreement": (
        Story(events=_with(journey(), 9, event_type=SealEventType.TAMPER),
              agreements=[standard_agreement(require_intact_chain=False)]),
        RECOGNISED, set(), SealChainVerdict.BROKEN,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_corridor_case(name: str) -> None:
    story, outcome, reasons, verdict = CASES[name]
    decision = story.decide()
    assert decision.outcome is outcome, [r.description for r in decision.reasons]
    assert {r.code for r in decision.reasons} == reasons
    assert decision.seal_chain_verdict is verdict
    for reason in decision.reasons:
        assert reason.description  # every reason explains itself
        if reason.code is not R.NATIONAL_TARGETING:  # national instructions are not records
            assert reason.evidence, reason


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


def test_a_broken_chain_names_the_tamper_record() -> None:
    decision = CASES["tamper in transit"][0].decide()
    (reason,) = decision.reasons
    assert reason.evidence == (_id("inspection"), _id("event-9"))
    assert "tamper" in reason.description


def test_a_gap_names_the_events_around_it() -> None:
    (reason,) = CASES["sequence gap not yet filled"][0].decide().reasons
    assert "events 10 to 11 of lock LK-CN-0001" in reason.description
    assert reason.evidence == (_id("inspection"), _id("event-9"), _id("event-12"))


def test_a_replay_names_the_first_use() -> None:
    story = CASES["authorisation replayed for a second opening"][0]
    findings = [f for c in story.decide().chains for f in c.findings]
    assert [f.kind for f in findings] == [Finding.UNAUTHORISED_OPENING]
    assert "already used at sequence 8" in findings[0].description


def test_targeting_does_not_hide_the_other_reasons() -> None:
    story = Story(
        targeting=[Targeting("KZ-RISK-77", "risk profile 12", T0)], inspections=[inspection(result=ControlResultCode.B1)]
    )
    codes = [r.code for r in story.decide().reasons]
    assert codes == [R.RESULT_NOT_SATISFACTORY, R.NATIONAL_TARGETING]  # the fixed order of the code list


def test_no_events_at_all_is_unknown() -> None:
    verdict = evaluate(
        CONTAINER, [], since=T0, until=ARRIVAL, rules=RULES, authorisations={}, office_counts=lambda o: True
    )
    assert verdict.verdict is SealChainVerdict.UNKNOWN
    assert [f.kind for f in verdict.findings] == [Finding.NO_DATA]


def test_events_of_other_containers_do_not_count() -> None:
    other = [replace(e, container="TGHU8721607", event_type=SealEventType.TAMPER) for e in journey()]
    assert Story(events=journey() + other).decide().outcome is RECOGNISED


def test_the_interval_starts_at_the_state_the_inspection_left() -> None:
    """A tamper long before the inspection (which then affixed a new seal) does not count against it."""
    earlier = [
        event(1, SealEventType.SEALED, device_time=T0 - timedelta(days=2), receipt_time=T0 - timedelta(days=2)),
        event(2, SealEventType.TAMPER, device_time=T0 - timedelta(days=1), receipt_time=T0 - timedelta(days=1)),
    ]
    later = [replace(e, lock_sequence=e.lock_sequence + 2, message_id=_id(f"late-{e.lock_sequence}")) for e in journey()]
    assert Story(events=earlier + later).decide().outcome is RECOGNISED


# -- the property: arrival order never matters --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(CASES)), data=st.data())
def test_shuffled_arrival_gives_the_same_decision(name: str, data: st.DataObject) -> None:
    story = CASES[name][0]
    expected = story.decide()
    shuffled = Story(
        events=data.draw(st.permutations(story.events)),
        inspections=data.draw(st.permutations(story.inspections)),
        authorisations=data.draw(st.permutations(story.authorisations)),
        targeting=data.draw(st.permutations(story.targeting)),
        invalid_signatures=story.invalid_signatures,
        agreements=story.agreements,
        at=story.at,
    )
    assert shuffled.decide() == expected


# -- a partner key revoked after signing (docs/recognition.md) ----------------------------------------------


def test_a_revocation_after_signing_keeps_the_record_one_backdated_before_it_voids_it(tmp_path) -> None:
    """What the node checks at each decision: the control result against the partner's keys as known now."""
    from mrx.keys.keyring import KeyStore
    from mrx.node.records import RecordSigner, TrustedKey, verify_records
    from mrx.node.records import Refusal as RecordRefusal

    signed_at = datetime.now(timezone.utc) - timedelta(days=2)
    partner = KeyStore.create(tmp_path / "akl", clock=lambda: signed_at - timedelta(days=30))
    kid = partner.signing_key.kid
    record = RecordSigner("CN-AKL", lambda: partner.signing_key, clock=lambda: signed_at).sign(
        inspection().result, recipients=("KZ-ALA",)
    )

    def verdict() -> object:
        keys = {k.kid: TrustedKey("CN-AKL", k) for k in KeyStore.open(tmp_path / "akl").keys()}
        (result,) = verify_records([record.jws], keys, max_xml_bytes=262_144)
        return result

    assert not isinstance(verdict(), RecordRefusal)
    KeyStore.open(tmp_path / "akl").rotate()  # a new key, to sign the revocations
    KeyStore.open(tmp_path / "akl").revoke(kid, at=signed_at + timedelta(days=1))  # revoked after it signed
    assert not isinstance(verdict(), RecordRefusal)
    KeyStore.open(tmp_path / "akl").revoke(kid, at=signed_at - timedelta(hours=1))  # compromised since before
    refused = verdict()
    assert isinstance(refused, RecordRefusal) and refused.code == "record-key-not-valid"
    story = Story(invalid_signatures={_id("inspection"): f"{refused.code}: {refused.detail}"})
    assert [r.code for r in story.decide().reasons] == [R.SIGNATURE_INVALID]


def test_a_seal_reported_broken_in_every_later_report_is_one_reason_with_the_first_report_as_evidence() -> None:
    events = [
        replace(e, event_type=SealEventType.TAMPER if e.lock_sequence == 9 else e.event_type,
                condition=SealConditionCode.BROKEN) if e.lock_sequence >= 9 else e
        for e in journey()
    ]
    later = [e for e in events if e.lock_sequence > 9]
    assert len(later) >= 2  # the lock goes on reporting the broken seal
    decision = Story(events=events).decide()
    assert decision.outcome is NOT
    assert [r.code for r in decision.reasons] == [R.SEAL_CHAIN_BROKEN]
    tamper = next(e for e in events if e.lock_sequence == 9)
    assert tamper.message_id in decision.reasons[0].evidence

    # A seal that goes bad without a tamper report: one reason too, citing the first report that shows it.
    drifting = _with(journey(), 9, condition=SealConditionCode.DAMAGED)
    drifting = [replace(e, condition=SealConditionCode.DAMAGED) if e.lock_sequence > 9 else e for e in drifting]
    reasons = Story(events=drifting).decide().reasons
    assert [r.code for r in reasons] == [R.SEAL_CHAIN_BROKEN]
    assert next(e for e in drifting if e.lock_sequence == 9).message_id in reasons[0].evidence
