"""Partners: whose keys this node trusts, and how partner nodes prove who is calling.

Keys. A node never believes a partner's JWKS. For each partner it follows
the partner's chain of signed key-set statements (``/.well-known/mrx-key-
statements``, `mrx.keys.keyset`) from the **anchors** in its config — the
thumbprints of partner keys taken out of band — and trusts exactly the keys
that chain lists, with their validity windows and revocations. A new key is
believed only when a key already trusted announced it; a chain that swaps keys
without such an announcement, forks or rolls back is refused (and counted in
``/metrics``), and the keys trusted before are kept. The accepted chain is
stored, so a restart, or a partner that cannot be reached, leaves the node
with its last known good keys; each key still stops verifying at the end of
its own window.

Keys are refreshed by a scheduled job (``[exchange] key_refresh_seconds``)
and on demand when a partner's message names a key this node does not know
yet, at most once per partner every `ON_DEMAND_INTERVAL`.

Requests. A partner calling this node signs the request (docs/protocol.md):

    Authorization: MRX-JWS <compact JWS, typ vnd.mrx.request+json>

with the canonical JSON payload (sorted members, no whitespace)
``{"aud","body","iat","iss","jti","method","path"}``: the node called, the
base64url SHA-256 of the body, the time (seconds), the calling node, a fresh
UUID, the method and the path with its query. The receiver checks, in order:
the scheme and token shape; ``iss`` is a configured partner (else 401
``partner-unknown``); the signing key is one of ``iss``'s trusted keys — a key
of another partner is 403 ``partner-impersonation`` — and valid now; the
signature; ``aud`` is this node (403 ``request-wrong-audience``); method, path
and body hash are this request's; ``iat`` within `REQUEST_WINDOW` of now
(``request-expired``); ``jti`` not seen within the window (``request-
replayed``). TLS gives confidentiality on the wire; the signature gives
authenticity end to end, through proxies, with the keys the node already
trusts for records — no second PKI to run.

The replay cache holds at most `MAX_REPLAY_ENTRIES` jtis; each expires with its
request's window, so the bound holds at up to that many requests per window
(about 800 per second); beyond that new requests get 503 ``unavailable``
rather than weakening the check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import aiohttp

from mrx.keys import b64url, strictjson
from mrx.keys.jwks import Keyring
from mrx.keys.jws import JwsError, SigningKey, parse_compact, verify_compact
from mrx.keys.keyset import KeysetError, TrustResult, trusted_keyring

from .config import Partner
from .metrics import NodeMetrics
from .problems import Problem
from .records import TrustedKey
from .storage import Store

log = logging.getLogger(__name__)

REQUEST_TYP = "vnd.mrx.request+json"
AUTH_SCHEME = "MRX-JWS"
REQUEST_WINDOW = timedelta(minutes=5)
MAX_REPLAY_ENTRIES = 250_000
ON_DEMAND_INTERVAL = 2.0  # seconds after a fetch before a partner's unknown kid may trigger another
ON_DEMAND_RETRY = 1.0  # ... after a fetch that failed: the partner may just have come up
MAX_STATEMENTS_BYTES = 4 * 1_048_576
_REQUEST_MEMBERS = frozenset({"aud", "body", "iat", "iss", "jti", "method", "path"})


# -- signed requests ------------------------------------------------------------------


def body_digest(body: bytes) -> str:
    return b64url.encode(hashlib.sha256(body).digest()).decode("ascii")


def sign_request(key: SigningKey, iss: str, aud: str, method: str, path: str, body: bytes, *, now: float | None = None) -> str:
    """The ``Authorization`` header value for a request from ``iss`` to ``aud``."""
    claims = {
        "aud": aud,
        "body": body_digest(body),
        "iat": int(time.time() if now is None else now),
        "iss": iss,
        "jti": str(uuid4()),
        "method": method,
        "path": path,
    }
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return f"{AUTH_SCHEME} {key.sign(payload, REQUEST_TYP).decode('ascii')}"


@dataclass(slots=True)
class ReplayCache:
    """jtis seen within the request window, oldest first."""

    window: float = REQUEST_WINDOW.total_seconds() * 2  # iat may be up to a window early or late
    limit: int = MAX_REPLAY_ENTRIES
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def add(self, jti: str, now: float) -> bool:
        """Record ``jti``; False if it was seen already. Raises `Problem` when full of live entries."""
        self.expire(now)
        if jti in self._seen:
            return False
        if len(self._seen) >= self.limit:
            raise Problem("unavailable", "this node is receiving more partner requests than it can check for replay; retry shortly")
        self._seen[jti] = now + self.window
        return True

    def expire(self, now: float) -> int:
        dropped = 0
        while self._seen:
            jti, until = next(iter(self._seen.items()))
            if until > now:
                break
            del self._seen[jti]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._seen)


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """A partner's response body, refusing (ValueError) one longer than ``limit`` bytes without reading it all."""
    if response.content_length is not None and response.content_length > limit:
        raise ValueError(f"the response is {response.content_length} bytes, more than the {limit} accepted")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the response is longer than the {limit} bytes accepted")
        chunks.append(chunk)
    return b"".join(chunks)


