"""Identifiers of the corridor and their check digits.

Pure functions, no I/O. Each ``check_*`` returns ``None`` when the value is
well formed and a sentence saying what is wrong otherwise, so that the edge
(HTTP models, the XML codec, adapters) can turn it into a problem a person can
act on. The XSDs enforce the shape of each identifier; the check digits are
enforced here, because XSD 1.0 cannot compute them.

- ISO 6346 container number: owner code (3 letters), category (U, J or Z),
  6-digit serial, check digit.
- UIC wagon number: 12 digits, the last a Luhn check digit over the first 11.
- CIM consignment note: digits (separators allowed) ending in the 5-digit
  consignment number and its Luhn check digit (CIT's field 62 rule).
- UN/LOCODE: ISO 3166 alpha-2 country plus three letters or digits 2-9.
"""

from __future__ import annotations

import re

_CONTAINER = re.compile(r"[A-Z]{3}[UJZ][0-9]{7}")
_WAGON = re.compile(r"[0-9]{12}")
_LOCODE = re.compile(r"[A-Z]{2}[A-Z2-9]{3}")
_CIM_NOTE = re.compile(r"[0-9][0-9 /-]{4,33}[0-9]")


def _iso6346_letter_values() -> dict[str, int]:
    # A=10, then counting up while skipping multiples of 11 (11, 22, 33).
    values: dict[str, int] = {}
    value = 10
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if value % 11 == 0:
            value += 1
        values[letter] = value
        value += 1
    return values


_ISO6346_VALUES = _iso6346_letter_values() | {str(d): d for d in range(10)}


def iso6346_check_digit(first_ten: str) -> int:
    """The check digit of an ISO 6346 number given its first ten characters."""
    total = sum(_ISO6346_VALUES[ch] << i for i, ch in enumerate(first_ten))
    return total % 11 % 10


def luhn_check_digit(digits: str) -> int:
    """Luhn check digit with weights 2, 1, 2, ... from the left, as UIC and CIT use it.

    The weights start at 2 on the leftmost digit because the check digit is
    appended on the right of an odd-length body (11 UIC digits, 5 CIM
    digits): for odd lengths this is the classic Luhn rule, which doubles
    every other digit counting from the rightmost digit of the body.
    """
    total = 0
    for i, ch in enumerate(digits):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product // 10 + product % 10
    return (10 - total % 10) % 10


def check_container(number: str) -> str | None:
    if not _CONTAINER.fullmatch(number):
        return (
            f"container number {number!r} is not ISO 6346: expected 3 letters of owner code, "
            "a category letter U, J or Z, 6 digits and a check digit, e.g. CSQU3054383"
        )
    expected = iso6346_check_digit(number[:10])
    if int(number[10]) != expected:
        return f"container number {number!r} has check digit {number[10]}, but ISO 6346 gives {expected}"
    return None


def check_wagon(number: str) -> str | None:
    if not _WAGON.fullmatch(number):
        return f"wagon number {number!r} is not a UIC number: expected 12 digits, e.g. 218124712173"
    expected = luhn_check_digit(number[:11])
    if int(number[11]) != expected:
        return f"wagon number {number!r} has check digit {number[11]}, but the UIC rule gives {expected}"
    return None


def check_locode(code: str) -> str | None:
    if not _LOCODE.fullmatch(code):
        return (
            f"location {code!r} is not a UN/LOCODE: expected a 2-letter country code and "
            "3 letters or digits 2-9, e.g. CNAKL"
        )
    return None


def check_cim_note(note: str) -> str | None:
    if not _CIM_NOTE.fullmatch(note):
        return (
            f"CIM consignment note {note!r} is not well formed: expected digits (spaces, '-' or '/' "
            "between groups allowed) ending in the 5-digit consignment number and its check digit"
        )
    digits = re.sub(r"[^0-9]", "", note)
    if len(digits) < 6:
        return f"CIM consignment note {note!r} is too short to carry a consignment number and check digit"
    number, check = digits[-6:-1], digits[-1]
    expected = luhn_check_digit(number)
    if int(check) != expected:
        return (
            f"CIM consignment note {note!r} has check digit {check} on consignment number {number}, "
            f"but the CIT rule gives {expected}"
        )
    return None
