"""Guards against the slips that make the codec slow, without timing anything.

An XSD compiled per call, or a parser built per document, costs milliseconds
instead of microseconds; these tests count constructions instead of reading
a clock, so they hold on any machine however loaded.
"""

from __future__ import annotations

import threading

import pytest
from lxml import etree

from mrx.schemas import codec, xml

from . import corridor

MESSAGE = corridor.SEALED_AT_CHONGQING


class _Counting:
    def __init__(self, real: type) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.real(*args, **kwargs)


def test_encode_and_decode_compile_each_xsd_once_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(etree.XMLSchema)
    monkeypatch.setattr(etree, "XMLSchema", counting)

    def work() -> None:
        for _ in range(50):
            codec.decode(codec.encode(MESSAGE))

    thread = threading.Thread(target=work)  # a fresh thread starts with no compiled schema
    thread.start()
    thread.join()
    assert counting.calls == 1


def test_parsers_are_built_once_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(etree.XMLParser)
    monkeypatch.setattr(etree, "XMLParser", counting)
    data = codec.encode(MESSAGE)

    def work() -> None:
        for _ in range(50):
            xml.parse(data)
            xml.parse_own(data)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert 1 <= counting.calls <= 2  # the untrusted parser and our own, each once
