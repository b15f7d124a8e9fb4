"""Public keys and when they can be trusted: the keyring and its JWKS (RFC 7517) form.

A `PublicKey` is a published JWK (`mrx.keys.jwk`) with a life:

    valid_from                valid_to (rotation)
        |--- signs records -------|            retired: records signed inside
        |                                      the window stay valid for ever
        |------ signs ------x revoked_at       revoked: records signed before
                                               revoked_at stay valid, records
                                               signed at or after it do not

``status`` says which stage a key is in, and fixes which times it has:

    active    the key its authority signs with now   no valid_to, no revoked_at
    retired   replaced by rotation at valid_to        valid_to, no revoked_at
    revoked   private key lost or suspected stolen    revoked_at (valid_to if
              since revoked_at                        it was retired first)

`PublicKey.valid_at` answers for a time ``t``: ``valid_from <= t``, and
``t < valid_to`` if set, and ``t < revoked_at`` if set. The windows are
half-open, so at the instant of a rotation exactly one key is valid.

Which ``t``. A JWS carries no trustworthy time, so the caller supplies the
time the record is *known* to have existed. The strong evidence is the
transparency log: the first checkpoint that includes the record, cosigned by
witnesses. A time the record states about itself (in its XML) is the signer's
own claim. That is enough for a retired key, which nobody but its owner ever
held. It is not enough for a revoked key: whoever stole the key can write any
time into a record.

JWKS form (RFC 7517 §5). ``{"keys": [...]}``, each key the public JWK
(``kty``, ``crv``, ``x``, ``y`` for EC, ``kid``, ``alg``, ``use``: ``"sig"``)
plus these members:

    status      "active" | "retired" | "revoked"
    valid_from  RFC 3339 date-time
    valid_to    RFC 3339 date-time, present once retired
    revoked_at  RFC 3339 date-time, present once revoked

We write UTC with a ``Z`` and microseconds only when they are non-zero; we read
any RFC 3339 offset. RFC 7517 §4 says libraries ignore members they do not
know, so the document is also a plain JWKS for any JOSE library.

`Keyring.from_jwks` is strict, because the JWKS is what decides which records a
partner's node accepts. Each refusal is a `KeyringError` with one of these codes:

    jwks-private-key      a key has a private member (d, p, q, ...)
    jwks-unsupported-key  a kty/crv, or an alg, that mrx does not sign with
    jwks-kid-mismatch     a kid that is not the key's RFC 7638 thumbprint
    jwks-duplicate-kid    two keys with one kid
    jwks-malformed        anything else: not UTF-8 JSON without repeated
                          members, not an object whose only member is "keys", a
                          missing, unknown or mistyped member, a bad
                          coordinate or time, times in the wrong order, a
                          status without the times it needs

Pure: no I/O. `mrx.keys.keyring.KeyStore` keeps a node's own keys on disk in this form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from . import jwk, strictjson

Status = Literal["active", "retired", "revoked"]
STATUSES: tuple[Status, ...] = ("active", "retired", "revoked")

_LIFE_MEMBERS = ("status", "valid_from", "valid_to", "revoked_at")
_REQUIRED_MEMBERS = ("kty", "crv", "kid", "alg", "use", "status", "valid_from")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")


class KeyringError(Exception):
    """A key or key set refused: ``code`` is stable and machine-readable, ``detail`` says what to do."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"KeyringError({self.code!r}, {self.detail!r})"


