"""mrx messages to XML bytes and back: pure, deterministic, validated both ways.

`encode` turns a `Message` into the UTF-8 XML bytes that are signed, stored
and sent; `decode` turns received bytes back into a `Message`. Neither does
I/O. Both raise `XmlError` (see `schemas.xml` for the codes), and they agree:
whatever `encode` returns, `decode` accepts and maps back to an equal value
(``decode(encode(m)) == m``), and whatever `decode` returns, `encode` writes
(the XSD's bounds hold in UTC, the form encode writes).

Design
------
encode(message):

1. The body's class names the message type (`MESSAGE_TYPES`), hence the
   root element and the XSD. ``Header.message_type`` is written as it is;
   each XSD fixes ``MessageTypeCode`` to its own name, so a header that
   disagrees with its body is refused by the schema, not by a second rule.
2. The document is written as text by one function per block, each of which
   reads like the XML it produces. Every value passes through a formatter
   that checks its Python type and escapes it (``&``, ``<``, ``>`` and CR,
   the last so that it survives XML line-end normalisation); characters XML
   1.0 cannot carry are refused. No value can therefore add markup.
3. The bytes are parsed (`xml.parse_own`: the hardened parser, without the
   input checks the writer makes moot) and validated against the XSD: what
   is returned is exactly what was validated.
4. The checks XSD 1.0 cannot express run on the message (`_check_identifiers`):
   ISO 6346, UIC and CIM check digits.

decode(data):

1. `xml.parse` (size, UTF-8, no DTD, no XInclude), then `xml.validate`,
   which picks the XSD by the root element (namespace ``urn:mrx:datamodel:MRX:1``).
2. The validated tree is read into the dataclasses in schema order; every
   repeated block's ``SequenceNumeric`` must run 1, 2, ... n
   (``sequence-invalid``).
3. The same identifier checks as encode (``identifier-invalid``).

Canonical form. Output is deterministic, so equal messages are equal
bytes: ``<?xml version="1.0" encoding="UTF-8"?>``, LF, then the document on
one line, default namespace on the root, no attributes, no indentation (the
bytes travel base64url-encoded inside a JWS, where indentation only costs
parse time; ``xmllint --format`` is for reading). Date-times are written in
UTC with ``Z``, with six fractional digits when there are microseconds and
none otherwise; decimals in plain notation without trailing zeros; digests
in lower-case hex. Decoding yields aware UTC datetimes, `Decimal`, `UUID`
and `bytes`. Input need not be canonical: any prefix, whitespace between
elements, comments, CDATA and character references are read; identifier
and code types derive from xs:string, so the text read is exactly the text
the XSD validated.

Performance. Measured with ``timeit`` (minimum, and median in brackets, of
40 runs of 2,000) on the shared build machine: a 2-vCPU AMD EPYC VM busy
with other jobs, CPython 3.11.7 built without PGO/LTO, lxml 6.1.3 with
libxml2 2.14.6.

- SealEventNotification, a position report (1.1 KB): encode 38 (41) µs,
  decode 64 (74) µs.
- SealEventNotification at sealing, with 3 recipients and 3 consignment
  references (1.6 KB): encode 53 (57) µs, decode 87 (114) µs.

The 1.6 KB encode splits into writing the text 15 µs, parsing 13 µs, XSD
validation 19 µs and the check digits 1 µs (9 µs on a cache miss); decode
into the hardened parse 18 µs (of which 2 µs byte checks), validation 19 µs,
reading into dataclasses 38-43 µs (frozen dataclasses and `UUID` are most
of it) and the checks. Alternatives measured on the same document:

- Building it as an lxml tree (``SubElement`` with prebuilt tag names),
  validating the tree and serialising it: 78 µs, because tree building
  alone costs more than writing text and parsing it back; and it validates
  a tree, not the bytes returned. Text + parse + validate is the faster and
  the stricter option.
- Validating while parsing (``XMLParser(schema=...)``): no faster than
  parse then validate.
- An indented canonical form: +10 % on parse and validation, for nobody's
  benefit on the wire.
- xmlschema 4.3: 1,000-1,300 µs to validate the document, 35-45 ms to
  compile the XSD (lxml: 0.6-0.9 ms). It has no place on the hot path. It
  is the test suite's second, independent validator (pure Python, no
  libxml2) next to xmllint, and it earned its place: it disagreed with
  libxml2 on a ``\\S`` pattern, which the XSDs no longer use. (It also
  compares date-times with offsets without normalising them, against XSD
  1.0; that matters only within 14 hours of the 1900 and 3000 bounds.)

``tests/schemas/test_performance.py`` guards against regressions of an
order of magnitude.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Final, TypeVar, assert_never
from uuid import UUID

from lxml import etree

from . import identifiers
from .codes import (
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
from .messages import (
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
from .xml import MAX_BYTES, NAMESPACE, XmlError, XmlErrorCode, element_path, parse, parse_own, validate

__all__ = [
    "acknowledgement_size", "decode", "decode_headers", "decode_many", "decode_root", "decode_tree", "encode",
    "peek_message_id",
]


# --- public API --------------------------------------------------------------


def encode(message: Message, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The canonical UTF-8 XML of a message, validated against its XSD.

    A message longer than ``max_bytes`` (the limit `decode` reads with) is
    refused with ``xml-too-large`` rather than produced for a partner to refuse.
    """
    body = message.body
    name = MESSAGE_TYPES.get(type(body))
    if name is None:
        raise XmlError(
            XmlErrorCode.UNKNOWN_MESSAGE_TYPE,
            f"{type(body).__name__} is not an mrx message body; expected one of "
            f"{', '.join(cls.__name__ for cls in MESSAGE_TYPES)}",
        )
    text = f'{_DECLARATION}<{name} xmlns="{NAMESPACE}">{_header(message.header)}{_body(body)}</{name}>'
    data = text.encode("utf-8")
    validate(parse_own(data, max_bytes=max_bytes))
    _check_identifiers(message)
    return data


