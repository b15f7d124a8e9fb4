"""NCTS-style XML at the EU end of the corridor: national control results in, partners' out.

The national transit systems at Małaszewicze (PLMAA) and Duisburg (DEDUI)
speak NCTS. This module maps two NCTS-style messages to the node's
control-result input and one back, as pure functions (no I/O but loading
the packaged XSD once per thread). The file-exchange adapter
(`mrx.adapters.files`) moves the bytes; this module only reads and writes them.

- `decode` reads a **CD018C** (destination control results) or a **CC044C**
  (unloading remarks) and returns the JSON-shaped dict that
  `mrx.node.inputs.ControlResultIn` accepts — the same input the national
  system would otherwise post over HTTP.
- `encode_control_result` writes a partner's `ControlResult` record, as the
  node decoded it, as the CD018C the national system reads.

Both messages are mrx's simplified, documented rendering of NCTS, in their
own namespace ``urn:mrx:ncts:1`` and XSD (``schemas/xsd/ncts/ncts.xsd``), not
DG TAXUD's schemas: NCTS element names and header, but date-times with a
time zone, and a few elements of mrx's own (marked *mrx* below). Examples:
``schemas/examples/ncts/``.

Design
------
decode(data):

1. `mrx.schemas.xml.parse`, the node's one hardened parser: at most 256 KiB,
   UTF-8 only, no DTD or entities, no XInclude, no network.
2. The root must be ``CD018C`` or ``CC044C`` in ``urn:mrx:ncts:1``
   (``ncts-unsupported-message`` otherwise: a CC015C, or a real NCTS P5 file,
   is refused by name, not by a schema error).
3. Validation against ``ncts.xsd`` (``ncts-schema-invalid``, with libxml2's
   line and sentence).
4. The tree is read into frozen values (`_Notice`), which maps codes and
   checks what the XSD cannot: known codes (``ncts-unknown-code``), and the
   consistency rules below (``ncts-inconsistent``).
5. The dict is built and validated with ``ControlResultIn.model_validate``,
   so check digits and every other rule of the HTTP edge apply; a refusal
   becomes ``ncts-invalid-value`` naming the NCTS element and its line.

encode_control_result(result, header, recipient): write the CD018C as text,
every value escaped, in one canonical form (the mrx one: declaration, LF,
the document on one line, UTC date-times with ``Z``), then parse it back
with `xml.parse_own` and validate it against ``ncts.xsd``: what is returned
is what was validated. A record that cannot be written (two MRNs, an MRN
not in NCTS's an18 form, more seals or references than the schema takes, a
recipient that is not an NCTS identifier) raises ``ncts-not-representable``.
The same record gives the same bytes.

Mapping: CD018C ↔ control result
--------------------------------
============================================  =====================================================
CD018C (``urn:mrx:ncts:1``)                   control result (``ControlResultIn`` / ``ControlResult``)
============================================  =====================================================
``messageIdentification``                     ``control_id``: verbatim when it is already a node
                                              token (``[A-Z0-9][A-Z0-9._-]{0,34}``), else
                                              ``NCTS-`` + 30 base32 characters of its SHA-256.
                                              Deterministic: a re-sent file is the same control,
                                              which the node deduplicates. Out: ``control_id``.
``messageSender``, ``messageRecipient``,      not mapped in. Out: ``header.sender`` (the partner
``preparationDateAndTime``                    node), ``recipient``, ``header.prepared_at``.
``correlationIdentifier``                     not mapped in. Out: the record's ``MessageID``
                                              (32 hex digits), so the national system can cite
                                              the signed record.
``TransitOperation/MRN``                      ``consignment_refs[0]``, type ``MRN``. Out: the one
                                              MRN reference (two: not representable).
``Consignment/TransportDocument``             further ``consignment_refs``: ``type`` N720 ↔ CIM,
(``type``, ``referenceNumber``)               N722 ↔ SMGS, N785 ↔ MANIFEST (CL754 codes;
                                              *unconfirmed*, see /work/shared/domain.md).
``CustomsOfficeOfControl/unLocode`` (*mrx*)   ``office``; absent: the node's own office. NCTS's
                                              ``referenceNumber`` (CL172) is read, not mapped: it
                                              is not a UN/LOCODE. Out: ``office``.
``ControlResult/code``                        ``result``: A1, A2, A3, A4, B1 map to themselves
                                              (`ControlResultCode` holds the NCTS codes: A4 minor
                                              irregularities, B1 not satisfactory); any other
                                              code is ``ncts-unknown-code``.
``ControlResult/date``                        ``controlled_at`` (an instant, with its zone).
``ControlResult/verificationType`` (*mrx*)    ``control_type``: DOC ↔ documentary, NII ↔
                                              non-intrusive, PHY ↔ physical.
``ControlResult/controlledBy``                ``officer``.
``ControlResult/stateOfSealsOk``              the ``condition`` of every seal found: 1 → 4517
                                              code 1 (in right condition); 0 → 2 (damaged).
                                              Out: 1 if every seal found is in right condition,
                                              else 0; absent when no seal was found.
``ControlResult/remarks``                     ``remarks``.
``Consignment/TransportEquipment``            ``transport_equipment``: ``container``; ``Seal`` →
                                              ``seals_found``; ``NewSeal`` (*mrx*) →
                                              ``seals_affixed``, sealing party CU (customs).
``…/numberOfSeals``                           the number of ``Seal`` elements (checked when given).
``Consignment/Commodity/commodityCode``       ``hs_codes``, in order.
============================================  =====================================================

Why "damaged" for seals not OK: NCTS's flag says only that the seals were
not OK. Each seal is listed by its identifier, so it was there (not 3,
missing); "damaged" (2) claims the least beyond the flag, and like every
condition but 1 it breaks the seal chain at the recognising border.

Seal details NCTS has no place for (per-seal condition, seal type, sealing
party of seals found) are not written; the condition comes back as 1 or 2 as
above. Control IDs that are not node tokens (possible only from a partner
that is not an mrx node) come back hashed. Everything else in the table
round-trips: ``decode(encode_control_result(r, …))`` gives ``r``'s values.

Mapping: CC044C → control result (in only)
-------------------------------------------
============================================  =====================================================
CC044C                                        control result
============================================  =====================================================
``messageIdentification``                     ``control_id``, as for CD018C.
``TransitOperation/MRN``,                     ``consignment_refs``, as for CD018C.
``Consignment/TransportDocument``
``CustomsOfficeOfDestinationActual/unLocode`` ``office``, as for CD018C.
``TraderAtDestination/identificationNumber``  ``officer``: ``"<EORI> (trader at destination)"`` —
                                              the authorised consignee unloaded, not an officer.
``UnloadingRemark/conform``,                  ``result``: conform 1 and seals OK (or no seals
``UnloadingRemark/stateOfSeals``              listed) → A1; conform 0, or seals not OK → B1. A
                                              seal found not intact is never "satisfactory" nor
                                              "minor" (A4): an agreement that accepts A4 must
                                              not recognise a container whose seals were broken.
                                              stateOfSeals → seal ``condition`` as for CD018C.
(none)                                        ``control_type``: physical (unloading opens the
                                              container and checks goods and seals).
``UnloadingRemark/unloadingDate``             ``controlled_at``: the instant unloading ended.
``UnloadingRemark/unloadingRemark``           ``remarks``.
``Consignment/…``                             as for CD018C.
============================================  =====================================================

Consistency (``ncts-inconsistent``), checked after the schema:

- seals listed but no ``stateOfSealsOk``/``stateOfSeals``: their condition
  would be a guess;
- ``numberOfSeals`` different from the number of ``Seal`` elements;
- CD018C code A1, A2 or A3 (satisfactory) with ``stateOfSealsOk`` 0: the
  national system said both; the officer must say which;
- no MRN and no transport document: a control result names a consignment.

Errors
------
Every refusal is one `NctsError` with a stable ``code`` (`NctsErrorCode`),
a ``detail`` sentence the national system's operator can act on, and the
``line`` of the offending element when there is one: ``ncts-too-large``,
``ncts-not-xml``, ``ncts-forbidden-markup`` (DTD, entity, XInclude),
``ncts-unsupported-message``, ``ncts-schema-invalid``,
``ncts-unknown-code``, ``ncts-inconsistent``, ``ncts-invalid-value`` (what
the node's input model refuses, e.g. a container check digit), and, from
`encode_control_result` only, ``ncts-not-representable``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeAlias

from lxml import etree
from pydantic import ValidationError

from mrx.node.inputs import TOKEN, ControlResultIn
from mrx.schemas import xml
from mrx.schemas.codes import (
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    SealActionCode,
    SealConditionCode,
    SealingPartyCode,
)
from mrx.schemas.messages import ControlResult, Header

NAMESPACE: Final = "urn:mrx:ncts:1"
XSD_PATH: Final = xml.XSD_DIR / "ncts" / "ncts.xsd"  # beside, not among, the mrx message XSDs
MAX_BYTES: Final = xml.MAX_BYTES

DESTINATION_CONTROL_RESULTS: Final = "CD018C"
UNLOADING_REMARKS: Final = "CC044C"
MESSAGE_TYPES: Final = (DESTINATION_CONTROL_RESULTS, UNLOADING_REMARKS)

#: NCTS destination control result code -> the node's result code (both ways).
CONTROL_RESULT_CODES: Final[Mapping[str, ControlResultCode]] = {code.value: code for code in ControlResultCode}
#: ControlResult/verificationType -> the node's control type (both ways).
VERIFICATION_TYPES: Final[Mapping[str, ControlType]] = {
    "DOC": ControlType.DOCUMENTARY,
    "NII": ControlType.NON_INTRUSIVE,
    "PHY": ControlType.PHYSICAL,
}
#: TransportDocument/type (CL754, unconfirmed) -> consignment reference type (both ways).
TRANSPORT_DOCUMENT_TYPES: Final[Mapping[str, ConsignmentReferenceType]] = {
    "N720": ConsignmentReferenceType.CIM,
    "N722": ConsignmentReferenceType.SMGS,
    "N785": ConsignmentReferenceType.MANIFEST,
}

#: What `decode` returns: the JSON-shaped input of `mrx.node.inputs.ControlResultIn`.
ControlResultInput: TypeAlias = dict[str, Any]


class NctsErrorCode(StrEnum):
    TOO_LARGE = "ncts-too-large"
    NOT_XML = "ncts-not-xml"
    FORBIDDEN_MARKUP = "ncts-forbidden-markup"
    UNSUPPORTED_MESSAGE = "ncts-unsupported-message"
    SCHEMA_INVALID = "ncts-schema-invalid"
    UNKNOWN_CODE = "ncts-unknown-code"
    INCONSISTENT = "ncts-inconsistent"
    INVALID_VALUE = "ncts-invalid-value"
    NOT_REPRESENTABLE = "ncts-not-representable"


class NctsError(Exception):
    """An NCTS-style message was refused, or a control result cannot be written as one."""

    def __init__(self, code: NctsErrorCode, detail: str, line: int | None = None) -> None:
        super().__init__(code, detail, line)
        self.code = code
        self.detail = detail
        self.line = line

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.code}{where}: {self.detail}"


# --- decode ------------------------------------------------------------------


def decode(data: bytes) -> ControlResultInput:
    """The control result in an NCTS-style CD018C or CC044C, as ``ControlResultIn`` input.

    The dict has been validated with ``ControlResultIn.model_validate``; the
    caller submits it as the national system's control result. Raises
    `NctsError`.
    """
    root = _parse(data)
    message_type = _message_type(root)
    _validate(root)
    if message_type == DESTINATION_CONTROL_RESULTS:
        notice = _read_cd018c(root)
    else:
        notice = _read_cc044c(root)
    return notice.checked_input()


_XML_ERRORS: Final = {
    xml.XmlErrorCode.TOO_LARGE: NctsErrorCode.TOO_LARGE,
    xml.XmlErrorCode.DOCTYPE_FORBIDDEN: NctsErrorCode.FORBIDDEN_MARKUP,
    xml.XmlErrorCode.XINCLUDE_FORBIDDEN: NctsErrorCode.FORBIDDEN_MARKUP,
}
_XML_ADVICE: Final = {
    NctsErrorCode.TOO_LARGE: "the national system must split the message",
    NctsErrorCode.FORBIDDEN_MARKUP: "the national system must send plain XML without DTDs, entities or XInclude",
    NctsErrorCode.NOT_XML: "the national system must send a well-formed XML file encoded as UTF-8",
}
_SYNTAX_LINE: Final = re.compile(r"line (\d+), column \d+")


def _parse(data: bytes) -> etree._Element:
    try:
        return xml.parse(data, max_bytes=MAX_BYTES)
    except xml.XmlError as exc:
        code = _XML_ERRORS.get(exc.code, NctsErrorCode.NOT_XML)
        # libxml2's syntax messages end with "line N, column M": the place of the error.
        lines = _SYNTAX_LINE.findall(exc.detail)
        line = int(lines[-1]) if lines else None
        raise NctsError(code, f"{exc.detail}; {_XML_ADVICE[code]}", line) from None


def _message_type(root: etree._Element) -> str:
    qname = etree.QName(root)
    if qname.namespace == NAMESPACE and qname.localname in MESSAGE_TYPES:
        return qname.localname
    raise NctsError(
        NctsErrorCode.UNSUPPORTED_MESSAGE,
        f"the root element is {qname.localname!r} in namespace {qname.namespace or '(none)'!r}; this node reads "
        f"CD018C (destination control results) and CC044C (unloading remarks) in namespace {NAMESPACE!r} "
        "(schemas/xsd/ncts/ncts.xsd); send this file to the system that handles its message type",
        root.sourceline,
    )


class _PerThread(threading.local):
    """ncts.xsd compiled once per thread, on first use: an XMLSchema keeps per-call state (its error log)."""

    schema: etree.XMLSchema | None = None


_local = _PerThread()
_FACET: Final = re.compile(r"\[facet '[^']*'\] ")


def _schema_problem(root: etree._Element) -> tuple[str, int | None] | None:
    """libxml2's first complaint about a document against ncts.xsd, and its line; None if valid."""
    schema = _local.schema
    if schema is None:
        # Our own file, read with the one hardened parser; it includes and imports nothing.
        schema = _local.schema = etree.XMLSchema(xml.parse(XSD_PATH.read_bytes()))
    if schema.validate(root):
        return None
    entry = schema.error_log[0]
    message = _FACET.sub("", entry.message.replace("{" + NAMESPACE + "}", ""), count=1).strip().rstrip(".")
    return message, entry.line or None


