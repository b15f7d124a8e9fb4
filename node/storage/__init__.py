"""Storage: the one narrow interface between the node and its database.

The node speaks to storage in domain terms — store these signed seal events,
this control result, this credential; read this record, that container's
timeline — and never in SQL. `Store` is the contract; `sqlite.SqliteStore` is
the embedded default, and a PostgreSQL backend for authorities running several
node processes will implement the same protocol. Nothing SQLite-specific
(rowids, ``PRAGMA``, file paths) crosses this boundary: cursors are opaque
strings, times are aware datetimes, records are exact bytes.

Durability contract, for every backend:

- A write returns only after its transaction has committed durably
  (SQLite: WAL with ``synchronous=FULL``). Callers acknowledge to the outside
  world only after that; the HTTP layer never answers before.
- Writes are idempotent by their natural key (event ID, control ID): a repeat
  with the same content returns the first outcome and stores nothing; a repeat
  with different content is a conflict and stores nothing.
- A seal event's lock sequence number is unique per lock; gaps and late
  arrivals are recorded in the event's ``order`` and in `SequenceGap`s, never
  hidden or "fixed".
- Records are appended in commit order; that order is what the transparency
  log (see ``docs/architecture.md``) will follow.
- A record addressed to partners is queued in each partner's outbox in the
  same transaction that stores it: no record is stored without its
  deliveries, and none is delivered that was not stored.
- A record received from a partner is stored with the receipt that answers
  it, in one transaction: the receipt never exists without the record.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, Protocol
from uuid import UUID

from mrx.schemas.messages import Body, ConsignmentReference, ControlResult, SealEvent

from ..sealchain import Authorisation, ChainEvent


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A signed message exactly as stored: ``jws`` are the bytes that were signed."""

    message_id: UUID
    message_type: str
    sender: str
    recipients: tuple[str, ...]
    prepared_at: datetime
    kid: str
    jws: bytes
    digest: bytes  # SHA-256 of jws


class Order(StrEnum):
    """Where an event's lock sequence number fell relative to what was stored."""

    FIRST = "first"  # the first event stored for this lock
    NEXT = "next"  # exactly one after the highest stored
    GAP = "gap"  # more than one after: events in between are missing (so far)
    LATE = "late"  # below the highest stored: a back-fill or a reordering


class WriteStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # same key, same content: the first outcome is returned
    KEY_CONFLICT = "key-conflict"  # same key, different content
    SEQUENCE_CONFLICT = "sequence-conflict"  # same lock and sequence number, other event
    NOT_STORED = "not-stored"  # a received message held back: another of its request was a KEY_CONFLICT


@dataclass(frozen=True, slots=True)
class SealEventWrite:
    record: SignedRecord
    event: SealEvent
    content_hash: bytes  # of the event as submitted, for telling repeats from conflicts


@dataclass(frozen=True, slots=True)
class SealEventOutcome:
    event_id: UUID
    status: WriteStatus
    message_id: UUID | None = None
    order: Order | None = None
    conflicting_event_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class ControlResultWrite:
    record: SignedRecord
    result: ControlResult
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class ControlResultOutcome:
    control_id: str
    status: WriteStatus
    message_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """Who may call the node: a gateway (with its lock scope), the national system, an auditor."""

    name: str
    role: str  # "gateway" | "national" | "auditor"
    lock_patterns: tuple[str, ...]  # gateways only: fnmatch patterns of lock IDs
    secret_hash: bytes
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """A seal event as a timeline lists it; the full event is in its signed record."""

    event_id: UUID
    message_id: UUID
    lock_id: str
    seal_id: str
    container: str
    lock_sequence: int
    event_type: str
    device_time: datetime
    receipt_time: datetime
    order: Order
    locode: str | None
    latitude: str | None  # decimal text, exactly as signed
    longitude: str | None
    condition: str
    gateway_id: str


@dataclass(frozen=True, slots=True)
class SequenceGap:
    lock_id: str
    first_missing: int
    last_missing: int


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[TimelineEntry, ...]
    next_cursor: str | None


class TimelineKey(StrEnum):
    CONTAINER = "container"
    SEAL = "seal"
    LOCK = "lock"


class Delivery(StrEnum):
    """Where a record stands in a partner's outbox."""

    QUEUED = "queued"  # waiting to be sent (again)
    IN_FLIGHT = "in-flight"  # sent, no answer yet; queued again if the node restarts
    DELIVERED = "delivered"  # the partner's signed receipt accepted it, and is kept
    FAILED = "failed"  # permanently rejected (a signed negative receipt): needs an operator


