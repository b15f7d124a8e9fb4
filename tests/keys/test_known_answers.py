"""Known-answer vectors in tests/keys/vectors, so that other implementations can compare.

The keys there are TEST ONLY (they are public). The Ed25519 key is RFC 8037's
example key, which ties these vectors to a published source: its kid must be
RFC 8037 A.3's thumbprint, and signing RFC 8037 A.4's input with it through the
same algorithm object mrx signs with must give RFC 8037's signature.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from joserfc import jws as joserfc_jws
from joserfc.jwk import KeySet
from jwcrypto.jwa import JWA

from mrx.keys import b64url
from mrx.keys.jwks import Keyring
from mrx.keys.jws import SigningKey, verify_compact
from tests.keys.support import VECTORS, load_test_key

RFC8037_A4 = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def read_json(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


VECTORS_DOC = read_json("known-answers.json")
CASES = {case["name"]: case for case in VECTORS_DOC["cases"]}
PAYLOAD = (VECTORS / VECTORS_DOC["payload_file"]).read_bytes()
JWKS = read_json(VECTORS_DOC["jwks_file"])


def key_for(case: dict[str, Any]) -> SigningKey:
    return load_test_key(case["private_jwk_file"].removeprefix("TEST-ONLY-").removesuffix("-private.jwk.json"))


def test_the_payload_file_is_the_exact_bytes_signed() -> None:
    assert hashlib.sha256(PAYLOAD).hexdigest() == VECTORS_DOC["payload_sha256"]
    assert not PAYLOAD.endswith(b"\n")
    assert "MAŁASZEWICZE" in PAYLOAD.decode("utf-8") and not PAYLOAD.isascii()  # non-ASCII, strict UTF-8
    for case in CASES.values():
        assert b64url.decode(case["jws"].split(".")[1]) == PAYLOAD


def test_the_ed25519_test_key_is_rfc_8037s_example_key() -> None:
    key = key_for(CASES["ed25519"])
    signing_input, _, signature = RFC8037_A4.rpartition(".")

    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"  # RFC 8037 A.3
    assert b64url.encode(JWA.signing_alg("EdDSA").sign(key.private_jwk, signing_input.encode())) == signature.encode()


@pytest.mark.parametrize("name", ["ed25519", "es256"])
def test_each_case_names_its_key_and_header(name: str) -> None:
    case = CASES[name]
    key = key_for(case)

    assert (case["kid"], case["alg"]) == (key.kid, key.alg)
    assert case["protected_header"] == json.dumps(
        {"alg": key.alg, "kid": key.kid, "typ": VECTORS_DOC["typ"]}, separators=(",", ":")
    )
    assert case["jws"].split(".")[0] == b64url.encode(case["protected_header"].encode()).decode()


def test_signing_the_payload_with_the_ed25519_key_gives_exactly_the_vector() -> None:
    case = CASES["ed25519"]

    token = key_for(case).sign(PAYLOAD, VECTORS_DOC["typ"])

    assert token.decode("ascii") == case["jws"]


@pytest.mark.parametrize("name", ["ed25519", "es256"])
def test_each_vector_verifies_with_mrx_and_the_vector_jwks(name: str) -> None:
    case = CASES[name]

    verified = verify_compact(case["jws"].encode("ascii"), Keyring.from_jwks(JWKS).get)

    assert (verified.payload, verified.kid, verified.typ) == (PAYLOAD, case["kid"], VECTORS_DOC["typ"])


def test_a_fresh_es256_signature_verifies_against_the_vector_jwks() -> None:
    token = key_for(CASES["es256"]).sign(PAYLOAD, VECTORS_DOC["typ"])

    assert token.decode("ascii") != CASES["es256"]["jws"]  # randomised, as the README says
    assert verify_compact(token, Keyring.from_jwks(JWKS).get).payload == PAYLOAD


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize("name", ["ed25519", "es256"])
def test_each_vector_verifies_with_joserfc_and_pyjwt(name: str) -> None:
    case = CASES[name]
    token = case["jws"]

    by_joserfc = joserfc_jws.deserialize_compact(token, KeySet.import_key_set(JWKS), algorithms=[case["alg"]])
    by_pyjwt = jwt.PyJWS().decode_complete(
        token, key=jwt.PyJWKSet.from_dict(JWKS)[case["kid"]], algorithms=[case["alg"]]
    )

    assert by_joserfc.payload == by_pyjwt["payload"] == PAYLOAD


def test_the_vector_jwks_is_what_mrx_writes_for_those_keys() -> None:
    keyring = Keyring.from_jwks(JWKS)

    assert keyring.to_jwks() == JWKS
    assert [(k.status, k.alg) for k in keyring] == [("revoked", "EdDSA"), ("retired", "ES256"), ("active", "EdDSA")]
    assert {CASES["ed25519"]["kid"], CASES["es256"]["kid"]} <= {k.kid for k in keyring}


def test_the_vector_jwks_windows_mean_what_the_docs_say() -> None:
    revoked, retired, active = Keyring.from_jwks(JWKS)

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(UTC)

    assert revoked.valid_at(at("2023-09-15T08:30:00.249Z")) and not revoked.valid_at(at("2023-09-15T08:30:00.250Z"))
    assert retired.valid_at(at("2024-12-31T23:59:59Z")) and not retired.valid_at(at("2025-01-01T00:00:00Z"))
    assert active.valid_at(at("2025-01-01T00:00:00Z")) and not active.valid_at(at("2024-12-31T23:59:59Z"))
