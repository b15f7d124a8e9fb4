"""schemas.xml beyond hostile input: errors people can act on, paths, message types, threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from lxml import etree

from mrx.schemas import codec, xml
from mrx.schemas.xml import NAMESPACE, XmlError, XmlErrorCode

from . import corridor
from .conftest import vectors


def test_error_codes_are_stable_strings() -> None:
    assert {code.value for code in XmlErrorCode} == {
        "xml-too-large",
        "xml-not-utf8",
        "xml-doctype-forbidden",
        "xml-xinclude-forbidden",
        "xml-malformed",
        "xml-unknown-message-type",
        "xml-schema-invalid",
        "identifier-invalid",
        "sequence-invalid",
    }
    error = XmlError(XmlErrorCode.MALFORMED, "the document is not well-formed XML: x", "/a")
    assert error.code == "xml-malformed" and str(error) == "xml-malformed: the document is not well-formed XML: x"
    assert error.pointer == "/a"


def test_malformed_detail_gives_the_position() -> None:
    with pytest.raises(XmlError) as caught:
        xml.parse(b"<a>\n  <b>\n</a>")
    assert "line 3" in caught.value.detail


def test_element_path_indexes_only_among_namesakes() -> None:
    root = etree.fromstring(b'<r xmlns="urn:x"><a/><b><c/><c><d/></c></b><a/></r>')
    b, d = root[1], root[1][1][0]
    assert xml.element_path(root) == "/r"
    assert xml.element_path(b) == "/r/b"
    assert xml.element_path(d) == "/r/b/c[2]/d"
    assert xml.element_path(root[2]) == "/r/a[2]"


@pytest.mark.parametrize(
    ("document", "words"),
    [
        (b"<SealEventNotification/>", "namespace '(none)'"),
        (b'<SealEventNotification xmlns="urn:mrx:datamodel:MRX:2"/>', "urn:mrx:datamodel:MRX:2"),
        (f'<Invoice xmlns="{NAMESPACE}"/>'.encode(), "'Invoice'"),
        (f'<SealEvent xmlns="{NAMESPACE}"/>'.encode(), "'SealEvent'"),
    ],
)
def test_unknown_message_types(document: bytes, words: str) -> None:
    with pytest.raises(XmlError) as caught:
        codec.decode(document)
    assert caught.value.code == XmlErrorCode.UNKNOWN_MESSAGE_TYPE
    assert words in caught.value.detail
    assert "SealEventNotification, ControlResultNotification" in caught.value.detail


def test_schema_path_names_the_shipped_file() -> None:
    for message_type in xml.MESSAGE_TYPE_NAMES:
        assert xml.schema_path(message_type).is_file()
    with pytest.raises(KeyError):
        xml.schema_path("common")


def test_schemas_are_compiled_once_per_thread() -> None:
    xml.validate(xml.parse(codec.encode(corridor.RECEIPT_ACCEPTED)))
    first = xml._schema("Receipt")
    assert xml._schema("Receipt") is first
    other: list[etree.XMLSchema] = []
    thread = threading.Thread(target=lambda: other.append(xml._schema("Receipt")))
    thread.start()
    thread.join()
    assert other[0] is not first  # each thread has its own, since lxml keeps error state on it


def test_concurrent_decoding_keeps_errors_apart() -> None:
    """Threads share no parser or schema state: each sees its own result and its own error."""
    good = [(v.data, None) for v in vectors("valid")]
    bad = [(v.data, v.comment.split("with: ")[1].split()[0]) for v in vectors("invalid") + vectors("semantic-invalid")]
    cases = (good + bad) * 8

    def judge(case: tuple[bytes, str | None]) -> bool:
        data, expected = case
        try:
            codec.decode(data)
        except XmlError as error:
            return error.code == expected
        return expected is None

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(judge, cases))
