"""The NCTS-style mapping: CD018C and CC044C in, CD018C out, and every refusal with its code and line."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrx.adapters import ncts
from mrx.adapters.ncts import NctsError, NctsErrorCode
from mrx.node.inputs import TOKEN, ControlResultIn
from mrx.schemas.codes import (
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    SealActionCode,
    SealConditionCode,
    SealingPartyCode,
    SealTypeCode,
)
from mrx.schemas.messages import ConsignmentReference, ControlResult, Header, Seal, TransportEquipment
from tests import factories
from tests.schemas import strategies

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "ncts"
CD018C_EXAMPLE = EXAMPLES / "CD018C--seals-intact-at-malaszewicze.xml"
CC044C_EXAMPLE = EXAMPLES / "CC044C--seal-broken-at-duisburg.xml"
MRN = "26PL30101000041764"
NODE_OFFICE = "PLMAA"

HEADER = Header(
    message_id=UUID("3f2b9c1e-8d4a-4e7b-9a61-0c5d2e8f7a14"),
    message_type="ControlResultNotification",
    sender="KZ-SRC",
    recipients=("PL-KAS",),
    prepared_at=datetime(2026, 11, 22, 6, 15, tzinfo=UTC),
)


def refusal(data: bytes) -> NctsError:
    with pytest.raises(NctsError) as caught:
        ncts.decode(data)
    return caught.value


def line_of(data: bytes, needle: bytes) -> int:
    return data[: data.index(needle)].count(b"\n") + 1


def domain(data: dict[str, Any]) -> ControlResult:
    return ControlResultIn.model_validate(data).to_domain(NODE_OFFICE)


def cd018c(
    *,
    code: str = "A1",
    verification: str = "PHY",
    seals_ok: str | None = "1",
    seals: str = "<Seal><sequenceNumber>1</sequenceNumber><identifier>CNZT0087104471</identifier></Seal>",
    number_of_seals: str = "",
    container: str = "CSQU3054383",
    transit: str = f"<TransitOperation><MRN>{MRN}</MRN></TransitOperation>",
    office: str = "<CustomsOfficeOfControl><unLocode>PLMAA</unLocode></CustomsOfficeOfControl>",
    identification: str = "PL301010-CD018-000001",
    documents: str = "",
) -> bytes:
    """A small CD018C, one line per element so that line numbers are easy to assert."""
    flag = "" if seals_ok is None else f"<stateOfSealsOk>{seals_ok}</stateOfSealsOk>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<CD018C xmlns="urn:mrx:ncts:1">
<messageSender>NTA.PL</messageSender>
<messageRecipient>PL-KAS</messageRecipient>
<preparationDateAndTime>2026-11-25T09:12:00+01:00</preparationDateAndTime>
<messageIdentification>{identification}</messageIdentification>
<messageType>CD018C</messageType>
{transit}
{office}
<ControlResult>
<code>{code}</code>
<date>2026-11-25T08:40:00+01:00</date>
<verificationType>{verification}</verificationType>
<controlledBy>Anna Kowalska</controlledBy>
{flag}
</ControlResult>
<Consignment>
<TransportEquipment>
<sequenceNumber>1</sequenceNumber>
<containerIdentificationNumber>{container}</containerIdentificationNumber>
{number_of_seals}
{seals}
</TransportEquipment>
{documents}
</Consignment>
</CD018C>
""".encode()


def cc044c(*, conform: str = "1", state_of_seals: str | None = "1", seals: bool = True) -> bytes:
    flag = "" if state_of_seals is None else f"<stateOfSeals>{state_of_seals}</stateOfSeals>"
    seal = "<Seal><sequenceNumber>1</sequenceNumber><identifier>CNZT0087104471</identifier></Seal>" if seals else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<CC044C xmlns="urn:mrx:ncts:1">
