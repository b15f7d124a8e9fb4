"""The vectors in ``schemas/examples``, judged by mrx and by two validators that are not mrx.

- ``valid/``: accepted by mrx, xmllint and xmlschema; each decodes to the
  message in `corridor`, and encoding that message gives the file's content.
- ``invalid/``: refused by all three; mrx's error code is the one the file's
  comment names.
- ``semantic-invalid/``: accepted by xmllint and xmlschema (the XSD cannot see
  the problem), refused by mrx with the code and pointer the comment names.
"""

from __future__ import annotations

import re

import pytest
import xmlschema

from mrx.schemas import codec
from mrx.schemas.xml import MESSAGE_TYPE_NAMES, XmlError

from . import corridor
from .conftest import Vector, Xmllint, vectors

VALID = vectors("valid")
INVALID = vectors("invalid")
SEMANTIC_INVALID = vectors("semantic-invalid")
ALL = VALID + INVALID + SEMANTIC_INVALID


def refusal(vector: Vector) -> XmlError:
    with pytest.raises(XmlError) as caught:
        codec.decode(vector.data)
    return caught.value


# --- the set of vectors --------------------------------------------------------


def test_every_message_type_has_vectors_of_each_kind() -> None:
    for kind in (VALID, INVALID, SEMANTIC_INVALID):
        assert {v.message_type for v in kind} == set(MESSAGE_TYPE_NAMES)


@pytest.mark.parametrize("vector", ALL, ids=str)
def test_file_names_say_which_xsd_applies(vector: Vector) -> None:
    assert vector.message_type in MESSAGE_TYPE_NAMES
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", vector.case)


def test_valid_vectors_are_exactly_the_corridor_messages() -> None:
    assert {v.path.stem for v in VALID} == set(corridor.VECTORS)


@pytest.mark.parametrize("vector", INVALID + SEMANTIC_INVALID, ids=str)
def test_refused_vectors_say_what_they_break(vector: Vector) -> None:
    assert vector.path.read_text(encoding="utf-8").startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!--')
    assert re.search(r"refuses it with: [a-z-]+", vector.comment)


# --- valid ---------------------------------------------------------------------


@pytest.mark.parametrize("vector", VALID, ids=str)
def test_valid_vector_decodes_to_its_message(vector: Vector) -> None:
    assert codec.decode(vector.data) == corridor.VECTORS[vector.path.stem]


@pytest.mark.parametrize("vector", VALID, ids=str)
def test_valid_vector_is_what_the_codec_writes(vector: Vector) -> None:
    assert codec.encode(corridor.VECTORS[vector.path.stem]) == corridor.compact(vector.data)
    assert corridor.pretty(corridor.compact(vector.data)) == vector.data  # the file is the canonical form, indented


@pytest.mark.parametrize("vector", VALID, ids=str)
def test_valid_vector_passes_xmllint(vector: Vector, xmllint: Xmllint) -> None:
    verdict = xmllint.validate(vector.path, vector.message_type)
    assert verdict.valid, verdict.output


@pytest.mark.parametrize("vector", VALID, ids=str)
def test_valid_vector_passes_xmlschema(vector: Vector, xmlschema_validators: dict[str, xmlschema.XMLSchema10]) -> None:
    xmlschema_validators[vector.message_type].validate(str(vector.path))


# --- invalid -------------------------------------------------------------------


@pytest.mark.parametrize("vector", INVALID, ids=str)
def test_invalid_vector_is_refused_by_mrx_with_the_named_code(vector: Vector) -> None:
    expected = re.search(r"mrx refuses it with: ([a-z-]+)", vector.comment)
    assert expected is not None
    error = refusal(vector)
    assert error.code == expected.group(1), error.detail


@pytest.mark.parametrize("vector", INVALID, ids=str)
def test_invalid_vector_is_refused_by_xmllint(vector: Vector, xmllint: Xmllint) -> None:
    verdict = xmllint.validate(vector.path, vector.message_type)
    # Exit code 3 is "fails to validate": the file is well formed and the XSD
    # itself refuses it (1 would be a parse error, 5 a broken schema).
    assert verdict.exit_code == 3, verdict.output


@pytest.mark.parametrize("vector", INVALID, ids=str)
def test_invalid_vector_is_refused_by_xmlschema(
    vector: Vector, xmlschema_validators: dict[str, xmlschema.XMLSchema10]
) -> None:
    assert not xmlschema_validators[vector.message_type].is_valid(str(vector.path))


@pytest.mark.parametrize("vector", [v for v in INVALID if "xml-schema-invalid" in v.comment], ids=str)
def test_schema_refusals_locate_the_problem(vector: Vector) -> None:
    error = refusal(vector)
    assert re.match(r"line \d+", error.detail)
    assert error.pointer is None or error.pointer.startswith(f"/{vector.message_type}")


# --- valid against the XSD, refused by mrx -----------------------------------------


@pytest.mark.parametrize("vector", SEMANTIC_INVALID, ids=str)
def test_semantic_vector_passes_xmllint(vector: Vector, xmllint: Xmllint) -> None:
    verdict = xmllint.validate(vector.path, vector.message_type)
    assert verdict.valid, verdict.output


@pytest.mark.parametrize("vector", SEMANTIC_INVALID, ids=str)
def test_semantic_vector_passes_xmlschema(
    vector: Vector, xmlschema_validators: dict[str, xmlschema.XMLSchema10]
) -> None:
    xmlschema_validators[vector.message_type].validate(str(vector.path))


@pytest.mark.parametrize("vector", SEMANTIC_INVALID, ids=str)
def test_semantic_vector_is_refused_by_mrx_at_the_named_element(vector: Vector) -> None:
    expected = re.search(r"mrx refuses it with: ([a-z-]+) at (\S+)", vector.comment)
    assert expected is not None
    error = refusal(vector)
    assert (error.code, error.pointer) == expected.groups(), error.detail


def test_check_digit_refusals_are_identifier_invalid() -> None:
    check_digit_vectors = [v for v in SEMANTIC_INVALID if v.case.endswith("check-digit")]
    assert len(check_digit_vectors) >= 4
    assert {refusal(v).code for v in check_digit_vectors} == {"identifier-invalid"}