def _validate(root: etree._Element) -> None:
    problem = _schema_problem(root)
    if problem is not None:
        message, line = problem
        raise NctsError(
            NctsErrorCode.SCHEMA_INVALID,
            f"{message}; the file does not follow schemas/xsd/ncts/ncts.xsd: correct it in the national system "
            "and send it again",
            line,
        )


# What the tree says, read into values. The XSD has checked presence, order
# and lexical forms, so the readers below take elements without checking.

_NS: Final = "{" + NAMESPACE + "}"
_XML_SPACE: Final = " \t\n\r"  # xs:dateTime and xs:integer collapse these
_BLOCKING_RESULTS: Final = frozenset({ControlResultCode.A1, ControlResultCode.A2, ControlResultCode.A3})

_Loc: TypeAlias = tuple[str | int, ...]  # a place in the input dict, as pydantic's error locations


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a value came from, for errors: its line and the element's path."""

    line: int | None
    element: str

    @classmethod
    def of(cls, element: etree._Element) -> _Where:
        return cls(element.sourceline, xml.element_path(element))


@dataclass(frozen=True, slots=True)
class _Seal:
    identifier: str
    where: _Where


@dataclass(frozen=True, slots=True)
class _Equipment:
    container: str
    seals: tuple[_Seal, ...]  # found (Seal)
    new_seals: tuple[_Seal, ...]  # affixed by customs (NewSeal)
    where: _Where
    container_where: _Where


