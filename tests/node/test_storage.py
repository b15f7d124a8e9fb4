"""The SQLite store in-process: its contract (node/storage/__init__.py) and its query plans."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from mrx.keys.jws import SigningKey
from mrx.node.access import new_credential
from mrx.node.inputs import SealEventIn
from mrx.node.records import RecordSigner
from mrx.node.storage import (
    Delivery,
    DeliveryResult,
    InvalidCursor,
    Order,
    ReceivedWrite,
    SealEventWrite,
    TimelineKey,
    WriteStatus,
)
from mrx.node.storage.sqlite import SqliteStore
from mrx.schemas.codes import ReceiptStatus
from mrx.schemas.messages import Acknowledgement, Receipt

from tests import factories

KEY = SigningKey.generate()
SIGNER = RecordSigner("CN-AKL", lambda: KEY)
NOW = datetime(2026, 11, 22, 5, 0, tzinfo=timezone.utc)


def write(recipients: tuple[str, ...] = (), **event: Any) -> SealEventWrite:
    model = SealEventIn.model_validate(factories.seal_event(**event))
    domain = model.to_domain("GW-1", NOW)
    return SealEventWrite(
        SIGNER.sign(domain, recipients=recipients), domain, hashlib.sha256(model.model_dump_json().encode()).digest()
    )


@pytest.fixture
async def store(tmp_path: Path):
    opened = await SqliteStore.open(tmp_path / "db.sqlite3")
    yield opened
    await opened.close()


async def test_repeats_and_conflicts_inside_one_batch(store: SqliteStore) -> None:
    first = write(seq=1, lock="LK-A")
    same_seq_other_event = write(seq=1, lock="LK-A")
    outcomes = await store.store_seal_events([first, first, same_seq_other_event, write(seq=3, lock="LK-A")])
    assert [o.status for o in outcomes] == [
        WriteStatus.ACCEPTED, WriteStatus.DUPLICATE, WriteStatus.SEQUENCE_CONFLICT, WriteStatus.ACCEPTED,
    ]
    assert outcomes[1].message_id == outcomes[0].message_id
    assert outcomes[2].conflicting_event_id == first.event.event_id
    assert [outcomes[0].order, outcomes[3].order] == [Order.FIRST, Order.GAP]
    assert [(g.first_missing, g.last_missing) for g in await store.sequence_gaps("LK-A")] == [(2, 2)]


async def test_concurrent_writers_are_grouped_and_each_answered(store: SqliteStore) -> None:
    commits: list[int] = []
    store.on_commit = lambda ops, _seconds: commits.append(ops)
    writes = [[write(seq=i, lock=f"LK-C-{n}")] for n in range(20) for i in (1, 2)]
    outcomes = await asyncio.gather(*(store.store_seal_events(w) for w in writes))
    assert all(o[0].status is WriteStatus.ACCEPTED for o in outcomes)
    assert sum(commits) == len(writes) and len(commits) < len(writes)  # group commit happened


async def test_credentials_are_unique_and_cursors_are_checked(store: SqliteStore) -> None:
    credential, _ = new_credential("GW-9", "gateway", ("LK-*",))
    await store.add_credential(credential)
    with pytest.raises(ValueError, match="exists already"):
        await store.add_credential(credential)
    assert (await store.credential("GW-9")) == credential
    for cursor in ("not base64 !", "WzFd", "WyJhIiwidHJ1ZSJd"):
        with pytest.raises(InvalidCursor):
            await store.timeline(TimelineKey.CONTAINER, factories.container(), cursor, 10)


async def test_no_statement_on_the_ingest_or_read_path_scans_a_table(store: SqliteStore, tmp_path: Path) -> None:
    """Every statement the store runs, with its real bound values, searches an index.

    A full scan is invisible on an empty database and ruinous at a million rows:
    the row-value `IN (VALUES ...)` this replaced made every commit scan all events.
    """
    await store.store_seal_events([write(seq=i, lock=f"LK-P-{i % 7}") for i in range(1, 200)])
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(store._thread, store._writer_db.set_trace_callback, seen.append)
    await store._reader_db.set_trace_callback(seen.append)

    batch = [write(seq=1000 + i, lock=f"LK-P-{i % 7}") for i in range(50)]
    await store.store_seal_events(batch + batch[:3])
    await store.timeline(TimelineKey.CONTAINER, factories.container(), None, 20)
    page = await store.timeline(TimelineKey.LOCK, "LK-P-1", None, 5)
    await store.timeline(TimelineKey.LOCK, "LK-P-1", page.next_cursor, 5)
    await store.timeline(TimelineKey.SEAL, "ES-0001", None, 5)
    await store.sequence_gaps("LK-P-1")
    await store.record(batch[0].record.message_id)
    await store.credential("GW-1")

    # The exchange: records addressed to a partner, sent, answered; a partner's records received.
    addressed = [write(seq=2000 + i, lock="LK-X", recipients=("KZ-DOS",)) for i in range(5)]
    await store.store_seal_events(addressed)
    due = await store.outbox_due("KZ-DOS", 10)
    await store.mark_in_flight([i.outbox_id for i in due])
    await store.settle_deliveries([DeliveryResult(i.outbox_id, Delivery.DELIVERED) for i in due])
    await store.outbox_counts(["KZ-DOS"])
    await store.addressed_to("KZ-DOS", "1", 10)
    await store.prune_delivered(NOW)
    theirs = RecordSigner("KZ-DOS", lambda: KEY).sign(write(seq=1, lock="LK-Y").event, recipients=("CN-AKL",))
    receipt = SIGNER.sign(Receipt((Acknowledgement(theirs.message_id, theirs.digest, ReceiptStatus.ACCEPTED, NOW),)))
    await store.store_received(
        [ReceivedWrite("KZ-DOS", theirs.digest, receipt, theirs.message_id, theirs, theirs.digest)]
    )
    assert await store.receipts_for([theirs.digest]) == {theirs.digest: (theirs.message_id, receipt.jws)}
    assert await store.received([theirs.message_id]) == {theirs.message_id: (theirs.digest, receipt.jws)}

    statements = ("SELECT", "WITH", "UPDATE", "DELETE")
    selects = [sql for sql in seen if sql.lstrip().upper().startswith(statements)]
    assert len(selects) >= 16
    with sqlite3.connect(store.path) as db:
        for sql in selects:
            plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            tables = ("seal_events", "records", "control_results", "credentials", "consignment_links", "outbox",
                      "received", "receipts_issued", "partner_state")
            scans = [t for t in tables if f"SCAN {t}" in plan and "USING" not in plan.split(f"SCAN {t}")[1][:40]]
            assert not scans, f"full scan of {scans} in: {sql[:200]}\nplan: {plan}"


async def test_partner_seal_events_join_the_chain_and_a_colliding_one_is_kept_as_a_claim(store: SqliteStore) -> None:
    """Received events are indexed for the seal chain; one whose lock number is taken stays visible, not dropped."""
    ours = write(seq=1, lock="LK-C")
    await store.store_seal_events([ours])
    partner = RecordSigner("KZ-DOS", lambda: KEY)
    received = []
    for seq in (2, 1):  # 2 joins the chain; 1 claims a number this node holds under another event
        event = write(seq=seq, lock="LK-C").event
        theirs = partner.sign(event, recipients=("CN-AKL",))
        receipt = SIGNER.sign(Receipt((Acknowledgement(theirs.message_id, theirs.digest, ReceiptStatus.ACCEPTED, NOW),)))
        received.append(
            ReceivedWrite("KZ-DOS", theirs.digest, receipt, theirs.message_id, theirs, theirs.digest, event)
        )
    outcomes = await store.store_received(received)
    assert [o.status for o in outcomes] == [WriteStatus.ACCEPTED, WriteStatus.ACCEPTED]

    chain = await store.chain_events([factories.container()])
    by_record = {e.message_id: e.lock_sequence for e in chain}
    assert by_record == {
        ours.record.message_id: 1, received[0].record.message_id: 2, received[1].record.message_id: 1,
    }
    page = await store.timeline(TimelineKey.LOCK, "LK-C", None, 10)
    assert [(e.lock_sequence, e.order) for e in page.items] == [(1, Order.FIRST), (2, Order.NEXT)]


async def test_the_first_record_stored_since_a_time_is_found_by_its_commit_order(store: SqliteStore) -> None:
    assert await store.first_stored_since(NOW) == 1  # no records
    times = []
    for seq in range(1, 40):
        await store.store_seal_events([write(seq=seq, lock="LK-T")])
        times.append(await store.latest_stored_at())
    for n, at in enumerate(times, start=1):
        assert await store.first_stored_since(at) == n
    assert await store.first_stored_since(datetime(2000, 1, 1, tzinfo=timezone.utc)) == 1
    assert await store.first_stored_since(times[-1] + timedelta(microseconds=1)) == len(times) + 1


async def test_recognition_progress_never_moves_back(store: SqliteStore) -> None:
    assert await store.settled_before() is None
    await store.save_settled_before(NOW)
    await store.save_settled_before(NOW - timedelta(seconds=5))
    assert await store.settled_before() == NOW
    await store.save_settled_before(NOW + timedelta(seconds=5))
    assert await store.settled_before() == NOW + timedelta(seconds=5)


def _received(theirs: Any, receipt: Any) -> ReceivedWrite:
    payload = hashlib.sha256(theirs.jws.split(b".")[1]).digest()
    return ReceivedWrite("KZ-DOS", theirs.digest, receipt, theirs.message_id, theirs, payload)


def _receipt_for(*records: Any) -> Any:
    acks = tuple(Acknowledgement(r.message_id, r.digest, ReceiptStatus.ACCEPTED, NOW) for r in records)
    return SIGNER.sign(Receipt(acks), recipients=("KZ-DOS",))


async def test_one_receipt_answers_a_request_and_is_stored_once(store: SqliteStore) -> None:
    partner = RecordSigner("KZ-DOS", lambda: KEY)
    theirs = [partner.sign(write(seq=n, lock="LK-R").event, recipients=("CN-AKL",)) for n in (1, 2, 3)]
    receipt = _receipt_for(*theirs)
    outcomes = await store.store_received([_received(t, receipt) for t in theirs])
    assert [(o.status, o.receipt_jws) for o in outcomes] == [(WriteStatus.ACCEPTED, receipt.jws)] * 3
    assert await store.receipts_for([t.digest for t in theirs]) == {t.digest: (t.message_id, receipt.jws) for t in theirs}
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM records WHERE message_id = ?", (str(receipt.message_id),)).fetchone() == (1,)


async def test_a_request_with_a_message_id_conflict_is_stored_not_at_all(store: SqliteStore) -> None:
    """Its receipt says ACCEPTED of every message, so a request is stored whole or not at all: a message found
    (only in the transaction) to be another under an ID held already leaves nothing of its request stored."""
    partner = RecordSigner("KZ-DOS", lambda: KEY)
    first = partner.sign(write(seq=1, lock="LK-K").event, recipients=("CN-AKL",))
    await store.store_received([_received(first, _receipt_for(first))])
    good = partner.sign(write(seq=2, lock="LK-K").event, recipients=("CN-AKL",))
    ids = iter([first.message_id])  # another message under the ID already received
    other = RecordSigner("KZ-DOS", lambda: KEY, new_id=lambda: next(ids)).sign(
        write(seq=3, lock="LK-K").event, recipients=("CN-AKL",)
    )
    receipt = _receipt_for(good, other)
    outcomes = await store.store_received([_received(good, receipt), _received(other, receipt)])
    assert [(o.status, o.receipt_jws) for o in outcomes] == [
        (WriteStatus.NOT_STORED, None), (WriteStatus.KEY_CONFLICT, None),
    ]
    assert await store.received([good.message_id]) == {}
    assert await store.receipts_for([good.digest, other.digest]) == {}
    with sqlite3.connect(store.path) as db:
        held = {m for (m,) in db.execute("SELECT message_id FROM records")}
    assert str(good.message_id) not in held and str(receipt.message_id) not in held


async def test_a_batch_is_taken_in_order_and_each_row_settled_with_its_own_outcome(store: SqliteStore) -> None:
    """`outbox_due` gives what the sender needs (the stored digest is the SHA-256 of the bytes it sends), and
    `settle_deliveries` gives every row its own outcome however the rows group: more rows than one IN list takes,
    under two receipts, with a failure and requeues among them."""
    writes = [write(seq=n, lock=f"LK-O{n % 7}", recipients=("KZ-DOS",)) for n in range(1, 1201)]
    for start in range(0, len(writes), 400):
        await store.store_seal_events(writes[start : start + 400])
    due = await store.outbox_due("KZ-DOS", 1200)
    assert [d.message_id for d in due] == [w.record.message_id for w in writes]
    assert [d.outbox_id for d in due] == sorted(d.outbox_id for d in due)
    assert all(d.digest == hashlib.sha256(d.jws).digest() and d.jws == w.record.jws for d, w in zip(due, writes))
    await store.mark_in_flight([d.outbox_id for d in due])
    assert (await store.outbox_counts(["KZ-DOS"]))[("KZ-DOS", Delivery.IN_FLIGHT)] == 1200

    # The store keeps what it is given as each row's receipt; which rows a receipt acknowledges is the sender's check.
    first, second = _receipt_for(writes[0].record), _receipt_for(writes[700].record)
    results = []
    for n, d in enumerate(due):
        if n == 3:
            results.append(DeliveryResult(d.outbox_id, Delivery.FAILED, "exchange-not-addressed: no", first))
        elif n % 100 == 50:
            results.append(DeliveryResult(d.outbox_id, Delivery.QUEUED, f"deferred: row {n}"))
        else:
            results.append(DeliveryResult(d.outbox_id, Delivery.DELIVERED, None, first if n < 700 else second))
    await store.settle_deliveries(results)

    with sqlite3.connect(store.path) as db:
        rows = dict(
            (row[0], row[1:])
            for row in db.execute("SELECT id, state, last_error, receipt_message_id, delivered_at IS NOT NULL FROM outbox")
        )
        kept = {m for (m,) in db.execute("SELECT message_id FROM records WHERE message_type = 'Receipt'")}
    for r in results:
        receipt = None if r.receipt is None else str(r.receipt.message_id)
        assert rows[r.outbox_id] == (r.state.value, r.error, receipt, int(r.state is Delivery.DELIVERED))
    assert kept == {str(first.message_id), str(second.message_id)}
    assert [d.outbox_id for d in await store.outbox_due("KZ-DOS", 100)] == [
        r.outbox_id for r in results if r.state is Delivery.QUEUED
    ]