<messageSender>NTA.DE</messageSender>
<messageRecipient>DE-GZD</messageRecipient>
<preparationDateAndTime>2026-11-28T15:02:11+01:00</preparationDateAndTime>
<messageIdentification>DE004151-CC044-1</messageIdentification>
<messageType>CC044C</messageType>
<TransitOperation><MRN>{MRN}</MRN></TransitOperation>
<CustomsOfficeOfDestinationActual><referenceNumber>DE004151</referenceNumber></CustomsOfficeOfDestinationActual>
<TraderAtDestination><identificationNumber>DE123456789012345</identificationNumber></TraderAtDestination>
<UnloadingRemark>
<conform>{conform}</conform>
<unloadingDate>2026-11-28T14:30:00+01:00</unloadingDate>
{flag}
</UnloadingRemark>
<Consignment>
<TransportEquipment>
<sequenceNumber>1</sequenceNumber>
<containerIdentificationNumber>CSQU3054383</containerIdentificationNumber>
{seal}
</TransportEquipment>
</Consignment>
</CC044C>
""".encode()


# --- two validators that are not this module -----------------------------------


def xmllint(*documents: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("xmllint")
    if executable is None:
        pytest.fail("xmllint is not installed: apt-get install libxml2-utils", pytrace=False)
    return subprocess.run(
        [executable, "--noout", "--nonet", "--schema", str(ncts.XSD_PATH), *map(str, documents)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@functools.cache
def independent_xsd() -> xmlschema.XMLSchema10:
    """ncts.xsd compiled by xmlschema, a pure-Python XSD 1.0 validator independent of libxml2."""
    return xmlschema.XMLSchema10(str(ncts.XSD_PATH))


# --- the examples --------------------------------------------------------------


def test_the_examples_validate_with_xmllint() -> None:
    run = xmllint(CD018C_EXAMPLE, CC044C_EXAMPLE)
    assert run.returncode == 0, run.stderr


def test_the_examples_validate_with_xmlschema() -> None:
    for example in (CD018C_EXAMPLE, CC044C_EXAMPLE):
        independent_xsd().validate(str(example))


def test_the_cd018c_example_is_a_satisfactory_physical_control_at_malaszewicze() -> None:
    assert ncts.decode(CD018C_EXAMPLE.read_bytes()) == {
        "control_id": "PL301010-CD018-000417",
        "consignment_refs": [{"type": "MRN", "id": MRN}, {"type": "CIM", "id": "33 216102 0033 70268 8"}],
        "office": "PLMAA",
        "control_type": "physical",
        "result": "A1",
        "controlled_at": "2026-11-25T08:40:00+01:00",
        "officer": "Anna Kowalska",
        "transport_equipment": [
            {"container": "CSQU3054383", "seals_found": [{"id": "CNZT0087104471", "condition": "1"}], "seals_affixed": []},
            {
                "container": "TGHU8721607",
                "seals_found": [{"id": "CNZT0087104472", "condition": "1"}, {"id": "CN-AKL/880190", "condition": "1"}],
                "seals_affixed": [{"id": "PL-MAA/120044", "condition": "1", "sealing_party": "CU"}],
            },
        ],
        "hs_codes": ["847130", "8517620000"],
        "remarks": "Both containers opened and examined: goods as declared (laptops & routers). "
        "Electronic seals intact; customs seal PL-MAA/120044 added to TGHU8721607.",
    }


def test_the_cc044c_example_is_an_unsatisfactory_unloading_with_a_damaged_seal() -> None:
    result = domain(ncts.decode(CC044C_EXAMPLE.read_bytes()))
    assert result.result is ControlResultCode.B1
    assert result.control_type is ControlType.PHYSICAL
    assert result.office == "DEDUI"
    assert result.officer == "DE123456789012345 (trader at destination)"
    assert result.controlled_at == datetime(2026, 11, 28, 13, 30, tzinfo=UTC)
    assert result.consignment_refs[0] == ConsignmentReference(ConsignmentReferenceType.MRN, MRN)
    (equipment,) = result.transport_equipment
    assert equipment.seals == (Seal("CNZT0087104471", SealActionCode.FOUND, SealConditionCode.DAMAGED),)
    assert result.remarks is not None and "shackle cut" in result.remarks


def test_decoding_is_deterministic_so_a_resent_file_is_the_same_control() -> None:
    data = CD018C_EXAMPLE.read_bytes()
    assert ncts.decode(data) == ncts.decode(data)


# --- CD018C mapping -------------------------------------------------------------


@pytest.mark.parametrize("code", ["A1", "A2", "A3", "A4", "B1"])
def test_every_ncts_control_result_code_maps_to_itself(code: str) -> None:
    assert ncts.decode(cd018c(code=code))["result"] == code


@pytest.mark.parametrize(
    ("verification", "control_type"), [("DOC", "documentary"), ("NII", "non-intrusive"), ("PHY", "physical")]
)
def test_verification_type_maps_to_control_type(verification: str, control_type: str) -> None:
    assert ncts.decode(cd018c(verification=verification))["control_type"] == control_type


@pytest.mark.parametrize(("flag", "condition"), [("1", "1"), ("0", "2")])
def test_state_of_seals_ok_gives_each_seal_found_its_condition(flag: str, condition: str) -> None:
    decoded = ncts.decode(cd018c(code="B1", seals_ok=flag))
    assert decoded["transport_equipment"][0]["seals_found"] == [{"id": "CNZT0087104471", "condition": condition}]


def test_state_of_seals_ok_may_be_absent_when_no_seal_is_listed() -> None:
    decoded = ncts.decode(cd018c(seals_ok=None, seals=""))
    assert decoded["transport_equipment"] == [{"container": "CSQU3054383", "seals_found": [], "seals_affixed": []}]


@pytest.mark.parametrize(
    ("document_type", "reference_type", "reference"),
    [("N720", "CIM", factories.cim_note()), ("N722", "SMGS", "SMGS 0417"), ("N785", "MANIFEST", "CQ-MNF-2026-1")],
)
def test_transport_documents_are_consignment_references_after_the_mrn(
    document_type: str, reference_type: str, reference: str
) -> None:
    document = (
        f"<TransportDocument><sequenceNumber>7</sequenceNumber><type>{document_type}</type>"
        f"<referenceNumber>{reference}</referenceNumber></TransportDocument>"
    )
    assert ncts.decode(cd018c(documents=document))["consignment_refs"] == [
        {"type": "MRN", "id": MRN},
        {"type": reference_type, "id": reference},
    ]


def test_a_transport_document_alone_names_the_consignment() -> None:
    document = (
        "<TransportDocument><sequenceNumber>1</sequenceNumber><type>N720</type>"
        f"<referenceNumber>{factories.cim_note()}</referenceNumber></TransportDocument>"
    )
    decoded = ncts.decode(cd018c(transit="", documents=document))
    assert decoded["consignment_refs"] == [{"type": "CIM", "id": factories.cim_note()}]


def test_without_a_locode_the_office_is_left_to_the_node() -> None:
    for office in ("", "<CustomsOfficeOfControl><referenceNumber>PL301010</referenceNumber></CustomsOfficeOfControl>"):
        decoded = ncts.decode(cd018c(office=office))
        assert "office" not in decoded
        assert domain(decoded).office == NODE_OFFICE


def test_a_message_identification_that_is_a_node_token_is_the_control_id() -> None:
    assert ncts.decode(cd018c(identification="PL301010-CD018-000001"))["control_id"] == "PL301010-CD018-000001"


def test_any_other_message_identification_gives_a_stable_hashed_control_id() -> None:
    first = ncts.decode(cd018c(identification="msg 2026/11/25 #417"))["control_id"]
    assert first == ncts.decode(cd018c(identification="msg 2026/11/25 #417"))["control_id"]
    assert first != ncts.decode(cd018c(identification="msg 2026/11/25 #418"))["control_id"]
    assert re.fullmatch(TOKEN, first) and first.startswith("NCTS-") and len(first) == 35


def test_any_namespace_prefix_cdata_and_comments_are_read() -> None:
    original = CD018C_EXAMPLE.read_bytes()
    data = re.sub(rb"<(/?)(?=[A-Za-z])", rb"<\1n:", original).replace(b"<n:CD018C xmlns=", b"<n:CD018C xmlns:n=")
    data = data.replace(b">Anna Kowalska<", b"><![CDATA[Anna]]> <!-- sic -->Kowalska<")
    assert b"<n:ControlResult>" in data and b"<ControlResult>" not in data
    assert ncts.decode(data) == ncts.decode(original)


# --- CC044C mapping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("conform", "state_of_seals", "seals", "result"),
    [
        ("1", "1", True, "A1"),
        ("1", None, False, "A1"),
        ("1", "0", True, "B1"),  # goods as declared, seals not OK: never satisfactory, never "minor"
        ("0", "1", True, "B1"),
        ("0", "0", True, "B1"),
    ],
)
def test_unloading_remarks_give_a_physical_control_result(
    conform: str, state_of_seals: str | None, seals: bool, result: str
) -> None:
    decoded = ncts.decode(cc044c(conform=conform, state_of_seals=state_of_seals, seals=seals))
    assert (decoded["result"], decoded["control_type"]) == (result, "physical")
    assert "office" not in decoded  # only the NCTS office reference number: the node's own office


# --- refusals -------------------------------------------------------------------


def test_an_unknown_control_result_code_is_refused_by_name_with_its_line() -> None:
    data = cd018c(code="C1")
    error = refusal(data)
    assert error.code is NctsErrorCode.UNKNOWN_CODE
    assert error.line == line_of(data, b"<code>")
    assert "'C1'" in error.detail and "A1, A2, A3, A4, B1" in error.detail
    assert str(error).startswith(f"ncts-unknown-code (line {error.line}): /CD018C/ControlResult/code")


def test_an_unknown_verification_type_is_refused_by_name() -> None:
    data = cd018c(verification="XRY")
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.UNKNOWN_CODE, line_of(data, b"<verificationType>"))
    assert "DOC, NII, PHY" in error.detail


def test_an_unknown_transport_document_type_is_refused_by_name() -> None:
    document = (
        "<TransportDocument><sequenceNumber>1</sequenceNumber><type>N740</type>"
        "<referenceNumber>AWB-1</referenceNumber></TransportDocument>"
    )
    data = cd018c(documents=document)
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.UNKNOWN_CODE, line_of(data, b"<TransportDocument>"))


def test_a_code_of_the_wrong_shape_is_a_schema_error_with_its_line() -> None:
    data = cd018c(code="a1")
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.SCHEMA_INVALID, line_of(data, b"<code>"))
    assert "'a1'" in error.detail and "urn:mrx:ncts:1" not in error.detail


def test_a_missing_element_is_a_schema_error() -> None:
    data = cd018c().replace(b"<controlledBy>Anna Kowalska</controlledBy>", b"")
    error = refusal(data)
    assert error.code is NctsErrorCode.SCHEMA_INVALID
    assert "controlledBy" in error.detail


def test_repeated_sequence_numbers_are_a_schema_error() -> None:
    seals = (
        "<Seal><sequenceNumber>1</sequenceNumber><identifier>ES-1</identifier></Seal>"
        "<Seal><sequenceNumber>1</sequenceNumber><identifier>ES-2</identifier></Seal>"
    )
    error = refusal(cd018c(seals=seals))
    assert error.code is NctsErrorCode.SCHEMA_INVALID
    assert "SealSequenceNumberUnique" in error.detail


def test_a_number_of_seals_that_disagrees_with_the_seals_listed_is_inconsistent() -> None:
    data = cd018c(number_of_seals="<numberOfSeals>2</numberOfSeals>")
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.INCONSISTENT, line_of(data, b"<numberOfSeals>"))
    assert "CSQU3054383" in error.detail


def test_seals_without_their_state_are_inconsistent() -> None:
    for data in (cd018c(seals_ok=None), cc044c(state_of_seals=None)):
        error = refusal(data)
        assert (error.code, error.line) == (NctsErrorCode.INCONSISTENT, line_of(data, b"<Seal>"))


@pytest.mark.parametrize("code", ["A1", "A2", "A3"])
def test_a_satisfactory_code_with_seals_not_ok_is_inconsistent(code: str) -> None:
    data = cd018c(code=code, seals_ok="0")
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.INCONSISTENT, line_of(data, b"<code>"))


def test_a_message_without_mrn_or_transport_document_is_inconsistent() -> None:
    error = refusal(cd018c(transit=""))
    assert error.code is NctsErrorCode.INCONSISTENT
    assert "MRN" in error.detail


def test_what_the_node_input_refuses_is_reported_at_its_element() -> None:
    data = cd018c(container="CSQU3054384")
    error = refusal(data)
    assert error.code is NctsErrorCode.INVALID_VALUE
    assert error.line == line_of(data, b"<containerIdentificationNumber>")
    assert error.detail.startswith(
        "/CD018C/Consignment/TransportEquipment/containerIdentificationNumber: container number 'CSQU3054384' "
        "has check digit 4, but ISO 6346 gives 3"
    )


def test_a_cim_check_digit_is_reported_at_its_reference_number() -> None:
    document = (
        "<TransportDocument><sequenceNumber>1</sequenceNumber><type>N720</type>"
        "<referenceNumber>10-7080-702689</referenceNumber></TransportDocument>"
    )
    data = cd018c(documents=document)
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.INVALID_VALUE, line_of(data, b"<TransportDocument>"))
    assert "referenceNumber" in error.detail


@pytest.mark.parametrize(
    "data",
    [
        b'<CC015C xmlns="http://ncts.dgtaxud.ec"><messageSender>NTA.PL</messageSender></CC015C>',
        b'<CD018C xmlns="http://ncts.dgtaxud.ec"/>',
        b"<CD018C/>",
        b'<CD017C xmlns="urn:mrx:ncts:1"/>',
    ],
    ids=["other-message", "p5-namespace", "no-namespace", "other-ncts-message"],
)
def test_other_messages_are_refused_by_name(data: bytes) -> None:
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.UNSUPPORTED_MESSAGE, 1)
    assert "CD018C" in error.detail and "CC044C" in error.detail


def test_an_mrx_message_is_not_an_ncts_message() -> None:
    mrx_message = EXAMPLES.parent / "valid" / "ControlResultNotification--non-intrusive-at-alashankou.xml"
    assert refusal(mrx_message.read_bytes()).code is NctsErrorCode.UNSUPPORTED_MESSAGE


def test_malformed_xml_is_refused_with_the_line_of_the_error() -> None:
    data = cd018c().replace(b"</ControlResult>", b"</Controlresult>")
    error = refusal(data)
    assert (error.code, error.line) == (NctsErrorCode.NOT_XML, line_of(data, b"</Controlresult>"))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'<!DOCTYPE CD018C [<!ENTITY x "y">]><CD018C xmlns="urn:mrx:ncts:1">&x;</CD018C>', "ncts-forbidden-markup"),
        (
            (
                b'<CD018C xmlns="urn:mrx:ncts:1"><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                b'href="/etc/passwd" parse="text"/></CD018C>'
            ),
            "ncts-forbidden-markup",
        ),
        ("<CD018C/>".encode("utf-16"), "ncts-not-xml"),
        (b"<a>" + b" " * ncts.MAX_BYTES + b"</a>", "ncts-too-large"),
        (b"", "ncts-not-xml"),
        (b"CD018C,A1,CSQU3054383", "ncts-not-xml"),
    ],
    ids=["entity", "xinclude", "utf-16", "too-large", "empty", "csv"],
)
def test_hostile_or_foreign_bytes_are_refused_before_any_mapping(data: bytes, code: str) -> None:
    assert refusal(data).code == code


# --- encode ---------------------------------------------------------------------


def factory_result(**overrides: Any) -> ControlResult:
    """The test factories' control result, as a partner node decoded it (Dostyk, KZDOS)."""
    return replace(ControlResultIn.model_validate(factories.control_result()).to_domain("KZDOS"), **overrides)