@dataclass(frozen=True, slots=True)
class _Reference:
    type: ConsignmentReferenceType
    id: str
    where: _Where


@dataclass(frozen=True, slots=True)
class _Notice:
    """One NCTS message read and mapped to the node's terms, with where each value came from."""

    control_id: str
    references: tuple[_Reference, ...]
    office: str | None
    control_type: ControlType
    result: ControlResultCode
    controlled_at: str  # RFC 3339, as written
    officer: str
    seals_ok: bool | None  # None: no seal was listed
    equipment: tuple[_Equipment, ...]
    hs_codes: tuple[str, ...]
    remarks: str | None
    places: Mapping[_Loc, _Where]  # where the scalar fields came from

    def as_input(self) -> ControlResultInput:
        condition = SealConditionCode.IN_RIGHT_CONDITION if self.seals_ok in (True, None) else SealConditionCode.DAMAGED
        data: ControlResultInput = {
            "control_id": self.control_id,
            "consignment_refs": [{"type": r.type.value, "id": r.id} for r in self.references],
            "control_type": self.control_type.value,
            "result": self.result.value,
            "controlled_at": self.controlled_at,
            "officer": self.officer,
            "transport_equipment": [
                {
                    "container": e.container,
                    "seals_found": [{"id": s.identifier, "condition": condition.value} for s in e.seals],
                    "seals_affixed": [
                        {
                            "id": s.identifier,
                            "condition": SealConditionCode.IN_RIGHT_CONDITION.value,
                            "sealing_party": SealingPartyCode.CUSTOMS.value,
                        }
                        for s in e.new_seals
                    ],
                }
                for e in self.equipment
            ],
            "hs_codes": list(self.hs_codes),
        }
        if self.office is not None:
            data["office"] = self.office
        if self.remarks is not None:
            data["remarks"] = self.remarks
        return data

    def checked_input(self) -> ControlResultInput:
        data = self.as_input()
        try:
            ControlResultIn.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = self._where(tuple(error["loc"]))
            message = str(error["msg"]).removeprefix("Value error, ")
            raise NctsError(
                NctsErrorCode.INVALID_VALUE,
                f"{where.element}: {message}; correct it in the national system and send the file again",
                where.line,
            ) from None
        return data

    def _where(self, loc: _Loc) -> _Where:
        places = dict(self.places)
        for i, ref in enumerate(self.references):
            places[("consignment_refs", i)] = ref.where
        for i, e in enumerate(self.equipment):
            places[("transport_equipment", i)] = e.where
            places[("transport_equipment", i, "container")] = e.container_where
            for key, seals in (("seals_found", e.seals), ("seals_affixed", e.new_seals)):
                for j, s in enumerate(seals):
                    places[("transport_equipment", i, key, j)] = s.where
        for n in range(len(loc), 0, -1):  # the most specific place known
            if loc[:n] in places:
                return places[loc[:n]]
        return places[()]


