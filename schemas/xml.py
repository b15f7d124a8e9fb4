"""The one hardened XML configuration for untrusted input, and the mrx XSDs.

Every XML document mrx reads from outside the process (a partner's message,
a gateway upload, a file an auditor hands over) is parsed by `parse` and
nothing else; `validate` then checks a parsed message against the XSD its
root element names. Both raise `XmlError`, whose ``code`` is stable and
machine-readable and whose ``detail`` is a sentence a person can act on.

Design
------
`parse` works in two stages, cheapest first, so that a hostile document
costs microseconds and never reaches a code path that could expand it:

1. Byte checks, before libxml2 sees anything.

   a. Size: more than ``max_bytes`` (256 KiB by default) is refused first.
   b. Encoding: UTF-8 only. A UTF-16/32 byte-order mark, a NUL byte (no XML
      document contains U+0000, while UTF-16/32 text always does), bytes
      that are not strict UTF-8, or an XML declaration naming another
      encoding are refused.
   c. DTDs: the bytes ``<!DOCTYPE`` (and the DTD-only ``<!ENTITY``,
      ``<!ELEMENT``, ``<!ATTLIST``, ``<!NOTATION``) anywhere are refused.
      In UTF-8 input markup has exactly one spelling, so this is sound: no
      entity is ever declared, let alone expanded (billion laughs, external
      entities). The price is that such bytes inside a comment or CDATA
      section are refused too; mrx messages have no use for either.

2. lxml, configured so that nothing in a document can cause I/O or
   unbounded work: ``resolve_entities=False``, ``no_network=True``,
   ``load_dtd=False``, ``huge_tree=False`` (libxml2's default limits:
   nesting depth 256, text nodes 10 MB), XInclude never processed (lxml only
   does it when ``xinclude()`` is called, which mrx never does), IDs not
   collected, comments and processing instructions dropped (they carry no
   data, and dropping them keeps the codec's tree walk simple). These flags
   alone are not enough: libxml2 2.14 still reads an external DTD subset
   named by a ``file:`` URL, so the parser also carries a resolver that
   answers every external load with an empty document. After parsing, a
   DOCTYPE seen by libxml2 (unreachable past the byte check; kept as the
   second line) or an element in an XInclude namespace is refused: an
   ``xi:include`` is inert here, but a document carrying one was made to
   attack some other reader, and the XSDs refuse foreign elements anyway.

`parse_own` is the same parser without stage 1 but the size check, for the
bytes `codec.encode` has just written (it escapes every value, so they can
hold no DTD, XInclude or foreign encoding); it exists because encode is on
the hot path of ingest.

`validate` picks the XSD by the root element, which must be one of the six
message types in namespace ``urn:mrx:datamodel:MRX:1``, and reports the
first error libxml2 logs: its line, the path of the element (`element_path`)
and libxml2's sentence without Clark-notation names.

Parsers and compiled schemas hold per-call state (lxml's error log), so each
thread gets its own, created on first use: compiling one XSD takes under a
millisecond. The XSDs ship inside the package (``xsd/``) and are compiled
from those files with the same parser options, minus the resolver (so that
``xs:include`` can load ``common.xsd``); they include nothing else and
import nothing, so no schema load touches the network.

Error codes (`XmlErrorCode`)
----------------------------
``xml-too-large``, ``xml-not-utf8``, ``xml-doctype-forbidden``,
``xml-xinclude-forbidden``, ``xml-malformed`` come from `parse`;
``xml-unknown-message-type`` and ``xml-schema-invalid`` from `validate`;
``identifier-invalid`` and ``sequence-invalid`` from the codec's checks
beyond the XSD (`schemas.codec`). ``pointer`` is the path of the offending
element, e.g. ``/SealEventNotification/SealEvent/TransportEquipment/ID`` or
``.../ConsignmentReference[2]/ID``; it is what a `Receipt` error carries in
``Pointer/TagID``.
"""

from __future__ import annotations

import re
import threading
from enum import StrEnum
from pathlib import Path
from typing import Final

from lxml import etree

from .messages import MESSAGE_TYPES

NAMESPACE: Final = "urn:mrx:datamodel:MRX:1"
MAX_BYTES: Final = 256 * 1024
XSD_DIR: Final = Path(__file__).parent / "xsd"

#: Root element names, which are also the XSD file names and the values of
#: ``Header/MessageTypeCode``.
MESSAGE_TYPE_NAMES: Final = tuple(MESSAGE_TYPES.values())


class XmlErrorCode(StrEnum):
    TOO_LARGE = "xml-too-large"
    NOT_UTF8 = "xml-not-utf8"
    DOCTYPE_FORBIDDEN = "xml-doctype-forbidden"
    XINCLUDE_FORBIDDEN = "xml-xinclude-forbidden"
    MALFORMED = "xml-malformed"
    UNKNOWN_MESSAGE_TYPE = "xml-unknown-message-type"
    SCHEMA_INVALID = "xml-schema-invalid"
    IDENTIFIER_INVALID = "identifier-invalid"
    SEQUENCE_INVALID = "sequence-invalid"