def test_a_partner_control_result_is_a_cd018c_that_xmllint_accepts(tmp_path: Path) -> None:
    results = [
        factory_result(),
        factory_result(consignment_refs=(ConsignmentReference(ConsignmentReferenceType.MRN, MRN),)),
        factory_result(transport_equipment=(), hs_codes=(), remarks=None),
        factory_result(remarks="a & b < c > d ]]> e\r\nline two \U0001f686", officer="王军 (Wang Jun)"),
        domain(ncts.decode(CD018C_EXAMPLE.read_bytes())),
    ]
    files = []
    for n, result in enumerate(results):
        path = tmp_path / f"CD018C--{n}.xml"
        path.write_bytes(ncts.encode_control_result(result, HEADER, "NTA.PL"))
        files.append(path)
    run = xmllint(*files)
    assert run.returncode == 0, run.stderr


def test_the_cd018c_carries_the_record_header_and_is_canonical() -> None:
    data = ncts.encode_control_result(factory_result(), HEADER, "NTA.PL")
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<CD018C xmlns="urn:mrx:ncts:1">')
    assert data.count(b"\n") == 1
    text = data.decode()
    assert "<messageSender>KZ-SRC</messageSender><messageRecipient>NTA.PL</messageRecipient>" in text
    assert "<preparationDateAndTime>2026-11-22T06:15:00Z</preparationDateAndTime>" in text
    assert "<messageIdentification>CN-AKL-2026-000001</messageIdentification>" in text
    assert f"<correlationIdentifier>{HEADER.message_id.hex}</correlationIdentifier>" in text
    assert "<date>2026-11-21T21:30:00Z</date>" in text  # 03:30+06:00, in UTC
    assert "<CustomsOfficeOfControl><unLocode>KZDOS</unLocode></CustomsOfficeOfControl>" in text
    assert data == ncts.encode_control_result(factory_result(), HEADER, "NTA.PL")  # same record, same bytes


