"""Records signed by mrx verify with JOSE libraries that are not ours, given only the published JWKS.

A partner authority or an auditor will not trust a record because mrx says it
is fine: joserfc, jwcrypto's own JWS object and PyJWT must each accept a record
from nothing but the JSON text of ``KeyStore.jwks()``, including records
signed before a rotation. And the reverse: a record those libraries sign with
the mrx header verifies with mrx, so the profile is not something only mrx can
produce.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from joserfc import jws as joserfc_jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, import_key
from jwcrypto.jwk import JWK, JWKSet
from jwcrypto.jws import JWS, InvalidJWSSignature

from mrx.keys.jws import verify_compact
from mrx.keys.keyring import Keyring, KeyStore
from tests.keys.support import TYP, Clock

RECORD = "<ControlResultNotification><Office>BY-BREST</Office><Note>Брест</Note></ControlResultNotification>".encode()

# RFC 9864 deprecates the polymorphic "EdDSA" alg name in favour of "Ed25519"; joserfc warns about it.
# mrx signs with EdDSA because that is what partners' deployed verifiers accept (docs/keys.md).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


@pytest.fixture
def published(tmp_path: Path, clock: Clock) -> tuple[str, list[tuple[bytes, str]]]:
    """The JWKS text of a store that rotated EdDSA -> ES256 -> EdDSA, and a record signed by each key."""
    store = KeyStore.create(tmp_path / "keys", "EdDSA", clock=clock)
    records = []
    for next_alg in ("ES256", "EdDSA", None):
        key = store.signing_key
        records.append((key.sign(RECORD, TYP), key.alg))
        clock.advance(days=30)
        if next_alg:
            store.rotate(next_alg)
    return json.dumps(store.jwks()), records


def test_joserfc_verifies_every_record_from_the_jwks_alone(published) -> None:
    jwks_text, records = published
    key_set = KeySet.import_key_set(json.loads(jwks_text))

    for token, alg in records:
        verified = joserfc_jws.deserialize_compact(token, key_set, algorithms=[alg])

        assert verified.payload == RECORD
        assert verified.protected["typ"] == TYP


def test_jwcrypto_jws_verifies_every_record_from_the_jwks_alone(published) -> None:
    jwks_text, records = published
    key_set = JWKSet.from_json(jwks_text)

    for token, alg in records:
        jws = JWS()
        jws.deserialize(token.decode("ascii"))
        jws.verify(key_set, alg=alg)

        assert jws.payload == RECORD
        assert jws.jose_header["typ"] == TYP


def test_pyjwt_verifies_every_record_from_the_jwks_alone(published) -> None:
    jwks_text, records = published
    key_set = jwt.PyJWKSet.from_json(jwks_text)

    for token, alg in records:
        kid = jwt.get_unverified_header(token)["kid"]
        verified = jwt.PyJWS().decode_complete(token, key=key_set[kid], algorithms=[alg])

        assert verified["payload"] == RECORD
        assert verified["header"]["typ"] == TYP


def test_the_libraries_refuse_a_tampered_record(published) -> None:
    jwks_text, records = published
    for token, alg in records:
        header, _, signature = token.split(b".")
        tampered = (
            header + b"." + base64.urlsafe_b64encode(RECORD.replace(b"BREST", b"TEREK")).rstrip(b"=") + b"." + signature
        )
        kid = jwt.get_unverified_header(tampered)["kid"]

        with pytest.raises(BadSignatureError):
            joserfc_jws.deserialize_compact(tampered, KeySet.import_key_set(json.loads(jwks_text)), algorithms=[alg])
        with pytest.raises(InvalidJWSSignature):
            JWS.from_jose_token(tampered.decode("ascii")).verify(JWKSet.from_json(jwks_text).get_key(kid), alg=alg)
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.PyJWS().decode_complete(tampered, key=jwt.PyJWKSet.from_json(jwks_text)[kid], algorithms=[alg])


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_mrx_verifies_a_record_signed_by_joserfc_with_the_mrx_header(alg: str) -> None:
    private = new_private_key(alg)
    header = {"alg": alg, "kid": private.thumbprint(), "typ": TYP}

    token = joserfc_jws.serialize_compact(header, RECORD, import_key(private.export_private(as_dict=True)), [alg])

    assert verify_compact(token.encode("ascii"), partner_keyring(private, alg).get).payload == RECORD


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_mrx_verifies_a_record_signed_by_pyjwt_with_the_mrx_header(alg: str) -> None:
    private = new_private_key(alg)
    pem = private.export_to_pem(private_key=True, password=None)

    token = jwt.PyJWS().encode(RECORD, pem, algorithm=alg, headers={"kid": private.thumbprint(), "typ": TYP})

    assert verify_compact(token.encode("ascii"), partner_keyring(private, alg).get).payload == RECORD


def new_private_key(alg: str) -> JWK:
    return JWK.generate(**({"kty": "OKP", "crv": "Ed25519"} if alg == "EdDSA" else {"kty": "EC", "crv": "P-256"}))


def partner_keyring(private: JWK, alg: str) -> Keyring:
    """The keyring a partner's JWKS for ``private`` gives, written by hand as their node would."""
    published = {
        **private.export_public(as_dict=True),
        "kid": private.thumbprint(),
        "alg": alg,
        "use": "sig",
        "status": "active",
        "valid_from": "2025-01-01T00:00:00Z",
    }
    return Keyring.from_jwks({"keys": [published]})