def decode(data: bytes, *, max_bytes: int = MAX_BYTES) -> Message:
    """The message in untrusted XML bytes, parsed hardened and fully validated."""
    return decode_root(parse(data, max_bytes=max_bytes))


def decode_tree(data: bytes, *, max_bytes: int = MAX_BYTES) -> tuple[Message, etree._Element]:
    """Like `decode`, and also return the parsed root so callers need not parse again."""
    root = parse(data, max_bytes=max_bytes)
    return decode_root(root), root


def decode_root(root: etree._Element) -> Message:
    """The message in a root element from `xml.parse`: validate, read, check."""
    return _read_checked(root, validate(root))


def _read_checked(root: etree._Element, message_type: str) -> Message:
    """The message in a validated tree: read, and its identifiers checked."""
    message = _read(root, message_type)
    _check_identifiers(message)
    return message


def decode_many(documents: Sequence[bytes], *, max_bytes: int = MAX_BYTES) -> list[Message | XmlError]:
    """`decode` of each document of untrusted XML bytes; a document that is refused gets its `XmlError`.

    The documents go through each step together (`_validated_trees`): all are
    parsed, then all validated, then all read and checked, so that each step
    runs libxml2's parser, or its validator, or Python, over and over with its
    code and tables in the CPU's caches. On the development machine, for 1 KB
    seal events in a batch of 1,000: 65 µs a document, against 94 µs for
    `decode` one at a time (best of 7).
    """
    out: list[Message | XmlError] = []
    for tree in _validated_trees(documents, max_bytes):
        if isinstance(tree, XmlError):
            out.append(tree)
            continue
        try:
            out.append(_read_checked(*tree))
        except XmlError as error:  # a SequenceNumeric out of order, a wrong check digit
            out.append(error)
    return out


def decode_headers(documents: Sequence[bytes], *, max_bytes: int = MAX_BYTES) -> list[Header | XmlError]:
    """The header of each document of untrusted XML bytes, parsed hardened and the whole document validated.

    For an auditor's check of records the node already accepted: the XSD
    still validates each body, but the bodies are not read into values, so
    their identifiers' check digits are not re-checked (`decode` does that).
    A document that is refused gets its `XmlError` in its place. Step by step
    over the documents, as `decode_many`: for 1 KB seal events, 39 µs a
    document in batches of 256, 62 µs one at a time, 100 µs for `decode`
    (thread CPU time, median of 7 runs of 4,096 documents).
    """
    return [
        tree if isinstance(tree, XmlError) else _read_header(_Cursor(tree[0][0]))  # Header is the root's first child
        for tree in _validated_trees(documents, max_bytes)
    ]


def _validated_trees(
    documents: Sequence[bytes], max_bytes: int
) -> list[tuple[etree._Element, str] | XmlError]:
    """Each document parsed hardened and validated (root and message type), or its `XmlError`: all parsed
    first, then all validated."""
    trees: list[etree._Element | XmlError] = []
    for data in documents:
        try:
            trees.append(parse(data, max_bytes=max_bytes))
        except XmlError as error:
            trees.append(error)
    out: list[tuple[etree._Element, str] | XmlError] = []
    for root in trees:
        if isinstance(root, XmlError):
            out.append(root)
            continue
        try:
            out.append((root, validate(root)))
        except XmlError as error:
            out.append(error)
    return out


def peek_message_id(root: etree._Element) -> UUID | None:
    """``Header/MessageID`` of a parsed document that may be invalid, if it can be read.

    For negative receipts: a receipt names the message it refuses whenever
    that message's ID is legible, whatever else is wrong with it.
    """
    header = root.find(_NS + "Header")
    if header is None:
        return None
    text = header.findtext(_NS + "MessageID")
    if text is None or not _UUID.fullmatch(text):
        return None
    return UUID(text)


# --- writing -----------------------------------------------------------------

_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'

# Characters that need escaping in element content, and those XML 1.0 cannot
# carry at all (C0 controls but TAB/LF/CR, surrogates, U+FFFE, U+FFFF).
_SPECIAL: Final = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_special = _SPECIAL.search

_T = TypeVar("_T")
_E = TypeVar("_E")