def test_the_state_of_seals_ok_summarises_the_seals_found() -> None:
    def flag(*conditions: SealConditionCode) -> str | None:
        seals = tuple(Seal(f"ES-{n}", SealActionCode.FOUND, c) for n, c in enumerate(conditions))
        seals += (Seal("CU-1", SealActionCode.AFFIXED, SealConditionCode.IN_RIGHT_CONDITION),)
        equipment = (TransportEquipment(factories.container(), seals),)
        text = ncts.encode_control_result(factory_result(transport_equipment=equipment), HEADER, "NTA.PL").decode()
        found = re.search(r"<stateOfSealsOk>([01])</stateOfSealsOk>", text)
        return found.group(1) if found else None

    ok, broken = SealConditionCode.IN_RIGHT_CONDITION, SealConditionCode.BROKEN
    assert (flag(ok, ok), flag(ok, broken), flag()) == ("1", "0", None)


def test_two_mrns_are_not_representable() -> None:
    refs = (
        ConsignmentReference(ConsignmentReferenceType.MRN, MRN),
        ConsignmentReference(ConsignmentReferenceType.MRN, "26PL30101000041765"),
    )
    with pytest.raises(NctsError) as caught:
        ncts.encode_control_result(factory_result(consignment_refs=refs), HEADER, "NTA.PL")
    assert caught.value.code is NctsErrorCode.NOT_REPRESENTABLE
    assert "CN-AKL-2026-000001" in caught.value.detail and "2 MRNs" in caught.value.detail