# -- partner keys -----------------------------------------------------------------------


@dataclass(slots=True)
class _PartnerState:
    partner: Partner
    trust: TrustResult | None = None
    last_refresh: float = 0.0  # monotonic
    last_refresh_failed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Partners:
    """The configured partners, their trusted keys, and the checks on their requests."""

    def __init__(
        self,
        node_id: str,
        partners: Sequence[Partner],
        store: Store,
        metrics: NodeMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.node_id = node_id
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._states = {p.node_id: _PartnerState(p) for p in partners}
        self._owner_of: dict[str, str] = {}  # kid -> partner node ID
        self._replays = ReplayCache()
        self._session: aiohttp.ClientSession | None = None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._states

    def __iter__(self) -> Iterator[Partner]:
        return (s.partner for s in self._states.values())

    def partner(self, node_id: str) -> Partner | None:
        state = self._states.get(node_id)
        return None if state is None else state.partner

    async def load(self, session: aiohttp.ClientSession) -> None:
        """Rebuild each partner's trusted keys from the stored chain; no network."""
        self._session = session
        for node_id, state in self._states.items():
            statements = await self._store.key_statements(node_id)
            if not statements:
                continue
            try:
                state.trust = trusted_keyring(statements, state.partner.anchors, now=self._clock())
            except KeysetError as error:
                log.error("stored keys of partner %s no longer follow from its anchors: %s", node_id, error.detail)
                continue
            self._index(node_id)

    def keyring(self, node_id: str) -> Keyring | None:
        state = self._states.get(node_id)
        return None if state is None or state.trust is None else state.trust.keyring

    def keys(self) -> dict[str, TrustedKey]:
        """Every partner's trusted keys now, by kid: a snapshot to verify a batch with."""
        out = {}
        for kid in self._owner_of:
            found = self.lookup(kid)
            if found is not None:
                out[kid] = found
        return out

    def lookup(self, kid: str) -> TrustedKey | None:
        """The trusted key ``kid`` of any partner, with its owner."""
        owner = self._owner_of.get(kid)
        if owner is None:
            return None
        keyring = self.keyring(owner)
        key = keyring.get(kid) if keyring is not None else None
        return None if key is None else TrustedKey(owner, key)

    def _index(self, node_id: str) -> None:
        self._owner_of = {kid: owner for kid, owner in self._owner_of.items() if owner != node_id}
        keyring = self.keyring(node_id)
        for key in keyring or ():
            self._owner_of.setdefault(key.kid, node_id)
        sequence = self._states[node_id].trust
        if sequence is not None:
            self._metrics.partner_key_sequence.labels(node_id).set(sequence.sequence)

    async def refresh(self, node_id: str) -> bool:
        """Fetch and follow a partner's key-set statements; True if new keys were accepted."""
        state = self._states[node_id]
        async with state.lock:
            state.last_refresh = time.monotonic()
            try:
                statements = await self._fetch_statements(state.partner)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                state.last_refresh_failed = True
                self._metrics.partner_key_refresh.labels(node_id, "unreachable").inc()
                log.warning("cannot fetch the keys of partner %s (%s); keeping the keys trusted so far", node_id, exc)
                return False
            try:
                trust = trusted_keyring(statements, state.partner.anchors, previous=state.trust, now=self._clock())
            except KeysetError as error:
                state.last_refresh_failed = False
                self._metrics.partner_key_refresh.labels(node_id, error.code).inc()
                log.error("refused the key statements of partner %s: %s", node_id, error.detail)
                for refusal in error.refused:
                    log.error("  statement %s: %s: %s", refusal.index, refusal.code, refusal.detail)
                return False
            state.last_refresh_failed = False
            for refusal in trust.refused:
                self._metrics.partner_key_refresh.labels(node_id, refusal.code).inc()
                log.error("partner %s: refused key statement %s: %s: %s", node_id, refusal.index, refusal.code,
                          refusal.detail)
            self._metrics.partner_key_refresh.labels(node_id, "ok").inc()
            if trust.accepted:
                await self._store.save_key_statements(node_id, list(trust.statements))
                log.info("partner %s: trusting key-set statement %d", node_id, trust.sequence)
            state.trust = trust
            self._index(node_id)
            return bool(trust.accepted)

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh(node_id) for node_id in self._states))

    async def refresh_if_due(self, node_id: str) -> bool:
        """An on-demand refresh (an unknown kid), rate-limited per partner."""
        state = self._states.get(node_id)
        if state is None:
            return False
        wait = ON_DEMAND_RETRY if state.last_refresh_failed else ON_DEMAND_INTERVAL
        if time.monotonic() - state.last_refresh < wait:
            return False
        return await self.refresh(node_id)

    async def _fetch_statements(self, partner: Partner) -> list[bytes]:
        assert self._session is not None, "Partners.load() first"
        url = partner.base_url + "/.well-known/mrx-key-statements"
        async with self._session.get(url) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            raw = await read_capped(response, MAX_STATEMENTS_BYTES)
        doc = strictjson.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("statements"), list):
            raise ValueError(f'{url} did not serve {{"statements": [...]}}')
        if not all(isinstance(t, str) and t.isascii() for t in doc["statements"]):
            raise ValueError(f"{url} served statements that are not compact JWS strings")
        return [t.encode("ascii") for t in doc["statements"]]

    # -- requests ---------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, method: str, path: str, body: bytes) -> str:
        """The partner that signed this request, or a `Problem` (see the module docstring)."""
        if not authorization or not authorization.startswith(AUTH_SCHEME + " "):
            raise Problem(
                "partner-unknown", f"partner requests are signed: send 'Authorization: {AUTH_SCHEME} <JWS>' (docs/protocol.md)"
            )
        token = authorization[len(AUTH_SCHEME) + 1 :].strip().encode("ascii", "replace")
        try:
            unverified = parse_compact(token, max_bytes=4096)
            claims = strictjson.loads(unverified.payload)
        except (JwsError, ValueError) as exc:
            raise Problem("request-signature-invalid", f"the request signature is not a valid mrx request JWS ({exc})") from None
        if unverified.typ != REQUEST_TYP or not isinstance(claims, dict) or set(claims) != _REQUEST_MEMBERS:
            raise Problem(
                "request-signature-invalid",
                f"a request JWS has typ {REQUEST_TYP!r} and exactly the claims {', '.join(sorted(_REQUEST_MEMBERS))}",
            )
        iss = claims["iss"]
        if not isinstance(iss, str) or iss not in self._states:
            raise Problem("partner-unknown", f"{str(iss)[:40]!r} is not a partner of {self.node_id}; partners are agreed and configured by operators")
        owner = self._owner_of.get(unverified.kid)
        if owner is None:
            await self.refresh_if_due(iss)
            owner = self._owner_of.get(unverified.kid)
        if owner is not None and owner != iss:
            raise Problem(
                "partner-impersonation",
                f"the request says it is from {iss} but is signed with a key of {owner}; a node signs only as itself",
            )
        try:
            verified = verify_compact(token, self._key_of(iss), max_bytes=4096)
        except JwsError as exc:
            raise Problem(
                "request-signature-invalid", f"the request signature does not verify with {iss}'s trusted keys ({exc.code}: {exc.detail})"
            ) from None
        now = self._clock()
        if not verified.key.key.valid_at(now):
            raise Problem("request-signature-invalid", f"key {verified.key.key.kid} of {iss} is {verified.key.key.status}; sign with the active key")
        if claims["aud"] != self.node_id:
            raise Problem("request-wrong-audience", f"the request is addressed to {str(claims['aud'])[:40]!r}, not to {self.node_id}")
        if claims["method"] != method or claims["path"] != path or claims["body"] != body_digest(body):
            raise Problem("request-signature-invalid", "the signed method, path or body hash is not this request's; sign the request as sent")
        iat = claims["iat"]
        if type(iat) is not int or abs(now.timestamp() - iat) > REQUEST_WINDOW.total_seconds():
            raise Problem("request-expired", f"the request was signed at {iat!r}, not within {REQUEST_WINDOW} of this node's clock; check the clocks")
        jti = claims["jti"]
        if not isinstance(jti, str) or len(jti) > 64 or not self._replays.add(f"{iss} {jti}", time.monotonic()):
            raise Problem("request-replayed", "this signed request was received before; sign each request afresh")
        return iss

    def _key_of(self, node_id: str) -> Callable[[str], TrustedKey | None]:
        def lookup(kid: str) -> TrustedKey | None:
            found = self.lookup(kid)
            return found if found is not None and found.owner == node_id else None

        return lookup

    def expire_replays(self) -> int:
        return self._replays.expire(time.monotonic())
