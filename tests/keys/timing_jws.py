"""Per-call cost of signing and verifying: the figures in ``keys/jws.py``'s docstring.

Not a test (timings are not assertions). Run from the repository root:

    PYTHONPATH=.dev .venv/bin/python tests/keys/timing_jws.py
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

from mrx.keys import b64url
from mrx.keys.jwks import PublicKey
from mrx.keys.jws import JwsError, SigningKey, parse_compact, verify_compact

PAYLOAD = b"<SealEventNotification>" + b"x" * 2048 + b"</SealEventNotification>"
TYP = "vnd.mrx.SealEventNotification+xml"


def per_call(call: Callable[[], object], runs: int = 2000) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(call, number=runs, repeat=5)) / runs * 1e6


def measure(alg: str) -> list[tuple[str, float]]:
    key = SigningKey.generate(alg)
    public = PublicKey(key.kid, key.alg, key.public_jwk(), valid_from=datetime.now(UTC))
    token = key.sign(PAYLOAD, TYP)
    alg_none = b64url.encode(b'{"alg":"none"}') + token[token.index(b".") :]
    public_jwk = JWK(**key.public_jwk())

    def jwcrypto_sign() -> str:
        jws = JWS(PAYLOAD)
        jws.add_signature(key.private_jwk, protected=json.dumps({"alg": key.alg, "kid": key.kid, "typ": TYP}))
        return jws.serialize(compact=True)

    def jwcrypto_verify() -> None:
        jws = JWS()
        jws.deserialize(token.decode("ascii"))
        jws.verify(public_jwk)

    def refuse() -> None:
        try:
            parse_compact(alg_none)
        except JwsError:
            return
        raise AssertionError("a hostile token was accepted")

    rows = [
        (f"sign {alg}", per_call(lambda: key.sign(PAYLOAD, TYP))),
        (f"sign {alg}, jwcrypto JWS object", per_call(jwcrypto_sign)),
        (f"verify {alg}", per_call(lambda: verify_compact(token, lambda kid: public))),
        (f"verify {alg}, jwcrypto JWS object", per_call(jwcrypto_verify)),
        (f"refuse alg none ({alg}-sized token)", per_call(refuse)),
    ]
    if alg == "EdDSA":
        signing_input, _, signature = token.rpartition(b".")
        raw_signature = b64url.decode(signature)
        primitive = public_jwk.get_op_key("verify")
        rows.append(
            ("verify Ed25519, the primitive alone", per_call(lambda: primitive.verify(raw_signature, signing_input)))
        )
    return rows


def main() -> None:
    for alg in ("EdDSA", "ES256"):
        for label, micros in measure(alg):
            print(f"{label:40} {micros:7.1f} µs")


if __name__ == "__main__":
    main()
