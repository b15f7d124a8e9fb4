"""How a node learns a partner's keys: a chain of signed key-set statements, and its verifier.

A partner's JWKS arrives over a network nobody trusts, so a node does not
believe a JWKS. It believes statements. Every change to a node's key set
(create, rotate, revoke) produces one **key-set statement**: a compact JWS in
the record profile of `mrx.keys.jws` (header exactly alg, kid, typ) with

    typ      vnd.mrx.key-set+json
    payload  {"issued_at":RFC3339,"keys":[...],"sequence":n}

``keys`` is the JWKS ``keys`` array (`mrx.keys.jwks`) after the change, in
the store's order (oldest key first); ``sequence`` counts statements from 1;
``issued_at`` is when the change was made (a time as mrx writes it: UTC, ``Z``,
microseconds only when not zero). The payload is canonical JSON: members
sorted by name at every level, no whitespace, ASCII only, integers as
integers. Every value is an ASCII string or a small integer, so this is also
the RFC 8785 (JCS) form. `statement_payload` writes it, and a verifier accepts
only that exact text, so each statement has one encoding.

Who signs (the partner's `mrx.keys.keyring.KeyStore` does this):

    create            statement 1, signed by the first key
    rotate            statement n+1, signed by the OLD active key (before its
                      private file is deleted); then statement n+2 with the
                      same keys, signed by the NEW key (proof of possession:
                      every key that has been active has signed a statement,
                      so a partner given the active key's thumbprint out of
                      band can start from it)
    revoke            signed by the active key, also when the active key
                      revokes itself (compromise): it is still valid when it
                      signs the statement that ends its validity
    rotate with       after the active key was revoked, or its private file
    new_anchor        lost, no key can continue the chain: the new key signs
                      statement n+1 itself, and partners accept it only once
                      they have added its thumbprint to their anchors

Verification (`trusted_keyring`). The node's configuration holds, per partner,
the **anchors**: RFC 7638 thumbprints of partner keys taken out of band. The
walk keeps a state, the last accepted statement (its keys, sequence, time and
digest), starting from ``previous`` (the last known good result) or from
nothing. Each statement, in the order served, is first read (refusals 1) and
then, if it is news, checked in this order; the first failure refuses it and
the walk goes on with the next one, so a statement slipped into a chain by an
attacker does not stop the genuine ones after it:

    1. a JWS in the profile (`jws.parse_compact`), typ as above, payload
       exactly the canonical JSON of a sequence, a time and a valid key set
       (`jwks.Keyring.from_jwks`) with at most one active key    keyset-malformed
    -  a sequence below the state's, or the state's own
       statement again: history already trusted, passed over silently
    2. the signer (header kid) is a key of the state, or else
       an anchor; before anything is trusted, statements not
       signed by an anchor are history from before the anchor
       and are passed over silently                             keyset-untrusted-signer
    3. the signature verifies under that key (`jws.verify_compact`) keyset-bad-signature
    4. a different statement with the state's sequence           keyset-fork
       any sequence but the state's + 1                          keyset-sequence
    5. issued_at before the state's, or more than
       ``max_clock_skew`` after ``now``                          keyset-time
    6. the signer was valid at issued_at: in the state's keys,
       ``valid_at(issued_at)``; for an anchor the state does not
       know, its entry in the statement itself must have
       ``valid_from <= issued_at`` and no ``valid_to`` before
       issued_at (the statement may be the one retiring or
       revoking it)                                              keyset-signer-not-valid
    7. history is kept: every key of the state is still there
       with the same valid_from; a valid_to once set never
       changes; a revoked_at once set only moves earlier (so a
       key that stopped being active never is again); a new
       key's window opens no earlier than issued_at              keyset-history

The result's keyring is the last accepted statement's keys. A key is trusted
only if a statement reached through the chain lists it: what a served JWKS
says is never read. After the walk, if ``previous`` was given and the highest
sequence served is below its sequence, the chain as a whole is refused
(``keyset-rollback``) and the previous keys are kept. With no ``previous`` and
no statement accepted, `trusted_keyring` raises `KeysetError`
(``keyset-not-trusted``) carrying the refusals; otherwise it returns a
`TrustResult` listing each refused statement with its code.

Why a revoked key cannot sign even its own revocation again. A statement from
a key the state says is retired or revoked is refused, even one that only
revokes that key. Accepting it would let whoever stole an old key consume the
next sequence number with a harmless-looking statement: partners would then
refuse the owner's genuine statement of that number as a fork. The owner's
node never needs it: the active key signs its own revocation while it is still
valid, and its private file is deleted after.

What the chain does not defend. A node with no ``previous`` trusts whatever an
anchor signed: if an anchor's private key was stolen, a fresh node can be fed
a chain the thief made. Anchors should be the partner's current key, checked
by voice or letter; ``previous`` (kept across restarts as `TrustResult.statements`)
protects every fetch after the first. A thief of the partner's *active* key
can extend the chain like its owner until the owner revokes it; partners who
followed the thief see the owner's next statement as a fork and must ask.

Pure: no I/O, no clock (the caller passes ``now``). Errors are `KeysetError`
with a stable ``code`` and a ``detail`` sentence for the person who has to act.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from . import b64url, strictjson
from .jwks import Keyring, KeyringError, PublicKey, format_time, parse_time
from .jws import DEFAULT_MAX_BYTES, JwsError, SigningKey, parse_compact, verify_compact

TYP = "vnd.mrx.key-set+json"
"""The typ of a key-set statement (``application/vnd.mrx.key-set+json`` without ``application/``)."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far past the verifier's ``now`` a statement's issued_at may be: clocks of two authorities differ."""

