"""Webhook adapter: outbound events POSTed as JSON to the national system, signed with HMAC-SHA256.

Inbound, a national system that speaks HTTP uses the node's own API
(``POST /v1/control-results``, ``/v1/itineraries``, ``/v1/arrivals``,
``/v1/unseal-authorizations`` with a ``national`` credential); this adapter
is the other direction.

Each event is one request::

    POST <url>
    Content-Type: application/json
    Mrx-Event: decision                      (control-result | decision | alarm | unseal-authorization)
    Mrx-Delivery: <message_id>               (the same on every retry: deduplicate on it)
    Mrx-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

    {"kind": ..., "message_id": ..., "message_type": ..., "sender": ..., "prepared_at": ...,
     "seq": ..., "record": "<compact JWS>", "xml": "<the XML message>"}

Why HMAC and not a JWS: the national system is the node's own authority's
system, it shares a secret with it, and every web framework verifies an HMAC
(the scheme GitHub and Stripe webhooks use: sign the timestamp with the body,
refuse old timestamps to stop replays). The authority's signature over the
record itself travels inside, as ``record``, for anyone who must prove it
later. The secret is read from ``secret_file`` (one line; keep it mode 0600).

Answers: 2xx is delivered. 408, 425, 429 and 5xx, timeouts and refused
connections are retried by the node with capped backoff, the same event again,
so order holds. Any other status is a permanent refusal: retrying the same
bytes cannot help; it is kept in the node's ``adapter_failures`` table, logged
and counted as ``refused`` in ``mrx_adapter_deliveries_total``, and delivery goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field

from mrx.node.readmodel import iso

from .interface import KINDS, AdapterConfigError, AdapterContext, DeliveryFailed, NationalInbound, Options, Outbound

RETRIED_STATUSES = frozenset({408, 425, 429})


class WebhookOptions(Options):
    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret_file: str
    kinds: list[str] = sorted(set(KINDS.values()))
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Mrx-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def event_body(event: Outbound) -> bytes:
    """The JSON a webhook receives for ``event``."""
    return json.dumps(
        {
            "kind": event.kind,
            "message_id": event.message_id,
            "message_type": event.message.header.message_type,
            "sender": event.sender,
            "prepared_at": iso(event.prepared_at),
            "seq": event.seq,
            "record": event.jws.decode("ascii"),
            "xml": event.xml.decode("utf-8"),
        },
        separators=(",", ":"),
    ).encode("utf-8")


class WebhookAdapter:
    def __init__(self, name: str, url: str, secret: bytes, kinds: frozenset[str], timeout_seconds: float) -> None:
        self.name = name
        self.kinds = kinds
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any], context: AdapterContext) -> WebhookAdapter:
        given: WebhookOptions = WebhookOptions.read(name, options)
        unknown = sorted(set(given.kinds) - set(KINDS.values()))
        if unknown:
            raise AdapterConfigError(
                f"adapter {name!r}: kinds {unknown} are not events the node sends; use some of "
                f"{sorted(set(KINDS.values()))}"
            )
        path = context.base_dir / given.secret_file
        try:
            secret = Path(path).read_text(encoding="utf-8").strip().encode("utf-8")
        except OSError as exc:
            raise AdapterConfigError(f"adapter {name!r}: cannot read secret_file {path}: {exc.strerror}") from None
        if len(secret) < 16:
            raise AdapterConfigError(f"adapter {name!r}: the secret in {path} is shorter than 16 characters")
        return cls(name, given.url, secret, frozenset(given.kinds), given.timeout_seconds)

    async def start(self, inbound: NationalInbound) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def deliver(self, event: Outbound) -> None:
        assert self._session is not None, "deliver before start"
        body = event_body(event)
        headers = {
            "Content-Type": "application/json",
            "Mrx-Event": event.kind,
            "Mrx-Delivery": event.message_id,
            "Mrx-Signature": signature(self._secret, int(time.time()), body),
        }
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                status = response.status
                text = (await response.content.read(500)).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{self._url} could not be reached: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return
        detail = f"{self._url} answered {status}: {text.strip()[:200]}"
        raise DeliveryFailed(detail, permanent=not (status >= 500 or status in RETRIED_STATUSES))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