def _value_error(detail: str) -> XmlError:
    return XmlError(XmlErrorCode.SCHEMA_INVALID, detail)


# Formatters: every value goes through one. A value of the wrong Python type
# is a programming error and raises TypeError; a value that no XML document
# can carry raises XmlError. Anything else is written and left to the XSD.


def _text(value: str) -> str:
    if _special(value) is None:  # TypeError unless value is a str
        return value
    bad = _NOT_XML.search(value)
    if bad is not None:
        raise _value_error(f"the text {value!r} contains U+{ord(bad.group()):04X}, which XML cannot carry")
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _uuid(value: UUID) -> str:
    if type(value) is not UUID:
        raise TypeError(f"expected a UUID, got {type(value).__name__} {value!r}")
    return str(value)


def _datetime(value: datetime) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is not UTC:
        if value.utcoffset() is None:
            raise _value_error(f"the date-time {value.isoformat()} has no time zone; mrx messages need one")
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise _value_error(f"the date-time {value.isoformat()} is outside the years 1900-2999") from None
    # %-formatting is twice as fast as isoformat() here, and this is the hot path.
    if value.microsecond:
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
        )  # fmt: skip
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (
        value.year, value.month, value.day, value.hour, value.minute, value.second
    )  # fmt: skip


def _integer(value: int) -> str:
    if type(value) is not int:
        raise TypeError(f"expected an int, got {type(value).__name__} {value!r}")
    return str(value)


def _decimal(value: Decimal) -> str:
    if type(value) is not Decimal:
        raise TypeError(f"expected a Decimal, got {type(value).__name__} {value!r}")
    # Plain notation, exact, without trailing zeros: equal values, equal text.
    # NaN and Infinity come out as words the XSD refuses, with a pointer.
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _hex(value: bytes) -> str:
    if type(value) is not bytes:
        raise TypeError(f"expected bytes, got {type(value).__name__} {value!r}")
    return value.hex()


def _opt(name: str, value: _T | None, fmt: Callable[[_T], str]) -> str:
    return "" if value is None else f"<{name}>{fmt(value)}</{name}>"


# Writers, one per block; each reads like the XML it produces.


def _header(h: Header) -> str:
    return (
        "<Header>"
        f"<MessageID>{_uuid(h.message_id)}</MessageID>"
        f"<MessageTypeCode>{_text(h.message_type)}</MessageTypeCode>"
        f"<SenderID>{_text(h.sender)}</SenderID>"
        f"{''.join([f'<RecipientID>{_text(r)}</RecipientID>' for r in h.recipients])}"
        f"<PreparationDateTime>{_datetime(h.prepared_at)}</PreparationDateTime>"
        f"{_opt('CorrelationID', h.correlation_id, _uuid)}"
        "</Header>"
    )


def _consignment_refs(refs: tuple[ConsignmentReference, ...]) -> str:
    return "".join(
        [
            "<ConsignmentReference>"
            f"<SequenceNumeric>{n}</SequenceNumeric>"
            f"<TypeCode>{_text(ref.type)}</TypeCode>"
            f"<ID>{_text(ref.id)}</ID>"
            "</ConsignmentReference>"
            for n, ref in enumerate(refs, 1)
        ]
    )


def _location(location: Location | None) -> str:
    if location is None:
        return ""
    position = location.position
    return (
        "<Location>"
        f"{_opt('LocationID', location.locode, _text)}"
        + (
            ""
            if position is None
            else "<GeoPosition>"
            f"<LatitudeMeasure>{_decimal(position.latitude)}</LatitudeMeasure>"
            f"<LongitudeMeasure>{_decimal(position.longitude)}</LongitudeMeasure>"
            "</GeoPosition>"
        )
        + "</Location>"
    )


def _seal_event(e: SealEvent) -> str:
    return (
        "<SealEvent>"
        f"<EventID>{_uuid(e.event_id)}</EventID>"
        f"<TypeCode>{_text(e.event_type)}</TypeCode>"
        f"<LockSequenceNumeric>{_integer(e.lock_sequence)}</LockSequenceNumeric>"
        f"<DeviceDateTime>{_datetime(e.device_time)}</DeviceDateTime>"
        f"<ReceiptDateTime>{_datetime(e.receipt_time)}</ReceiptDateTime>"
        f"<GatewayID>{_text(e.gateway_id)}</GatewayID>"
        f"<Lock><ID>{_text(e.lock_id)}</ID></Lock>"
        f"{_opt('BatteryPercent', e.battery_percent, _integer)}"
        "<Seal>"
        f"<ID>{_text(e.seal_id)}</ID>"
        f"<TypeCode>{_text(e.seal_type)}</TypeCode>"
        f"<ConditionCode>{_text(e.condition)}</ConditionCode>"
        f"{_opt('SealingPartyCode', e.sealing_party, _text)}"
        "</Seal>"
        f"<TransportEquipment><ID>{_text(e.container)}</ID></TransportEquipment>"
        f"{'' if e.wagon is None else f'<Wagon><ID>{_text(e.wagon)}</ID></Wagon>'}"
        f"{_location(e.location)}"
        f"{_opt('UnsealAuthorizationID', e.authorization_id, _uuid)}"
        f"{_consignment_refs(e.consignment_refs)}"
        "</SealEvent>"
    )


