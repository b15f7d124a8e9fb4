"""The codec: exact round trips, one canonical form, and refusals with the right code and pointer."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from lxml import etree

from mrx.schemas import codec
from mrx.schemas.codes import ConsignmentReferenceType
from mrx.schemas.messages import (
    ConsignmentReference,
    GeoPosition,
    Location,
    Message,
    SealEvent,
    TransportEquipment,
)
from mrx.schemas.xml import NAMESPACE, XmlError, XmlErrorCode

from . import corridor
from .strategies import BODIES, messages

ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def with_body(message: Message, **changes: object) -> Message:
    return Message(message.header, dataclasses.replace(message.body, **changes))  # type: ignore[arg-type]


def refusal(message: Message) -> XmlError:
    with pytest.raises(XmlError) as caught:
        codec.encode(message)
    return caught.value


SEALED = corridor.SEALED_AT_CHONGQING

# --- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("message_type", list(BODIES))
def test_round_trip(message_type: str) -> None:
    @ROUND_TRIP
    @given(messages(BODIES[message_type]))
    def property(message: Message) -> None:
        data = codec.encode(message)
        decoded = codec.decode(data)
        assert decoded == message
        assert codec.encode(decoded) == data  # one canonical form: equal messages, equal bytes

    property()


@pytest.mark.parametrize("message_type", list(BODIES))
def test_encodings_satisfy_an_independent_validator(
    message_type: str, xmlschema_validators: dict[str, xmlschema.XMLSchema10]
) -> None:
    validator = xmlschema_validators[message_type]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages(BODIES[message_type]))
    def property(message: Message) -> None:
        validator.validate(codec.encode(message).decode("utf-8"))

    property()


def test_canonical_form() -> None:
    data = codec.encode(SEALED)
    declaration, _, document = data.partition(b"\n")
    assert declaration == b'<?xml version="1.0" encoding="UTF-8"?>'
    assert document.startswith(f'<SealEventNotification xmlns="{NAMESPACE}"><Header><MessageID>'.encode())
    assert b"\n" not in document and b"> <" not in document and not document.endswith(b"\n")
    assert b"<DeviceDateTime>2025-03-14T02:14:58Z</DeviceDateTime>" in data  # 10:14:58+08:00 in UTC
    assert b"<ReceiptDateTime>2025-03-14T02:15:03.412000Z</ReceiptDateTime>" in data


def test_decode_returns_utc_and_python_types() -> None:
    body = codec.decode(codec.encode(SEALED)).body
    assert isinstance(body, SealEvent)
    assert body.device_time.tzinfo is UTC and body.device_time == SEALED.body.device_time  # type: ignore[union-attr]
    assert isinstance(body.event_id, UUID)
    assert body.location is not None and body.location.position is not None
    assert body.location.position.latitude == Decimal("29.6141")
    assert isinstance(body.location.position.latitude, Decimal)


@pytest.mark.parametrize(
    ("latitude", "written"),
    [
        (Decimal("29.6141000"), "29.6141"),
        (Decimal("1E+1"), "10"),
        (Decimal("-0.0"), "0"),
        (Decimal("0E-7"), "0"),
        (Decimal("-89.9999999"), "-89.9999999"),
        (Decimal("90"), "90"),
        (Decimal("5E-7"), "0.0000005"),
    ],
)
def test_decimals_are_written_plainly_and_minimally(latitude: Decimal, written: str) -> None:
    message = with_body(SEALED, location=Location(None, GeoPosition(latitude, Decimal("1"))))
    data = codec.encode(message)
    assert f"<LatitudeMeasure>{written}</LatitudeMeasure>".encode() in data
    assert codec.decode(data) == message


def test_datetimes_keep_the_instant_whatever_the_zone() -> None:
    moment = datetime(2025, 3, 14, 2, 14, 58, 1, tzinfo=UTC)
    for zone in (timezone(timedelta(hours=14)), timezone(timedelta(hours=-9, minutes=-30)), UTC):
        message = with_body(SEALED, device_time=moment.astimezone(zone))
        data = codec.encode(message)
        assert b"<DeviceDateTime>2025-03-14T02:14:58.000001Z</DeviceDateTime>" in data
        assert codec.decode(data) == message


def test_text_is_escaped_and_survives_exactly() -> None:
    remarks = "a & b < c > d ]]> \"quoted\" 'single'\r\nCRLF\rCR\ttab 检查 🚆 &amp;"
    message = with_body(corridor.CONTROL_AT_ALASHANKOU, remarks=remarks)
    data = codec.encode(message)
    assert b"a &amp; b &lt; c &gt; d ]]&gt;" in data
    assert b"&#13;" in data  # a raw CR would come back as LF
    assert codec.decode(data) == message


def test_a_value_cannot_add_markup() -> None:
    error = refusal(with_body(SEALED, seal_id="X</ID><TypeCode>1</TypeCode></Seal><Seal><ID>Y"))
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert error.pointer == "/SealEventNotification/SealEvent/Seal/ID"


@pytest.mark.parametrize("bad", ["bell \x07", "nul \x00", "lone surrogate \ud800", "not a character \uffff"])
def test_text_xml_cannot_carry_is_refused(bad: str) -> None:
    error = refusal(with_body(corridor.CONTROL_AT_ALASHANKOU, remarks=bad))
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert "cannot carry" in error.detail


def test_naive_datetime_is_refused() -> None:
    error = refusal(with_body(SEALED, device_time=datetime(2025, 3, 14, 10, 14, 58)))
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert "no time zone" in error.detail


def test_datetime_outside_the_years_is_refused() -> None:
    far = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))  # UTC would be year 10000
    assert "1900-2999" in refusal(with_body(SEALED, device_time=far)).detail
    early = with_body(SEALED, device_time=datetime(1899, 12, 31, 23, 59, tzinfo=UTC))
    assert refusal(early).pointer == "/SealEventNotification/SealEvent/DeviceDateTime"


@pytest.mark.parametrize(
    ("written", "accepted"),
    [
        ("2999-12-31T09:59:59+14:00", True),  # 2999-12-30T19:59:59Z
        ("2999-12-31T23:00:00-14:00", False),  # 3000-01-01T13:00:00Z
        ("1899-12-31T23:30:00-01:00", True),  # 1900-01-01T00:30:00Z
        ("1900-01-01T00:30:00+01:00", False),  # 1899-12-31T23:30:00Z
    ],
)
def test_datetime_bounds_are_instants(written: str, accepted: bool) -> None:
    """Whatever decode accepts, encode can write back in UTC: the XSD bounds apply after the offset."""
    data = codec.encode(SEALED).replace(b"2025-03-14T02:14:58Z", written.encode())
    if accepted:
        message = codec.decode(data)
        assert codec.decode(codec.encode(message)) == message
    else:
        with pytest.raises(XmlError) as caught:
            codec.decode(data)
        assert caught.value.pointer == "/SealEventNotification/SealEvent/DeviceDateTime"


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": "c4b0f3e2-91a7-4d2b-8e65-0f3a7d19b2c1"},  # a str is not a UUID
        {"battery_percent": True},
        {"lock_sequence": 1.0},
        {"location": Location(None, GeoPosition(29.6, 106.4))},  # floats are not Decimals  # type: ignore[arg-type]
        {"seal_id": 42},
    ],
)
def test_wrong_python_types_are_programming_errors(changes: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        codec.encode(with_body(SEALED, **changes))


def test_not_a_number_is_refused_by_the_schema() -> None:
    error = refusal(with_body(SEALED, location=Location(None, GeoPosition(Decimal("NaN"), Decimal("1")))))
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert error.pointer == "/SealEventNotification/SealEvent/Location/GeoPosition/LatitudeMeasure"


def test_schema_refusals_point_at_the_element() -> None:
    error = refusal(with_body(SEALED, battery_percent=101))
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert error.pointer == "/SealEventNotification/SealEvent/BatteryPercent"
    assert "/SealEventNotification/SealEvent/BatteryPercent" in error.detail and "101" in error.detail
    assert NAMESPACE not in error.detail  # no Clark-notation names in a sentence for people


def test_header_must_name_its_body() -> None:
    message = Message(dataclasses.replace(SEALED.header, message_type="Receipt"), SEALED.body)
    error = refusal(message)
    assert error.code == XmlErrorCode.SCHEMA_INVALID
    assert error.pointer == "/SealEventNotification/Header/MessageTypeCode"


def test_unknown_body_type() -> None:
    error = refusal(Message(SEALED.header, object()))  # type: ignore[arg-type]
    assert error.code == XmlErrorCode.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(
    ("message", "pointer"),
    [
        (with_body(SEALED, container="CSQU3054384"), "/SealEventNotification/SealEvent/TransportEquipment/ID"),
        (with_body(SEALED, wagon="218124712174"), "/SealEventNotification/SealEvent/Wagon/ID"),
        (
            with_body(
                SEALED,
                consignment_refs=(corridor.MANIFEST, ConsignmentReference(ConsignmentReferenceType.CIM, "70268 1")),
            ),
            "/SealEventNotification/SealEvent/ConsignmentReference[2]/ID",
        ),
        (
            with_body(
                corridor.CONTROL_AT_ALASHANKOU,
                transport_equipment=(TransportEquipment("CSQU3054383"), TransportEquipment("TGHU8721600")),
            ),
            "/ControlResultNotification/ControlResult/TransportEquipment[2]/ID",
        ),
        (
            with_body(corridor.RECOGNISED_AT_DOSTYK, containers=("CSQU3054380",)),
            "/RecognitionDecisionNotification/RecognitionDecision/TransportEquipment/ID",
        ),
        (
            with_body(corridor.UNSEAL_AT_MALASZEWICZE, container="CSQU3054381"),
            "/UnsealAuthorization/Authorization/TransportEquipment/ID",
        ),
        (
            with_body(corridor.ALARM_NEAR_BREST, container="TGHU8721606"),
            "/AlarmNotification/Alarm/TransportEquipment/ID",
        ),
        (
            with_body(
                corridor.ALARM_NEAR_BREST,
                consignment_refs=(corridor.MANIFEST, ConsignmentReference(ConsignmentReferenceType.CIM, "70268 1")),
            ),
            "/AlarmNotification/Alarm/ConsignmentReference[2]/ID",
        ),
    ],
)
def test_check_digits_are_refused_with_a_pointer(message: Message, pointer: str) -> None:
    error = refusal(message)
    assert error.code == XmlErrorCode.IDENTIFIER_INVALID
    assert error.pointer == pointer
    assert error.detail.startswith(pointer) and "check digit" in error.detail


def test_smgs_and_manifest_references_are_not_check_digit_checked() -> None:
    refs = (
        ConsignmentReference(ConsignmentReferenceType.SMGS, "70268 1"),
        ConsignmentReference(ConsignmentReferenceType.MANIFEST, "70268 1"),
        ConsignmentReference(ConsignmentReferenceType.MRN, "70268 1"),
    )
    message = with_body(corridor.RECOGNISED_AT_DOSTYK, consignment_refs=refs)
    assert codec.decode(codec.encode(message)) == message


def test_a_message_too_large_for_partners_is_not_produced() -> None:
    many = tuple(f"{n:010d}" for n in range(9000))  # ~400 KB of Classification blocks
    error = refusal(with_body(corridor.CONTROL_AT_ALASHANKOU, hs_codes=many))
    assert error.code == XmlErrorCode.TOO_LARGE
    with pytest.raises(XmlError) as caught:
        codec.encode(SEALED, max_bytes=1000)  # a node configured with a smaller limit
    assert caught.value.code == XmlErrorCode.TOO_LARGE


# --- decoding what partners may send ----------------------------------------------


def test_decode_reads_any_well_formed_spelling() -> None:
    text = codec.encode(SEALED).decode("utf-8")
    text = re.sub(r"<(/?)(?=[A-Z])", r"<\1m:", text)  # a prefix instead of the default namespace
    text = text.replace(f'xmlns="{NAMESPACE}"', f'xmlns:m="{NAMESPACE}"')
    text = text.replace("><", ">\n  <")  # indentation
    text = text.replace("<m:GatewayID>GW-CNCQI-01<", "<!-- from the gateway --><m:GatewayID><![CDATA[GW-CNCQI-01]]><")
    text = text.replace("<m:LockSequenceNumeric>1<", "<m:LockSequenceNumeric> &#49;\n<")  # integers collapse blanks
    variant = b"\xef\xbb\xbf" + text.encode("utf-8")
    assert b"xmlns=" not in variant and b"CDATA" in variant
    assert codec.decode(variant) == SEALED


def test_decode_tree_returns_the_root_it_parsed() -> None:
    message, root = codec.decode_tree(codec.encode(SEALED))
    assert message == SEALED
    assert root.tag == f"{{{NAMESPACE}}}SealEventNotification"


def test_peek_message_id_reads_the_id_of_an_invalid_message() -> None:
    data = codec.encode(SEALED).replace(b"<BatteryPercent>98<", b"<BatteryPercent>998<")
    root = etree.fromstring(data)
    with pytest.raises(XmlError):
        codec.decode_root(root)
    assert codec.peek_message_id(root) == SEALED.header.message_id
    assert codec.peek_message_id(etree.fromstring(b"<a/>")) is None
    assert codec.peek_message_id(etree.fromstring(data.replace(b"7c1e2a90-3b5d", b"7C1E2A90-3B5D"))) is None


def _refused_as_decode_refuses(documents: list[bytes], results: list[Any]) -> list[XmlErrorCode]:
    """Each result is the `XmlError` `decode` raises for its document (code, detail, pointer); their codes."""
    for data, result in zip(documents, results, strict=True):
        with pytest.raises(XmlError) as raised:
            codec.decode(data)
        assert isinstance(result, XmlError)
        expected = raised.value
        assert (result.code, result.detail, result.pointer) == (expected.code, expected.detail, expected.pointer)
    return [r.code for r in results]


def test_decode_headers_reads_each_header_or_gives_decodes_refusal_in_its_place() -> None:
    sealed, position = codec.encode(SEALED), codec.encode(corridor.POSITION_AT_DOSTYK)
    refused = [
        sealed.replace(b"</Header>", b""),  # not well formed
        sealed.replace(b"<BatteryPercent>98<", b"<BatteryPercent>998<"),  # against the XSD
        b'<!DOCTYPE x [<!ENTITY a "b">]>' + sealed[sealed.index(b"\n") + 1 :],
        sealed[: sealed.index(b"\n") + 1] + b"<Message/>",
    ]
    results = codec.decode_headers([sealed, *refused, position])
    assert results[0] == SEALED.header and results[-1] == corridor.POSITION_AT_DOSTYK.header
    assert _refused_as_decode_refuses(refused, results[1:-1]) == [
        XmlErrorCode.MALFORMED, XmlErrorCode.SCHEMA_INVALID, XmlErrorCode.DOCTYPE_FORBIDDEN,
        XmlErrorCode.UNKNOWN_MESSAGE_TYPE,
    ]


def test_decode_many_decodes_each_document_or_gives_decodes_refusal_in_its_place() -> None:
    sealed, position = codec.encode(SEALED), codec.encode(corridor.POSITION_AT_DOSTYK)
    wrong_digit = corridor.CONTAINER[:-1] + str((int(corridor.CONTAINER[-1]) + 1) % 10)
    refused = [
        sealed.replace(b"</Header>", b""),  # not well formed
        sealed.replace(b"<BatteryPercent>98<", b"<BatteryPercent>998<"),  # against the XSD
        sealed.replace(b"<SequenceNumeric>2<", b"<SequenceNumeric>3<"),  # read: blocks numbered out of order
        sealed.replace(corridor.CONTAINER.encode(), wrong_digit.encode()),  # checked: a wrong check digit
    ]
    results = codec.decode_many([sealed, *refused, position])
    assert results[0] == SEALED and results[-1] == corridor.POSITION_AT_DOSTYK
    assert _refused_as_decode_refuses(refused, results[1:-1]) == [
        XmlErrorCode.MALFORMED, XmlErrorCode.SCHEMA_INVALID, XmlErrorCode.SEQUENCE_INVALID,
        XmlErrorCode.IDENTIFIER_INVALID,
    ]


def test_decode_headers_does_not_read_the_body() -> None:
    """The body is validated, not read: a check digit the XSD cannot see is `decode`'s to refuse."""
    wrong_digit = corridor.CONTAINER[:-1] + str((int(corridor.CONTAINER[-1]) + 1) % 10)
    data = codec.encode(SEALED).replace(corridor.CONTAINER.encode(), wrong_digit.encode())
    assert codec.decode_headers([data]) == [SEALED.header]
    with pytest.raises(XmlError) as raised:
        codec.decode(data)
    assert raised.value.code == XmlErrorCode.IDENTIFIER_INVALID