def _child(parent: etree._Element, name: str) -> etree._Element | None:
    return parent.find(_NS + name)


def _required(parent: etree._Element, name: str) -> etree._Element:
    element = parent.find(_NS + name)
    if element is None:
        raise RuntimeError(f"adapter and ncts.xsd disagree: {name} missing from a valid {xml.element_path(parent)}")
    return element


def _text(element: etree._Element) -> str:
    return element.text or ""


def _flag(element: etree._Element | None) -> bool | None:
    return None if element is None else _text(element) == "1"


def _lookup(table: Mapping[str, Any], element: etree._Element, what: str) -> Any:
    value = _text(element)
    mapped = table.get(value)
    if mapped is None:
        raise NctsError(
            NctsErrorCode.UNKNOWN_CODE,
            f"{xml.element_path(element)}: {value!r} is not a {what} this node knows ({', '.join(table)}); "
            "correct the code in the national system and send the file again",
            element.sourceline,
        )
    return mapped


def _control_id(message_identification: str) -> str:
    """The node's control ID for an NCTS message identification: the same file, the same control."""
    if TOKEN.fullmatch(message_identification):
        return message_identification
    digest = hashlib.sha256(message_identification.encode("utf-8")).digest()
    return "NCTS-" + base64.b32encode(digest).decode("ascii")[:30]


