"""mrx.keys.b64url: one text per byte string."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrx.keys import b64url


@given(st.binary(max_size=512))
def test_decode_inverts_encode(data: bytes) -> None:
    text = b64url.encode(data)

    assert b64url.decode(text) == data
    assert b64url.decode(text.decode("ascii")) == data
    assert b"=" not in text


@given(st.binary(min_size=1, max_size=64).filter(lambda data: len(data) % 3), st.data())
def test_a_text_with_spare_bits_set_is_refused(data: bytes, draw: st.DataObject) -> None:
    # A length that is not a multiple of 3 leaves 2 or 4 unused low bits in the last character.
    text = b64url.encode(data)
    spare = draw.draw(st.integers(1, {2: 0b1111, 3: 0b11}[len(text) % 4]), label="spare bits")
    last = b64url.ALPHABET.index(text[-1:]) | spare
    twin = text[:-1] + b64url.ALPHABET[last : last + 1]

    assert base64.urlsafe_b64decode(twin + b"==") == data  # a lenient decoder cannot tell them apart
    with pytest.raises(ValueError, match="not canonical"):
        b64url.decode(twin)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"YQ==", "alphabet"),
        (b"YQ=", "alphabet"),
        (b"+/8", "alphabet"),
        (b"YW J j", "alphabet"),
        (b"YWJj\n", "alphabet"),
        ("YWJjé", "alphabet"),
        (b"YWJjZ", "length"),
        (b"Y", "length"),
    ],
)
def test_non_canonical_texts_are_refused(text: bytes | str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        b64url.decode(text)


def test_the_empty_text_is_the_empty_byte_string() -> None:
    assert b64url.decode(b"") == b"" == b64url.decode(b64url.encode(b""))
