"""Hypothesis strategies for every mrx message: anything the XSDs and the check digits allow.

Each strategy draws from the whole value space of its XSD type (patterns,
lengths, ranges, code lists), so that the round-trip property covers the
corners: astral characters, ``&``, ``<``, ``]]>`` and CR in free text,
microseconds, far time zones, negative coordinates, empty and long lists.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

from mrx.schemas.codes import (
    AlarmType,
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    DecisionOutcome,
    DecisionReason,
    ReceiptStatus,
    SealActionCode,
    SealChainVerdict,
    SealConditionCode,
    SealEventType,
    SealingPartyCode,
    SealTypeCode,
)
from mrx.schemas.identifiers import iso6346_check_digit, luhn_check_digit
from mrx.schemas.messages import (
    MESSAGE_TYPES,
    Acknowledgement,
    Alarm,
    Body,
    ConsignmentReference,
    ControlResult,
    DecisionReasonEntry,
    GeoPosition,
    Header,
    Location,
    Message,
    Receipt,
    ReceiptError,
    RecognitionDecision,
    Seal,
    SealEvent,
    TransportEquipment,
    UnsealAuthorization,
)

# --- values ------------------------------------------------------------------

# Characters an XML 1.0 document can carry: no surrogates, no C0 controls
# other than TAB, LF and CR, no U+FFFE/U+FFFF.
_XML_CHARS = st.characters(
    exclude_categories=("Cs",),
    exclude_characters=[chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD)] + ["\ufffe", "\uffff"],
)
_XML_SPACE = " \t\n\r"

#: Free text (XSD TextType): 1-512 characters, line breaks, markup characters and all.
free_text = st.text(_XML_CHARS, min_size=1, max_size=512) | st.sampled_from(
    ["a & b < c > d ]]> e", "line one\r\nline two\rthree", " padded ", "\t", "Проверка 检查 🚆"]
)

#: A name (XSD NameType): one line, 1-70 characters, no surrounding XML white space.
names = st.text(_XML_CHARS.filter(lambda c: c not in "\r\n"), min_size=1, max_size=70).filter(
    lambda s: s[0] not in _XML_SPACE and s[-1] not in _XML_SPACE
)

node_ids = st.from_regex(r"[A-Z]{2}-[A-Z0-9]{2,16}", fullmatch=True)
locodes = st.from_regex(r"[A-Z]{2}[A-Z2-9]{3}", fullmatch=True)
device_ids = st.from_regex(r"[A-Z0-9][A-Z0-9._\-]{0,34}", fullmatch=True)
seal_ids = st.from_regex(r"[A-Z0-9][A-Z0-9./_\-]{0,19}", fullmatch=True)
reference_ids = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9 ./_\-]{0,33}[A-Za-z0-9])?", fullmatch=True)
hs_codes = st.from_regex(r"[0-9]{4,10}", fullmatch=True)
nonces = st.from_regex(r"[A-Za-z0-9_\-]{22,128}", fullmatch=True)
validation_codes = st.from_regex(r"[a-z][a-z0-9]{0,9}(-[a-z0-9]{1,9}){0,4}", fullmatch=True)
tag_ids = st.text(_XML_CHARS.filter(lambda c: c not in _XML_SPACE), min_size=1, max_size=512)
digests = st.binary(min_size=32, max_size=32)

# Any instant from 1900 to 2999 in UTC or at a fixed offset; the codec
# returns UTC, and aware datetimes compare by instant.
_zones = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=8)),
        timezone(timedelta(hours=6)),
        timezone(timedelta(hours=-9, minutes=-30)),
        timezone(timedelta(hours=14)),
        timezone(-timedelta(hours=14)),
    ]
)
datetimes = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2999, 12, 30), timezones=_zones)


@st.composite
def containers(draw: st.DrawFn) -> str:
    body = draw(st.from_regex(r"[A-Z]{3}[UJZ][0-9]{6}", fullmatch=True))
    return body + str(iso6346_check_digit(body))


@st.composite
def wagons(draw: st.DrawFn) -> str:
    body = draw(st.from_regex(r"[0-9]{11}", fullmatch=True))
    return body + str(luhn_check_digit(body))


@st.composite
def cim_notes(draw: st.DrawFn) -> str:
    prefix = draw(st.from_regex(r"[0-9]{1,12}", fullmatch=True))
    number = draw(st.from_regex(r"[0-9]{5}", fullmatch=True))
    first, second = draw(st.sampled_from(["", " ", "-", "/"])), draw(st.sampled_from(["", " ", "-", "/"]))
    return f"{prefix}{first}{number}{second}{luhn_check_digit(number)}"


def _decimals(bound: int) -> st.SearchStrategy[Decimal]:
    return st.integers(0, 7).flatmap(
        lambda places: st.decimals(min_value=-bound, max_value=bound, places=places, allow_nan=False)
    )


latitudes = _decimals(90)
longitudes = _decimals(180)

# --- blocks ------------------------------------------------------------------


@st.composite
def consignment_references(draw: st.DrawFn) -> ConsignmentReference:
    kind = draw(st.sampled_from(ConsignmentReferenceType))
    reference = draw(cim_notes()) if kind is ConsignmentReferenceType.CIM else draw(reference_ids)
    return ConsignmentReference(type=kind, id=reference)


def _tuples(strategy: st.SearchStrategy, min_size: int = 0, max_size: int = 3) -> st.SearchStrategy[tuple]:
    return st.lists(strategy, min_size=min_size, max_size=max_size).map(tuple)


positions = st.builds(GeoPosition, latitude=latitudes, longitude=longitudes)
locations = st.one_of(
    st.builds(Location, locode=locodes, position=st.none() | positions),
    st.builds(Location, locode=st.none(), position=positions),
)

seal_events = st.builds(
    SealEvent,
    event_id=st.uuids(),
    gateway_id=device_ids,
    lock_id=device_ids,
    seal_id=seal_ids,
    container=containers(),
    lock_sequence=st.integers(0, 2**63 - 1),
    event_type=st.sampled_from(SealEventType),
    device_time=datetimes,
    receipt_time=datetimes,
    location=st.none() | locations,
    wagon=st.none() | wagons(),
    condition=st.sampled_from(SealConditionCode),
    seal_type=st.sampled_from(SealTypeCode),
    sealing_party=st.none() | st.sampled_from(SealingPartyCode),
    authorization_id=st.none() | st.uuids(),
    consignment_refs=_tuples(consignment_references()),
    battery_percent=st.none() | st.integers(0, 100),
)

inspected_seals = st.builds(
    Seal,
    id=seal_ids,
    action=st.sampled_from(SealActionCode),
    condition=st.sampled_from(SealConditionCode),
    type=st.none() | st.sampled_from(SealTypeCode),
    sealing_party=st.none() | st.sampled_from(SealingPartyCode),
)

control_results = st.builds(
    ControlResult,
    control_id=reference_ids,
    consignment_refs=_tuples(consignment_references(), min_size=1),
    office=locodes,
    control_type=st.sampled_from(ControlType),
    result=st.sampled_from(ControlResultCode),
    controlled_at=datetimes,
    officer=names,
    transport_equipment=_tuples(st.builds(TransportEquipment, container=containers(), seals=_tuples(inspected_seals))),
    hs_codes=_tuples(hs_codes),
    remarks=st.none() | free_text,
)

recognition_decisions = st.builds(
    RecognitionDecision,
    decision_id=st.uuids(),
    office=locodes,
    consignment_refs=_tuples(consignment_references(), min_size=1),
    outcome=st.sampled_from(DecisionOutcome),
    decided_at=datetimes,
    containers=_tuples(containers()),
    control_result_message_id=st.none() | st.uuids(),
    seal_chain_verdict=st.none() | st.sampled_from(SealChainVerdict),
    agreement_id=st.none() | reference_ids,
    reasons=_tuples(
        st.builds(
            DecisionReasonEntry,
            code=st.sampled_from(DecisionReason),
            description=free_text,
            evidence=_tuples(st.uuids()),
        )
    ),
)

unseal_authorizations = st.builds(
    UnsealAuthorization,
    authorization_id=st.uuids(),
    lock_id=device_ids,
    seal_id=seal_ids,
    office=locodes,
    valid_from=datetimes,
    valid_to=datetimes,
    nonce=nonces,
    officer=names,
    container=st.none() | containers(),
    remarks=st.none() | free_text,
)

alarms = st.builds(
    Alarm,
    alarm_id=st.uuids(),
    alarm_type=st.sampled_from(AlarmType),
    raised_at=datetimes,
    office=locodes,
    lock_id=device_ids,
    seal_id=seal_ids,
    container=containers(),
    description=free_text,
    consignment_refs=_tuples(consignment_references()),
    evidence=_tuples(st.uuids()),
)

acknowledgements = st.builds(
    Acknowledgement,
    received_message_id=st.none() | st.uuids(),
    received_digest=digests,
    status=st.sampled_from(ReceiptStatus),
    received_at=datetimes,
    errors=_tuples(st.builds(ReceiptError, code=validation_codes, description=free_text, pointer=st.none() | tag_ids)),
)

# One acknowledgement or several, each of other bytes (the XSD's unique constraint).
receipts = st.builds(
    Receipt,
    st.lists(acknowledgements, min_size=1, max_size=4, unique_by=lambda a: a.received_digest).map(tuple),
)

BODIES: dict[str, st.SearchStrategy[Body]] = {
    MESSAGE_TYPES[SealEvent]: seal_events,
    MESSAGE_TYPES[ControlResult]: control_results,
    MESSAGE_TYPES[RecognitionDecision]: recognition_decisions,
    MESSAGE_TYPES[UnsealAuthorization]: unseal_authorizations,
    MESSAGE_TYPES[Alarm]: alarms,
    MESSAGE_TYPES[Receipt]: receipts,
}


@st.composite
def messages(draw: st.DrawFn, body: st.SearchStrategy[Body]) -> Message:
    drawn = draw(body)
    header = Header(
        message_id=draw(st.uuids()),
        message_type=MESSAGE_TYPES[type(drawn)],
        sender=draw(node_ids),
        recipients=draw(_tuples(node_ids)),
        prepared_at=draw(datetimes),
        correlation_id=draw(st.none() | st.uuids()),
    )
    return Message(header, drawn)