def _references(root: etree._Element) -> tuple[_Reference, ...]:
    references = []
    mrn = root.find(f"{_NS}TransitOperation/{_NS}MRN")
    if mrn is not None:
        references.append(_Reference(ConsignmentReferenceType.MRN, _text(mrn), _Where.of(mrn)))
    for document in root.iterfind(f"{_NS}Consignment/{_NS}TransportDocument"):
        kind = _lookup(TRANSPORT_DOCUMENT_TYPES, _required(document, "type"), "transport document type")
        number = _required(document, "referenceNumber")
        references.append(_Reference(kind, _text(number), _Where.of(number)))
    if not references:
        raise NctsError(
            NctsErrorCode.INCONSISTENT,
            "the message names no consignment: give TransitOperation/MRN or a Consignment/TransportDocument, "
            "so that the control can be matched to the train's consignment",
            root.sourceline,
        )
    return tuple(references)


def _office(office: etree._Element | None) -> str | None:
    if office is None:
        return None
    locode = _child(office, "unLocode")
    return None if locode is None else _text(locode)


def _equipment(root: etree._Element, seals_ok: bool | None, flag_name: str) -> tuple[_Equipment, ...]:
    equipment = []
    for block in root.iterfind(f"{_NS}Consignment/{_NS}TransportEquipment"):
        container = _required(block, "containerIdentificationNumber")
        seals = tuple(_Seal(_text(_required(s, "identifier")), _Where.of(s)) for s in block.iterfind(_NS + "Seal"))
        new_seals = tuple(
            _Seal(_text(_required(s, "identifier")), _Where.of(s)) for s in block.iterfind(_NS + "NewSeal")
        )
        number = _child(block, "numberOfSeals")
        if number is not None and int(_text(number).strip(_XML_SPACE)) != len(seals):
            raise NctsError(
                NctsErrorCode.INCONSISTENT,
                f"{xml.element_path(number)}: numberOfSeals is {_text(number).strip(_XML_SPACE)}, but "
                f"{len(seals)} Seal element(s) are listed for container {_text(container)}; list every seal "
                "found, or correct the number",
                number.sourceline,
            )
        if seals and seals_ok is None:
            raise NctsError(
                NctsErrorCode.INCONSISTENT,
                f"seals are listed for container {_text(container)} but {flag_name} is missing, so their "
                f"condition is unknown; give {flag_name} (1 = seals OK, 0 = not OK)",
                seals[0].where.line,
            )
        equipment.append(_Equipment(_text(container), seals, new_seals, _Where.of(block), _Where.of(container)))
    return tuple(equipment)