class XmlError(Exception):
    """An XML document, or a message about to become one, was refused."""

    def __init__(self, code: XmlErrorCode, detail: str, pointer: str | None = None) -> None:
        super().__init__(code, detail, pointer)
        self.code = code
        self.detail = detail
        self.pointer = pointer

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


# --- parsing -----------------------------------------------------------------

_BOMS: Final = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
_BOM_PREFIXES: Final = tuple(bom for bom, _ in _BOMS)
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_XML_DECLARATION: Final = re.compile(rb"<\?xml\s[^>]*>")
_DECLARED_ENCODING: Final = re.compile(rb"""\sencoding\s*=\s*["']([^"']*)["']""")
_DTD_MARKUP: Final = re.compile(rb"<!(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)")
_XINCLUDE_TAGS: Final = ("{http://www.w3.org/2001/XInclude}*", "{http://www.w3.org/2003/XInclude}*")


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        collect_ids=False,
        remove_comments=True,
        remove_pis=True,
        strip_cdata=True,
    )


class _NothingExternal(etree.Resolver):
    """Answer every external load a document asks for (DTD, entity) with nothing.

    libxml2 reads a document's external DTD subset from ``file:`` URLs even
    with ``load_dtd=False``; this resolver makes such a read impossible.
    """

    def resolve(self, system_url: str, public_id: str, context: object) -> object:  # type: ignore[override]
        return self.resolve_string("", context)  # type: ignore[call-arg]  # lxml-stubs lag lxml here


def _new_untrusted_parser() -> etree.XMLParser:
    parser = _new_parser()
    parser.resolvers.add(_NothingExternal())
    return parser


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.parser = _new_untrusted_parser()
        self.schemas: dict[str, etree.XMLSchema] = {}


_local = _PerThread()


