"""The keys mrx signs with, as JSON Web Keys (RFC 7517): two kinds, one name.

Kinds. Each kind of key signs with exactly one JWS algorithm, so the key fixes
the ``alg``:

    alg     kty  crv      standard       why
    EdDSA   OKP  Ed25519  RFC 8037       the default; deterministic, so there
                                         are known-answer vectors
    ES256   EC   P-256    RFC 7518 §3.4  for authorities whose HSM or policy
                                         requires a NIST curve

Nothing else is accepted (no RSA, Ed448, other curves, symmetric keys): each
extra kind is another way for a partner's verifier and ours to disagree.

Name. A key's ``kid`` is its RFC 7638 thumbprint, base64url(SHA-256) of the
required public members as sorted, whitespace-free JSON. It is computed from
the key material, so anyone can recompute it from a JWKS, no two keys share
one, and a kid written into a signed record names one key forever.

Public form. A published key has exactly ``kty``, ``crv``, ``x``, ``y`` (EC
only), ``kid``, ``alg`` and ``use`` = ``"sig"``: `public_jwk` writes it;
`mrx.keys.jwks` adds validity members and reads it back strictly.

Pure: no I/O. Errors are `ValueError` with a phrase naming the problem; the
callers (`jws`, `jwks`) wrap it in their own error with a code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from jwcrypto.jwk import JWK

from . import b64url


@dataclass(frozen=True)
class KeyType:
    """One kind of key: the JWS alg it signs with and its JWK shape."""

    alg: str
    kty: str
    crv: str
    coordinates: tuple[str, ...]  # the public members besides kty and crv
    coordinate_bytes: int
    signature_bytes: int  # RFC 8037 §3.1 and RFC 7518 §3.4: both fixed at 64


ED25519 = KeyType(alg="EdDSA", kty="OKP", crv="Ed25519", coordinates=("x",), coordinate_bytes=32, signature_bytes=64)
P256 = KeyType(alg="ES256", kty="EC", crv="P-256", coordinates=("x", "y"), coordinate_bytes=32, signature_bytes=64)

KEY_TYPES: Mapping[str, KeyType] = MappingProxyType({kind.alg: kind for kind in (ED25519, P256)})
"""The accepted kinds of key, by JWS alg."""

DEFAULT_ALG = ED25519.alg

PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"})
"""JWK members that hold secret material, for any kty (RFC 7518 §6, RFC 8037, AKP drafts)."""

_BY_SHAPE = {(kind.kty, kind.crv): kind for kind in KEY_TYPES.values()}


def key_type(jwk: Mapping[str, Any]) -> KeyType:
    """The kind of ``jwk``, from its ``kty`` and ``crv``, or `ValueError` if mrx does not accept it."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    kind = _BY_SHAPE.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None
    if kind is None:
        accepted = ", ".join(f"{k.kty} {k.crv}" for k in KEY_TYPES.values())
        raise ValueError(f"is a kty {kty!r} crv {crv!r} key; mrx accepts only {accepted}")
    return kind


def key_type_for_alg(alg: str) -> KeyType:
    """The kind of key that signs with ``alg``, or `ValueError`."""
    kind = KEY_TYPES.get(alg)
    if kind is None:
        raise ValueError(f"alg {alg!r} is not one mrx signs with; use one of {', '.join(KEY_TYPES)}")
    return kind


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of ``jwk`` (any kty), base64url: the kid mrx gives the key.

    Cached by value (a key set is read again with every key-set statement that
    lists it), without private members, which RFC 7638 never uses.
    """
    public = {name: value for name, value in jwk.items() if name not in PRIVATE_MEMBERS}
    try:
        return _thumbprint(tuple(sorted(public.items())))
    except TypeError:  # a member that is not hashable (a list): not an mrx key, so not worth caching
        return _uncached_thumbprint(public)


@lru_cache(maxsize=4096)
def _thumbprint(members: tuple[tuple[str, Any], ...]) -> str:
    return _uncached_thumbprint(dict(members))


def _uncached_thumbprint(members: Mapping[str, Any]) -> str:
    digest: str = JWK(**members).thumbprint()
    return digest


def generate(alg: str = DEFAULT_ALG) -> JWK:
    """A new private key of the kind that signs with ``alg``, from the OS's random source."""
    kind = key_type_for_alg(alg)
    return JWK.generate(kty=kind.kty, crv=kind.crv)


def public_jwk(key: JWK) -> dict[str, str]:
    """The published form of ``key`` (private or public): public members, kid, alg, use."""
    kind = key_type(key)
    members = {"kty": kind.kty, "crv": kind.crv}
    members.update((name, key[name]) for name in kind.coordinates)
    return {**members, "kid": key.thumbprint(), "alg": kind.alg, "use": "sig"}


def public_key(jwk: Mapping[str, Any]) -> JWK:
    """A jwcrypto key with only the public members of ``jwk``, checked and ready to verify with.

    `ValueError` if the kind is not accepted, a coordinate is not canonical
    base64url of the right length, or an EC point is not on the curve. Keys are
    cached by value (building one costs more than an Ed25519 verification), so
    the returned object is shared: never modify it.
    """
    kind = key_type(jwk)
    return _public_key(kind, tuple(jwk.get(name) for name in kind.coordinates))


@lru_cache(maxsize=1024)
def _public_key(kind: KeyType, coordinates: tuple[Any, ...]) -> JWK:
    members = dict(zip(kind.coordinates, coordinates, strict=True))
    for name, value in members.items():
        if not isinstance(value, str):
            raise ValueError(f"has no string member {name!r}")
        try:
            raw = b64url.decode(value)
        except ValueError as error:
            raise ValueError(f"has a member {name!r} that {error}") from None
        if len(raw) != kind.coordinate_bytes:
            raise ValueError(f"has a member {name!r} of {len(raw)} bytes; {kind.crv} needs {kind.coordinate_bytes}")
    key = JWK(kty=kind.kty, crv=kind.crv, **members)
    try:
        key.get_op_key("verify", kind.crv)  # builds the key: an EC point off the curve fails here
    except ValueError as error:
        raise ValueError(f"is not a valid {kind.crv} public key ({error})") from None
    return key
