"""JSON as the keys package reads it: UTF-8, no repeated member, no NaN or Infinity.

A repeated member, as in ``{"alg":"EdDSA","alg":"none"}``, is read differently
by different parsers (RFC 8259 §4 leaves it open; Python keeps the last), so a
JWS header or key set that could mean one thing to us and another to a
partner's verifier is refused outright. Pure; errors are `ValueError` with a
phrase.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes) -> Any:
    """The JSON value in ``data`` (UTF-8), or `ValueError`: a `UnicodeDecodeError`, a `json.JSONDecodeError`,
    a `RepeatedMember`, a `NonFiniteNumber`, or nesting too deep."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("maximum recursion depth exceeded: the value is nested too deeply") from None


class RepeatedMember(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"member {name[:64]!r} appears twice")
        self.name = name


class NonFiniteNumber(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not JSON")
        self.name = name


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Built in C, then compared: this runs for every object of every body and MQTT message.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:  # the first name met a second time, as a reader scanning the object would
            if name in seen:
                raise RepeatedMember(name)
            seen.add(name)
    return obj


def _refuse_constant(name: str) -> None:
    raise NonFiniteNumber(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_repeats, parse_constant=_refuse_constant)
