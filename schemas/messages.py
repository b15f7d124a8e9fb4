"""The mrx message set as typed, immutable values.

These frozen dataclasses are the inside of the node: the HTTP and adapter
edges validate outside input into them, the codec (`schemas.codec`) turns
them into XML bytes that validate against the XSDs in ``schemas/xsd`` and back,
and the signer signs those bytes. Nothing here does I/O.

Every message is a `Header` plus one body. Names follow the WCO Data Model
style of the XML (see ``docs/messages.md``); code lists are the UN/EDIFACT
ones named in `schemas.codes`. Date-times are always timezone-aware and kept
in UTC.

Optional values are ``None``; repeated values are tuples so that values stay
hashable and comparable (the codec round-trip tests rely on ``==``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final
from uuid import UUID

from .codes import (
    AlarmType,
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    DecisionOutcome,
    DecisionReason,
    ReceiptStatus,
    SealActionCode,
    SealChainVerdict,
    SealConditionCode,
    SealEventType,
    SealingPartyCode,
    SealTypeCode,
)


@dataclass(frozen=True, slots=True)
class Header:
    """The common header of every message (NCTS style)."""

    message_id: UUID
    message_type: str
    sender: str  # node ID, e.g. CN-AKL
    recipients: tuple[str, ...]  # node IDs; may be empty for a record kept locally
    prepared_at: datetime
    correlation_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class ConsignmentReference:
    """A CIM/SMGS consignment note, a manifest, or a transit MRN."""

    type: ConsignmentReferenceType
    id: str


@dataclass(frozen=True, slots=True)
class GeoPosition:
    latitude: Decimal  # WGS84 degrees, -90..90
    longitude: Decimal  # WGS84 degrees, -180..180


@dataclass(frozen=True, slots=True)
class Location:
    """Where something happened: a UN/LOCODE, a WGS84 position, or both."""

    locode: str | None = None
    position: GeoPosition | None = None


@dataclass(frozen=True, slots=True)
class SealEvent:
    """One event reported by a smart customs lock through its gateway.

    ``lock_sequence`` is the lock's own monotonic event counter; it is what the
    seal chain is ordered by, since device clocks drift and radios drop.
    """

    event_id: UUID  # assigned by the gateway; the idempotency key
    gateway_id: str
    lock_id: str
    seal_id: str
    container: str  # ISO 6346, check digit verified
    lock_sequence: int
    event_type: SealEventType
    device_time: datetime
    receipt_time: datetime
    location: Location | None = None
    wagon: str | None = None  # UIC, check digit verified
    condition: SealConditionCode = SealConditionCode.IN_RIGHT_CONDITION
    seal_type: SealTypeCode = SealTypeCode.ELECTRONIC
    sealing_party: SealingPartyCode | None = None
    authorization_id: UUID | None = None  # the UnsealAuthorization an opening cites
    consignment_refs: tuple[ConsignmentReference, ...] = ()  # carried by the lock, on sealing
    battery_percent: int | None = None


@dataclass(frozen=True, slots=True)
class Seal:
    """A seal seen or affixed during an inspection."""

    id: str  # <= 20 characters (NCTS)
    action: SealActionCode  # found on arrival, or affixed by customs
    condition: SealConditionCode = SealConditionCode.IN_RIGHT_CONDITION
    type: SealTypeCode | None = None
    sealing_party: SealingPartyCode | None = None


@dataclass(frozen=True, slots=True)
class TransportEquipment:
    container: str  # ISO 6346
    seals: tuple[Seal, ...] = ()


@dataclass(frozen=True, slots=True)
class ControlResult:
    """An inspection result from the national customs system."""

    control_id: str  # the national system's reference; the idempotency key
    consignment_refs: tuple[ConsignmentReference, ...]  # at least one
    office: str  # UN/LOCODE of the inspecting office
    control_type: ControlType
    result: ControlResultCode
    controlled_at: datetime
    officer: str
    transport_equipment: tuple[TransportEquipment, ...] = ()
    hs_codes: tuple[str, ...] = ()  # 4 to 10 digits
    remarks: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionReasonEntry:
    code: DecisionReason
    description: str
    evidence: tuple[UUID, ...] = ()  # message IDs of the records that prove it


@dataclass(frozen=True, slots=True)
class RecognitionDecision:
    """Whether a partner's inspection is recognised at this border."""

    decision_id: UUID
    office: str
    consignment_refs: tuple[ConsignmentReference, ...]
    outcome: DecisionOutcome
    decided_at: datetime
    containers: tuple[str, ...] = ()
    control_result_message_id: UUID | None = None
    seal_chain_verdict: SealChainVerdict | None = None
    agreement_id: str | None = None
    reasons: tuple[DecisionReasonEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class UnsealAuthorization:
    """Permission to open one lock at one office within a time window, once."""

    authorization_id: UUID
    lock_id: str
    seal_id: str
    office: str
    valid_from: datetime
    valid_to: datetime
    nonce: str  # base64url, at least 128 bits
    officer: str
    container: str | None = None
    remarks: str | None = None


@dataclass(frozen=True, slots=True)
class Alarm:
    """A node's signed alarm about a seal: tamper, an unauthorised opening, a broken chain.

    ``evidence`` names the records (message IDs) that prove it, as a decision's reasons do.
    """

    alarm_id: UUID
    alarm_type: AlarmType
    raised_at: datetime
    office: str  # UN/LOCODE of the office whose node raised it
    lock_id: str
    seal_id: str
    container: str  # ISO 6346
    description: str
    consignment_refs: tuple[ConsignmentReference, ...] = ()
    evidence: tuple[UUID, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiptError:
    code: str
    description: str
    pointer: str | None = None  # the tag or path in the received message


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """What became of one received message: accepted, or rejected with errors."""

    received_message_id: UUID | None  # None when the message could not be read at all
    received_digest: bytes  # SHA-256 of the exact JWS bytes received
    status: ReceiptStatus
    received_at: datetime
    errors: tuple[ReceiptError, ...] = ()


# A Receipt's XML stays within this, however many messages it acknowledges: the largest record a
# log entry holds, and what every node accepts as a receipt whatever its own limit for records.
MAX_RECEIPT_XML_BYTES: Final = 48_000


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed acknowledgement of received messages, one `Acknowledgement` per message (at least one).

    A node answers a batch with as few receipts as fit `MAX_RECEIPT_XML_BYTES`, each acknowledging a
    run of the batch's messages; no receipt acknowledges the same bytes twice.
    """

    acknowledgements: tuple[Acknowledgement, ...]

    def acknowledgement(self, received_digest: bytes) -> Acknowledgement | None:
        """The acknowledgement of the message whose JWS has this SHA-256, if this receipt has one."""
        for ack in self.acknowledgements:
            if ack.received_digest == received_digest:
                return ack
        return None


Body = SealEvent | ControlResult | RecognitionDecision | UnsealAuthorization | Alarm | Receipt


@dataclass(frozen=True, slots=True)
class Message:
    """A header and its body. ``message_type`` of the header names the body."""

    header: Header
    body: Body


MESSAGE_TYPES: dict[type, str] = {
    SealEvent: "SealEventNotification",
    ControlResult: "ControlResultNotification",
    RecognitionDecision: "RecognitionDecisionNotification",
    UnsealAuthorization: "UnsealAuthorization",
    Alarm: "AlarmNotification",
    Receipt: "Receipt",
}


def message_type_of(body: Body) -> str:
    return MESSAGE_TYPES[type(body)]