@dataclass(frozen=True)
class PublicKey:
    """A public key, its kid and alg, and the window in which it signed records.

    Constructing one checks everything `Keyring.from_jwks` promises, so a
    `PublicKey` in hand is always consistent. ``jwk`` is the published public
    form (kty, crv, x, y, kid, alg, use), read-only.
    """

    kid: str
    alg: str
    jwk: Mapping[str, str] = field(compare=False, repr=False)
    valid_from: datetime
    valid_to: datetime | None = None
    status: Status = "active"
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        members = dict(self.jwk)
        name = _quote(self.kid)
        _refuse_private(members, name)
        try:
            kind = jwk.key_type(members)
        except ValueError as error:
            raise KeyringError("jwks-unsupported-key", f"Key {name} {error}.") from None
        if self.alg != kind.alg or members.get("alg", kind.alg) != kind.alg:
            raise KeyringError(
                "jwks-unsupported-key",
                f"Key {name} is a {kind.crv} key with alg {_quote(self.alg)}; mrx signs with {kind.crv} only "
                f"as {kind.alg}.",
            )
        if members.get("use", "sig") != "sig":
            raise KeyringError("jwks-malformed", f"Key {name} has use {_quote(members['use'])}; mrx keys are 'sig'.")
        try:
            jwk.public_key(members)
        except ValueError as error:
            raise KeyringError("jwks-malformed", f"Key {name} {error}.") from None
        thumbprint = jwk.thumbprint(members)
        if self.kid != thumbprint or members.get("kid", thumbprint) != thumbprint:
            raise KeyringError(
                "jwks-kid-mismatch",
                f"Key {name} has the RFC 7638 thumbprint {thumbprint!r}; an mrx kid is always the thumbprint, "
                "so this key set was altered or made by other software.",
            )
        public = {m: members[m] for m in ("kty", "crv", *kind.coordinates)}
        object.__setattr__(self, "jwk", MappingProxyType({**public, "kid": thumbprint, "alg": kind.alg, "use": "sig"}))
        for member in ("valid_from", "valid_to", "revoked_at"):
            value = getattr(self, member)
            if value is not None or member == "valid_from":
                object.__setattr__(self, member, _utc(value, f"{member} of key {name}"))
        self._check_life(name)

    def _check_life(self, name: str) -> None:
        if self.status not in STATUSES:
            raise KeyringError(
                "jwks-malformed", f"Key {name} has status {_quote(self.status)}; use one of {', '.join(STATUSES)}."
            )
        if self.status == "active" and (self.valid_to is not None or self.revoked_at is not None):
            raise KeyringError(
                "jwks-malformed", f"Key {name} is active, so it can have neither valid_to nor revoked_at."
            )
        if self.status == "retired" and (self.valid_to is None or self.revoked_at is not None):
            raise KeyringError("jwks-malformed", f"Key {name} is retired, so it must have valid_to and no revoked_at.")
        if self.status == "revoked" and self.revoked_at is None:
            raise KeyringError("jwks-malformed", f"Key {name} is revoked, so it must say since when: revoked_at.")
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise KeyringError("jwks-malformed", f"Key {name} has valid_to before valid_from.")

    def valid_at(self, t: datetime) -> bool:
        """Whether a record signed at ``t`` (timezone-aware) is valid under this key.

        True if ``valid_from <= t``, ``t < valid_to`` (when set) and ``t <
        revoked_at`` (when set): a record signed before a revocation stays valid,
        one signed at or after it does not. See the module docstring for which
        ``t`` to use.
        """
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("valid_at needs a timezone-aware time; a naive time is ambiguous")
        return (
            self.valid_from <= t
            and (self.valid_to is None or t < self.valid_to)
            and (self.revoked_at is None or t < self.revoked_at)
        )

    def retired(self, at: datetime) -> PublicKey:
        """This key after rotation at ``at``: status retired, valid_to ``at``."""
        return replace(self, status="retired", valid_to=at)

    def revoked(self, at: datetime) -> PublicKey:
        """This key revoked as of ``at``: status revoked, revoked_at ``at``, valid_to kept."""
        return replace(self, status="revoked", revoked_at=at)

    def to_jwk(self) -> dict[str, str]:
        """The key as a JWKS member: the public JWK plus status and times."""
        member = {**self.jwk, "status": self.status, "valid_from": format_time(self.valid_from)}
        if self.valid_to is not None:
            member["valid_to"] = format_time(self.valid_to)
        if self.revoked_at is not None:
            member["revoked_at"] = format_time(self.revoked_at)
        return member

    @classmethod
    def from_jwk(cls, member: Mapping[str, Any]) -> PublicKey:
        """The key a JWKS member describes, checked strictly (codes in the module docstring)."""
        if not isinstance(member, Mapping):
            raise KeyringError("jwks-malformed", f"A key in the set is a JSON {type(member).__name__}, not an object.")
        name = _quote(member.get("kid"))
        _refuse_private(member, name)  # first: of all refusals, this one means a leak
        try:
            kind = jwk.key_type(member)
        except ValueError as error:
            raise KeyringError("jwks-unsupported-key", f"Key {name} {error}.") from None
        allowed = {*_REQUIRED_MEMBERS, *kind.coordinates, "valid_to", "revoked_at"}
        unknown = sorted(set(member) - allowed, key=str)
        if unknown:
            raise KeyringError(
                "jwks-malformed",
                f"Key {name} has member(s) {', '.join(map(_quote, unknown))}, which an mrx JWKS does not use.",
            )
        for required in (*_REQUIRED_MEMBERS, *kind.coordinates):
            if not isinstance(member.get(required), str):
                raise KeyringError("jwks-malformed", f"Key {name} has no string member {required!r}.")
        return cls(
            kid=member["kid"],
            alg=member["alg"],
            jwk={m: member[m] for m in member if m not in _LIFE_MEMBERS},
            valid_from=parse_time(member["valid_from"], f"valid_from of key {name}"),
            valid_to=_optional_time(member, "valid_to", name),
            status=member["status"],
            revoked_at=_optional_time(member, "revoked_at", name),
        )