def test_an_mrn_that_is_not_an_ncts_mrn_is_not_representable() -> None:
    refs = (ConsignmentReference(ConsignmentReferenceType.MRN, "26CN-0001"),)
    with pytest.raises(NctsError) as caught:
        ncts.encode_control_result(factory_result(consignment_refs=refs), HEADER, "NTA.PL")
    assert caught.value.code is NctsErrorCode.NOT_REPRESENTABLE
    assert "MRN" in caught.value.detail


def test_the_example_survives_decode_encode_decode() -> None:
    first = domain(ncts.decode(CD018C_EXAMPLE.read_bytes()))
    again = domain(ncts.decode(ncts.encode_control_result(first, HEADER, "NTA.PL")))
    assert again == first


# --- the round trip, for any control result NCTS can carry ----------------------

_mrns = st.from_regex(r"[0-9]{2}[A-Z]{2}[A-Z0-9]{14}", fullmatch=True)
_documents = st.one_of(
    st.builds(ConsignmentReference, st.just(ConsignmentReferenceType.CIM), strategies.cim_notes()),
    st.builds(
        ConsignmentReference,
        st.sampled_from([ConsignmentReferenceType.SMGS, ConsignmentReferenceType.MANIFEST]),
        strategies.reference_ids,
    ),
)


