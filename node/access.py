"""Who may call the node, and what each caller may do.

Callers present ``Authorization: Bearer <name>.<secret>``. The secret is 256
random bits, shown once when the credential is made (``mrx gateway add``,
``mrx client add``); the node keeps only its SHA-256, which is enough for a
secret of that entropy and costs nothing per request. Roles:

- ``gateway``: posts seal events, only for locks matching its patterns;
- ``national``: the national customs system or an officer's tool: posts
  control results and reads records and timelines;
- ``auditor``: reads only.

Credentials are cached for a few seconds so that a busy gateway does not cost
a database read per request; a revoked credential stops working within that
time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import translate

from .inputs import TOKEN
from .problems import Problem
from .storage import Credential, Store

ROLES = ("gateway", "national", "auditor")
_CACHE_SECONDS = 5.0


def new_credential(name: str, role: str, lock_patterns: tuple[str, ...] = ()) -> tuple[Credential, str]:
    """A new credential and the bearer token to hand to its holder (shown once)."""
    if not TOKEN.fullmatch(name):  # a gateway's name is the GatewayID in its records
        raise ValueError(f"{name!r} is not a valid name: use A-Z, 0-9, '.', '_', '-' (at most 35), e.g. GW-CQ-01")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "gateway" and not lock_patterns:
        raise ValueError("a gateway needs at least one lock pattern (--locks), e.g. 'LK-CQ-*'")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    credential = Credential(
        name=name,
        role=role,
        lock_patterns=lock_patterns,
        secret_hash=hashlib.sha256(secret.encode()).digest(),
        created_at=datetime.now(timezone.utc),
    )
    return credential, f"{name}.{secret}"


@dataclass(frozen=True, slots=True)
class Caller:
    credential: Credential
    _scope: re.Pattern[str] | None

    @property
    def name(self) -> str:
        return self.credential.name

    def may_use_lock(self, lock_id: str) -> bool:
        return self._scope is not None and self._scope.match(lock_id) is not None


class Access:
    """Authenticates bearer tokens against the store, with a short cache."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def authenticate(self, authorization: str | None, *roles: str) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Problem(
                "unauthenticated", "send 'Authorization: Bearer <credential>' with the credential mrx issued to you"
            )
        token = authorization[len("Bearer ") :].strip()
        name, _, secret = token.rpartition(".")
        caller = await self._caller(name) if name and secret else None
        if caller is None or not hmac.compare_digest(
            hashlib.sha256(secret.encode()).digest(), caller.credential.secret_hash
        ):
            raise Problem(
                "unauthenticated", "the credential is not recognised; check it, or ask the node operator for a new one"
            )
        if caller.credential.revoked_at is not None:
            raise Problem("unauthenticated", f"the credential {name!r} has been revoked; ask the node operator")
        if caller.credential.role not in roles:
            raise Problem(
                "forbidden", f"{name!r} is a {caller.credential.role} credential; this needs {' or '.join(roles)}"
            )
        return caller

    async def gateway(self, name: str) -> Caller | None:
        """The gateway credential ``name``, if it exists and is not revoked (the MQTT listener's check of a topic)."""
        caller = await self._caller(name)
        if caller is None or caller.credential.role != "gateway" or caller.credential.revoked_at is not None:
            return None
        return caller

    async def _caller(self, name: str) -> Caller | None:
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        credential = await self._store.credential(name)
        caller = None
        if credential is not None:
            scope = None
            if credential.lock_patterns:
                scope = re.compile("|".join(f"(?:{translate(p)})" for p in credential.lock_patterns))
            caller = Caller(credential, scope)
        if len(self._cache) > 10_000:  # unknown names must not grow memory without bound
            self._cache.clear()
        self._cache[name] = (now, caller)
        return caller
