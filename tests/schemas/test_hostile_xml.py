"""Hostile XML: every attack is refused with its own code, before any expansion, in well under a second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from mrx.schemas import codec, xml
from mrx.schemas.xml import MAX_BYTES, XmlError, XmlErrorCode

from . import corridor

VALID = codec.encode(corridor.SEALED_AT_CHONGQING)
BODY = VALID.split(b"\n", 1)[1]  # the document without its XML declaration

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

QUADRATIC_BLOWUP = b'<!DOCTYPE r [<!ENTITY a "' + b"x" * 50_000 + b'">]><r>' + b"&a;" * 60_000 + b"</r>"

DTD_ATTACKS = {
    "internal entity": b'<!DOCTYPE r [<!ENTITY name "value">]><r>&name;</r>',
    "billion laughs": BILLION_LAUGHS,
    "quadratic blowup": QUADRATIC_BLOWUP,
    "external entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    "external entity over http": b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>',
    "parameter entity": b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>',
    "external DTD": b'<!DOCTYPE r SYSTEM "file:///etc/passwd"><r/>',
    "public DTD over http": b'<!DOCTYPE r PUBLIC "-//X//DTD X//EN" "http://127.0.0.1:9/x.dtd"><r/>',
    "bare DOCTYPE": b"<!DOCTYPE r><r/>",
    "DOCTYPE before an mrx message": b"<?xml version='1.0'?>\n<!DOCTYPE SealEventNotification>\n" + BODY,
}


@pytest.fixture
def stopwatch() -> Iterator[None]:
    """Each refusal must be cheap: no expansion, no I/O, no waiting on a network."""
    started = time.perf_counter()
    yield
    assert time.perf_counter() - started < 0.5


def refusal(data: bytes, **kwargs: int) -> XmlError:
    with pytest.raises(XmlError) as caught:
        xml.parse(data, **kwargs)
    return caught.value


@pytest.mark.parametrize("attack", list(DTD_ATTACKS), ids=str)
def test_dtds_are_refused_before_parsing(attack: str, stopwatch: None) -> None:
    assert refusal(DTD_ATTACKS[attack]).code == XmlErrorCode.DOCTYPE_FORBIDDEN
    with pytest.raises(XmlError) as caught:
        codec.decode(DTD_ATTACKS[attack])
    assert caught.value.code == XmlErrorCode.DOCTYPE_FORBIDDEN


def test_dtd_markup_is_refused_anywhere() -> None:
    """The byte scan is deliberately coarse: DTD markup is refused even inside a comment."""
    assert refusal(b"<r><!-- <!ENTITY x 'y'> --></r>").code == XmlErrorCode.DOCTYPE_FORBIDDEN
    assert xml.parse(b"<r><!-- a comment! --><![CDATA[<!x>]]></r>").text == "<!x>"


@pytest.mark.parametrize("attack", list(DTD_ATTACKS), ids=str)
def test_the_parser_refuses_dtds_even_without_the_byte_check(attack: str, stopwatch: None) -> None:
    """The second line: were the byte scan bypassed, libxml2 would expand nothing, load nothing,
    and the tree check would still refuse the document."""
    with pytest.raises(XmlError) as caught:
        xml._parse_checked(DTD_ATTACKS[attack])
    # libxml2's own amplification guard may refuse first (billion laughs): malformed, still unexpanded.
    assert caught.value.code in (XmlErrorCode.DOCTYPE_FORBIDDEN, XmlErrorCode.MALFORMED)
    assert "root:" not in caught.value.detail  # nothing of /etc/passwd in a message


def test_the_parser_reads_no_file_a_dtd_names(tmp_path: Path) -> None:
    """libxml2 would read an external subset from a file: URL even with load_dtd=False; the parser's
    resolver answers with nothing instead (a read of this file would fail with a syntax error)."""
    garbage = tmp_path / "garbage.dtd"
    garbage.write_text("this is not a DTD")
    for data in (
        f'<!DOCTYPE r SYSTEM "{garbage.as_uri()}"><r/>'.encode(),
        f'<!DOCTYPE r [<!ENTITY % p SYSTEM "{garbage.as_uri()}"> %p;]><r/>'.encode(),
    ):
        with pytest.raises(XmlError) as caught:
            xml._parse_checked(data)
        assert caught.value.code == XmlErrorCode.DOCTYPE_FORBIDDEN, caught.value.detail


XINCLUDES = {
    "XInclude 2001": (
        b'<r xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd" parse="text"/></r>'
    ),
    "XInclude 2003": b'<r><include xmlns="http://www.w3.org/2003/XInclude" href="file:///etc/passwd"/></r>',
    "namespace spelled with character references": (
        b'<r xmlns:xi="http://www.w3.org/2001/&#88;Include"><xi:include href="file:///etc/passwd"/></r>'
    ),
    "inside an mrx message": BODY.replace(
        b"<Lock>", b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="/etc/passwd"/><Lock>'
    ),
}


@pytest.mark.parametrize("attack", list(XINCLUDES), ids=str)
def test_xinclude_is_refused(attack: str, stopwatch: None) -> None:
    error = refusal(XINCLUDES[attack])
    assert error.code == XmlErrorCode.XINCLUDE_FORBIDDEN
    assert error.pointer is not None and error.pointer.endswith("include")


def test_the_xsd_refuses_xinclude_too() -> None:
    """Were parse() not to look, validation would still refuse the foreign element (and never process it)."""
    root = etree.fromstring(XINCLUDES["inside an mrx message"])
    with pytest.raises(XmlError) as caught:
        xml.validate(root)
    assert caught.value.code == XmlErrorCode.SCHEMA_INVALID
    assert "include" in caught.value.detail


def test_size_is_checked_first(stopwatch: None) -> None:
    too_big = BILLION_LAUGHS + b" " * MAX_BYTES
    assert refusal(too_big).code == XmlErrorCode.TOO_LARGE
    assert refusal(VALID, max_bytes=len(VALID) - 1).code == XmlErrorCode.TOO_LARGE
    assert xml.parse(VALID, max_bytes=len(VALID)).tag.endswith("SealEventNotification")
    with pytest.raises(XmlError) as caught:
        codec.decode(VALID + b" " * MAX_BYTES)
    assert caught.value.code == XmlErrorCode.TOO_LARGE
    assert str(MAX_BYTES) in caught.value.detail


NOT_UTF8 = {
    "UTF-16 LE with BOM": VALID.decode().replace("UTF-8", "UTF-16").encode("utf-16"),
    "UTF-16 BE with BOM": b"\xfe\xff" + VALID.decode().replace("UTF-8", "UTF-16").encode("utf-16-be"),
    "UTF-16 without BOM": VALID.decode().replace("UTF-8", "UTF-16").encode("utf-16-le"),
    "UTF-32": VALID.decode().replace("UTF-8", "UTF-32").encode("utf-32"),
    "Latin-1 declared": b'<?xml version="1.0" encoding="ISO-8859-1"?><r>caf\xe9</r>',
    "Latin-1 bytes, no declaration": b"<r>caf\xe9</r>",
    "UTF-8 declared, Latin-1 bytes": b'<?xml version="1.0" encoding="UTF-8"?><r>caf\xe9</r>',
    "overlong UTF-8": b"<r>\xc0\xbc</r>",
    "encoded surrogate": b"<r>\xed\xa0\x80</r>",
    "EBCDIC": "<r/>".encode("cp500"),
    "PNG": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
}


@pytest.mark.parametrize("case", list(NOT_UTF8), ids=str)
def test_only_utf8_is_read(case: str, stopwatch: None) -> None:
    assert refusal(NOT_UTF8[case]).code == XmlErrorCode.NOT_UTF8


def test_utf8_with_bom_or_lower_case_label_is_read() -> None:
    assert codec.decode(b"\xef\xbb\xbf" + VALID) == corridor.SEALED_AT_CHONGQING
    assert codec.decode(VALID.replace(b'encoding="UTF-8"', b"encoding='utf-8'")) == corridor.SEALED_AT_CHONGQING
    assert codec.decode(BODY) == corridor.SEALED_AT_CHONGQING  # no declaration: UTF-8 by definition


MALFORMED = {
    "empty": b"",
    "text": b"hello",
    "JSON": b'{"type": "SealEventNotification"}',
    "truncated": VALID[: len(VALID) // 2],
    "two roots": b"<a/><b/>",
    "undeclared entity": b"<r>&nbsp;</r>",
    "undeclared prefix": b"<x:r/>",
    "deep nesting": b"<a>" * 10_000 + b"</a>" * 10_000,
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=str)
def test_malformed_documents(case: str, stopwatch: None) -> None:
    error = refusal(MALFORMED[case])
    assert error.code == XmlErrorCode.MALFORMED
    assert error.detail.startswith("the document is not well-formed XML")


def test_schema_location_hints_are_ignored(tmp_path: Path) -> None:
    """An instance cannot choose its own schema: xsi:schemaLocation pointing at a permissive XSD changes nothing."""
    permissive = tmp_path / "anything.xsd"
    permissive.write_text(
        f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="{xml.NAMESPACE}">'
        '<xs:element name="SealEventNotification"><xs:complexType><xs:sequence>'
        '<xs:any processContents="skip" minOccurs="0" maxOccurs="unbounded"/>'
        "</xs:sequence></xs:complexType></xs:element></xs:schema>"
    )
    hint = (
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{xml.NAMESPACE} {permissive.as_uri()}"'
    ).encode()
    data = BODY.replace(b"<SealEventNotification ", b"<SealEventNotification " + hint + b" ", 1)
    data = data.replace(b"<BatteryPercent>98<", b"<BatteryPercent>980<")
    with pytest.raises(XmlError) as caught:
        codec.decode(data)
    assert caught.value.code == XmlErrorCode.SCHEMA_INVALID
    assert caught.value.pointer == "/SealEventNotification/SealEvent/BatteryPercent"


def test_parse_takes_bytes_only() -> None:
    with pytest.raises(TypeError):
        xml.parse(VALID.decode())  # type: ignore[arg-type]