def _inspected_seals(seals: tuple[Seal, ...]) -> str:
    return "".join(
        [
            "<Seal>"
            f"<SequenceNumeric>{n}</SequenceNumeric>"
            f"<ID>{_text(seal.id)}</ID>"
            f"<ActionCode>{_text(seal.action)}</ActionCode>"
            f"<ConditionCode>{_text(seal.condition)}</ConditionCode>"
            f"{_opt('TypeCode', seal.type, _text)}"
            f"{_opt('SealingPartyCode', seal.sealing_party, _text)}"
            "</Seal>"
            for n, seal in enumerate(seals, 1)
        ]
    )


def _control_result(c: ControlResult) -> str:
    return (
        "<ControlResult>"
        f"<ControlID>{_text(c.control_id)}</ControlID>"
        f"<TypeCode>{_text(c.control_type)}</TypeCode>"
        f"<ResultCode>{_text(c.result)}</ResultCode>"
        f"<ControlDateTime>{_datetime(c.controlled_at)}</ControlDateTime>"
        f"<OfficeLocationID>{_text(c.office)}</OfficeLocationID>"
        f"<OfficerName>{_text(c.officer)}</OfficerName>"
        f"{_consignment_refs(c.consignment_refs)}"
        + "".join(
            [
                "<TransportEquipment>"
                f"<SequenceNumeric>{n}</SequenceNumeric>"
                f"<ID>{_text(item.container)}</ID>"
                f"{_inspected_seals(item.seals)}"
                "</TransportEquipment>"
                for n, item in enumerate(c.transport_equipment, 1)
            ]
        )
        + "".join(
            [
                f"<Classification><SequenceNumeric>{n}</SequenceNumeric><ID>{_text(code)}</ID></Classification>"
                for n, code in enumerate(c.hs_codes, 1)
            ]
        )
        + f"{_opt('RemarksText', c.remarks, _text)}"
        "</ControlResult>"
    )


def _evidence(message_ids: tuple[UUID, ...]) -> str:
    return "".join(
        [
            f"<Evidence><SequenceNumeric>{n}</SequenceNumeric><MessageID>{_uuid(message_id)}</MessageID></Evidence>"
            for n, message_id in enumerate(message_ids, 1)
        ]
    )


def _reasons(reasons: tuple[DecisionReasonEntry, ...]) -> str:
    return "".join(
        [
            "<Reason>"
            f"<SequenceNumeric>{n}</SequenceNumeric>"
            f"<TypeCode>{_text(reason.code)}</TypeCode>"
            f"<Description>{_text(reason.description)}</Description>"
            f"{_evidence(reason.evidence)}"
            "</Reason>"
            for n, reason in enumerate(reasons, 1)
        ]
    )


def _recognition_decision(d: RecognitionDecision) -> str:
    return (
        "<RecognitionDecision>"
        f"<DecisionID>{_uuid(d.decision_id)}</DecisionID>"
        f"<OutcomeCode>{_text(d.outcome)}</OutcomeCode>"
        f"<DecisionDateTime>{_datetime(d.decided_at)}</DecisionDateTime>"
        f"<OfficeLocationID>{_text(d.office)}</OfficeLocationID>"
        f"{_opt('AgreementID', d.agreement_id, _text)}"
        f"{_opt('ControlResultMessageID', d.control_result_message_id, _uuid)}"
        f"{_opt('SealChainVerdictCode', d.seal_chain_verdict, _text)}"
        f"{_consignment_refs(d.consignment_refs)}"
        + "".join(
            [
                f"<TransportEquipment><SequenceNumeric>{n}</SequenceNumeric><ID>{_text(container)}</ID></TransportEquipment>"
                for n, container in enumerate(d.containers, 1)
            ]
        )
        + f"{_reasons(d.reasons)}"
        "</RecognitionDecision>"
    )


def _unseal_authorization(a: UnsealAuthorization) -> str:
    return (
        "<Authorization>"
        f"<AuthorizationID>{_uuid(a.authorization_id)}</AuthorizationID>"
        f"<Lock><ID>{_text(a.lock_id)}</ID></Lock>"
        f"<Seal><ID>{_text(a.seal_id)}</ID></Seal>"
        f"{'' if a.container is None else f'<TransportEquipment><ID>{_text(a.container)}</ID></TransportEquipment>'}"
        f"<OfficeLocationID>{_text(a.office)}</OfficeLocationID>"
        f"<ValidFromDateTime>{_datetime(a.valid_from)}</ValidFromDateTime>"
        f"<ValidToDateTime>{_datetime(a.valid_to)}</ValidToDateTime>"
        f"<NonceID>{_text(a.nonce)}</NonceID>"
        f"<OfficerName>{_text(a.officer)}</OfficerName>"
        f"{_opt('RemarksText', a.remarks, _text)}"
        "</Authorization>"
    )


