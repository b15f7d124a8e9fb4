"""The known-answer messages behind ``schemas/examples/valid/``: one journey on the corridor.

A train leaves Chongqing (CNCQI) with container CSQU3054383 on wagon
218124712173, sealed by China customs with an electronic lock; China customs
inspects it at Alashankou (CNAKL) and keeps it sealed; Kazakhstan recognises
that inspection at Dostyk (KZDOS); the lock reports positions on the way;
near Brest (BYBQT) the lock of a second container reports tampering and
Belarus raises an alarm; at Małaszewicze (PLMAA) Poland refuses to
recognise that container's inspection, since its seal chain broke,
authorises unsealing CSQU3054383's lock, and the lock reports the opening.
Receipts acknowledge a message, refuse another, and answer a batch of three.

Each vector file is these messages encoded by `mrx.schemas.codec.encode`
and indented for reading (`pretty`); ``test_vectors`` checks that decoding a
file gives exactly the message here and that encoding the message gives the
file's content byte for byte once the indentation is removed. After a
deliberate change to the codec or to these messages, rewrite the files with::

    PYTHONPATH=.dev .venv/bin/python -m tests.schemas.corridor
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from lxml import etree

from mrx.schemas import codec
from mrx.schemas.codes import (
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
from mrx.schemas.messages import (
    Acknowledgement,
    Alarm,
    Body,
    ConsignmentReference,
    ControlResult,
    DecisionReasonEntry,
    GeoPosition,
    Header,
    Location,
    Message,
    Receipt,
    ReceiptError,
    RecognitionDecision,
    Seal,
    SealEvent,
    TransportEquipment,
    UnsealAuthorization,
    message_type_of,
)

VALID_DIR = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "valid"

CHINA = timezone(timedelta(hours=8))
KAZAKHSTAN = timezone(timedelta(hours=5))
POLAND = timezone(timedelta(hours=1))

CONTAINER = "CSQU3054383"  # ISO 6346 worked example
SECOND_CONTAINER = "TGHU8721607"
WAGON = "218124712173"  # UIC worked example
CIM_NOTE = ConsignmentReference(ConsignmentReferenceType.CIM, "33 216102 0033 70268 8")  # CIT example 70268 -> 8
MANIFEST = ConsignmentReference(ConsignmentReferenceType.MANIFEST, "CQ-MNF-2025-000417")
SMGS_NOTE = ConsignmentReference(ConsignmentReferenceType.SMGS, "SMGS 24115897")
MRN = ConsignmentReference(ConsignmentReferenceType.MRN, "25PL30102000012340")

LOCK = "LK-CQ-2025-00871"
ELECTRONIC_SEAL = "CNZT0087104471"  # ISO 18185: manufacturer ID + tag ID
SECOND_LOCK = "LK-CQ-2025-00872"
SECOND_ELECTRONIC_SEAL = "CNZT0087104472"
GATEWAY_CHONGQING = "GW-CNCQI-01"
GATEWAY_DOSTYK = "GW-KZDOS-03"
GATEWAY_BREST = "GW-BYBQT-01"
GATEWAY_MALASZEWICZE = "GW-PLMAA-02"

SEALED_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a01")
POSITION_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a02")
CONTROL_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a03")
RECOGNISED_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a04")
TAMPER_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a05")
NOT_RECOGNISED_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a06")
AUTHORIZATION_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a07")
UNSEALED_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a08")
ACCEPTED_RECEIPT_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a09")
REJECTED_RECEIPT_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a0a")
ALARM_MESSAGE_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a0b")
BATCH_RECEIPT_ID = UUID("7c1e2a90-3b5d-4f61-8a0e-2d9c4b7f1a0c")
AUTHORIZATION_ID = UUID("3f9a6c12-0d47-4b8e-b1c5-6e2f8a4d9c70")


def _message(
    message_id: UUID,
    sender: str,
    recipients: tuple[str, ...],
    prepared_at: datetime,
    body: Body,
    correlation_id: UUID | None = None,
) -> Message:
    header = Header(message_id, message_type_of(body), sender, recipients, prepared_at, correlation_id)
    return Message(header, body)


SEALED_AT_CHONGQING = _message(
    SEALED_MESSAGE_ID,
    "CN-GACC",
    ("KZ-SRC", "BY-SCC", "PL-KAS"),
    datetime(2025, 3, 14, 2, 15, 3, 520000, tzinfo=UTC),
    SealEvent(
        event_id=UUID("c4b0f3e2-91a7-4d2b-8e65-0f3a7d19b2c1"),
        gateway_id=GATEWAY_CHONGQING,
        lock_id=LOCK,
        seal_id=ELECTRONIC_SEAL,
        container=CONTAINER,
        lock_sequence=1,
        event_type=SealEventType.SEALED,
        device_time=datetime(2025, 3, 14, 10, 14, 58, tzinfo=CHINA),
        receipt_time=datetime(2025, 3, 14, 2, 15, 3, 412000, tzinfo=UTC),
        location=Location("CNCQI", GeoPosition(Decimal("29.6141"), Decimal("106.3785"))),
        wagon=WAGON,
        condition=SealConditionCode.IN_RIGHT_CONDITION,
        seal_type=SealTypeCode.ELECTRONIC,
        sealing_party=SealingPartyCode.CUSTOMS,
        consignment_refs=(CIM_NOTE, SMGS_NOTE, MANIFEST),
        battery_percent=98,
    ),
)

POSITION_AT_DOSTYK = _message(
    POSITION_MESSAGE_ID,
    "KZ-SRC",
    ("CN-GACC",),
    datetime(2025, 3, 17, 6, 40, 12, tzinfo=UTC),
    SealEvent(
        event_id=UUID("c4b0f3e2-91a7-4d2b-8e65-0f3a7d19b2c2"),
        gateway_id=GATEWAY_DOSTYK,
        lock_id=LOCK,
        seal_id=ELECTRONIC_SEAL,
        container=CONTAINER,
        lock_sequence=57,
        event_type=SealEventType.POSITION,
        device_time=datetime(2025, 3, 17, 11, 39, 55, tzinfo=KAZAKHSTAN),
        receipt_time=datetime(2025, 3, 17, 6, 40, 9, 87000, tzinfo=UTC),
        location=Location(None, GeoPosition(Decimal("45.2469"), Decimal("82.4822"))),
        wagon=WAGON,
        battery_percent=71,
    ),
)

CONTROL_AT_ALASHANKOU = _message(
    CONTROL_MESSAGE_ID,
    "CN-GACC",
    ("KZ-SRC", "PL-KAS"),
    datetime(2025, 3, 16, 8, 5, tzinfo=UTC),
    ControlResult(
        control_id="CNAKL-2025-0316-00087",
        consignment_refs=(CIM_NOTE, MANIFEST),
        office="CNAKL",
        control_type=ControlType.NON_INTRUSIVE,
        result=ControlResultCode.A1,
        controlled_at=datetime(2025, 3, 16, 15, 42, tzinfo=CHINA),
        officer="王军 (Wang Jun)",
        transport_equipment=(
            TransportEquipment(
                CONTAINER,
                (
                    Seal(
                        ELECTRONIC_SEAL,
                        SealActionCode.FOUND,
                        SealConditionCode.IN_RIGHT_CONDITION,
                        SealTypeCode.ELECTRONIC,
                        SealingPartyCode.CUSTOMS,
                    ),
                ),
            ),
            TransportEquipment(
                SECOND_CONTAINER,
                (
                    Seal(SECOND_ELECTRONIC_SEAL, SealActionCode.FOUND, type=SealTypeCode.ELECTRONIC),
                    Seal(
                        "CN-AKL/880190",
                        SealActionCode.AFFIXED,
                        SealConditionCode.IN_RIGHT_CONDITION,
                        SealTypeCode.MECHANICAL,
                        SealingPartyCode.CUSTOMS,
                    ),
                ),
            ),
        ),
        hs_codes=("847130", "8517620000"),
        remarks="X-ray scan on arrival: images consistent with the manifest (laptops, routers). "
        "Electronic seals intact; a mechanical seal <CN-AKL/880190> added to TGHU8721607 & recorded.",
    ),
)

TAMPER_NEAR_BREST = _message(
    TAMPER_MESSAGE_ID,
    "BY-SCC",
    ("PL-KAS", "CN-GACC"),
    datetime(2025, 3, 19, 22, 3, 41, 7000, tzinfo=UTC),
    SealEvent(
        event_id=UUID("c4b0f3e2-91a7-4d2b-8e65-0f3a7d19b2c5"),
        gateway_id=GATEWAY_BREST,
        lock_id=SECOND_LOCK,
        seal_id=SECOND_ELECTRONIC_SEAL,
        container=SECOND_CONTAINER,
        lock_sequence=164,
        event_type=SealEventType.TAMPER,
        device_time=datetime(2025, 3, 20, 1, 2, 57, tzinfo=timezone(timedelta(hours=3))),
        receipt_time=datetime(2025, 3, 19, 22, 3, 40, 512000, tzinfo=UTC),
        location=Location("BYBQT", GeoPosition(Decimal("52.0976"), Decimal("23.7341"))),
        condition=SealConditionCode.BROKEN,
        seal_type=SealTypeCode.ELECTRONIC,
        battery_percent=63,
    ),
)

ALARM_NEAR_BREST = _message(
    ALARM_MESSAGE_ID,
    "BY-SCC",
    ("PL-KAS", "CN-GACC"),
    datetime(2025, 3, 19, 22, 3, 42, 318000, tzinfo=UTC),
    Alarm(
        alarm_id=UUID("5d8b1f3a-7c2e-4a96-b0d4-3e6f9a1c5b21"),
        alarm_type=AlarmType.TAMPER,
        raised_at=datetime(2025, 3, 20, 1, 3, 42, tzinfo=timezone(timedelta(hours=3))),
        office="BYBQT",
        lock_id=SECOND_LOCK,
        seal_id=SECOND_ELECTRONIC_SEAL,
        container=SECOND_CONTAINER,
        description="Lock LK-CQ-2025-00872 on TGHU8721607 reported tampering (event 164, seal broken) "
        "near Brest, after the control at Alashankou. Inspect before any onward movement.",
        consignment_refs=(CIM_NOTE, MANIFEST),
        evidence=(TAMPER_MESSAGE_ID,),
    ),
    correlation_id=TAMPER_MESSAGE_ID,
)

RECOGNISED_AT_DOSTYK = _message(
    RECOGNISED_MESSAGE_ID,
    "KZ-SRC",
    ("CN-GACC",),
    datetime(2025, 3, 17, 6, 52, 30, tzinfo=UTC),
    RecognitionDecision(
        decision_id=UUID("e2a4c6f8-1b3d-4e5f-9a7b-8c0d2e4f6a81"),
        office="KZDOS",
        consignment_refs=(CIM_NOTE,),
        outcome=DecisionOutcome.RECOGNISED,
        decided_at=datetime(2025, 3, 17, 11, 52, 18, tzinfo=KAZAKHSTAN),
        containers=(CONTAINER,),
        control_result_message_id=CONTROL_MESSAGE_ID,
        seal_chain_verdict=SealChainVerdict.INTACT,
        agreement_id="CN-KZ-MRA-2024-01",
    ),
    correlation_id=CONTROL_MESSAGE_ID,
)

NOT_RECOGNISED_AT_MALASZEWICZE = _message(
    NOT_RECOGNISED_MESSAGE_ID,
    "PL-KAS",
    ("CN-GACC", "KZ-SRC", "BY-SCC"),
    datetime(2025, 3, 21, 9, 12, 44, 250000, tzinfo=UTC),
    RecognitionDecision(
        decision_id=UUID("e2a4c6f8-1b3d-4e5f-9a7b-8c0d2e4f6a82"),
        office="PLMAA",
        consignment_refs=(CIM_NOTE, MRN),
        outcome=DecisionOutcome.NOT_RECOGNISED,
        decided_at=datetime(2025, 3, 21, 10, 12, 40, tzinfo=POLAND),
        containers=(SECOND_CONTAINER,),
        control_result_message_id=CONTROL_MESSAGE_ID,
        seal_chain_verdict=SealChainVerdict.BROKEN,
        agreement_id="EU-CN-SSTL-2025",
        reasons=(
            DecisionReasonEntry(
                DecisionReason.SEAL_CHAIN_BROKEN,
                "The lock on TGHU8721607 reported a tamper event near Brest after the control at Alashankou.",
                (TAMPER_MESSAGE_ID,),
            ),
            DecisionReasonEntry(
                DecisionReason.NATIONAL_TARGETING,
                "Selected by the national risk profile for rail consignments of electronics.",
            ),
        ),
    ),
    correlation_id=CONTROL_MESSAGE_ID,
)

UNSEAL_AT_MALASZEWICZE = _message(
    AUTHORIZATION_MESSAGE_ID,
    "PL-KAS",
    ("CN-GACC",),
    datetime(2025, 3, 21, 9, 30, tzinfo=UTC),
    UnsealAuthorization(
        authorization_id=AUTHORIZATION_ID,
        lock_id=LOCK,
        seal_id=ELECTRONIC_SEAL,
        office="PLMAA",
        valid_from=datetime(2025, 3, 21, 10, 30, tzinfo=POLAND),
        valid_to=datetime(2025, 3, 21, 14, 30, tzinfo=POLAND),
        nonce="q3Jt8Yw2V_0bX1nLz4kR9A",
        officer="Katarzyna Wiśniewska",
        container=CONTAINER,
        remarks="Unsealing for transhipment to standard gauge; the lock is to be re-armed for the onward leg.",
    ),
)

UNSEALED_AT_MALASZEWICZE = _message(
    UNSEALED_MESSAGE_ID,
    "PL-KAS",
    ("CN-GACC", "KZ-SRC"),
    datetime(2025, 3, 21, 10, 4, 51, tzinfo=UTC),
    SealEvent(
        event_id=UUID("c4b0f3e2-91a7-4d2b-8e65-0f3a7d19b2c9"),
        gateway_id=GATEWAY_MALASZEWICZE,
        lock_id=LOCK,
        seal_id=ELECTRONIC_SEAL,
        container=CONTAINER,
        lock_sequence=212,
        event_type=SealEventType.UNSEALED,
        device_time=datetime(2025, 3, 21, 11, 4, 37, tzinfo=POLAND),
        receipt_time=datetime(2025, 3, 21, 10, 4, 49, 903000, tzinfo=UTC),
        location=Location("PLMAA", GeoPosition(Decimal("52.0352"), Decimal("23.1041"))),
        wagon=WAGON,
        sealing_party=SealingPartyCode.CUSTOMS,
        authorization_id=AUTHORIZATION_ID,
        battery_percent=44,
    ),
)

RECEIPT_ACCEPTED = _message(
    ACCEPTED_RECEIPT_ID,
    "KZ-SRC",
    ("CN-GACC",),
    datetime(2025, 3, 16, 8, 5, 2, 318000, tzinfo=UTC),
    Receipt(
        (
            Acknowledgement(
                received_message_id=CONTROL_MESSAGE_ID,
                received_digest=bytes.fromhex("9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f"),
                status=ReceiptStatus.ACCEPTED,
                received_at=datetime(2025, 3, 16, 8, 5, 2, 114000, tzinfo=UTC),
            ),
        )
    ),
    correlation_id=CONTROL_MESSAGE_ID,
)

RECEIPT_REJECTED = _message(
    REJECTED_RECEIPT_ID,
    "PL-KAS",
    ("BY-SCC",),
    datetime(2025, 3, 20, 17, 41, 9, tzinfo=UTC),
    Receipt(
        (
            Acknowledgement(
                received_message_id=UUID("0d6e8f1a-2b3c-4d5e-8f9a-0b1c2d3e4f5a"),
                received_digest=bytes.fromhex("41b8d2f0e3a5c7b9d1f3e5a7c9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b7"),
                status=ReceiptStatus.REJECTED,
                received_at=datetime(2025, 3, 20, 17, 41, 8, 870000, tzinfo=UTC),
                errors=(
                    ReceiptError(
                        "identifier-invalid",
                        "container number 'TGHU8721608' has check digit 8, but ISO 6346 gives 7",
                        "/ControlResultNotification/ControlResult/TransportEquipment[2]/ID",
                    ),
                    ReceiptError(
                        "record-key-not-valid",
                        "the signing key was revoked before the record says it was prepared",
                    ),
                ),
            ),
        )
    ),
)

# Dostyk answers a batch of Alashankou's: the first two records stored, the third refused.
RECEIPT_BATCH = _message(
    BATCH_RECEIPT_ID,
    "KZ-DOS",
    ("CN-AKL",),
    datetime(2025, 3, 16, 14, 2, 40, 51000, tzinfo=UTC),
    Receipt(
        (
            Acknowledgement(
                received_message_id=UUID("7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
                received_digest=bytes.fromhex("0b1d3f5a7c9e2b4d6f8a0c2e4b6d8f1a3c5e7b9d2f4a6c8e0b2d4f6a8c1e3b5d"),
                status=ReceiptStatus.ACCEPTED,
                received_at=datetime(2025, 3, 16, 14, 2, 40, 12000, tzinfo=UTC),
            ),
            Acknowledgement(
                received_message_id=UUID("8d2f3e4a-5b6c-4d7e-9f8a-0b1c2d3e4f5a"),
                received_digest=bytes.fromhex("1c2e4a6b8d0f3a5c7e9b1d3f5a7c9e2b4d6f8a0c2e4b6d8f1a3c5e7b9d2f4a6c"),
                status=ReceiptStatus.ACCEPTED,
                received_at=datetime(2025, 3, 16, 14, 2, 40, 12000, tzinfo=UTC),
            ),
            Acknowledgement(
                received_message_id=UUID("9e3a4f5b-6c7d-4e8f-a09b-1c2d3e4f5a6b"),
                received_digest=bytes.fromhex("2d3f5b7c9e1a4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e1b3d5f7a9c2e4b6d"),
                status=ReceiptStatus.REJECTED,
                received_at=datetime(2025, 3, 16, 14, 2, 40, 12000, tzinfo=UTC),
                errors=(
                    ReceiptError(
                        "exchange-not-addressed",
                        "the record is addressed to BY-SCC, not to KZ-DOS",
                    ),
                ),
            ),
        )
    ),
)

#: File stem in ``schemas/examples/valid/`` -> the message the file holds.
VECTORS: dict[str, Message] = {
    "SealEventNotification--sealed-at-chongqing": SEALED_AT_CHONGQING,
    "SealEventNotification--position-near-dostyk": POSITION_AT_DOSTYK,
    "SealEventNotification--tamper-near-brest": TAMPER_NEAR_BREST,
    "SealEventNotification--unsealed-at-malaszewicze": UNSEALED_AT_MALASZEWICZE,
    "AlarmNotification--tamper-near-brest": ALARM_NEAR_BREST,
    "ControlResultNotification--non-intrusive-at-alashankou": CONTROL_AT_ALASHANKOU,
    "RecognitionDecisionNotification--recognised-at-dostyk": RECOGNISED_AT_DOSTYK,
    "RecognitionDecisionNotification--not-recognised-at-malaszewicze": NOT_RECOGNISED_AT_MALASZEWICZE,
    "UnsealAuthorization--at-malaszewicze": UNSEAL_AT_MALASZEWICZE,
    "Receipt--accepted": RECEIPT_ACCEPTED,
    "Receipt--rejected": RECEIPT_REJECTED,
    "Receipt--batch": RECEIPT_BATCH,
}


def pretty(canonical: bytes) -> bytes:
    """Indent canonical codec output for reading; `compact` undoes it exactly."""
    root = etree.fromstring(canonical)
    etree.indent(root, space="  ")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root, encoding="utf-8") + b"\n"


def compact(document: bytes) -> bytes:
    """A vector without its indentation, serialised as the codec writes it.

    The reference serialiser is libxml2's (through lxml), not the codec's:
    comparing the two checks the codec's escaping as well as its layout.
    """
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(document, parser)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root, encoding="utf-8")


def write_vectors() -> None:
    VALID_DIR.mkdir(parents=True, exist_ok=True)
    for stem, message in VECTORS.items():
        (VALID_DIR / f"{stem}.xml").write_bytes(pretty(codec.encode(message)))


if __name__ == "__main__":
    write_vectors()
