"""Signed records: JWS compact serialization (RFC 7515) in the one profile mrx uses.

Every record a node makes is an XML message signed as a compact JWS::

    BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature)

Profile
    * The payload is the exact bytes given. Nothing here parses or
      re-serializes it: the token is what is stored, logged and forwarded.
    * The protected header is ``{"alg":…,"kid":…,"typ":…}``: those three
      members, in that order, JSON without whitespace, so that equal inputs
      give byte-equal tokens (Ed25519 is deterministic, hence known-answer
      vectors in ``tests/keys/vectors``).

      - ``alg``: ``EdDSA`` (Ed25519, the default) or ``ES256``; the key fixes
        it (`mrx.keys.jwk`).
      - ``kid``: the key's RFC 7638 thumbprint.
      - ``typ``: the record's media type without ``application/`` (RFC 7515
        §4.1.9), e.g. ``vnd.mrx.SealEventNotification+xml``.
    * The signature is 64 bytes: Ed25519's, or ES256's raw ``R || S`` (RFC
      7518 §3.4), never DER.

Verification reads like a list of refusals, cheapest first, so a hostile token
costs little and never reaches the crypto unless it is well formed. Each is a
`JwsError` with a stable ``code`` (the node's problem catalogue uses the same
ones) and a ``detail`` sentence for the person who has to act on it:

    1. longer than ``max_bytes``, before anything is decoded   jws-too-large
    2. JSON serialization, or not exactly three segments       jws-not-compact
    3. a segment not canonical base64url (padding, other
       alphabet, non-zero spare bits); header over 8 KiB, not
       UTF-8 JSON, not an object, or with a repeated member    jws-malformed
    4. ``alg`` absent, ``none`` or not EdDSA/ES256             jws-alg-not-allowed
    5. any member but alg, kid, typ (jwk, jku, x5u, x5c, x5t,
       x5t#S256, crit, b64, zip, …)                            jws-forbidden-header
    6. no ``kid``                                              jws-missing-kid
       (``kid`` or ``typ`` not a non-empty string: jws-malformed)
    7. the lookup knows no key by that kid                     jws-unknown-kid
    8. the key's alg is not the header's                       jws-alg-mismatch
    9. signature not 64 bytes, or not valid for the key over
       the header and payload as received                      jws-bad-signature

Steps 1-6 are `parse_compact` (no keys, no crypto); `verify_compact` adds 7-9.
Ed25519 signatures have one valid encoding; ES256 ones do not (``(r, n - s)``
verifies too, and partners' libraries emit both), so a record is identified by
its payload, never by its token bytes.

Whether a verified key was valid *when* the record was signed is the caller's
question (`mrx.keys.jwks.PublicKey.valid_at`): a JWS carries no trustworthy
time of its own.

Cost. jwcrypto's general ``JWS`` object does per-token work that one fixed
profile does not need: a JWS object per token, the header decoded and checked
against its registry on every call. Here the header is encoded once per
(key, typ) and cached, and the signing input goes straight to the JWA
algorithm object, which also converts ES256 signatures between DER and raw
``R || S``. Per call, 2 KiB payload, best of 5 × 2000 on the 2-core
development machine (``tests/keys/timing_jws.py``; ±20 % between runs):

                 here      jwcrypto JWS object
    sign EdDSA    60 µs    140 µs
    sign ES256    50 µs    140 µs
    verify EdDSA 195 µs    280 µs   (Ed25519 verification alone: 145 µs)
    verify ES256 145 µs    275 µs
    refusal before crypto (alg none, unknown kid, ...): 7-10 µs
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Protocol, TypeVar

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from jwcrypto.jwa import JWA
from jwcrypto.jwk import JWK

from . import b64url, jwk, strictjson
from .jwk import KEY_TYPES

DEFAULT_MAX_BYTES = 1_048_576
"""The largest token `verify_compact` decodes unless told otherwise (see `max_compact_bytes`)."""

MAX_HEADER_BYTES = 8192
"""The longest encoded header looked at; an mrx header is about 150 bytes."""

HEADER_MEMBERS = ("alg", "kid", "typ")

# Members RFC 7515/7797/7516 give a meaning that would change what is trusted or
# how the payload is read; named in the refusal so the sender knows why.
_DANGEROUS_MEMBERS = {
    "jwk": "would let the record carry its own key",
    "jku": "would make the verifier fetch a key from a URL the record chooses",
    "x5u": "would make the verifier fetch a certificate from a URL the record chooses",
    "x5c": "would let the record carry its own certificate chain",
    "x5t": "names a certificate, which mrx does not use",
    "x5t#S256": "names a certificate, which mrx does not use",
    "crit": "asks for extensions that mrx does not implement",
    "b64": "would sign the payload unencoded (RFC 7797)",
    "zip": "would compress the payload, which JWS does not allow",
}

_ALGORITHMS = {alg: JWA.signing_alg(alg) for alg in KEY_TYPES}

# RFC 6838 §4.2 restricted-name, optionally "type/subtype".
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_RESTRICTED_NAME}(?:/{_RESTRICTED_NAME})?")
_JSON_START = re.compile(rb"[ \t\r\n]*\{")


class JwsError(Exception):
    """A token refused: ``code`` is stable and machine-readable, ``detail`` says what to do."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"JwsError({self.code!r}, {self.detail!r})"