def parse(data: bytes, *, max_bytes: int = MAX_BYTES) -> etree._Element:
    """Parse untrusted XML bytes into an element tree, or raise `XmlError`.

    Returns the root element. Refuses documents larger than ``max_bytes``,
    not in UTF-8, with a DTD, with XInclude elements, or not well formed.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"parse() takes bytes, not {type(data).__name__}")
    _check_bytes(data, max_bytes)
    return _parse_checked(data)


def parse_own(data: bytes, *, max_bytes: int = MAX_BYTES) -> etree._Element:
    """Parse bytes this process has just written itself, for validation.

    Only for `codec.encode`'s output, on the hot path of ingest: same parser,
    but without the hostile-input checks (encoding, DTD, XInclude), which the
    writer makes impossible: its output is ``str.encode("utf-8")`` of markup
    it wrote, with every value escaped. The size limit still applies, so that
    mrx never produces a message that it, or a partner, would refuse to read.
    """
    _check_size(data, max_bytes)
    try:
        return etree.fromstring(data, _local.parser)
    except etree.XMLSyntaxError as exc:
        raise XmlError(XmlErrorCode.MALFORMED, f"the document is not well-formed XML: {exc.msg}") from None


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise XmlError(
            XmlErrorCode.TOO_LARGE,
            f"the document is {len(data)} bytes; the limit is {max_bytes} bytes",
        )


def _check_bytes(data: bytes, max_bytes: int) -> None:
    _check_size(data, max_bytes)
    if data.startswith(_BOM_PREFIXES):
        encoding = next(name for bom, name in _BOMS if data.startswith(bom))
        raise XmlError(
            XmlErrorCode.NOT_UTF8,
            f"the document starts with a {encoding} byte order mark; send it encoded as UTF-8",
        )
    if b"\x00" in data:
        raise XmlError(
            XmlErrorCode.NOT_UTF8,
            "the document contains NUL bytes, so it is UTF-16, UTF-32 or not text at all; send UTF-8",
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlError(
            XmlErrorCode.NOT_UTF8,
            f"the document is not valid UTF-8 (byte {exc.start} cannot be decoded); send UTF-8",
        ) from None
    start = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    declaration = _XML_DECLARATION.match(data, start)
    if declaration is not None:
        declared = _DECLARED_ENCODING.search(declaration.group())
        if declared is not None and declared.group(1).lower() != b"utf-8":
            raise XmlError(
                XmlErrorCode.NOT_UTF8,
                f"the XML declaration names encoding {declared.group(1).decode('utf-8')!r}; only UTF-8 is accepted",
            )
    # "!" is rare in messages and memchr finds it at memory speed; only
    # documents that contain one pay for the pattern search.
    dtd = _DTD_MARKUP.search(data) if b"!" in data else None
    if dtd is not None:
        raise XmlError(
            XmlErrorCode.DOCTYPE_FORBIDDEN,
            f"the document contains {dtd.group().decode('ascii')} at byte {dtd.start()}; "
            "DTDs and entity declarations are not accepted",
        )


def _parse_checked(data: bytes) -> etree._Element:
    """Stage 2 of `parse`: lxml with the hardened parser, then the tree checks."""
    try:
        root = etree.fromstring(data, _local.parser)
    except etree.XMLSyntaxError as exc:
        raise XmlError(XmlErrorCode.MALFORMED, f"the document is not well-formed XML: {exc.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlError(XmlErrorCode.DOCTYPE_FORBIDDEN, "the document has a DOCTYPE; DTDs are not accepted")
    # A walk of the tree, not a byte search: a namespace name may be spelled
    # with character references, so the bytes "XInclude" need not appear.
    xinclude = next(root.iter(*_XINCLUDE_TAGS), None)
    if xinclude is not None:
        raise XmlError(
            XmlErrorCode.XINCLUDE_FORBIDDEN,
            f"the document contains an XInclude element on line {xinclude.sourceline}; XInclude is not accepted",
            element_path(xinclude),
        )
    return root


# --- validation --------------------------------------------------------------


def schema_path(message_type: str) -> Path:
    """The XSD file of a message type, e.g. ``.../xsd/Receipt.xsd``."""
    if message_type not in MESSAGE_TYPE_NAMES:
        raise KeyError(f"no XSD for message type {message_type!r}")
    return XSD_DIR / f"{message_type}.xsd"


def _schema(message_type: str) -> etree.XMLSchema:
    schema = _local.schemas.get(message_type)
    if schema is None:
        # Our own files, so the parser without the resolver: xs:include must load common.xsd.
        document = etree.parse(str(schema_path(message_type)), _new_parser())
        schema = etree.XMLSchema(document)
        _local.schemas[message_type] = schema
    return schema


def message_type_of(root: etree._Element) -> str:
    """The message type a root element names, or `XmlError` if it is not one of ours."""
    tag = root.tag
    if isinstance(tag, str) and tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        if namespace == NAMESPACE and name in MESSAGE_TYPE_NAMES:
            return name
    qname = etree.QName(root)
    raise XmlError(
        XmlErrorCode.UNKNOWN_MESSAGE_TYPE,
        f"the root element is {qname.localname!r} in namespace {qname.namespace or '(none)'!r}; "
        f"expected one of {', '.join(MESSAGE_TYPE_NAMES)} in namespace {NAMESPACE!r}",
        f"/{qname.localname}",
    )


def validate(root: etree._Element) -> str:
    """Validate a parsed message against the XSD its root names; return the message type."""
    message_type = message_type_of(root)
    schema = _schema(message_type)
    if not schema.validate(root):
        raise _schema_error(schema.error_log, root)
    return message_type


def _schema_error(log: etree._ListErrorLog, root: etree._Element) -> XmlError:
    entry = log[0]
    element = _element_at(root, entry.path) if entry.path else None
    pointer = None if element is None else element_path(element)
    message = _tidy_schema_message(entry.message, named_elsewhere=pointer is not None)
    where = f"line {entry.line}, {pointer}" if pointer else f"line {entry.line}"
    return XmlError(XmlErrorCode.SCHEMA_INVALID, f"{where}: {message}", pointer)


def _element_at(root: etree._Element, path: str) -> etree._Element | None:
    # libxml2 writes paths with the document's own prefixes (/*/*[2]/xi:include).
    namespaces: dict[str, str] = {}
    for element in root.iter(etree.Element):
        for prefix, uri in element.nsmap.items():
            if prefix:
                namespaces.setdefault(prefix, uri)
    try:
        found = root.getroottree().xpath(path, namespaces=namespaces)
    except etree.XPathError:
        return None
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return found[0]
    return None


_ELEMENT_PREFIX: Final = re.compile(r"^Element '[^']*'(?:, attribute '([^']*)')?: ")
_FACET_PREFIX: Final = re.compile(r"\[facet '[^']*'\] ")


def _tidy_schema_message(message: str, *, named_elsewhere: bool) -> str:
    # libxml2 writes "Element '{urn:...}ID': [facet 'pattern'] The value ...";
    # the namespace is always ours, and the pointer, when there is one, names the element.
    message = message.replace("{" + NAMESPACE + "}", "")
    match = _ELEMENT_PREFIX.match(message)
    if match is not None and named_elsewhere:
        attribute = match.group(1)
        message = message[match.end() :]
        if attribute:
            message = f"attribute {attribute!r}: {message}"
    message = _FACET_PREFIX.sub("", message, count=1)
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def element_path(element: etree._Element) -> str:
    """A readable path to an element: local names, with ``[n]`` among same-named siblings."""
    steps: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        if parent is not None:
            same = list(parent.iterchildren(node.tag))
            if len(same) > 1:
                name = f"{name}[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))