def _alarm(a: Alarm) -> str:
    return (
        "<Alarm>"
        f"<AlarmID>{_uuid(a.alarm_id)}</AlarmID>"
        f"<TypeCode>{_text(a.alarm_type)}</TypeCode>"
        f"<RaisedDateTime>{_datetime(a.raised_at)}</RaisedDateTime>"
        f"<OfficeLocationID>{_text(a.office)}</OfficeLocationID>"
        f"<Lock><ID>{_text(a.lock_id)}</ID></Lock>"
        f"<Seal><ID>{_text(a.seal_id)}</ID></Seal>"
        f"<TransportEquipment><ID>{_text(a.container)}</ID></TransportEquipment>"
        f"{_consignment_refs(a.consignment_refs)}"
        f"<Description>{_text(a.description)}</Description>"
        f"{_evidence(a.evidence)}"
        "</Alarm>"
    )


def _receipt(r: Receipt) -> str:
    return "".join([_acknowledgement(a) for a in r.acknowledgements])


def _acknowledgement(a: Acknowledgement) -> str:
    return (
        "<Acknowledgement>"
        f"{_opt('ReceivedMessageID', a.received_message_id, _uuid)}"
        f"<ReceivedDigestID>{_hex(a.received_digest)}</ReceivedDigestID>"
        f"<StatusCode>{_text(a.status)}</StatusCode>"
        f"<ReceivedDateTime>{_datetime(a.received_at)}</ReceivedDateTime>"
        + "".join(
            [
                "<Error>"
                f"<SequenceNumeric>{n}</SequenceNumeric>"
                f"<ValidationCode>{_text(error.code)}</ValidationCode>"
                f"<Description>{_text(error.description)}</Description>"
                f"{'' if error.pointer is None else f'<Pointer><TagID>{_text(error.pointer)}</TagID></Pointer>'}"
                "</Error>"
                for n, error in enumerate(a.errors, 1)
            ]
        )
        + "</Acknowledgement>"
    )


def acknowledgement_size(a: Acknowledgement) -> int:
    """The bytes ``a`` adds to a Receipt's XML: how a receiver fills receipts up to `MAX_RECEIPT_XML_BYTES`."""
    return len(_acknowledgement(a).encode("utf-8"))


def _body(body: Body) -> str:
    match body:
        case SealEvent():
            return _seal_event(body)
        case ControlResult():
            return _control_result(body)
        case RecognitionDecision():
            return _recognition_decision(body)
        case UnsealAuthorization():
            return _unseal_authorization(body)
        case Alarm():
            return _alarm(body)
        case Receipt():
            return _receipt(body)
        case _:
            assert_never(body)


# --- reading -----------------------------------------------------------------

_NS: Final = "{" + NAMESPACE + "}"
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_XML_SPACE: Final = " \t\n\r"  # xs:dateTime, xs:decimal and xs:integer collapse these


class _Cursor:
    """The elements of a validated message in document order, read in schema order.

    Readers take elements one by one as the XSD lays them out; entering a
    block just takes its element, since its children come next in document
    order. An optional or repeated element is recognised by its name alone:
    in the mrx schemas no element that ends a block shares its name with one
    that can follow the block, so this is unambiguous.

    The XSD has already checked presence, order and each value's lexical
    form. A required element missing here, or an element left over at the
    end, means this module and the XSD disagree: a bug, never a partner's
    error, so it raises RuntimeError rather than XmlError.
    """

    __slots__ = ("_elements", "_next")

    def __init__(self, root: etree._Element) -> None:
        self._elements = list(root.iter(etree.Element))
        self._next = 0

    def take(self, name: str) -> etree._Element | None:
        i = self._next
        if i < len(self._elements) and self._elements[i].tag == _NS + name:
            self._next = i + 1
            return self._elements[i]
        return None

    def require(self, name: str) -> etree._Element:
        # take() written out: this runs once per element, on the receive path.
        i = self._next
        if i < len(self._elements) and self._elements[i].tag == _NS + name:
            self._next = i + 1
            return self._elements[i]
        raise RuntimeError(f"codec and XSD disagree: {name} expected at element {i} of a valid document")

    def finish(self) -> None:
        if self._next != len(self._elements):
            left = element_path(self._elements[self._next])
            raise RuntimeError(f"codec and XSD disagree: {left} was not read from a valid document")

    def enter(self, name: str) -> None:
        self.require(name)

    def enter_optional(self, name: str) -> bool:
        return self.take(name) is not None

    def blocks(self, name: str) -> Iterator[int]:
        """Enter each block of a repeated ``name``, checking its SequenceNumeric runs 1..n.

        The loop body must read the block's children before the next iteration.
        """
        expected = 0
        while self.take(name) is not None:
            expected += 1
            number = self.require("SequenceNumeric")
            text = (number.text or "").strip(_XML_SPACE)
            if int(text) != expected:
                pointer = element_path(number)
                raise XmlError(
                    XmlErrorCode.SEQUENCE_INVALID,
                    f"line {number.sourceline}, {pointer}: SequenceNumeric is {text}, but {name} blocks "
                    f"are numbered 1, 2, 3, ... in document order, so {expected} was expected here",
                    pointer,
                )
            yield expected

    # Values. The XSD has checked each lexical form, so conversions cannot fail.

    def text(self, name: str) -> str:
        return self.require(name).text or ""

    def optional_text(self, name: str) -> str | None:
        element = self.take(name)
        return None if element is None else element.text or ""

    def texts(self, name: str) -> tuple[str, ...]:
        values = []
        while (element := self.take(name)) is not None:
            values.append(element.text or "")
        return tuple(values)

    def uuid(self, name: str) -> UUID:
        return UUID(self.text(name))

    def optional_uuid(self, name: str) -> UUID | None:
        text = self.optional_text(name)
        return None if text is None else UUID(text)

    def date_time(self, name: str) -> datetime:
        return _date_time(self.text(name))

    def at(self, name: str) -> bool:
        """Whether the next element is a ``name``, without taking it."""
        return self._next < len(self._elements) and self._elements[self._next].tag == _NS + name

    def integer(self, name: str) -> int:
        return int(self.text(name).strip(_XML_SPACE))

    def optional_integer(self, name: str) -> int | None:
        text = self.optional_text(name)
        return None if text is None else int(text.strip(_XML_SPACE))

    def decimal(self, name: str) -> Decimal:
        return Decimal(self.text(name).strip(_XML_SPACE))

    def code(self, members: Mapping[str, _E], name: str) -> _E:
        return members[self.text(name)]

    def optional_code(self, members: Mapping[str, _E], name: str) -> _E | None:
        text = self.optional_text(name)
        return None if text is None else members[text]