@st.composite
def _references(draw: st.DrawFn) -> tuple[ConsignmentReference, ...]:
    documents = draw(st.lists(_documents, max_size=3))
    if draw(st.booleans()) or not documents:
        mrn = ConsignmentReference(ConsignmentReferenceType.MRN, draw(_mrns))
        documents.insert(draw(st.integers(0, len(documents))), mrn)
    return tuple(documents)


_seals = st.builds(
    Seal,
    id=strategies.seal_ids,
    action=st.sampled_from(SealActionCode),
    condition=st.sampled_from(SealConditionCode),
    type=st.none() | st.sampled_from(SealTypeCode),
    sealing_party=st.none() | st.sampled_from(SealingPartyCode),
)

partner_control_results = st.builds(
    ControlResult,
    control_id=st.from_regex(TOKEN, fullmatch=True),
    consignment_refs=_references(),
    office=strategies.locodes,
    control_type=st.sampled_from(ControlType),
    result=st.sampled_from(ControlResultCode),
    controlled_at=strategies.datetimes,
    officer=strategies.names,
    transport_equipment=st.lists(
        st.builds(TransportEquipment, container=strategies.containers(), seals=st.lists(_seals, max_size=4).map(tuple)),
        max_size=3,
    ).map(tuple),
    hs_codes=st.lists(strategies.hs_codes, max_size=3).map(tuple),
    remarks=st.none() | strategies.free_text,
)