class VerificationKey(Protocol):
    """What verification needs of a public key. `mrx.keys.jwks.PublicKey` is one."""

    @property
    def alg(self) -> str: ...

    @property
    def jwk(self) -> Mapping[str, Any]: ...


K = TypeVar("K", bound=VerificationKey)

KeyLookup = Callable[[str], K | None]
"""Finds the key a kid names, or None; ``Keyring.get`` is one.

The key's ``alg`` must be the one its ``jwk`` signs with; `mrx.keys.jwks.PublicKey`
guarantees it."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """A private key ready to sign records; ``kid`` and ``alg`` follow from it."""

    private_jwk: JWK = field(repr=False)
    kid: str = field(init=False)
    alg: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            kind = jwk.key_type(self.private_jwk)
        except ValueError as error:
            raise ValueError(f"The key {error}") from None
        if not self.private_jwk.has_private:
            raise ValueError("The key is a public key; signing needs the private key")
        object.__setattr__(self, "kid", self.private_jwk.thumbprint())
        object.__setattr__(self, "alg", kind.alg)

    @classmethod
    def generate(cls, alg: str = jwk.DEFAULT_ALG) -> SigningKey:
        """A new random key that signs with ``alg``."""
        return cls(jwk.generate(alg))

    @classmethod
    def from_jwk(cls, members: Mapping[str, Any]) -> SigningKey:
        """The key a private JWK (a dict with ``d``) describes."""
        return cls(JWK(**dict(members)))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """The key in an unencrypted PKCS#8 PEM."""
        try:
            return cls(JWK.from_pem(pem, password=None))
        except (TypeError, UnsupportedAlgorithm, ValueError) as error:
            raise ValueError(f"The data is not an unencrypted PKCS#8 Ed25519 or P-256 private key ({error})") from None

    def to_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM, the form `mrx.keys.keyring.KeyStore` keeps on disk."""
        pem: bytes = self.private_jwk.export_to_pem(private_key=True, password=None)
        return pem

    def public_jwk(self) -> dict[str, str]:
        """The public half in published form: kty, crv, x, (y), kid, alg, use."""
        return jwk.public_jwk(self.private_jwk)

    def sign(self, payload: bytes, typ: str) -> bytes:
        """The compact JWS of ``payload`` (exact bytes) with header alg, kid and ``typ``.

        ``typ`` is a media type such as ``vnd.mrx.Receipt+xml``; `ValueError` if it is not one.
        """
        signing_input = _encoded_header(self.alg, self.kid, typ) + b"." + b64url.encode(payload)
        signature = _ALGORITHMS[self.alg].sign(self.private_jwk, signing_input)
        return signing_input + b"." + b64url.encode(signature)


@lru_cache(maxsize=256)
def _encoded_header(alg: str, kid: str, typ: str) -> bytes:
    if not isinstance(typ, str) or not _MEDIA_TYPE.fullmatch(typ):
        raise ValueError(f"typ {typ!r} is not a media type such as 'vnd.mrx.Receipt+xml'")
    header = json.dumps({"alg": alg, "kid": kid, "typ": typ}, separators=(",", ":"))
    return b64url.encode(header.encode("ascii"))


@dataclass(frozen=True)
class UnverifiedJws:
    """A token that is well formed and within the profile, signature not yet checked."""

    alg: str
    kid: str
    typ: str
    payload: bytes
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class VerifiedJws(Generic[K]):
    """A token whose signature is valid under ``key``, the key its kid named."""

    alg: str
    kid: str
    typ: str
    payload: bytes
    key: K

    @property
    def header(self) -> dict[str, str]:
        """The protected header, exactly as signed."""
        return {"alg": self.alg, "kid": self.kid, "typ": self.typ}


def max_compact_bytes(max_payload_bytes: int) -> int:
    """The longest token that can carry a payload of ``max_payload_bytes``: a fitting ``max_bytes``."""
    payload_characters = -(-4 * max_payload_bytes // 3)  # ceil(4n / 3): unpadded base64url
    return MAX_HEADER_BYTES + 1 + payload_characters + 1 + 86  # 86 characters encode a 64-byte signature


def parse_compact(token: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> UnverifiedJws:
    """Steps 1-6 of the module docstring: `JwsError` unless ``token`` is a well-formed mrx JWS."""
    # 1. Size, before any byte is decoded.
    if len(token) > max_bytes:
        raise JwsError(
            "jws-too-large",
            f"The signed record is {len(token)} bytes; this node accepts at most {max_bytes}. "
            "Ask the sender to check the message, or agree a larger limit with them.",
        )
    # 2. Compact serialization: three segments.
    if _JSON_START.match(token):
        raise JwsError(
            "jws-not-compact",
            "The record is a JWS in JSON serialization; mrx exchanges only the compact form "
            "(header.payload.signature). Ask the sender to send the compact JWS.",
        )
    if token.count(b".") != 2:
        raise JwsError(
            "jws-not-compact",
            f"The record has {token.count(b'.') + 1} dot-separated segments; a compact JWS has exactly 3 "
            "(header.payload.signature). Check that it was not truncated, wrapped or concatenated.",
        )
    header_end = token.index(b".")
    payload_end = token.index(b".", header_end + 1)
    # 3-6. The header (the same bytes on every record a key signs of a type: read once).
    alg, kid, typ = _read_header(token[:header_end])
    payload = _decode_segment(token[header_end + 1 : payload_end], "payload (second segment)")
    signature = _decode_segment(token[payload_end + 1 :], "signature (third segment)")
    return UnverifiedJws(alg, kid, typ, payload, token[:payload_end], signature)


def verify_compact(token: bytes, keys: KeyLookup[K], *, max_bytes: int = DEFAULT_MAX_BYTES) -> VerifiedJws[K]:
    """The verified record in ``token``, signed by the key ``keys`` finds for its kid, or `JwsError`.

    A key that ``keys`` returns but that cannot verify (not a valid public key)
    raises `ValueError`: that is the keyring's fault, not the token's.
    """
    jws = parse_compact(token, max_bytes=max_bytes)
    # 7. The key the kid names.
    key = keys(jws.kid)
    if key is None:
        raise JwsError(
            "jws-unknown-kid",
            f"No key with kid {_quote(jws.kid)} is known. Fetch the sender's current JWKS; "
            "if the key is still missing, the record was not signed by that authority.",
        )
    # 8. The key's algorithm, not the token's choice.
    kind = KEY_TYPES[jws.alg]
    if key.alg != jws.alg:
        raise JwsError(
            "jws-alg-mismatch",
            f"The header says alg {jws.alg}, but key {_quote(jws.kid)} signs with {key.alg}. "
            "Treat the record as forged, or ask the sender to check how their node signs.",
        )
    # 9. The signature over the header and payload exactly as received.
    if len(jws.signature) != kind.signature_bytes:
        raise JwsError(
            "jws-bad-signature",
            f"The signature is {len(jws.signature)} bytes; an {jws.alg} signature is {kind.signature_bytes}. "
            "The record was damaged or altered.",
        )
    try:
        _verify_signature(jws.alg, key.jwk, jws.signing_input, jws.signature)
    except InvalidSignature:
        raise JwsError(
            "jws-bad-signature",
            f"The signature does not match the record under key {_quote(jws.kid)}: the header or payload was "
            "altered after signing, or another key signed it. Do not use the record; ask the sender to resend it.",
        ) from None
    return VerifiedJws(jws.alg, jws.kid, jws.typ, jws.payload, key)


@lru_cache(maxsize=256)
def _read_header(segment: bytes) -> tuple[str, str, str]:
    """Steps 3-6: ``(alg, kid, typ)`` of a protected header, or `JwsError` (never cached)."""
    # 3. Header: canonical base64url of a UTF-8 JSON object without repeated members.
    header = _decode_header(segment)
    # 4. alg, checked before anything it could influence.
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in KEY_TYPES:
        named = "names no alg" if alg is None else f"has alg {_quote(alg)}"
        raise JwsError(
            "jws-alg-not-allowed",
            f"The header {named}; mrx accepts only {' and '.join(KEY_TYPES)}. "
            "The record is unsigned or signed in a way partners do not recognise.",
        )
    # 5. Exactly alg, kid, typ.
    extra = sorted(set(header) - set(HEADER_MEMBERS))
    if extra:
        reasons = "; ".join(f"{_quote(m)} {_DANGEROUS_MEMBERS.get(m, 'is not part of the mrx profile')}" for m in extra)
        raise JwsError(
            "jws-forbidden-header",
            f"The header has members other than alg, kid and typ: {reasons}. "
            "Keys come only from the sender's published JWKS; ask the sender to sign with the mrx profile.",
        )
    # 6. kid and typ.
    if "kid" not in header:
        raise JwsError(
            "jws-missing-kid",
            "The header has no kid, so the signing key cannot be identified. "
            "mrx records name their key by its RFC 7638 thumbprint; ask the sender to sign with the mrx profile.",
        )
    kid = _string_member(header, "kid")
    typ = _string_member(header, "typ")
    return alg, kid, typ


def _verify_signature(alg: str, members: Mapping[str, Any], signing_input: bytes, signature: bytes) -> None:
    """`InvalidSignature` unless ``signature`` is ``alg``'s over ``signing_input`` by the key ``members``.

    Ed25519 goes to libsodium (PyNaCl), about a third faster than OpenSSL's
    and stricter (it also refuses small-order keys and non-canonical points);
    ES256 to jwcrypto's JWA, which converts the raw ``R || S`` form.
    """
    public = jwk.public_key(members)  # checked and cached; ValueError for a bad key
    if alg == jwk.ED25519.alg:
        try:
            nacl.bindings.crypto_sign_open(signature + signing_input, _ed25519_bytes(public["x"]))
        except nacl.exceptions.BadSignatureError:
            raise InvalidSignature from None
    else:
        _ALGORITHMS[alg].verify(public, signing_input, signature)


@lru_cache(maxsize=1024)
def _ed25519_bytes(x: str) -> bytes:
    return b64url.decode(x)


def _decode_header(segment: bytes) -> dict[str, Any]:
    if len(segment) > MAX_HEADER_BYTES:
        raise JwsError(
            "jws-malformed",
            f"The protected header is {len(segment)} bytes encoded; an mrx header (alg, kid, typ) is about 150. "
            "The record was not made by an mrx node.",
        )
    raw = _decode_segment(segment, "protected header (first segment)")
    try:
        header = strictjson.loads(raw)
    except ValueError as error:
        raise JwsError(
            "jws-malformed",
            f"The protected header is not UTF-8 JSON without repeated members ({_truncate(str(error), 120)}).",
        ) from None
    if not isinstance(header, dict):
        raise JwsError("jws-malformed", f"The protected header is a JSON {type(header).__name__}, not an object.")
    return header


def _string_member(header: dict[str, Any], name: str) -> str:
    value = header.get(name)
    if not isinstance(value, str) or not value:
        raise JwsError("jws-malformed", f"The header member {name} is {_quote(value)}; it must be a non-empty string.")
    return value


def _decode_segment(segment: bytes, name: str) -> bytes:
    try:
        return b64url.decode(segment)
    except ValueError as error:
        raise JwsError("jws-malformed", f"The {name} {error}; a JWS segment is unpadded base64url.") from None


def _quote(value: object) -> str:
    """``value`` for a detail sentence: its repr (control characters escaped), cut short: it comes from the token."""
    return _truncate(repr(value), 64)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
