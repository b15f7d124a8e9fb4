"""mrx.keys.jwks: public keys with a validity window, and the strict JWKS form."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from mrx.keys.jwks import Keyring, KeyringError, PublicKey
from mrx.keys.jws import SigningKey
from tests.keys.support import T0, public

HOUR = timedelta(hours=1)


def member(key: SigningKey, **extra: object) -> dict[str, object]:
    """A JWKS member for ``key``: active since T0 unless ``extra`` says otherwise."""
    return {**key.public_jwk(), "status": "active", "valid_from": "2025-03-14T09:00:00Z", **extra}


def refusal(doc: object) -> KeyringError:
    with pytest.raises(KeyringError) as caught:
        Keyring.from_jwks(doc)  # type: ignore[arg-type]
    return caught.value


# Validity: a record signed before revocation stays valid, one signed after is not.


def test_an_active_key_is_valid_from_valid_from_on(ed_key) -> None:
    key = public(ed_key, valid_from=T0)

    assert not key.valid_at(T0 - timedelta(microseconds=1))
    assert key.valid_at(T0)
    assert key.valid_at(T0 + 1000 * HOUR)


def test_a_retired_key_is_valid_up_to_but_not_at_valid_to(ed_key) -> None:
    key = public(ed_key).retired(T0 + HOUR)

    assert key.status == "retired"
    assert key.valid_at(T0 + HOUR - timedelta(microseconds=1))
    assert not key.valid_at(T0 + HOUR)


def test_a_revoked_key_keeps_records_signed_before_revoked_at(ed_key) -> None:
    key = public(ed_key).revoked(T0 + HOUR)

    assert key.status == "revoked"
    assert key.valid_at(T0 + HOUR - timedelta(microseconds=1))  # signed before: still valid
    assert not key.valid_at(T0 + HOUR)  # signed at or after: not
    assert not key.valid_at(T0 + 2 * HOUR)


def test_revoking_a_retired_key_earlier_than_its_retirement_shortens_its_window(ed_key) -> None:
    key = public(ed_key).retired(T0 + 2 * HOUR).revoked(T0 + HOUR)

    assert key.valid_to == T0 + 2 * HOUR
    assert key.valid_at(T0 + HOUR / 2)
    assert not key.valid_at(T0 + HOUR + HOUR / 2)


def test_valid_at_compares_instants_whatever_the_time_zone(ed_key) -> None:
    key = public(ed_key).retired(T0 + HOUR)
    beijing = timezone(timedelta(hours=8))

    assert key.valid_at((T0 + HOUR / 2).astimezone(beijing))
    assert not key.valid_at((T0 + HOUR).astimezone(beijing))


def test_valid_at_refuses_a_naive_time(ed_key) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        public(ed_key).valid_at(datetime(2025, 3, 14, 9, 30))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "retired"}, "must have valid_to"),
        ({"valid_to": T0 + HOUR}, "active, so it can have neither"),
        ({"status": "revoked"}, "must say since when"),
        ({"status": "expired"}, "has status 'expired'"),
        ({"status": "retired", "valid_to": T0 - HOUR}, "valid_to before valid_from"),
        ({"valid_from": datetime(2025, 3, 14, 9)}, "timezone-aware"),
    ],
)
def test_a_public_key_with_inconsistent_life_is_refused(changes: dict[str, object], reason: str, ed_key) -> None:
    arguments: dict[str, object] = {"valid_from": T0, **changes}

    with pytest.raises(KeyringError, match=reason) as caught:
        PublicKey(ed_key.kid, ed_key.alg, ed_key.public_jwk(), **arguments)  # type: ignore[arg-type]

    assert caught.value.code == "jwks-malformed"


def test_a_public_key_keeps_its_times_in_utc(ed_key) -> None:
    tashkent = timezone(timedelta(hours=5))

    key = PublicKey(ed_key.kid, ed_key.alg, ed_key.public_jwk(), valid_from=T0.astimezone(tashkent))

    assert key.valid_from == T0 and key.valid_from.utcoffset() == timedelta(0)


def test_the_jwk_of_a_public_key_is_read_only(ed_key) -> None:
    key = public(ed_key)

    with pytest.raises(TypeError):
        key.jwk["x"] = "replaced"  # type: ignore[index]


# The JWKS form


def test_a_keyring_survives_its_jwks_form_through_json(ed_key, es_key) -> None:
    keyring = Keyring(
        [
            public(es_key, valid_from=T0 - 10 * HOUR).retired(T0 - HOUR).revoked(T0 - 2 * HOUR),
            public(ed_key, valid_from=T0 - HOUR),
        ]
    )

    again = Keyring.from_json(json.dumps(keyring.to_jwks()).encode())

    assert again == keyring
    assert [k.jwk for k in again] == [k.jwk for k in keyring]


def test_the_jwks_form_names_the_window_and_status(ed_key) -> None:
    key = public(ed_key).retired(T0 + timedelta(hours=1, microseconds=250_000))

    (written,) = Keyring([key]).to_jwks()["keys"]

    assert written == {
        **ed_key.public_jwk(),
        "status": "retired",
        "valid_from": "2025-03-14T09:00:00Z",
        "valid_to": "2025-03-14T10:00:00.250000Z",
    }


def test_times_with_an_offset_are_read_as_the_same_instant(ed_key) -> None:
    keyring = Keyring.from_jwks({"keys": [member(ed_key, valid_from="2025-03-14T17:00:00+08:00")]})

    assert keyring.get(ed_key.kid).valid_from == T0  # type: ignore[union-attr]


def test_private_members_are_refused_and_called_a_leak(ed_key) -> None:
    leaked = member(ed_key, d=ed_key.private_jwk["d"])

    error = refusal({"keys": [leaked]})

    assert error.code == "jwks-private-key"
    assert "private key has been published" in error.detail
    assert ed_key.private_jwk["d"] not in error.detail


@pytest.mark.parametrize("name", ["p", "q", "dp", "dq", "qi", "oth", "k", "priv"])
def test_every_private_member_name_is_refused(name: str, ed_key) -> None:
    assert refusal({"keys": [member(ed_key, **{name: "AAAA"})]}).code == "jwks-private-key"


@pytest.mark.parametrize(
    "shape",
    [
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed448"},
        {"kty": "OKP", "crv": "X25519"},
        {"kty": "EC", "crv": "P-384"},
        {"kty": "EC", "crv": "secp256k1"},
    ],
)
def test_unknown_kty_or_crv_is_refused(shape: dict[str, str], ed_key) -> None:
    assert refusal({"keys": [member(ed_key) | shape]}).code == "jwks-unsupported-key"


def test_an_alg_the_key_does_not_sign_with_is_refused(ed_key) -> None:
    assert refusal({"keys": [member(ed_key, alg="ES256")]}).code == "jwks-unsupported-key"


def test_duplicate_kids_are_refused(ed_key) -> None:
    error = refusal({"keys": [member(ed_key), member(ed_key, status="retired", valid_to="2025-03-15T00:00:00Z")]})

    assert error.code == "jwks-duplicate-kid"


def test_a_kid_that_is_not_the_thumbprint_is_refused(ed_key, es_key) -> None:
    error = refusal({"keys": [member(ed_key, kid=es_key.kid)]})

    assert error.code == "jwks-kid-mismatch"
    assert ed_key.kid in error.detail


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({}, id="no-keys"),
        pytest.param({"keys": {}}, id="keys-not-a-list"),
        pytest.param({"keys": [], "issuer": "x"}, id="extra-top-level-member"),
        pytest.param({"keys": ["key"]}, id="key-not-an-object"),
    ],
)
def test_a_document_that_is_not_a_key_set_is_refused(doc: object) -> None:
    assert refusal(doc).code == "jwks-malformed"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"x5c": ["MIIB"]}, id="unknown-member"),
        pytest.param({"use": "enc"}, id="use-enc"),
        pytest.param({"kid": None}, id="kid-missing"),
        pytest.param({"status": None}, id="status-missing"),
        pytest.param({"valid_from": None}, id="valid-from-missing"),
        pytest.param({"valid_from": 1741942800}, id="numeric-date"),
        pytest.param({"valid_from": "2025-03-14"}, id="date-only"),
        pytest.param({"valid_from": "2025-03-14T09:00:00"}, id="no-offset"),
        pytest.param({"valid_from": "2025-13-14T09:00:00Z"}, id="month-13"),
        pytest.param({"valid_to": "2025-03-15T00:00:00Z"}, id="active-with-valid-to"),
        pytest.param({"status": "retired", "valid_to": 5}, id="valid-to-not-a-string"),
        pytest.param({"status": "revoked"}, id="revoked-without-revoked-at"),
        pytest.param({"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR"}, id="x-too-short"),
    ],
)
def test_a_key_that_breaks_the_form_is_refused(changes: dict[str, object], ed_key) -> None:
    broken = {k: v for k, v in (member(ed_key) | changes).items() if v is not None}

    assert refusal({"keys": [broken]}).code == "jwks-malformed"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"keys":[],"keys":[]}', id="repeated-member"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"keys": [NaN]}', id="nan"),
    ],
)
def test_from_json_refuses_ambiguous_json(data: bytes) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring.from_json(data)

    assert caught.value.code == "jwks-malformed"


def test_a_keyring_is_a_lookup_by_kid(ed_key, es_key) -> None:
    keyring = Keyring([public(ed_key), public(es_key)])

    assert keyring.get(ed_key.kid) == public(ed_key)
    assert keyring.get("no-such-kid") is None
    assert ed_key.kid in keyring and len(keyring) == 2
    assert [k.kid for k in keyring] == [ed_key.kid, es_key.kid]