def _hs_codes(root: etree._Element) -> tuple[str, ...]:
    return tuple(_text(c) for c in root.iterfind(f"{_NS}Consignment/{_NS}Commodity/{_NS}commodityCode"))


def _optional_text(parent: etree._Element, name: str) -> str | None:
    element = _child(parent, name)
    return None if element is None else _text(element)


def _read_cd018c(root: etree._Element) -> _Notice:
    identification = _required(root, "messageIdentification")
    control = _required(root, "ControlResult")
    code = _required(control, "code")
    result: ControlResultCode = _lookup(CONTROL_RESULT_CODES, code, "destination control result code")
    verification = _required(control, "verificationType")
    control_type: ControlType = _lookup(VERIFICATION_TYPES, verification, "verification type")
    seals_flag = _child(control, "stateOfSealsOk")
    seals_ok = _flag(seals_flag)
    if seals_ok is False and result in _BLOCKING_RESULTS:
        raise NctsError(
            NctsErrorCode.INCONSISTENT,
            f"control result code {result.value} says the control was satisfactory, but stateOfSealsOk is 0 "
            "(seals not intact); correct one of them in the national system (B1 not satisfactory, A4 minor "
            "irregularities, or stateOfSealsOk 1) and send the file again",
            code.sourceline,
        )
    date = _required(control, "date")
    officer = _required(control, "controlledBy")
    office = _child(root, "CustomsOfficeOfControl")
    remarks = _child(control, "remarks")
    places: dict[_Loc, _Where] = {
        (): _Where.of(root),
        ("control_id",): _Where.of(identification),
        ("office",): _Where.of(office if office is not None else root),
        ("result",): _Where.of(code),
        ("control_type",): _Where.of(verification),
        ("controlled_at",): _Where.of(date),
        ("officer",): _Where.of(officer),
        ("remarks",): _Where.of(remarks if remarks is not None else control),
        ("hs_codes",): _Where.of(root),
    }
    _place_hs_codes(root, places)
    return _Notice(
        control_id=_control_id(_text(identification)),
        references=_references(root),
        office=_office(office),
        control_type=control_type,
        result=result,
        controlled_at=_text(date).strip(_XML_SPACE),
        officer=_text(officer),
        seals_ok=seals_ok,
        equipment=_equipment(root, seals_ok, "ControlResult/stateOfSealsOk"),
        hs_codes=_hs_codes(root),
        remarks=None if remarks is None else _text(remarks),
        places=places,
    )