MAX_SEQUENCE = 2**53 - 1
"""The largest sequence: the largest integer every JSON implementation reads exactly (RFC 7493 §2.2)."""

_MEMBERS = frozenset({"sequence", "issued_at", "keys"})


class KeysetError(Exception):
    """A statement or chain refused: ``code`` is stable, ``detail`` says what to do.

    ``index`` is the statement's position in the list given to `trusted_keyring`
    (None: the chain as a whole). ``refused`` is set on ``keyset-not-trusted``:
    why each statement was refused.
    """

    def __init__(
        self, code: str, detail: str, *, index: int | None = None, refused: tuple[KeysetError, ...] = ()
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.index = index
        self.refused = refused

    def __repr__(self) -> str:
        return f"KeysetError({self.code!r}, {self.detail!r}, index={self.index!r})"


@dataclass(frozen=True)
class Statement:
    """A key-set statement that is well formed; its signature is not checked yet."""

    sequence: int
    issued_at: datetime
    keyring: Keyring = field(repr=False)
    signer: str  # the header's kid
    digest: str  # base64url SHA-256 of the payload: names the statement (an ES256 token has two encodings)
    token: bytes = field(repr=False)


@dataclass(frozen=True)
class TrustResult:
    """A partner's trusted keys, and what the walk refused.

    ``keyring``, ``sequence``, ``issued_at`` and ``digest`` are those of the last
    accepted statement. ``statements`` is the accepted chain, oldest first:
    persist it, and rebuild ``previous`` after a restart with
    ``trusted_keyring(statements, anchors, now=now)``. ``accepted`` lists the
    sequences this call accepted (empty: nothing new); ``refused`` the refusals.
    """

    keyring: Keyring = field(repr=False)
    sequence: int
    issued_at: datetime
    digest: str
    statements: tuple[bytes, ...] = field(repr=False)
    accepted: tuple[int, ...] = ()
    refused: tuple[KeysetError, ...] = ()


def statement_payload(sequence: int, issued_at: datetime, keyring: Keyring) -> bytes:
    """The canonical payload of a statement: sorted members, no whitespace, ASCII."""
    if type(sequence) is not int or not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence!r} is not an integer from 1 to {MAX_SEQUENCE}")
    if issued_at.tzinfo is None or issued_at.utcoffset() is None:
        raise ValueError("issued_at needs a timezone-aware time")
    doc = {"sequence": sequence, "issued_at": format_time(issued_at), "keys": keyring.to_jwks()["keys"]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def sign_statement(key: SigningKey, sequence: int, issued_at: datetime, keyring: Keyring) -> bytes:
    """The statement that ``keyring`` is the key set as of ``issued_at``, number ``sequence``, signed by ``key``."""
    return key.sign(statement_payload(sequence, issued_at, keyring), TYP)


def read_statement(token: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Statement:
    """Step 1 of the module docstring: the statement in ``token``, signature unchecked; `KeysetError` otherwise."""
    try:
        jws = parse_compact(token, max_bytes=max_bytes)
    except JwsError as error:
        raise _malformed(f"is not a JWS in the mrx profile ({error.code}: {error.detail})") from None
    if jws.typ != TYP:
        raise _malformed(f"has typ {_quote(jws.typ)}, not {TYP!r}: it is not a key-set statement")
    try:
        doc = strictjson.loads(jws.payload)
    except ValueError as error:
        raise _malformed(f"has a payload that is not UTF-8 JSON without repeated members ({error})") from None
    if not isinstance(doc, dict) or set(doc) != _MEMBERS:
        raise _malformed('has a payload that is not an object with exactly "issued_at", "keys" and "sequence"')
    sequence, issued_text, keys = doc["sequence"], doc["issued_at"], doc["keys"]
    if type(sequence) is not int or not 1 <= sequence <= MAX_SEQUENCE:
        raise _malformed(f"has sequence {_quote(sequence)}; it must be an integer from 1 to {MAX_SEQUENCE}")
    if not isinstance(issued_text, str) or not isinstance(keys, list):
        raise _malformed("has an issued_at that is not a string or keys that are not a list", sequence)
    try:
        issued_at = parse_time(issued_text, "issued_at")
        keyring = Keyring.from_jwks({"keys": keys})
    except KeyringError as error:
        raise _malformed(f"has a bad key set ({error.code}: {error.detail})", sequence) from None
    active = [key.kid for key in keyring if key.status == "active"]
    if len(active) > 1:
        raise _malformed(f"has {len(active)} active keys ({', '.join(active)}); a key set has at most one", sequence)
    if statement_payload(sequence, issued_at, keyring) != jws.payload:
        raise _malformed(
            "is not in canonical form (members sorted, no whitespace, times as mrx writes them), "
            "so it was not made by an mrx node or was re-serialized on the way",
            sequence,
        )
    digest = b64url.encode(hashlib.sha256(jws.payload).digest()).decode("ascii")
    return Statement(sequence, issued_at, keyring, jws.kid, digest, token)


def trusted_keyring(
    statements: Sequence[bytes],
    anchors: Collection[str],
    *,
    previous: TrustResult | None = None,
    now: datetime,
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> TrustResult:
    """The partner keys that ``statements`` prove from ``anchors`` (or from ``previous``), per the module docstring.

    ``statements`` is the partner's chain as served, oldest first; ``anchors``
    the RFC 7638 thumbprints configured for the partner; ``previous`` the last
    known good result, which is returned (with the refusals) when the chain
    brings nothing acceptable; ``now`` a timezone-aware time.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("trusted_keyring needs a timezone-aware now")
    if isinstance(anchors, (str, bytes)):
        raise TypeError("anchors is a collection of thumbprints, not one thumbprint")
    now = now.astimezone(UTC)
    anchors = frozenset(anchors)
    state = previous
    chain = list(previous.statements) if previous is not None else []
    accepted: list[int] = []
    refused: list[KeysetError] = []
    highest = 0
    for index, token in enumerate(statements):
        try:
            statement = read_statement(token)
            highest = max(highest, statement.sequence)
            if state is not None and (statement.sequence < state.sequence or statement.digest == state.digest):
                continue  # history this node already trusts
            if state is None and statement.signer not in anchors:
                continue  # history from before the anchor
            keyring = _follow(state, statement, anchors, now, max_clock_skew)
        except KeysetError as error:
            refused.append(KeysetError(error.code, error.detail, index=index))
            continue
        chain.append(token)
        accepted.append(statement.sequence)
        state = TrustResult(keyring, statement.sequence, statement.issued_at, statement.digest, tuple(chain))
    if state is None:
        raise _not_trusted(len(statements), anchors, tuple(refused))
    if previous is not None and highest < previous.sequence:
        refused.append(
            KeysetError(
                "keyset-rollback",
                f"The partner's chain as served ends at statement {highest}, before statement {previous.sequence} "
                "that this node already trusts: it is an old or truncated copy. The keys trusted so far are kept; "
                "if it persists, the partner's node lost its statements or someone is replaying an old chain.",
            )
        )
    return TrustResult(
        state.keyring, state.sequence, state.issued_at, state.digest, state.statements, tuple(accepted), tuple(refused)
    )


def _follow(
    state: TrustResult | None, statement: Statement, anchors: frozenset[str], now: datetime, skew: timedelta
) -> Keyring:
    """Steps 2-7 of the module docstring: the statement's keys if it follows ``state``, else `KeysetError`."""
    n, kid, t = statement.sequence, statement.signer, statement.issued_at
    # 2. The signer: a key trusted so far, or an anchor (the key material then comes from the statement,
    #    bound to the anchor by the kid, which PublicKey checks is the thumbprint).
    trusted = state.keyring.get(kid) if state is not None else None
    from_anchor = trusted is None
    if trusted is None and kid not in anchors:
        raise KeysetError(
            "keyset-untrusted-signer",
            f"Statement {n} is signed by key {_quote(kid)}, which is neither a key of this partner trusted so far "
            "nor one of its anchors. It is refused: it may be an attempt to substitute keys. If the partner has "
            "given you a new key thumbprint out of band, add it to the partner's anchors.",
        )
    signer = trusted or statement.keyring.get(kid)
    if signer is None:
        raise KeysetError(
            "keyset-untrusted-signer",
            f"Statement {n} is signed by the anchor {_quote(kid)} but does not list that key, so its signature "
            "cannot be checked. It was not made by an mrx node.",
        )
    # 3. The signature.
    try:
        verify_compact(statement.token, {kid: signer}.get)
    except JwsError as error:
        raise KeysetError(
            "keyset-bad-signature",
            f"Statement {n} does not verify under key {_quote(kid)} ({error.code}): it was altered after signing. "
            "It is refused; fetch again, and tell the partner if it persists.",
        ) from None
    # 4. The sequence.
    if state is not None and n == state.sequence:
        raise KeysetError(
            "keyset-fork",
            f"Statement {n} is validly signed by key {_quote(kid)} but differs from the statement {n} this node "
            "already trusts: a key of the partner signed two different histories. Its private key may be stolen. "
            "The keys trusted so far are kept; contact the partner out of band.",
        )
    if state is not None and n != state.sequence + 1:
        raise KeysetError(
            "keyset-sequence",
            f"Statement {n} cannot follow statement {state.sequence}: statement(s) {state.sequence + 1} to {n - 1} "
            "are missing from the chain as served. It is refused until the partner serves the whole chain.",
        )
    # 5. The time.
    if t > now + skew:
        raise KeysetError(
            "keyset-time",
            f"Statement {n} says it was issued at {format_time(t)}, later than now ({format_time(now)}) by more "
            f"than {skew}. The partner's clock (or this node's) is wrong; it is refused until that is fixed.",
        )
    if state is not None and t < state.issued_at:
        raise KeysetError(
            "keyset-time",
            f"Statement {n} says it was issued at {format_time(t)}, before statement {state.sequence} "
            f"({format_time(state.issued_at)}). A key set changes forward in time; it is refused.",
        )
    # 6. The signer's window.
    valid = (
        signer.valid_from <= t and (signer.valid_to is None or t <= signer.valid_to)
        if from_anchor
        else signer.valid_at(t)
    )
    if not valid:
        raise KeysetError(
            "keyset-signer-not-valid",
            f"Statement {n} is signed by key {_quote(kid)} as of {format_time(t)}, when that key was not valid "
            f"({_window(signer)}). A retired or revoked key can no longer change the key set; it is refused.",
        )
    # 7. History.
    if state is not None:
        _check_history(state.keyring, statement)
    return statement.keyring


def _check_history(before: Keyring, statement: Statement) -> None:
    after, n = statement.keyring, statement.sequence
    for old in before:
        new = after.get(old.kid)
        change = _rewrite(old, new)
        if change:
            raise KeysetError(
                "keyset-history",
                f"Statement {n} {change}. A statement may add keys, retire or revoke keys, or move a revocation "
                "earlier; it may not rewrite what was trusted before. It is refused.",
            )
    for key in after:
        if key.kid not in before and key.valid_from < statement.issued_at:
            raise KeysetError(
                "keyset-history",
                f"Statement {n} introduces key {_quote(key.kid)} valid from {format_time(key.valid_from)}, before the "
                f"statement itself ({format_time(statement.issued_at)}): a new key cannot be backdated. It is refused.",
            )


def _rewrite(old: PublicKey, new: PublicKey | None) -> str | None:
    """How ``new`` rewrites the history of ``old``, or None if it only adds to it."""
    name = _quote(old.kid)
    if new is None:
        return f"drops key {name}"
    if new.valid_from != old.valid_from:
        return f"moves the valid_from of key {name}"
    if old.valid_to is not None and new.valid_to != old.valid_to:
        return f"changes when key {name} was retired"
    if old.revoked_at is not None and (new.revoked_at is None or new.revoked_at > old.revoked_at):
        return f"withdraws or delays the revocation of key {name}"
    return None  # and so a key that stopped being active (valid_to or revoked_at set) never is again


def _window(key: PublicKey) -> str:
    parts = [f"from {format_time(key.valid_from)}"]
    if key.valid_to is not None:
        parts.append(f"retired at {format_time(key.valid_to)}")
    if key.revoked_at is not None:
        parts.append(f"revoked as of {format_time(key.revoked_at)}")
    return ", ".join(parts)


def _malformed(reason: str, sequence: int | None = None) -> KeysetError:
    which = "A key-set statement" if sequence is None else f"Key-set statement {sequence}"
    return KeysetError(
        "keyset-malformed",
        f"{which} {reason}. It was not made by an mrx node or was damaged on the way; it is refused. "
        "Fetch again, and tell the partner if it persists.",
    )


def _not_trusted(count: int, anchors: Iterable[str], refused: tuple[KeysetError, ...]) -> KeysetError:
    configured = ", ".join(sorted(anchors)) or "none"
    why = f" The first refusal: {refused[0].detail}" if refused else ""
    return KeysetError(
        "keyset-not-trusted",
        f"None of the {count} statement(s) served could be trusted from the partner's anchors ({configured}), so "
        f"no key of this partner is trusted.{why} Check the anchors against the thumbprint the partner gave out "
        "of band.",
        refused=refused,
    )


def _quote(value: object, limit: int = 64) -> str:
    """``value`` for a detail sentence: its repr, cut short, since it comes from a partner."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