def as_ncts_carries_it(result: ControlResult) -> ControlResult:
    """What survives the CD018C: the MRN first, seals found then affixed, conditions as one flag."""
    refs = sorted(result.consignment_refs, key=lambda r: r.type is not ConsignmentReferenceType.MRN)
    found = [s for e in result.transport_equipment for s in e.seals if s.action is SealActionCode.FOUND]
    intact = all(s.condition is SealConditionCode.IN_RIGHT_CONDITION for s in found)
    condition = SealConditionCode.IN_RIGHT_CONDITION if intact else SealConditionCode.DAMAGED
    equipment = tuple(
        TransportEquipment(
            e.container,
            tuple(Seal(s.id, SealActionCode.FOUND, condition) for s in e.seals if s.action is SealActionCode.FOUND)
            + tuple(
                Seal(s.id, SealActionCode.AFFIXED, SealConditionCode.IN_RIGHT_CONDITION, None, SealingPartyCode.CUSTOMS)
                for s in e.seals
                if s.action is SealActionCode.AFFIXED
            ),
        )
        for e in result.transport_equipment
    )
    return replace(result, consignment_refs=tuple(refs), transport_equipment=equipment)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(result=partner_control_results, recipient=st.from_regex(r"[!-~]{1,35}", fullmatch=True))
def test_decode_of_encode_gives_back_what_ncts_carries(result: ControlResult, recipient: str) -> None:
    data = ncts.encode_control_result(result, HEADER, recipient)
    found = [s for e in result.transport_equipment for s in e.seals if s.action is SealActionCode.FOUND]
    says_satisfactory = result.result in (ControlResultCode.A1, ControlResultCode.A2, ControlResultCode.A3)
    if says_satisfactory and any(s.condition is not SealConditionCode.IN_RIGHT_CONDITION for s in found):
        with pytest.raises(NctsError) as caught:
            ncts.decode(data)
        assert caught.value.code is NctsErrorCode.INCONSISTENT
        return
    assert domain(ncts.decode(data)) == as_ncts_carries_it(result)


@settings(max_examples=100, deadline=None)
@given(result=partner_control_results)
def test_every_cd018c_written_validates_with_xmlschema_too(result: ControlResult) -> None:
    independent_xsd().validate(ncts.encode_control_result(result, HEADER, "NTA.PL").decode("utf-8"))


def test_control_times_in_any_zone_come_back_as_the_same_instant() -> None:
    at = datetime(2026, 11, 22, 3, 30, 0, 123456, tzinfo=timezone(timedelta(hours=6)))
    result = factory_result(controlled_at=at)
    assert domain(ncts.decode(ncts.encode_control_result(result, HEADER, "NTA.PL"))).controlled_at == at


def test_a_recipient_ncts_cannot_name_is_not_representable() -> None:
    with pytest.raises(NctsError) as caught:
        ncts.encode_control_result(factory_result(), HEADER, "NTA PL ")
    assert caught.value.code is NctsErrorCode.NOT_REPRESENTABLE
    assert "messageRecipient" in caught.value.detail and caught.value.line is None
