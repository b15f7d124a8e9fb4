"""The XSDs themselves: one message each, one namespace, WCO naming, code lists equal to `codes`."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

from mrx.schemas import codes
from mrx.schemas.messages import MESSAGE_TYPES
from mrx.schemas.xml import MESSAGE_TYPE_NAMES, NAMESPACE, XSD_DIR

XS = "{http://www.w3.org/2001/XMLSchema}"
MESSAGE_XSDS = [XSD_DIR / f"{name}.xsd" for name in MESSAGE_TYPE_NAMES]
ALL_XSDS = sorted(XSD_DIR.glob("*.xsd"))

# WCO Data Model type words that end a simple element's name.
TYPE_WORDS = ("ID", "Code", "Numeric", "DateTime", "Name", "Text", "Measure", "Percent", "Description")


def parse(path: Path) -> etree._Element:
    return etree.parse(str(path)).getroot()


def test_the_directory_holds_one_xsd_per_message_and_common() -> None:
    assert {p.name for p in ALL_XSDS} == {"common.xsd"} | {f"{n}.xsd" for n in MESSAGE_TYPE_NAMES}


@pytest.mark.parametrize("path", ALL_XSDS, ids=lambda p: p.name)
def test_one_namespace_qualified_no_network(path: Path) -> None:
    schema = parse(path)
    assert schema.get("targetNamespace") == NAMESPACE
    assert schema.get("elementFormDefault") == "qualified"
    assert schema.get("blockDefault") == "#all"
    assert schema.findall(f"{XS}import") == [] and schema.findall(f"{XS}redefine") == []
    for include in schema.findall(f"{XS}include"):
        assert include.get("schemaLocation") == "common.xsd"  # relative, local, never a URL


@pytest.mark.parametrize("path", MESSAGE_XSDS, ids=lambda p: p.name)
def test_each_message_xsd_declares_exactly_its_root(path: Path) -> None:
    globals_ = [e.get("name") for e in parse(path).findall(f"{XS}element")]
    assert globals_ == [path.stem]
    assert parse(path).findall(f"{XS}include")


def test_common_declares_no_element() -> None:
    assert parse(XSD_DIR / "common.xsd").findall(f"{XS}element") == []


def test_the_message_schemas_compose_into_one_namespace(tmp_path: Path) -> None:
    """A partner may load them all at once: no type name may clash."""
    includes = "".join(f'<xs:include schemaLocation="{p.as_uri()}"/>' for p in MESSAGE_XSDS)
    combined = tmp_path / "all.xsd"
    combined.write_text(
        f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="{NAMESPACE}" '
        f'elementFormDefault="qualified">{includes}</xs:schema>'
    )
    etree.XMLSchema(etree.parse(str(combined)))
    assert set(xmlschema.XMLSchema10(str(combined)).elements) == set(MESSAGE_TYPE_NAMES)


def code_lists() -> dict[str, set[str]]:
    found = {}
    for simple_type in parse(XSD_DIR / "common.xsd").findall(f"{XS}simpleType"):
        values = {e.get("value") for e in simple_type.iter(f"{XS}enumeration")}
        if values:
            found[simple_type.get("name")] = values
    return found


ENUMS = [
    cls for cls in vars(codes).values() if isinstance(cls, type) and issubclass(cls, StrEnum) and cls is not StrEnum
]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda cls: cls.__name__)
def test_code_list_equals_its_enum(enum: type[StrEnum]) -> None:
    assert code_lists()[f"{enum.__name__}ContentType"] == {member.value for member in enum}


def test_every_code_list_has_an_enum() -> None:
    expected = {f"{enum.__name__}ContentType" for enum in ENUMS} | {"MessageTypeContentType"}
    assert set(code_lists()) == expected
    assert code_lists()["MessageTypeContentType"] == set(MESSAGE_TYPES.values())


def element_declarations(schema: xmlschema.XMLSchema10) -> list[xmlschema.validators.XsdElement]:
    seen: dict[int, xmlschema.validators.XsdElement] = {}
    stack = list(schema.elements.values())
    while stack:
        element = stack.pop()
        if id(element) in seen:
            continue
        seen[id(element)] = element
        if element.type.has_complex_content():
            stack.extend(e for e in element.type.content.iter_elements())
    return list(seen.values())


@pytest.mark.parametrize("name", MESSAGE_TYPE_NAMES)
def test_wco_naming(name: str, xmlschema_validators: dict[str, xmlschema.XMLSchema10]) -> None:
    for element in element_declarations(xmlschema_validators[name]):
        local = element.local_name
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]*|ID|HS|SHA256)+", local), local
        if element.type.is_simple():
            assert local.endswith(TYPE_WORDS), f"{local} does not end in a WCO type word"


# Repeated blocks named by a key of their own instead of a number: Receipt 1.1's Acknowledgements, each
# by the digest of the bytes it answers (an xs:unique), so that 1.0 receipts (one, unnumbered) stay valid.
KEYED_BLOCKS = {"Acknowledgement"}


def test_keyed_blocks_are_unique_by_their_key(xmlschema_validators: dict[str, xmlschema.XMLSchema10]) -> None:
    receipt = xmlschema_validators["Receipt"].elements["Receipt"]
    keys = {(c.selector.path, tuple(f.path for f in c.fields)) for c in receipt.identities}
    assert keys == {("mrx:Acknowledgement", ("mrx:ReceivedDigestID",))}


@pytest.mark.parametrize("name", MESSAGE_TYPE_NAMES)
def test_every_repeated_block_starts_with_its_sequence_number(
    name: str, xmlschema_validators: dict[str, xmlschema.XMLSchema10]
) -> None:
    for element in element_declarations(xmlschema_validators[name]):
        if element.max_occurs == 1 or element.type.is_simple():
            continue  # single blocks, and simple repeated values (Header/RecipientID), have no number
        if element.local_name in KEYED_BLOCKS:
            continue
        first = next(iter(element.type.content.iter_elements()))
        assert first.local_name == "SequenceNumeric", f"{element.local_name} starts with {first.local_name}"


def test_datetimes_require_a_time_zone(xmlschema_validators: dict[str, xmlschema.XMLSchema10]) -> None:
    date_time = xmlschema_validators["Receipt"].types["DateTimeType"]
    assert date_time.is_valid("2025-03-14T02:15:03Z") and date_time.is_valid("2025-03-14T10:15:03.5+08:00")
    assert not date_time.is_valid("2025-03-14T02:15:03")
