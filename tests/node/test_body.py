"""`parse_json`, the strict JSON reader of HTTP bodies and MQTT messages: what it accepts and what it answers.

The detail sentences are part of the contract (a gateway's operator reads
them), so they are pinned here word for word.
"""

from __future__ import annotations

import json

import pytest

from mrx.node.body import parse_json
from mrx.node.problems import Problem
from tests import factories


def _refusal(body: bytes) -> tuple[str, str]:
    with pytest.raises(Problem) as caught:
        parse_json(body)
    return caught.value.code, caught.value.detail


def test_a_seal_event_and_a_batch_read_as_json_does() -> None:
    event = factories.seal_event(type="sealed")
    for value in (event, {"events": [event, factories.seal_event(seq=2)]}, [1, "ü", None, True, 1.5, {}], "x", 7):
        body = json.dumps(value, ensure_ascii=False).encode()
        assert parse_json(body) == json.loads(body)


def test_every_parse_gives_fresh_objects() -> None:
    body = b'{"location": {"locode": "CNURC"}, "refs": [{"type": "CIM"}]}'
    first, second = parse_json(body), parse_json(body)
    first["location"]["locode"] = "changed"
    assert second["location"]["locode"] == "CNURC"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"seq": 1, "seq": 2}', "seq"),
        (b'{"a": 1, "b": 2, "b": 3, "a": 4}', "b"),  # the first key met a second time
        (b'{"a": 1, "b": 2, "a": 3, "b": 4}', "a"),
        (b'{"events": [{"x": 1}, {"location": {"lat": 1, "lat": 1}}]}', "lat"),  # deep inside, values equal
        (b'{"": 1, "": 2}', ""),
    ],
)
def test_a_repeated_key_anywhere_is_refused_and_named(body: bytes, key: str) -> None:
    assert _refusal(body) == ("duplicate-json-key", f"the key {key!r} appears twice in one object; send it once")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"seq": NaN}', "NaN is not a JSON number; send a finite number"),
        (b"[Infinity]", "Infinity is not a JSON number; send a finite number"),
        (b'{"lat": -Infinity}', "-Infinity is not a JSON number; send a finite number"),
        (b'{"a": "\xff"}', "the body is not UTF-8 (byte 7); send UTF-8 JSON"),
        (b'{"event_id": ', "the body is not valid JSON: Expecting value at line 1, column 14"),
        (b'{"a": 1}\n{"b": 2}', "the body is not valid JSON: Extra data at line 2, column 1"),
        (b"", "the body is not valid JSON: Expecting value at line 1, column 1"),
        ("\ufeff{}".encode(), "the body is not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1, column 1"),
    ],
)
def test_what_is_not_strict_json_is_refused_with_a_sentence(body: bytes, detail: str) -> None:
    assert _refusal(body) == ("invalid-json", detail)


@pytest.mark.parametrize(
    ("body", "start"),
    [
        (b'{"seq": ' + b"9" * 5000 + b"}", "the body is not acceptable JSON: Exceeds the limit (4300 digits)"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is not acceptable JSON: maximum recursion depth exceeded"),
    ],
)
def test_json_python_cannot_hold_is_refused(body: bytes, start: str) -> None:
    code, detail = _refusal(body)
    assert code == "invalid-json" and detail.startswith(start)