@dataclass(frozen=True, slots=True)
class OutboxItem:
    outbox_id: int
    partner: str
    message_id: UUID
    message_type: str
    state: Delivery
    attempts: int
    last_attempt_at: datetime | None
    last_error: str | None
    receipt_message_id: UUID | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A queued record as its partner's sender takes it (`Store.outbox_due`): what to send, and the SHA-256
    of those bytes, by which the partner's receipt acknowledges them."""

    outbox_id: int
    message_id: UUID
    digest: bytes  # the record's stored digest: SHA-256 of ``jws``
    jws: bytes


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one outbox item's send ended. ``receipt`` is the partner's, verified."""

    outbox_id: int
    state: Delivery  # DELIVERED, FAILED, or QUEUED (try again)
    error: str | None = None
    receipt: SignedRecord | None = None


@dataclass(frozen=True, slots=True)
class ReceivedWrite:
    """A message received from a partner and the receipt that acknowledges it (with others of its request).

    ``record`` is None when the message was rejected: then only the (negative)
    receipt is stored, under the digest of the bytes it answers. The writes of one
    `Store.store_received` call are stored together or not at all.
    """

    partner: str
    received_digest: bytes  # SHA-256 of the exact JWS received
    receipt: SignedRecord
    received_message_id: UUID | None  # where legible
    record: SignedRecord | None = None
    payload_digest: bytes | None = None  # SHA-256 of the JWS payload: the message itself
    body: Body | None = None  # the verified message's body, indexed for recognition


@dataclass(frozen=True, slots=True)
class ReceivedOutcome:
    # ACCEPTED (new), DUPLICATE (original receipt), KEY_CONFLICT (other message, same ID), NOT_STORED (nothing of
    # the request was stored, for another message's KEY_CONFLICT: its receipts acknowledge that one wrongly)
    status: WriteStatus
    receipt_jws: bytes | None  # the receipt to answer with; None for KEY_CONFLICT and NOT_STORED


@dataclass(frozen=True, slots=True)
class Itinerary:
    """The offices a consignment will pass, in order, and the containers it travels in."""

    ref: ConsignmentReference
    offices: tuple[str, ...]
    containers: tuple[str, ...]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AddressedRecord:
    cursor: str
    jws: bytes


@dataclass(frozen=True, slots=True)
class Arrival:
    """A consignment's first arrival at this node's office."""

    ref: ConsignmentReference
    arrived_at: datetime
    containers: tuple[str, ...]
    trigger: UUID | None = None  # the seal event located at the office, when that was the trigger


@dataclass(frozen=True, slots=True)
class Targeting:
    """The national system's instruction to inspect a consignment, from its own risk analysis."""

    reference: str  # the national system's reference for the instruction
    reason: str
    marked_at: datetime


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    message_id: UUID
    sender: str
    outcome: str
    decided_at: datetime
    fingerprint: bytes | None
    jws: bytes


@dataclass(frozen=True, slots=True)
class AlarmEntry:
    """An alarm as listed: the signed record holds the rest."""

    seq: int  # listing order and cursor
    message_id: UUID
    alarm_id: UUID
    sender: str
    alarm_type: str
    lock_id: str
    container: str
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    jws: bytes


