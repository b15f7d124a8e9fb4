"""Receiving records from partners, and answering each with a signed receipt.

A partner's request has already been authenticated (`mrx.node.partners`):
we know which partner is calling. Each message of the batch is then taken
**in order** through these steps; the first that fails decides:

1. the exact bytes were answered before, or came earlier in the batch → that
   receipt again (``duplicate``);
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

The messages answered (not duplicates, not deferred) are acknowledged
together: one signed `Receipt` per run of them that fits 48,000 bytes of XML
(`receipt_runs`; about 150 messages), one ``Acknowledgement`` per message —
its ID, the SHA-256 of the JWS received, ACCEPTED or REJECTED with the
refusal's stable code and detail. A receipt is a signed record of this node
addressed to the partner; one that answers a single message names it in its
``CorrelationID`` too. One signature per run rather than per message is
what keeps forwarding cheap for both sides: the sender verifies a handful
of receipts per batch, not one per record. Accepted messages are stored as
the exact bytes received, with their receipt; a refused message is not
stored, but its receipt is, under the digest of the bytes it answers. The
store re-checks 1 and 5 inside its transaction, so two copies racing in are
stored once; a request with a message that turns out there to be another
under a held ID is stored not at all, and answered again with that one
refused, so that no receipt says ACCEPTED of a message not stored.

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
from mrx.schemas.codec import acknowledgement_size, peek_message_id
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import MAX_RECEIPT_XML_BYTES, Acknowledgement, Body, Receipt, ReceiptError
from mrx.schemas.xml import XmlError

from .metrics import NodeMetrics
from .partners import Partners
from .problems import Problem
from .records import Refusal, Unsigned, VerifiedRecord, xml_text
from .signing import Signing
from .storage import ReceivedWrite, SignedRecord, Store, WriteStatus

log = logging.getLogger(__name__)

# What a Receipt's acknowledgements may take of `MAX_RECEIPT_XML_BYTES`; the rest is for its header.
RECEIPT_ACKNOWLEDGEMENT_BYTES = MAX_RECEIPT_XML_BYTES - 1024


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
        first_copy: dict[bytes, int] = {}  # the same bytes twice in the batch: the later gets the first's answer
        for i, digest in enumerate(digests):
            first_copy.setdefault(digest, i)
        fresh = [i for i, digest in enumerate(digests) if digest not in answered and first_copy[digest] == i]
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
            if first_copy[digest] != index:
                continue  # answered below, once the first copy is
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
        for index, digest in enumerate(digests):
            first = results[first_copy[digest]]
            if results[index] is None and first is not None:
                results[index] = MessageResult(index, digest, "duplicate", first.message_id, first.receipt)
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
        """Acknowledge the items in as few signed receipts as fit, and store them, with the records accepted.

        The store takes the request whole or not at all; a message it finds to be another under an ID held
        already (a race these checks could not see) is refused, and the receipts are signed again without
        acknowledging it as accepted.
        """
        if not items:
            return []
        while True:
            writes = await self._sign_receipts(partner, items)
            outcomes = await self._store.store_received(writes)
            conflicts = [
                item for item, o in zip(items, outcomes, strict=True) if o.status is WriteStatus.KEY_CONFLICT
            ]
            if not conflicts:
                break
            for item in conflicts:
                assert item.message_id is not None  # a KEY_CONFLICT is a record's: verified, so legible
                item.problem = _conflict(item.message_id)
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
            if outcome.status is WriteStatus.DUPLICATE:  # a copy stored since the checks above
                results.append(MessageResult(item.index, item.digest, "duplicate", item.message_id, outcome.receipt_jws))
                continue
            status = "rejected" if item.problem is not None else "accepted"
            results.append(
                MessageResult(item.index, item.digest, status, item.message_id, outcome.receipt_jws, item.problem)
            )
        return results

    async def _sign_receipts(self, partner: str, items: list[_Pending]) -> list[ReceivedWrite]:
        """One signed receipt per run of items that fits `MAX_RECEIPT_XML_BYTES`; each item's write with its own."""
        now = datetime.now(timezone.utc)
        runs = receipt_runs([_acknowledgement(item, now) for item in items])
        unsigned = [
            Unsigned(
                Receipt(run),
                recipients=(partner,),
                # one message answered: named in the header too, as a single receipt always was
                correlation_id=run[0].received_message_id if len(run) == 1 else None,
            )
            for run in runs
        ]
        signed = await self._signing.sign_all(unsigned)
        writes: list[ReceivedWrite] = []
        pending = iter(items)
        for run, receipt in zip(runs, signed, strict=True):
            if isinstance(receipt, Exception):
                raise Problem("unavailable", f"this node cannot sign receipts just now ({receipt}); retry later")
            writes += [_write(partner, next(pending), receipt) for _ in run]
        return writes


def receipt_runs(acknowledgements: list[Acknowledgement]) -> list[tuple[Acknowledgement, ...]]:
    """The acknowledgements in order, cut into runs whose Receipt stays within `MAX_RECEIPT_XML_BYTES`."""
    runs: list[tuple[Acknowledgement, ...]] = []
    run: list[Acknowledgement] = []
    size = 0
    # Acknowledgements without errors differ only in values of fixed length (UUID, digest), once their
    # status, time and whether the ID was legible are alike: one encoding sizes them all.
    sizes: dict[tuple[ReceiptStatus, datetime, bool], int] = {}
    for ack in acknowledgements:
        if ack.errors:
            ack_size = acknowledgement_size(ack)
        else:
            shape = (ack.status, ack.received_at, ack.received_message_id is None)
            if shape not in sizes:
                sizes[shape] = acknowledgement_size(ack)
            ack_size = sizes[shape]
        if run and size + ack_size > RECEIPT_ACKNOWLEDGEMENT_BYTES:
            runs.append(tuple(run))
            run, size = [], 0
        run.append(ack)
        size += ack_size
    if run:
        runs.append(tuple(run))
    return runs


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


def _acknowledgement(item: _Pending, now: datetime) -> Acknowledgement:
    if item.problem is None:
        return Acknowledgement(item.message_id, item.digest, ReceiptStatus.ACCEPTED, now)
    error = ReceiptError(item.problem.code, xml_text(item.problem.detail))
    return Acknowledgement(item.message_id, item.digest, ReceiptStatus.REJECTED, now, (error,))


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