class Keyring:
    """Public keys by kid. Immutable; ``keyring.get`` is the lookup `jws.verify_compact` takes."""

    __slots__ = ("_by_kid",)

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        by_kid: dict[str, PublicKey] = {}
        for key in keys:
            if key.kid in by_kid:
                raise KeyringError(
                    "jwks-duplicate-kid",
                    f"Two keys have kid {_quote(key.kid)}; a kid names one key, so the set is ambiguous.",
                )
            by_kid[key.kid] = key
        self._by_kid = MappingProxyType(by_kid)

    def get(self, kid: str) -> PublicKey | None:
        """The key named ``kid``, or None."""
        return self._by_kid.get(kid)

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._by_kid.values())

    def __len__(self) -> int:
        return len(self._by_kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_kid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Keyring({list(self)!r})"

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any]) -> Keyring:
        """The keys of a JWKS document (parsed JSON), checked strictly; `KeyringError` otherwise."""
        if not isinstance(doc, Mapping) or set(doc) != {"keys"} or not isinstance(doc["keys"], list):
            raise KeyringError(
                "jwks-malformed",
                'The key set is not a JSON object whose only member is "keys", a list of keys (RFC 7517 §5).',
            )
        return cls(PublicKey.from_jwk(member) for member in doc["keys"])

    @classmethod
    def from_json(cls, data: bytes) -> Keyring:
        """The keys of a JWKS document as received (UTF-8 JSON bytes), checked strictly."""
        try:
            doc = strictjson.loads(data)
        except ValueError as error:
            raise KeyringError(
                "jwks-malformed", f"The key set is not UTF-8 JSON without repeated members ({error})."
            ) from None
        return cls.from_jwks(doc)

    def to_jwks(self) -> dict[str, Any]:
        """The keyring as a JWKS document, ready for ``json.dumps``."""
        return {"keys": [key.to_jwk() for key in self]}


def _refuse_private(members: Mapping[str, Any], name: str) -> None:
    private = sorted(jwk.PRIVATE_MEMBERS & members.keys())
    if private:
        raise KeyringError(
            "jwks-private-key",
            f"Key {name} contains the private member(s) {', '.join(private)}: its private key has been published. "
            "Do not trust it; tell its owner to revoke it and rotate.",
        )


def _optional_time(member: Mapping[str, Any], name: str, kid: str) -> datetime | None:
    if name not in member:
        return None
    if not isinstance(member[name], str):
        raise KeyringError("jwks-malformed", f"Key {kid} has a {name!r} that is not a string.")
    return parse_time(member[name], f"{name} of key {kid}")


def _utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise KeyringError("jwks-malformed", f"The {what} is {_quote(value)}; it must be a timezone-aware time.")
    return value.astimezone(UTC)


def parse_time(text: str, what: str) -> datetime:
    """The UTC time an RFC 3339 ``text`` names; `KeyringError` (jwks-malformed) naming ``what`` otherwise."""
    try:
        if not _RFC3339.fullmatch(text):
            raise ValueError("not in the form 2025-01-31T08:00:00Z")
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as error:
        raise KeyringError("jwks-malformed", f"The {what} {_quote(text)} is not an RFC 3339 time ({error}).") from None


def format_time(t: datetime) -> str:
    """``t`` as mrx writes times: RFC 3339 in UTC with ``Z``, microseconds only when not zero."""
    return t.astimezone(UTC).isoformat(timespec="microseconds" if t.microsecond else "seconds").replace("+00:00", "Z")


def _quote(value: object, limit: int = 64) -> str:
    """``value`` for a detail sentence: repr, cut short, since it may come from a partner's document."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