def _date_time(text: str) -> datetime:
    # The XSD pattern admits only what fromisoformat reads exactly: a
    # 4-digit year, hours 00-23, at most 6 fractional digits, Z or +hh:mm.
    return datetime.fromisoformat(text.strip(_XML_SPACE)).astimezone(UTC)


def _members(enum: type[_E]) -> Mapping[str, _E]:
    """Code list value -> enum member; a dict lookup is five times faster than ``enum(value)``."""
    return MappingProxyType({member.value: member for member in enum})  # type: ignore[attr-defined]


_SEAL_EVENT_TYPES: Final = _members(SealEventType)
_SEAL_CONDITIONS: Final = _members(SealConditionCode)
_SEALING_PARTIES: Final = _members(SealingPartyCode)
_SEAL_TYPES: Final = _members(SealTypeCode)
_SEAL_ACTIONS: Final = _members(SealActionCode)
_CONSIGNMENT_REFERENCE_TYPES: Final = _members(ConsignmentReferenceType)
_CONTROL_TYPES: Final = _members(ControlType)
_CONTROL_RESULTS: Final = _members(ControlResultCode)
_DECISION_OUTCOMES: Final = _members(DecisionOutcome)
_DECISION_REASONS: Final = _members(DecisionReason)
_SEAL_CHAIN_VERDICTS: Final = _members(SealChainVerdict)
_ALARM_TYPES: Final = _members(AlarmType)
_RECEIPT_STATUSES: Final = _members(ReceiptStatus)


def _read_header(c: _Cursor) -> Header:
    c.enter("Header")
    return Header(
        message_id=c.uuid("MessageID"),
        message_type=c.text("MessageTypeCode"),
        sender=c.text("SenderID"),
        recipients=c.texts("RecipientID"),
        prepared_at=c.date_time("PreparationDateTime"),
        correlation_id=c.optional_uuid("CorrelationID"),
    )


def _read_consignment_refs(c: _Cursor) -> tuple[ConsignmentReference, ...]:
    return tuple(
        ConsignmentReference(type=c.code(_CONSIGNMENT_REFERENCE_TYPES, "TypeCode"), id=c.text("ID"))
        for _ in c.blocks("ConsignmentReference")
    )


def _read_location(c: _Cursor) -> Location | None:
    if not c.enter_optional("Location"):
        return None
    locode = c.optional_text("LocationID")
    position = None
    if c.enter_optional("GeoPosition"):
        position = GeoPosition(latitude=c.decimal("LatitudeMeasure"), longitude=c.decimal("LongitudeMeasure"))
    return Location(locode=locode, position=position)


def _read_seal_event(c: _Cursor) -> SealEvent:
    c.enter("SealEvent")
    event_id = c.uuid("EventID")
    event_type = c.code(_SEAL_EVENT_TYPES, "TypeCode")
    lock_sequence = c.integer("LockSequenceNumeric")
    device_time = c.date_time("DeviceDateTime")
    receipt_time = c.date_time("ReceiptDateTime")
    gateway_id = c.text("GatewayID")
    c.enter("Lock")
    lock_id = c.text("ID")
    battery_percent = c.optional_integer("BatteryPercent")
    c.enter("Seal")
    seal_id = c.text("ID")
    seal_type = c.code(_SEAL_TYPES, "TypeCode")
    condition = c.code(_SEAL_CONDITIONS, "ConditionCode")
    sealing_party = c.optional_code(_SEALING_PARTIES, "SealingPartyCode")
    c.enter("TransportEquipment")
    container = c.text("ID")
    wagon = c.text("ID") if c.enter_optional("Wagon") else None
    location = _read_location(c)
    authorization_id = c.optional_uuid("UnsealAuthorizationID")
    consignment_refs = _read_consignment_refs(c)
    return SealEvent(
        event_id=event_id,
        gateway_id=gateway_id,
        lock_id=lock_id,
        seal_id=seal_id,
        container=container,
        lock_sequence=lock_sequence,
        event_type=event_type,
        device_time=device_time,
        receipt_time=receipt_time,
        location=location,
        wagon=wagon,
        condition=condition,
        seal_type=seal_type,
        sealing_party=sealing_party,
        authorization_id=authorization_id,
        consignment_refs=consignment_refs,
        battery_percent=battery_percent,
    )


