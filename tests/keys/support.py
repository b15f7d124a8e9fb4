"""Helpers for the keys tests: the TEST-ONLY keys, a clock set by hand, a token builder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jwcrypto.jwa import JWA

from mrx.keys import b64url
from mrx.keys.jwks import PublicKey
from mrx.keys.jws import SigningKey

VECTORS = Path(__file__).parent / "vectors"
TYP = "vnd.mrx.SealEventNotification+xml"
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def load_test_key(name: str) -> SigningKey:
    """A TEST-ONLY private key from the vectors directory ("ed25519" or "es256")."""
    members = json.loads((VECTORS / f"TEST-ONLY-{name}-private.jwk.json").read_text())
    return SigningKey.from_jwk({k: v for k, v in members.items() if k != "//"})


def public(key: SigningKey, valid_from: datetime = T0) -> PublicKey:
    return PublicKey(key.kid, key.alg, key.public_jwk(), valid_from=valid_from)


def forge(header: Mapping[str, Any] | bytes, payload: bytes, key: SigningKey | None, alg: str | None = None) -> bytes:
    """A compact token built by hand, validly signed by ``key`` over whatever header it is given.

    Signing hostile headers properly shows that the verifier refuses them for the
    header rule, not because the signature happens to be wrong.
    """
    raw_header = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    signing_input = b64url.encode(raw_header) + b"." + b64url.encode(payload)
    if key is None:
        return signing_input + b"."
    signature = JWA.signing_alg(alg or key.alg).sign(key.private_jwk, signing_input)
    return signing_input + b"." + b64url.encode(signature)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