def _read_cc044c(root: etree._Element) -> _Notice:
    identification = _required(root, "messageIdentification")
    remark = _required(root, "UnloadingRemark")
    conform = _required(remark, "conform")
    seals_ok = _flag(_child(remark, "stateOfSeals"))
    satisfactory = _flag(conform) and seals_ok is not False
    date = _required(remark, "unloadingDate")
    trader = _required(root, "TraderAtDestination")
    eori = _required(trader, "identificationNumber")
    office = _required(root, "CustomsOfficeOfDestinationActual")
    remarks = _child(remark, "unloadingRemark")
    places: dict[_Loc, _Where] = {
        (): _Where.of(root),
        ("control_id",): _Where.of(identification),
        ("office",): _Where.of(office),
        ("result",): _Where.of(conform),
        ("control_type",): _Where.of(remark),
        ("controlled_at",): _Where.of(date),
        ("officer",): _Where.of(eori),
        ("remarks",): _Where.of(remarks if remarks is not None else remark),
        ("hs_codes",): _Where.of(root),
    }
    _place_hs_codes(root, places)
    return _Notice(
        control_id=_control_id(_text(identification)),
        references=_references(root),
        office=_office(office),
        control_type=ControlType.PHYSICAL,
        result=ControlResultCode.A1 if satisfactory else ControlResultCode.B1,
        controlled_at=_text(date).strip(_XML_SPACE),
        officer=f"{_text(eori)} (trader at destination)",
        seals_ok=seals_ok,
        equipment=_equipment(root, seals_ok, "UnloadingRemark/stateOfSeals"),
        hs_codes=_hs_codes(root),
        remarks=None if remarks is None else _text(remarks),
        places=places,
    )


def _place_hs_codes(root: etree._Element, places: dict[_Loc, _Where]) -> None:
    for i, code in enumerate(root.iterfind(f"{_NS}Consignment/{_NS}Commodity/{_NS}commodityCode")):
        places[("hs_codes", i)] = _Where.of(code)


# --- encode ------------------------------------------------------------------

_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'
_CONTROL_TYPES_OUT: Final = {control_type: code for code, control_type in VERIFICATION_TYPES.items()}
_DOCUMENT_TYPES_OUT: Final = {kind: code for code, kind in TRANSPORT_DOCUMENT_TYPES.items()}


