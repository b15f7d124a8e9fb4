"""Check digits of the corridor's identifiers, against the worked examples and an independent reading of the rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrx.schemas.identifiers import (
    check_cim_note,
    check_container,
    check_locode,
    check_wagon,
    iso6346_check_digit,
    luhn_check_digit,
)

# --- the worked examples of domain.md ------------------------------------------


def test_iso6346_worked_example() -> None:
    assert iso6346_check_digit("CSQU305438") == 3
    assert check_container("CSQU3054383") is None


def test_uic_worked_example() -> None:
    assert luhn_check_digit("21812471217") == 3
    assert check_wagon("218124712173") is None


def test_cim_worked_example() -> None:
    assert luhn_check_digit("70268") == 8
    assert check_cim_note("70268 8") is None
    assert check_cim_note("33 216102 0033 70268-8") is None


# --- the rules, written out independently ----------------------------------------

# ISO 6346 letter values as the standard tabulates them: A=10, then upwards
# skipping the multiples of 11.
ISO6346_TABLE = dict(
    zip(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        [10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 34, 35, 36, 37, 38],
        strict=True,
    )
)


def iso6346_by_the_book(first_ten: str) -> int:
    total = sum((ISO6346_TABLE[c] if c.isalpha() else int(c)) * 2**i for i, c in enumerate(first_ten))
    return total % 11 % 10


def luhn_by_the_book(body: str) -> int:
    # Double every other digit starting from the rightmost digit of the body
    # (the check digit will sit to its right), sum the digits of the results.
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += sum(int(d) for d in str(value))
    return (10 - total % 10) % 10


@given(st.from_regex(r"[A-Z]{3}[UJZ][0-9]{6}", fullmatch=True))
def test_iso6346_matches_the_table(body: str) -> None:
    assert iso6346_check_digit(body) == iso6346_by_the_book(body)


@given(st.from_regex(r"[0-9]{11}", fullmatch=True))
def test_uic_matches_luhn(body: str) -> None:
    assert luhn_check_digit(body) == luhn_by_the_book(body)


@given(st.from_regex(r"[0-9]{11}", fullmatch=True), st.integers(0, 10), st.integers(1, 9))
def test_uic_detects_every_single_digit_error(body: str, position: int, delta: int) -> None:
    number = body + str(luhn_check_digit(body))
    wrong = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1 :]
    assert check_wagon(wrong) is not None


@given(st.from_regex(r"[A-Z]{3}[UJZ][0-9]{6}", fullmatch=True), st.integers(1, 9))
def test_container_refuses_every_other_check_digit(body: str, delta: int) -> None:
    right = iso6346_check_digit(body)
    assert check_container(f"{body}{right}") is None
    assert check_container(f"{body}{(right + delta) % 10}") is not None


# --- refusals are sentences that name the value ----------------------------------------


@pytest.mark.parametrize(
    ("check", "value", "words"),
    [
        (check_container, "CSQU3054384", "check digit 4, but ISO 6346 gives 3"),
        (check_container, "CSQX3054383", "not ISO 6346"),
        (check_container, "csqu3054383", "not ISO 6346"),
        (check_container, "CSQU305438", "not ISO 6346"),
        (check_wagon, "218124712174", "check digit 4, but the UIC rule gives 3"),
        (check_wagon, "21812471217", "expected 12 digits"),
        (check_wagon, "21812471217A", "expected 12 digits"),
        (check_cim_note, "70268 9", "check digit 9 on consignment number 70268, but the CIT rule gives 8"),
        (check_cim_note, "7026", "not well formed"),
        (check_cim_note, "CIM-70268-8", "not well formed"),
        (check_cim_note, "70268 8 ", "not well formed"),
        (check_cim_note, "7-0-2-6-8", "too short"),
        (check_locode, "CNCQ1", "not a UN/LOCODE"),
        (check_locode, "cncqi", "not a UN/LOCODE"),
    ],
)
def test_refusals_say_what_is_wrong(check, value: str, words: str) -> None:  # type: ignore[no-untyped-def]
    problem = check(value)
    assert problem is not None
    assert repr(value) in problem
    assert words in problem


@pytest.mark.parametrize("locode", ["CNCQI", "CNAKL", "KZDOS", "PLMAA", "DEDUI", "BYBQT", "CNHRS", "KZHOR"])
def test_corridor_locodes(locode: str) -> None:
    assert check_locode(locode) is None