def _read_inspected_seal(c: _Cursor) -> Seal:
    return Seal(
        id=c.text("ID"),
        action=c.code(_SEAL_ACTIONS, "ActionCode"),
        condition=c.code(_SEAL_CONDITIONS, "ConditionCode"),
        type=c.optional_code(_SEAL_TYPES, "TypeCode"),
        sealing_party=c.optional_code(_SEALING_PARTIES, "SealingPartyCode"),
    )


def _read_transport_equipment(c: _Cursor) -> TransportEquipment:
    container = c.text("ID")
    seals = tuple(_read_inspected_seal(c) for _ in c.blocks("Seal"))
    return TransportEquipment(container=container, seals=seals)


def _read_control_result(c: _Cursor) -> ControlResult:
    c.enter("ControlResult")
    return ControlResult(
        control_id=c.text("ControlID"),
        control_type=c.code(_CONTROL_TYPES, "TypeCode"),
        result=c.code(_CONTROL_RESULTS, "ResultCode"),
        controlled_at=c.date_time("ControlDateTime"),
        office=c.text("OfficeLocationID"),
        officer=c.text("OfficerName"),
        consignment_refs=_read_consignment_refs(c),
        transport_equipment=tuple(_read_transport_equipment(c) for _ in c.blocks("TransportEquipment")),
        hs_codes=tuple(c.text("ID") for _ in c.blocks("Classification")),
        remarks=c.optional_text("RemarksText"),
    )


def _read_evidence(c: _Cursor) -> tuple[UUID, ...]:
    return tuple(c.uuid("MessageID") for _ in c.blocks("Evidence"))


def _read_reason(c: _Cursor) -> DecisionReasonEntry:
    return DecisionReasonEntry(
        code=c.code(_DECISION_REASONS, "TypeCode"),
        description=c.text("Description"),
        evidence=_read_evidence(c),
    )


def _read_recognition_decision(c: _Cursor) -> RecognitionDecision:
    c.enter("RecognitionDecision")
    return RecognitionDecision(
        decision_id=c.uuid("DecisionID"),
        outcome=c.code(_DECISION_OUTCOMES, "OutcomeCode"),
        decided_at=c.date_time("DecisionDateTime"),
        office=c.text("OfficeLocationID"),
        agreement_id=c.optional_text("AgreementID"),
        control_result_message_id=c.optional_uuid("ControlResultMessageID"),
        seal_chain_verdict=c.optional_code(_SEAL_CHAIN_VERDICTS, "SealChainVerdictCode"),
        consignment_refs=_read_consignment_refs(c),
        containers=tuple(c.text("ID") for _ in c.blocks("TransportEquipment")),
        reasons=tuple(_read_reason(c) for _ in c.blocks("Reason")),
    )


def _read_unseal_authorization(c: _Cursor) -> UnsealAuthorization:
    c.enter("Authorization")
    authorization_id = c.uuid("AuthorizationID")
    c.enter("Lock")
    lock_id = c.text("ID")
    c.enter("Seal")
    seal_id = c.text("ID")
    container = c.text("ID") if c.enter_optional("TransportEquipment") else None
    return UnsealAuthorization(
        authorization_id=authorization_id,
        lock_id=lock_id,
        seal_id=seal_id,
        container=container,
        office=c.text("OfficeLocationID"),
        valid_from=c.date_time("ValidFromDateTime"),
        valid_to=c.date_time("ValidToDateTime"),
        nonce=c.text("NonceID"),
        officer=c.text("OfficerName"),
        remarks=c.optional_text("RemarksText"),
    )


def _read_alarm(c: _Cursor) -> Alarm:
    c.enter("Alarm")
    alarm_id = c.uuid("AlarmID")
    alarm_type = c.code(_ALARM_TYPES, "TypeCode")
    raised_at = c.date_time("RaisedDateTime")
    office = c.text("OfficeLocationID")
    c.enter("Lock")
    lock_id = c.text("ID")
    c.enter("Seal")
    seal_id = c.text("ID")
    c.enter("TransportEquipment")
    container = c.text("ID")
    return Alarm(
        alarm_id=alarm_id,
        alarm_type=alarm_type,
        raised_at=raised_at,
        office=office,
        lock_id=lock_id,
        seal_id=seal_id,
        container=container,
        consignment_refs=_read_consignment_refs(c),
        description=c.text("Description"),
        evidence=_read_evidence(c),
    )


