"""mrx.keys.jwk: the two kinds of key, RFC 7638 kids, the public form."""

from __future__ import annotations

import pytest

from mrx.keys import b64url, jwk

# RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1 and its SHA-256 thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
        "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
        "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
        "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 8037 A.2 (public key) and A.3 (its thumbprint).
RFC8037_PUBLIC = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_matches_rfc_7638_section_3_1() -> None:
    assert jwk.thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT


def test_thumbprint_matches_rfc_8037_appendix_a_3() -> None:
    assert jwk.thumbprint(RFC8037_PUBLIC) == RFC8037_THUMBPRINT


def test_thumbprint_ignores_non_required_members() -> None:
    decorated = {**RFC8037_PUBLIC, "kid": "whatever", "alg": "EdDSA", "use": "sig", "status": "active"}

    assert jwk.thumbprint(decorated) == RFC8037_THUMBPRINT


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_the_public_form_has_exactly_the_published_members(alg: str) -> None:
    key = jwk.generate(alg)

    public = jwk.public_jwk(key)

    coordinates = ["x"] if alg == "EdDSA" else ["x", "y"]
    assert list(public) == ["kty", "crv", *coordinates, "kid", "alg", "use"]
    assert public["kid"] == key.thumbprint() and public["alg"] == alg and public["use"] == "sig"


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "mrx accepts only"),
        ({"kty": "OKP", "crv": "Ed448", "x": "AA"}, "mrx accepts only"),
        ({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "mrx accepts only"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "mrx accepts only"),
        ({"kty": ["OKP"], "crv": "Ed25519", "x": "AA"}, "mrx accepts only"),
        ({"kty": "OKP", "crv": "Ed25519"}, "no string member 'x'"),
        ({"kty": "OKP", "crv": "Ed25519", "x": b64url.encode(b"\x01" * 31).decode()}, "31 bytes"),
        ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_PUBLIC["x"] + "="}, "alphabet"),
        (
            {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url.encode(b"\x01" * 32).decode(),
                "y": b64url.encode(b"\x02" * 32).decode(),
            },
            "not a valid P-256 public key",
        ),
    ],
)
def test_public_key_refuses_what_mrx_cannot_verify_with(members: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        jwk.public_key(members)


def test_public_key_keeps_only_public_members() -> None:
    private = jwk.generate("ES256")

    key = jwk.public_key(dict(private))

    assert not key.has_private
    assert key.thumbprint() == private.thumbprint()
