"""mrx.keys.jws: the compact JWS profile, signing and strict verification."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto.jwa import JWA
from jwcrypto.jwk import JWK

from mrx.keys import b64url
from mrx.keys.jwks import Keyring
from mrx.keys.jws import (
    MAX_HEADER_BYTES,
    JwsError,
    SigningKey,
    max_compact_bytes,
    parse_compact,
    verify_compact,
)
from tests.keys.support import TYP, forge

PAYLOAD = "<Receipt><Note>Małaszewicze → Брест</Note></Receipt>".encode()


def refusal(token: bytes, keyring: Keyring, **options: int) -> JwsError:
    with pytest.raises(JwsError) as caught:
        verify_compact(token, keyring.get, **options)
    return caught.value


# Signing and round trips


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_a_signed_record_verifies_and_gives_back_the_exact_payload(alg: str, ed_key, es_key, keyring) -> None:
    key = {"EdDSA": ed_key, "ES256": es_key}[alg]
    token = key.sign(PAYLOAD, TYP)

    verified = verify_compact(token, keyring.get)

    assert verified.payload == PAYLOAD
    assert verified.header == {"alg": alg, "kid": key.kid, "typ": TYP}
    assert (verified.alg, verified.kid, verified.typ) == (alg, key.kid, TYP)
    assert verified.key is keyring.get(key.kid)


def test_the_header_is_alg_kid_typ_in_that_order_without_whitespace(ed_key) -> None:
    token = ed_key.sign(PAYLOAD, TYP)

    header = b64url.decode(token.split(b".")[0])

    assert header == f'{{"alg":"EdDSA","kid":"{ed_key.kid}","typ":"{TYP}"}}'.encode()


def test_the_payload_segment_is_the_given_bytes_untouched(ed_key) -> None:
    odd_but_exact = b"<?xml version='1.0'?>\r\n<a  b='1'/>\n\n"

    token = ed_key.sign(odd_but_exact, TYP)

    assert b64url.decode(token.split(b".")[1]) == odd_but_exact


def test_es256_signatures_are_raw_r_and_s_not_der(es_key) -> None:
    signature = b64url.decode(es_key.sign(PAYLOAD, TYP).split(b".")[2])

    assert len(signature) == 64


@given(payload=st.binary(max_size=2048), typ=st.sampled_from([TYP, "vnd.mrx.Receipt+xml", "application/xml"]))
def test_any_payload_round_trips(payload: bytes, typ: str, ed_key, keyring) -> None:
    verified = verify_compact(ed_key.sign(payload, typ), keyring.get)

    assert (verified.payload, verified.typ) == (payload, typ)


@given(data=st.data())
def test_changing_any_one_byte_of_a_token_makes_it_refused(data, ed_key, keyring) -> None:
    token = ed_key.sign(PAYLOAD, TYP)
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != token[index]), label="byte")
    altered = token[:index] + bytes([new_byte]) + token[index + 1 :]

    with pytest.raises(JwsError):
        verify_compact(altered, keyring.get)


@pytest.mark.parametrize("typ", ["", "application/", "vnd mrx", "vnd.mrx.Receipt+xml; charset=utf-8", "ä+xml"])
def test_signing_refuses_a_typ_that_is_not_a_media_type(typ: str, ed_key) -> None:
    with pytest.raises(ValueError, match="media type"):
        ed_key.sign(PAYLOAD, typ)


def test_a_signing_key_does_not_show_its_private_half(ed_key) -> None:
    assert ed_key.private_jwk["d"] not in repr(ed_key)
    assert "d" not in ed_key.public_jwk()


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_a_signing_key_survives_pkcs8_pem(alg: str) -> None:
    key = SigningKey.generate(alg)
    pem = key.to_pem()

    again = SigningKey.from_pem(pem)

    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not SEC1 or OpenSSH
    assert (again.kid, again.alg) == (key.kid, key.alg)


def test_a_signing_key_refuses_public_and_unsupported_keys(ed_key) -> None:
    with pytest.raises(ValueError, match="public key"):
        SigningKey.from_jwk(ed_key.public_jwk())
    with pytest.raises(ValueError, match="mrx accepts only"):
        SigningKey.from_jwk({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(ValueError, match="not one mrx signs with"):
        SigningKey.generate("RS256")


def test_max_compact_bytes_fits_the_largest_token_for_a_payload_size(ed_key) -> None:
    payload = b"x" * 1000
    long_typ = "vnd.mrx." + "A" * 100 + "+xml"

    token = ed_key.sign(payload, long_typ)

    assert len(token) <= max_compact_bytes(1000)


# Refusals: every hostile token gives its code. Tokens are built by hand.


def test_a_token_over_the_size_limit_is_refused_before_it_is_decoded(keyring) -> None:
    garbage = b"{" * 1001  # would be jws-not-compact if it were looked at

    error = refusal(garbage, keyring, max_bytes=1000)

    assert error.code == "jws-too-large"
    assert "1001 bytes" in error.detail and "1000" in error.detail


def test_a_real_token_one_byte_over_the_limit_is_refused(ed_key, keyring) -> None:
    token = ed_key.sign(PAYLOAD, TYP)

    assert refusal(token, keyring, max_bytes=len(token) - 1).code == "jws-too-large"
    assert verify_compact(token, keyring.get, max_bytes=len(token)).payload == PAYLOAD


@pytest.mark.parametrize("layout", ["general", "flattened"])
def test_json_serialization_is_refused(layout: str, ed_key, keyring) -> None:
    header, payload, signature = ed_key.sign(PAYLOAD, TYP).decode().split(".")
    one = {"protected": header, "signature": signature}
    doc = {"payload": payload, **({"signatures": [one]} if layout == "general" else one)}

    error = refusal(json.dumps(doc, indent=1).encode(), keyring)

    assert error.code == "jws-not-compact"
    assert "JSON serialization" in error.detail


@pytest.mark.parametrize("segments", [1, 2, 4, 5])
def test_anything_but_three_segments_is_refused(segments: int, ed_key, keyring) -> None:
    parts = ed_key.sign(PAYLOAD, TYP).split(b".")
    token = b".".join((parts * 2)[:segments])

    assert refusal(token, keyring).code == "jws-not-compact"


@pytest.mark.parametrize("segment", [0, 1, 2])
@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda s: s + b"=" * (-len(s) % 4 or 4), id="padding"),
        pytest.param(lambda s: s.replace(b"-", b"+").replace(b"_", b"/") + b"+/", id="standard-alphabet"),
        pytest.param(lambda s: s[:10] + b" " + s[10:], id="space"),
        pytest.param(lambda s: s + b"A" * ((1 - len(s)) % 4 or 4), id="impossible-length"),
    ],
)
def test_non_canonical_base64url_is_refused(segment: int, spoil, ed_key, keyring) -> None:
    parts = ed_key.sign(PAYLOAD, TYP).split(b".")
    parts[segment] = spoil(parts[segment])

    assert refusal(b".".join(parts), keyring).code == "jws-malformed"


def test_spare_bits_in_the_last_signature_character_are_refused(ed_key, keyring) -> None:
    # 64 signature bytes are 86 characters; the last carries 4 unused bits. Setting
    # one keeps the decoded signature identical: a second token with the same
    # signature, which a lenient decoder would accept.
    header, payload, signature = ed_key.sign(PAYLOAD, TYP).split(b".")
    last = b64url.ALPHABET.index(signature[-1:])
    twin = signature[:-1] + b64url.ALPHABET[last | 1 : (last | 1) + 1]
    assert twin != signature

    error = refusal(b".".join([header, payload, twin]), keyring)

    assert error.code == "jws-malformed"
    assert "unused" in error.detail


@pytest.mark.parametrize(
    "raw_header",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'"EdDSA"', id="string"),
        pytest.param(b"{'alg': 'EdDSA'}", id="not-json"),
        pytest.param(b'{"alg":"EdDSA","alg":"EdDSA","kid":"k","typ":"t"}', id="repeated-member"),
        pytest.param(b'{"alg":"EdDSA","kid":"k","typ":"t","x":NaN}', id="nan"),
        pytest.param(b'{"alg":"EdDSA","kid":"k","typ":"t\xff"}', id="not-utf8"),
        pytest.param(b"[" * 3000 + b"]" * 3000, id="nested-deeply"),
        pytest.param(b'{"alg":"EdDSA","kid":"' + b"k" * MAX_HEADER_BYTES + b'","typ":"t"}', id="oversized"),
        pytest.param(b'{"alg":"EdDSA","kid":7,"typ":"t"}', id="kid-not-a-string"),
        pytest.param(b'{"alg":"EdDSA","kid":"","typ":"t"}', id="kid-empty"),
        pytest.param(b'{"alg":"EdDSA","kid":"k"}', id="typ-missing"),
        pytest.param(b'{"alg":"EdDSA","kid":"k","typ":["a"]}', id="typ-not-a-string"),
    ],
)
def test_a_header_that_is_not_a_well_formed_object_is_refused(raw_header: bytes, ed_key, keyring) -> None:
    assert refusal(forge(raw_header, PAYLOAD, ed_key), keyring).code == "jws-malformed"


def test_a_repeated_header_member_is_named(ed_key, keyring) -> None:
    token = forge(b'{"alg":"EdDSA","kid":"k","typ":"t","alg":"none"}', PAYLOAD, ed_key)

    assert "'alg' appears twice" in refusal(token, keyring).detail


@pytest.mark.parametrize("alg", [None, "none", "None", "HS256", "RS256", "ES384", "Ed25519", "eddsa", 1, ["EdDSA"]])
def test_an_alg_outside_eddsa_and_es256_is_refused(alg: object, ed_key, keyring) -> None:
    header = {"kid": ed_key.kid, "typ": TYP} | ({} if alg is None else {"alg": alg})
    unsigned = forge(header, PAYLOAD, None)  # alg none carries an empty signature

    error = refusal(unsigned, keyring)

    assert error.code == "jws-alg-not-allowed"
    assert "EdDSA and ES256" in error.detail


def test_hmac_with_the_public_key_as_secret_is_refused(ed_key, keyring) -> None:
    # The classic key-confusion attack: HS256 keyed with the verifier's public key.
    header = {"alg": "HS256", "kid": ed_key.kid, "typ": TYP}
    signing_input = b64url.encode(json.dumps(header).encode()) + b"." + b64url.encode(PAYLOAD)
    secret = JWK(kty="oct", k=b64url.encode(json.dumps(ed_key.public_jwk()).encode()).decode())
    token = signing_input + b"." + b64url.encode(JWA.signing_alg("HS256").sign(secret, signing_input))

    assert refusal(token, keyring).code == "jws-alg-not-allowed"


def test_a_record_carrying_its_own_key_is_refused(keyring) -> None:
    # The embedded-key attack: signed by the attacker, with the attacker's key in the header.
    attacker = SigningKey.generate()
    header = {"alg": "EdDSA", "kid": attacker.kid, "typ": TYP, "jwk": attacker.public_jwk()}

    error = refusal(forge(header, PAYLOAD, attacker), keyring)

    assert error.code == "jws-forbidden-header"
    assert "'jwk' would let the record carry its own key" in error.detail


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIBszCCAVmgAwIBAgIUQ2NhdGNo"]),
        ("x5t", "dGh1bWJwcmludA"),
        ("x5t#S256", "dGh1bWJwcmludA"),
        ("crit", ["exp"]),
        ("b64", False),
        ("zip", "DEF"),
        ("cty", "xml"),
        ("iat", 1700000000),
    ],
)
def test_any_header_member_but_alg_kid_typ_is_refused(member: str, value: object, ed_key, keyring) -> None:
    # Validly signed by the real key: the header alone must decide.
    token = forge({"alg": "EdDSA", "kid": ed_key.kid, "typ": TYP, member: value}, PAYLOAD, ed_key)

    error = refusal(token, keyring)

    assert error.code == "jws-forbidden-header"
    assert repr(member) in error.detail


def test_a_missing_kid_is_refused(ed_key, keyring) -> None:
    token = forge({"alg": "EdDSA", "typ": TYP}, PAYLOAD, ed_key)

    assert refusal(token, keyring).code == "jws-missing-kid"


def test_a_kid_the_keyring_does_not_know_is_refused(keyring) -> None:
    stranger = SigningKey.generate()

    error = refusal(stranger.sign(PAYLOAD, TYP), keyring)

    assert error.code == "jws-unknown-kid"
    assert stranger.kid in error.detail


def test_a_kid_from_the_token_is_quoted_short_in_the_detail(ed_key, keyring) -> None:
    token = forge({"alg": "EdDSA", "kid": "x" * 5000 + "\n<script>", "typ": TYP}, PAYLOAD, ed_key)

    error = refusal(token, keyring)

    assert error.code == "jws-unknown-kid"
    assert len(error.detail) < 400 and "\n" not in error.detail


def test_an_alg_the_named_key_does_not_sign_with_is_refused(ed_key, es_key, keyring) -> None:
    # Header says ES256 for the Ed25519 key's kid, signed with a real ES256 key.
    token = forge({"alg": "ES256", "kid": ed_key.kid, "typ": TYP}, PAYLOAD, es_key)

    error = refusal(token, keyring)

    assert error.code == "jws-alg-mismatch"
    assert "EdDSA" in error.detail


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_a_tampered_payload_is_refused(alg: str, ed_key, es_key, keyring) -> None:
    key = {"EdDSA": ed_key, "ES256": es_key}[alg]
    header, _, signature = key.sign(PAYLOAD, TYP).split(b".")
    tampered = PAYLOAD.replace(b"Receipt", b"Rejected", 1)

    token = b".".join([header, b64url.encode(tampered), signature])

    assert refusal(token, keyring).code == "jws-bad-signature"


def test_a_signature_moved_from_another_record_is_refused(ed_key, keyring) -> None:
    header, payload, _ = ed_key.sign(PAYLOAD, TYP).split(b".")
    *_, other_signature = ed_key.sign(b"<Receipt>other</Receipt>", TYP).split(b".")

    assert refusal(b".".join([header, payload, other_signature]), keyring).code == "jws-bad-signature"


def test_a_signature_by_another_key_under_our_kid_is_refused(ed_key, keyring) -> None:
    token = forge({"alg": "EdDSA", "kid": ed_key.kid, "typ": TYP}, PAYLOAD, SigningKey.generate())

    assert refusal(token, keyring).code == "jws-bad-signature"


@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_a_signature_of_the_wrong_length_is_refused_before_crypto(length: int, es_key, keyring) -> None:
    # 72 bytes is roughly a DER-encoded ECDSA signature: the raw R||S rule must hold.
    header, payload, _ = es_key.sign(PAYLOAD, TYP).split(b".")

    token = b".".join([header, payload, b64url.encode(b"\x01" * length)])

    error = refusal(token, keyring)
    assert error.code == "jws-bad-signature"
    assert f"{length} bytes" in error.detail


def test_parse_compact_checks_structure_without_keys(ed_key) -> None:
    token = ed_key.sign(PAYLOAD, TYP)

    unverified = parse_compact(token, max_bytes=len(token))

    assert (unverified.alg, unverified.kid, unverified.typ, unverified.payload) == ("EdDSA", ed_key.kid, TYP, PAYLOAD)
    assert unverified.signing_input == token.rsplit(b".", 1)[0]


# Malleability: can a third party make a second valid token for the same record?

ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_an_ed25519_signature_with_s_plus_the_group_order_is_refused(ed_key, keyring) -> None:
    header, payload, signature = ed_key.sign(b"<Receipt/>", TYP).split(b".")
    raw = b64url.decode(signature)
    s = int.from_bytes(raw[32:], "little") + ED25519_ORDER  # S < L < 2**253, so S + L fits in 32 bytes

    twin = b64url.encode(raw[:32] + s.to_bytes(32, "little"))

    assert refusal(b".".join([header, payload, twin]), keyring).code == "jws-bad-signature"


def test_es256_signatures_are_malleable_so_records_are_not_identified_by_token_bytes(es_key, keyring) -> None:
    # (r, n - s) verifies whenever (r, s) does (ECDSA), and partners' libraries emit either,
    # so mrx cannot refuse one of them. Deduplicate records by their payload, never by the JWS bytes.
    token = es_key.sign(PAYLOAD, TYP)
    header, payload, signature = token.split(b".")
    raw = b64url.decode(signature)
    twin = raw[:32] + (P256_ORDER - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")

    second = b".".join([header, payload, b64url.encode(twin)])

    assert second != token
    assert verify_compact(second, keyring.get).payload == verify_compact(token, keyring.get).payload