def _read_error(c: _Cursor) -> ReceiptError:
    return ReceiptError(
        code=c.text("ValidationCode"),
        description=c.text("Description"),
        pointer=c.text("TagID") if c.enter_optional("Pointer") else None,
    )


def _read_receipt(c: _Cursor) -> Receipt:
    # A receipt acknowledges up to ~150 messages, mostly accepted at one instant: each time is read once,
    # and an acknowledgement without errors skips the Error loop. This is the sender's hot path.
    acknowledgements = []
    times: dict[str, datetime] = {}
    while c.enter_optional("Acknowledgement"):  # the XSD requires one at least, each for other bytes
        message_id = c.optional_uuid("ReceivedMessageID")
        digest = bytes.fromhex(c.text("ReceivedDigestID"))
        status = c.code(_RECEIPT_STATUSES, "StatusCode")
        text = c.text("ReceivedDateTime")
        received_at = times.get(text)
        if received_at is None:
            received_at = times[text] = _date_time(text)
        errors = tuple(_read_error(c) for _ in c.blocks("Error")) if c.at("Error") else ()
        acknowledgements.append(Acknowledgement(message_id, digest, status, received_at, errors))
    return Receipt(tuple(acknowledgements))


_READERS: Final[dict[str, Callable[[_Cursor], Body]]] = {
    MESSAGE_TYPES[SealEvent]: _read_seal_event,
    MESSAGE_TYPES[ControlResult]: _read_control_result,
    MESSAGE_TYPES[RecognitionDecision]: _read_recognition_decision,
    MESSAGE_TYPES[UnsealAuthorization]: _read_unseal_authorization,
    MESSAGE_TYPES[Alarm]: _read_alarm,
    MESSAGE_TYPES[Receipt]: _read_receipt,
}


def _read(root: etree._Element, message_type: str) -> Message:
    c = _Cursor(root)
    c.enter(message_type)
    header = _read_header(c)
    body = _READERS[message_type](c)
    c.finish()
    return Message(header, body)


# --- checks beyond the XSD -----------------------------------------------------

# Containers, wagons and consignment notes recur in every event of a journey
# and the checks are pure functions, so the last few thousand answers are kept.
_check_container: Final = lru_cache(maxsize=4096)(identifiers.check_container)
_check_wagon: Final = lru_cache(maxsize=4096)(identifiers.check_wagon)
_check_cim_note: Final = lru_cache(maxsize=4096)(identifiers.check_cim_note)


def _check_identifiers(message: Message) -> None:
    """Refuse a message whose check digits are wrong (XSD 1.0 cannot compute them).

    The pointer is the path `xml.element_path` gives the element in the
    encoded document, so encode and decode report a bad value identically.
    """
    found = _identifier_problem(message.body)
    if found is not None:
        problem, pointer = found
        raise XmlError(XmlErrorCode.IDENTIFIER_INVALID, f"{pointer}: {problem}", pointer)


def _identifier_problem(body: Body) -> tuple[str, str] | None:
    match body:
        case SealEvent():
            base = "/SealEventNotification/SealEvent"
            if problem := _check_container(body.container):
                return problem, f"{base}/TransportEquipment/ID"
            if body.wagon is not None and (problem := _check_wagon(body.wagon)):
                return problem, f"{base}/Wagon/ID"
            return _consignment_ref_problem(base, body.consignment_refs)
        case ControlResult():
            base = "/ControlResultNotification/ControlResult"
            return _consignment_ref_problem(base, body.consignment_refs) or _container_problem(
                base, [item.container for item in body.transport_equipment]
            )
        case RecognitionDecision():
            base = "/RecognitionDecisionNotification/RecognitionDecision"
            return _consignment_ref_problem(base, body.consignment_refs) or _container_problem(base, body.containers)
        case UnsealAuthorization():
            if body.container is not None and (problem := _check_container(body.container)):
                return problem, "/UnsealAuthorization/Authorization/TransportEquipment/ID"
            return None
        case Alarm():
            base = "/AlarmNotification/Alarm"
            if problem := _check_container(body.container):
                return problem, f"{base}/TransportEquipment/ID"
            return _consignment_ref_problem(base, body.consignment_refs)
        case Receipt():
            return None
        case _:
            assert_never(body)


def _consignment_ref_problem(base: str, refs: tuple[ConsignmentReference, ...]) -> tuple[str, str] | None:
    for n, ref in enumerate(refs, 1):
        if ref.type == ConsignmentReferenceType.CIM and (problem := _check_cim_note(ref.id)):
            return problem, f"{base}/{_step('ConsignmentReference', n, len(refs))}/ID"
    return None


def _container_problem(base: str, containers: Sequence[str]) -> tuple[str, str] | None:
    for n, container in enumerate(containers, 1):
        if problem := _check_container(container):
            return problem, f"{base}/{_step('TransportEquipment', n, len(containers))}/ID"
    return None


def _step(name: str, position: int, count: int) -> str:
    """A path step as `xml.element_path` writes it: indexed only among namesakes."""
    return f"{name}[{position}]" if count > 1 else name
