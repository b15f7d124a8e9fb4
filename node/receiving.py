"""Receiving records from partners, and answering each with a signed receipt.

A partner's request has already been authenticated (`mrx.node.partners`):
we know which partner is calling. Each message of the batch is then taken
**in order** through these steps; the first that fails decides:

1. the exact bytes were answered before → that receipt again (``duplicate``);
2. `mrx.node.records.verify_record` (in the signing workers, the whole batch
   at once) against the partners' trusted keys: JWS
   profile and signature, XML hardening and XSD, ``typ``, the header's sender
   owns the key, the key was valid when the record was prepared. A key this
   node does not know yet triggers one key refresh for the partner; if it is
   still unknown the message is ``deferred`` (no receipt: the sender retries
   later) — and so is every message after it in the batch, so that a
   partner's records are stored in the order it sent them;
3. the header's sender is the calling partner (``exchange-sender-mismatch``:
   there is no relaying — a record comes from the node that made it);
4. this node is among the header's recipients (``exchange-not-addressed``);
5. the message ID was received before: the same payload (another
   encoding of one ES256 signature, say) is a ``duplicate`` and gets the
   original receipt; a different payload is ``exchange-message-id-conflict``.

Accepted messages are stored as the exact bytes received, together with a
positive `Receipt`; a refused message is not stored, but the negative
receipt is, under the digest of the bytes it answers, with the refusal's
stable code and detail. Every receipt is a signed record of this node
addressed to the partner, whose ``CorrelationID`` is the received message's
ID, and whose ``ReceivedDigestID`` is the SHA-256 of the JWS received. The
store re-checks 1 and 5 inside its transaction, so two copies racing in are
stored once.

Records pulled from a partner (catch-up, `mrx.node.sending.Puller`) take
the same path; only the receipts are not sent back, since the partner's own
outbox will fetch them with its next push. A push names the catch-up
position of its last message (``?cursor=``): when none of its messages was
deferred, the puller's cursor moves there (`Puller.pushed`), so that
catch-up does not fetch again what came by push.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

from mrx.keys.jws import JwsError, parse_compact
from mrx.schemas import xml
from mrx.schemas.codec import peek_message_id
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import Body, Receipt, ReceiptError
from mrx.schemas.xml import XmlError

from .metrics import NodeMetrics
from .partners import Partners
from .problems import Problem
from .records import Refusal, Unsigned, VerifiedRecord, xml_text
from .signing import Signing
from .storage import ReceivedWrite, SignedRecord, Store, WriteStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MessageResult:
    """What became of one received message."""

    index: int
    digest: bytes  # SHA-256 of the JWS as received
    status: str  # "accepted" | "duplicate" | "rejected" | "deferred"
    message_id: UUID | None = None
    receipt: bytes | None = None  # the signed Receipt (none when deferred)
    problem: Problem | None = None


@dataclass(slots=True)
class _Pending:
    index: int
    token: bytes
    digest: bytes
    verified: VerifiedRecord | None = None
    problem: Problem | None = None
    message_id: UUID | None = None  # where legible


class Receiver:
    def __init__(
        self, node_id: str, partners: Partners, store: Store, signing: Signing, metrics: NodeMetrics,
        *, max_xml_bytes: int,
    ) -> None:
        self._node_id = node_id
        self._partners = partners
        self._store = store
        self._signing = signing
        self._metrics = metrics
        self._max_xml_bytes = max_xml_bytes
        # Told of every record accepted from a partner, after its commit: (message ID, sender, body).
        self.on_stored: Callable[[list[tuple[UUID, str, Body]]], None] | None = None

    async def receive(self, partner: str, tokens: list[bytes]) -> list[MessageResult]:
        digests = [hashlib.sha256(token).digest() for token in tokens]
        answered = await self._store.receipts_for(digests)
        fresh = [i for i, digest in enumerate(digests) if digest not in answered]
        verified = await verify_from(
            self._partners, self._signing, partner, [tokens[i] for i in fresh], max_xml_bytes=self._max_xml_bytes
        )
        verdicts = dict(zip(fresh, verified, strict=True))
        results: list[MessageResult | None] = [None] * len(tokens)
        pending: list[_Pending] = []
        deferring: Problem | None = None
        for index, (token, digest) in enumerate(zip(tokens, digests, strict=True)):
            if deferring is not None:
                results[index] = MessageResult(index, digest, "deferred", problem=deferring)
                continue
            if digest in answered:
                message_id, receipt = answered[digest]
                results[index] = MessageResult(index, digest, "duplicate", message_id, receipt)
                continue
            verdict = verdicts[index]
            item = _Pending(index, token, digest)
            if isinstance(verdict, Refusal):
                item.problem = Problem(verdict.code, verdict.detail)
                item.message_id = _message_id(token)
                if verdict.code == "jws-unknown-kid":  # perhaps a key not announced to us yet: try later
                    deferring = item.problem
                    results[index] = MessageResult(index, digest, "deferred", problem=deferring)
                    continue
            else:
                item.verified, item.message_id = verdict, verdict.record.message_id
                item.problem = self._refusal(partner, verdict)
            pending.append(item)

        ids = [item.verified.record.message_id for item in pending if item.problem is None and item.verified]
        firsts = await self._store.received(ids) if ids else {}
        answering: list[_Pending] = []
        for item in pending:
            verified = item.verified
            first = firsts.get(verified.record.message_id) if verified is not None and item.problem is None else None
            if first is None:
                answering.append(item)
                continue
            assert verified is not None
            if first[0] == _payload_digest(item.token):  # the same message, perhaps another encoding
                results[item.index] = MessageResult(
                    item.index, item.digest, "duplicate", verified.record.message_id, first[1]
                )
            else:
                item.problem = _conflict(verified.record.message_id)
                answering.append(item)

        for item, outcome in zip(answering, await self._answer(partner, answering), strict=True):
            results[item.index] = outcome
        done = [r for r in results if r is not None]
        for status, count in Counter(r.status for r in done).items():
            self._metrics.exchange_received.labels(partner, status).inc(count)
        return done

    def _refusal(self, partner: str, verified: VerifiedRecord) -> Problem | None:
        header = verified.message.header
        if header.sender != partner:
            return Problem(
                "exchange-sender-mismatch",
                f"the record was made by {header.sender} but sent by {partner}; a node sends only its own records",
            )
        if self._node_id not in header.recipients:
            addressed = ", ".join(header.recipients) or "no one"
            return Problem(
                "exchange-not-addressed", f"the record is addressed to {addressed}, not to {self._node_id}"
            )
        return None

    async def _answer(self, partner: str, items: list[_Pending]) -> list[MessageResult]:
        """Sign a receipt for each item and store it, with the record where accepted."""
        if not items:
            return []
        now = datetime.now(timezone.utc)
        unsigned = [
            Unsigned(
                _receipt(item, now),
                recipients=(partner,),
                correlation_id=item.message_id,
            )
            for item in items
        ]
        signed = await self._signing.sign_all(unsigned)
        writes: list[ReceivedWrite] = []
        for item, receipt in zip(items, signed, strict=True):
            if isinstance(receipt, Exception):
                raise Problem("unavailable", f"this node cannot sign receipts just now ({receipt}); retry later")
            writes.append(_write(partner, item, receipt))
        outcomes = await self._store.store_received(writes)
        if self.on_stored is not None:
            fresh = [
                (w.record.message_id, w.record.sender, w.body)
                for w, o in zip(writes, outcomes, strict=True)
                if o.status is WriteStatus.ACCEPTED and w.record is not None and w.body is not None
            ]
            if fresh:
                self.on_stored(fresh)
        results = []
        for item, outcome in zip(items, outcomes, strict=True):
            message_id = item.message_id
            if outcome.status is WriteStatus.KEY_CONFLICT and message_id is not None:  # lost a race: another message
                results.append(
                    MessageResult(item.index, item.digest, "deferred", message_id, None, _conflict(message_id))
                )
            elif outcome.status is WriteStatus.DUPLICATE:
                results.append(MessageResult(item.index, item.digest, "duplicate", message_id, outcome.receipt_jws))
            else:
                status = "rejected" if item.problem is not None else "accepted"
                results.append(
                    MessageResult(item.index, item.digest, status, message_id, outcome.receipt_jws, item.problem)
                )
        return results


async def verify_from(
    partners: Partners, signing: Signing, partner: str, tokens: list[bytes], *, max_xml_bytes: int
) -> list[VerifiedRecord | Refusal]:
    """Verify a partner's records (or receipts) in the workers against all partners' trusted keys.

    A kid nobody knows makes the node fetch that partner's keys (rate-limited) and verify those tokens again.
    """
    if not tokens:
        return []
    verdicts = await signing.verify_all(tokens, partners.keys(), max_xml_bytes=max_xml_bytes)
    unknown = [i for i, v in enumerate(verdicts) if isinstance(v, Refusal) and v.code == "jws-unknown-kid"]
    if unknown and await partners.refresh_if_due(partner):
        again = await signing.verify_all([tokens[i] for i in unknown], partners.keys(), max_xml_bytes=max_xml_bytes)
        for i, verdict in zip(unknown, again, strict=True):
            verdicts[i] = verdict
    return verdicts


def _receipt(item: _Pending, now: datetime) -> Receipt:
    if item.problem is None:
        return Receipt(item.message_id, item.digest, ReceiptStatus.ACCEPTED, now)
    error = ReceiptError(item.problem.code, xml_text(item.problem.detail))
    return Receipt(item.message_id, item.digest, ReceiptStatus.REJECTED, now, (error,))


def _write(partner: str, item: _Pending, receipt: SignedRecord) -> ReceivedWrite:
    if item.problem is not None or item.verified is None:
        return ReceivedWrite(partner, item.digest, receipt, item.message_id)
    return ReceivedWrite(
        partner, item.digest, receipt, item.message_id, item.verified.record, _payload_digest(item.token),
        item.verified.message.body,
    )


def _conflict(message_id: UUID) -> Problem:
    return Problem(
        "exchange-message-id-conflict",
        f"a different message with ID {message_id} was received before; a message ID names one message",
    )


def _payload_digest(token: bytes) -> bytes:
    """Names the message, whatever the signature's encoding: the payload segment is canonical base64url."""
    return hashlib.sha256(token.split(b".")[1]).digest()


def _message_id(token: bytes) -> UUID | None:
    """The message ID of a token that could not be verified, if it is legible; else None.

    Only through the hardened parser: the bytes are hostile until verified."""
    try:
        payload = parse_compact(token, max_bytes=len(token) + 1).payload
        return peek_message_id(xml.parse(payload))
    except (JwsError, XmlError):
        return None