def encode_control_result(result: ControlResult, header: Header, recipient: str) -> bytes:
    """A partner's control result record as the CD018C the national system ``recipient`` reads.

    ``header`` is the record's own header: its sender (the partner node),
    preparation time and message ID go into the CD018C's header, so the same
    record always gives the same bytes. The output validates against
    ``ncts.xsd``; a record NCTS cannot carry raises `NctsError`
    (``ncts-not-representable``).
    """
    mrns = [r for r in result.consignment_refs if r.type is ConsignmentReferenceType.MRN]
    if len(mrns) > 1:
        raise _unrepresentable(
            result, f"it names {len(mrns)} MRNs ({', '.join(r.id for r in mrns)}) and a CD018C carries one"
        )
    documents = [r for r in result.consignment_refs if r.type is not ConsignmentReferenceType.MRN]
    for ref in documents:
        if ref.type not in _DOCUMENT_TYPES_OUT:
            raise _unrepresentable(result, f"NCTS has no transport document type for a {ref.type.value} reference")
    found = [s for e in result.transport_equipment for s in e.seals if s.action is SealActionCode.FOUND]
    seals_ok = None if not found else all(s.condition is SealConditionCode.IN_RIGHT_CONDITION for s in found)

    parts = [
        f'{_DECLARATION}<CD018C xmlns="{NAMESPACE}">',
        f"<messageSender>{_esc(header.sender)}</messageSender>",
        f"<messageRecipient>{_esc(recipient)}</messageRecipient>",
        f"<preparationDateAndTime>{_datetime(header.prepared_at)}</preparationDateAndTime>",
        f"<messageIdentification>{_esc(result.control_id)}</messageIdentification>",
        "<messageType>CD018C</messageType>",
        f"<correlationIdentifier>{header.message_id.hex}</correlationIdentifier>",
    ]
    if mrns:
        parts.append(f"<TransitOperation><MRN>{_esc(mrns[0].id)}</MRN></TransitOperation>")
    parts += [
        f"<CustomsOfficeOfControl><unLocode>{_esc(result.office)}</unLocode></CustomsOfficeOfControl>",
        "<ControlResult>",
        f"<code>{result.result.value}</code>",
        f"<date>{_datetime(result.controlled_at)}</date>",
        f"<verificationType>{_CONTROL_TYPES_OUT[result.control_type]}</verificationType>",
        f"<controlledBy>{_esc(result.officer)}</controlledBy>",
    ]
    if seals_ok is not None:
        parts.append(f"<stateOfSealsOk>{int(seals_ok)}</stateOfSealsOk>")
    if result.remarks is not None:
        parts.append(f"<remarks>{_esc(result.remarks)}</remarks>")
    parts.append("</ControlResult>")
    if result.transport_equipment or documents or result.hs_codes:
        parts.append("<Consignment>")
        for n, equipment in enumerate(result.transport_equipment, 1):
            seals = [s for s in equipment.seals if s.action is SealActionCode.FOUND]
            new_seals = [s for s in equipment.seals if s.action is SealActionCode.AFFIXED]
            parts.append(
                f"<TransportEquipment><sequenceNumber>{n}</sequenceNumber>"
                f"<containerIdentificationNumber>{_esc(equipment.container)}</containerIdentificationNumber>"
            )
            if seals:
                parts.append(f"<numberOfSeals>{len(seals)}</numberOfSeals>")
            parts += [
                f"<Seal><sequenceNumber>{i}</sequenceNumber><identifier>{_esc(s.id)}</identifier></Seal>"
                for i, s in enumerate(seals, 1)
            ]
            parts += [
                f"<NewSeal><sequenceNumber>{i}</sequenceNumber><identifier>{_esc(s.id)}</identifier></NewSeal>"
                for i, s in enumerate(new_seals, 1)
            ]
            parts.append("</TransportEquipment>")
        parts += [
            f"<TransportDocument><sequenceNumber>{n}</sequenceNumber><type>{_DOCUMENT_TYPES_OUT[ref.type]}</type>"
            f"<referenceNumber>{_esc(ref.id)}</referenceNumber></TransportDocument>"
            for n, ref in enumerate(documents, 1)
        ]
        parts += [
            f"<Commodity><sequenceNumber>{n}</sequenceNumber><commodityCode>{_esc(code)}</commodityCode></Commodity>"
            for n, code in enumerate(result.hs_codes, 1)
        ]
        parts.append("</Consignment>")
    parts.append("</CD018C>")
    data = "".join(parts).encode("utf-8")

    try:
        problem = _schema_problem(xml.parse_own(data, max_bytes=MAX_BYTES))
    except xml.XmlError as exc:  # too large, or a character XML cannot carry
        raise _unrepresentable(result, exc.detail) from None
    if problem is not None:
        raise _unrepresentable(result, f"the CD018C written for it does not follow ncts.xsd: {problem[0]}")
    return data


def _unrepresentable(result: ControlResult, why: str) -> NctsError:
    return NctsError(
        NctsErrorCode.NOT_REPRESENTABLE,
        f"control result {result.control_id} cannot be written as a CD018C: {why}; "
        "the record stays readable through the node's API",
    )


_SPECIAL: Final = re.compile("[&<>\r]")
_ESCAPES: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}


def _esc(value: str) -> str:
    # CR as a character reference, so that XML line-end normalisation keeps it.
    # Characters XML cannot carry make the document malformed, which parse_own refuses.
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], value)


def _datetime(value: datetime) -> str:
    if value.utcoffset() is None:
        raise TypeError(f"the date-time {value.isoformat()} has no time zone; domain values always have one")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"