@dataclass(frozen=True, slots=True)
class AuthorisationEntry:
    """An unseal authorisation with its record, and whether an opening has used it."""

    authorisation: Authorisation
    issuer: str
    jws: bytes
    used_by: UUID | None  # the first unsealed event citing it, if any


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not issue."""


# A catch-up position (the cursor a partner pages with: the ID of an outbox row) is written in decimal with
# at most this many digits, which keeps it within SQLite's 64-bit INTEGER (docs/protocol.md).
POSITION_DIGITS: Final = 18
POSITION_PATTERN: Final = f"[0-9]{{1,{POSITION_DIGITS}}}"
_POSITION: Final = re.compile(POSITION_PATTERN)


def parse_position(text: str) -> int | None:
    """The catch-up position ``text`` writes, or None unless it is 1-18 ASCII digits.

    Not ``str.isdigit``: it also takes a superscript two or a fullwidth one, which ``int`` refuses.
    """
    return int(text) if _POSITION.fullmatch(text) else None


class Store(Protocol):
    async def store_seal_events(self, writes: list[SealEventWrite]) -> list[SealEventOutcome]: ...

    async def store_control_result(self, write: ControlResultWrite) -> ControlResultOutcome: ...

    async def add_credential(self, credential: Credential) -> None: ...

    async def credential(self, name: str) -> Credential | None: ...

    async def record(self, message_id: UUID) -> SignedRecord | None: ...

    async def timeline(self, key: TimelineKey, value: str, cursor: str | None, limit: int) -> Page: ...

    async def sequence_gaps(self, lock_id: str) -> list[SequenceGap]: ...

    # -- exchange with partners (docs/protocol.md) --

    async def store_received(self, writes: list[ReceivedWrite]) -> list[ReceivedOutcome]:
        """Store one request's received messages and receipts, all or (on a KEY_CONFLICT) none of them."""
        ...

    async def receipts_for(self, received_digests: list[bytes]) -> dict[bytes, tuple[UUID | None, bytes]]:
        """Receipts this node signed for any of these exact JWS: digest -> (message ID answered, receipt JWS)."""
        ...

    async def received(self, message_ids: list[UUID]) -> dict[UUID, tuple[bytes, bytes]]:
        """Messages received earlier: message ID -> (payload digest, receipt JWS)."""
        ...

    async def outbox_due(self, partner: str, limit: int) -> list[Outgoing]:
        """The partner's first ``limit`` queued records, in outbox order."""
        ...

    async def mark_in_flight(self, outbox_ids: list[int]) -> None: ...

    async def settle_deliveries(self, results: list[DeliveryResult]) -> None: ...

    async def outbox(
        self, partner: str | None, state: Delivery | None, after: int, limit: int
    ) -> list[OutboxItem]: ...

    async def retry_outbox(self, partner: str, message_ids: list[UUID] | None) -> int: ...

    async def outbox_counts(self, partners: list[str]) -> dict[tuple[str, Delivery], int]:
        """Rows per partner that are not delivered yet, by state (delivered rows are counted as sent)."""
        ...

    async def prune_delivered(self, before: datetime) -> int: ...

    async def addressed_to(self, partner: str, cursor: str | None, limit: int) -> tuple[list[AddressedRecord], str | None]: ...

    async def put_itinerary(self, itinerary: Itinerary) -> None: ...

    async def itineraries(self) -> list[Itinerary]: ...

    async def key_statements(self, partner: str) -> list[bytes]: ...

    async def save_key_statements(self, partner: str, statements: list[bytes]) -> None: ...

    async def pull_cursor(self, partner: str) -> str | None: ...

    async def save_pull_cursor(self, partner: str, cursor: str) -> None: ...

    # -- recognition (docs/recognition.md) --

    async def store_made(self, record: SignedRecord, body: Body, *, fingerprint: bytes | None = None) -> bool:
        """Store a record this node made (decision, authorisation, alarm), indexed, queued for its recipients.

        False, storing nothing, when a record with the same ``fingerprint`` of its kind is stored already."""
        ...

    async def put_arrival(self, arrival: Arrival) -> Arrival:
        """Record an arrival unless the consignment has arrived already; the arrival that stands."""
        ...

    async def arrival(self, ref: ConsignmentReference) -> Arrival | None: ...

    async def arrivals_of(self, containers: list[str]) -> list[Arrival]: ...

    async def arrived_containers(self, since: datetime) -> dict[str, datetime]:
        """Containers of consignments that arrived (were recorded) since ``since``, with their latest arrival."""
        ...

    async def first_stored_since(self, at: datetime) -> int:
        """The commit sequence number of the first record stored at or after ``at`` (past the last: none)."""
        ...

    async def latest_stored_at(self) -> datetime | None: ...

    async def settled_before(self) -> datetime | None:
        """Recognition's progress: every record stored before this time has had its work done."""
        ...

    async def save_settled_before(self, at: datetime) -> None:
        """Record recognition's progress; it never moves back."""
        ...

    async def records_after(self, seq: int, types: Sequence[str], limit: int) -> list[tuple[int, UUID, str, bytes]]:
        """(seq, message ID, sender, JWS) of the records of these message types after ``seq``, oldest first."""
        ...

    async def put_targeting(self, ref: ConsignmentReference, targeting: Targeting) -> None: ...

    async def targeting(self, ref: ConsignmentReference) -> list[Targeting]: ...

    async def control_results_for(self, ref: ConsignmentReference) -> list[SignedRecord]: ...

    async def consignments_of(self, container: str) -> list[ConsignmentReference]:
        """The consignments the container's latest sealing named (its lock carries them on this journey)."""
        ...

    async def chain_events(self, containers: list[str]) -> list[ChainEvent]: ...

    async def authorisations(self, lock_ids: list[str]) -> list[AuthorisationEntry]: ...

    async def authorisation(self, authorization_id: UUID) -> AuthorisationEntry | None: ...

    async def decisions(self, ref: ConsignmentReference) -> list[DecisionEntry]:
        """Decisions about a consignment, this node's and its partners', oldest first."""
        ...

    async def alarms(self, *, container: str | None, open_only: bool, after: int, limit: int) -> list[AlarmEntry]: ...

    async def acknowledge_alarm(self, alarm_id: UUID, officer: str, at: datetime) -> AlarmEntry | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
