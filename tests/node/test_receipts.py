"""How a receiver cuts a batch's acknowledgements into signed receipts (`mrx.node.receiving.receipt_runs`)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timezone
from uuid import uuid4

import pytest
from mrx.keys.jws import SigningKey, parse_compact
from mrx.node.receiving import RECEIPT_ACKNOWLEDGEMENT_BYTES, receipt_runs
from mrx.node.records import RecordSigner
from mrx.schemas import codec
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import (
    MAX_RECEIPT_XML_BYTES,
    Acknowledgement,
    Receipt,
    ReceiptError,
)

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=timezone.utc)
KEY = SigningKey.generate()
SIGNER = RecordSigner("KZ-DOS", lambda: KEY)


def _ack(n: int, description: str | None = None) -> Acknowledgement:
    digest = hashlib.sha256(n.to_bytes(4, "big")).digest()
    if description is None:
        return Acknowledgement(uuid4(), digest, ReceiptStatus.ACCEPTED, NOW)
    error = ReceiptError("exchange-not-addressed", description, "/SealEventNotification/Header/RecipientID")
    return Acknowledgement(uuid4(), digest, ReceiptStatus.REJECTED, NOW, (error,))


@pytest.mark.parametrize(
    "acks",
    [
        [_ack(n) for n in range(1000)],  # the largest batch a node accepts, all stored
        [_ack(n, "&<" * 256) for n in range(300)],  # refusals whose details escape to five times their length
        [_ack(n, "x" * 512 if n % 3 else None) for n in range(500)],
    ],
    ids=["accepted", "escaped-refusals", "mixed"],
)
def test_every_message_is_acknowledged_once_in_order_within_the_size_limit(acks: list[Acknowledgement]) -> None:
    runs = receipt_runs(acks)
    assert [a for run in runs for a in run] == acks
    for run in runs:
        signed = SIGNER.sign(Receipt(run), recipients=("CN-AKL",))  # encodes, so validates against the XSD
        assert len(parse_compact(signed.jws, max_bytes=len(signed.jws) + 1).payload) <= MAX_RECEIPT_XML_BYTES
    # Few signatures: runs are filled, not cut early (each but the last would not take the next one).
    for run, following in itertools.pairwise(runs):
        whole = sum(codec.acknowledgement_size(a) for a in run) + codec.acknowledgement_size(following[0])
        assert whole > RECEIPT_ACKNOWLEDGEMENT_BYTES


def test_a_batch_of_accepted_records_takes_few_receipts() -> None:
    assert len(receipt_runs([_ack(n) for n in range(200)])) == 2  # about 150 acknowledgements fit one receipt
