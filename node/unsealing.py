"""Unseal authorisations: permission to open one lock at this node's office, once, within a window.

An officer (through the national system) asks the node to authorise opening
lock L with seal S on container C between two times. The node issues a
signed ``UnsealAuthorization`` record with a fresh nonce (192 random bits),
for its own office only: a node authorises openings where its customs
officers are. The record is a compact JWS that a gateway fetches
(``GET /v1/unseal-authorizations?lock_id=L``) and a lock can verify with
the node's public key alone (``/.well-known/jwks.json``); the nonce makes
each authorisation distinct, so a lock that remembers the nonces it has
honoured refuses a replay on its own.

The node enforces single use from the chain: the first ``unsealed`` event in
the lock's sequence that cites the authorisation uses it; any other is an
unauthorised opening (`mrx.node.sealchain`). An authorisation is sent, like
the lock's events, to the partners of the next offices on the container's
itineraries, so that their seal-chain verdicts can check the opening.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from enum import StrEnum
from uuid import uuid4

from mrx.schemas.messages import UnsealAuthorization

from .deciding import Recognition, sign_one
from .inputs import UnsealAuthorizationIn
from .metrics import NodeMetrics
from .problems import FieldError, Problem
from .records import Unsigned
from .routing import Router
from .signing import Signing
from .storage import AuthorisationEntry, SignedRecord, Store


class AuthorisationState(StrEnum):
    PENDING = "pending"  # its window has not opened yet
    VALID = "valid"  # usable now
    USED = "used"  # an unsealed event has cited it
    EXPIRED = "expired"  # its window closed unused


def state_of(entry: AuthorisationEntry, now: datetime) -> AuthorisationState:
    auth = entry.authorisation
    if entry.used_by is not None:
        return AuthorisationState.USED
    if now > auth.valid_to:
        return AuthorisationState.EXPIRED
    return AuthorisationState.PENDING if now < auth.valid_from else AuthorisationState.VALID


class Unsealing:
    def __init__(
        self,
        node_id: str,
        office: str,
        store: Store,
        signing: Signing,
        router: Router,
        recognition: Recognition,
        metrics: NodeMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._node_id = node_id
        self._office = office
        self._store = store
        self._signing = signing
        self._router = router
        self._recognition = recognition
        self._metrics = metrics
        self._clock = clock
        # Told of each authorisation after its commit: the MQTT listener pushes it to the lock's gateway.
        self.on_issued: Callable[[UnsealAuthorization, SignedRecord], None] | None = None

    async def authorise(self, request: UnsealAuthorizationIn) -> tuple[UnsealAuthorization, SignedRecord]:
        if request.valid_to <= self._clock():
            raise Problem(
                "validation-failed",
                "/valid_to: the window has already closed; authorise a window that ends in the future",
                (FieldError("/valid_to", "is in the past"),),
            )
        body = UnsealAuthorization(
            authorization_id=uuid4(),
            lock_id=request.lock_id,
            seal_id=request.seal_id,
            office=self._office,
            valid_from=request.valid_from,
            valid_to=request.valid_to,
            nonce=secrets.token_urlsafe(24),
            officer=request.officer,
            container=request.container,
            remarks=request.remarks,
        )
        refs = await self._store.consignments_of(request.container)
        recipients = self._router.for_consignments(refs, [request.container])
        signed = await sign_one(self._signing, Unsigned(body, recipients))
        await self._store.store_made(signed, body)
        self._metrics.unseal_authorizations.inc()
        self._recognition.observe([(signed.message_id, self._node_id, body)])
        if self.on_issued is not None:
            self.on_issued(body, signed)
        return body, signed
