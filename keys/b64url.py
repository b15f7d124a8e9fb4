"""Base64url without padding (RFC 7515 §2), decoded strictly.

JOSE writes every binary value as unpadded base64url. Python's decoders are
lenient: ``base64.urlsafe_b64decode`` drops characters outside the alphabet,
and any decoder accepts a final character whose unused low bits are not zero,
so several texts decode to the same bytes. For signed records that leniency is
a malleability: two different tokens would carry one signature. `decode`
therefore accepts exactly one text per byte string, the one `encode` writes:

* only ``A-Z a-z 0-9 - _``: no padding ``=``, no ``+`` or ``/``, no whitespace;
* a length that is not 1 modulo 4 (no byte string encodes to that);
* zero bits in the unused low part of the last character.

Pure functions, no state. Errors are `ValueError` with the reason as a phrase
("contains ..."); callers put it in their own error with a code.
"""

from __future__ import annotations

import base64
import binascii

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {symbol: value for value, symbol in enumerate(ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# A text of length 4n+2 carries one byte in its last two characters, so the
# last character's low 4 bits are unused; 4n+3 carries two, leaving 2 bits.
_UNUSED_BITS_MASK = {2: 0b1111, 3: 0b11}


def encode(data: bytes) -> bytes:
    """The unpadded base64url text of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def decode(text: bytes | str) -> bytes:
    """The bytes ``text`` encodes, or `ValueError` unless it is canonical."""
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError("contains characters outside the base64url alphabet (A-Z a-z 0-9 - _)")
        text = text.encode("ascii")
    # bytes.translate with a delete set is a C loop: cheap even on a large payload.
    if text.translate(None, ALPHABET):
        raise ValueError("contains characters outside the base64url alphabet (A-Z a-z 0-9 - _), such as padding")
    remainder = len(text) % 4
    if remainder == 1:
        raise ValueError(f"has a length ({len(text)}) that no byte string encodes to")
    if remainder and _VALUE[text[-1]] & _UNUSED_BITS_MASK[remainder]:
        raise ValueError("is not canonical: the unused low bits of its last character are not zero")
    return binascii.a2b_base64(text.translate(_TO_STANDARD) + b"=" * (-len(text) % 4), strict_mode=True)
