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
    """The JSON value in ``data`` (UTF-8), or `ValueError`."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise ValueError(f"member {name[:64]!r} appears twice")
        seen.add(name)
    return dict(pairs)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_repeats, parse_constant=_refuse_constant)
