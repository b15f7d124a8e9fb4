"""The embedded SQLite backend of `mrx.node.storage.Store`.

Design
------
One database file in WAL mode with ``synchronous=FULL``: a commit is on disk
(WAL fsynced) before it returns, and readers never block the writer.

Writes go through **one writer task** that owns the write connection. Callers
put an operation on its queue and await a future. The writer takes everything
queued (up to ``max_batch_ops``), applies it in **one transaction** and
commits once: group commit. Under load a single fsync covers hundreds of
events; with one caller it is one event per commit, as it must be. Futures are
resolved only after the commit returns, so nothing is acknowledged early.

The write connection is a plain ``sqlite3`` connection living on one
dedicated thread, and a whole group commit — look-ups, inserts, ``COMMIT`` —
is one call into that thread. aiosqlite would make each statement its own hop
between threads (about ten per commit, which was most of the cost of a
one-event commit), and it offers no public way to run a function on its
thread. sqlite3 releases the GIL while it executes, so the writer's work runs
beside the event loop on a second core. Idempotency and sequence checks run
inside the transaction, in queue order, so they are race-free without locks.
If a transaction fails unexpectedly, each operation of the batch is retried
alone, so one poisoned write cannot fail its neighbours.

Reads use a second connection through aiosqlite; WAL gives them a
consistent snapshot and they never wait for the writer.

Every group commit also appends the records it inserted to the audit log,
in the same transaction (`mrx.node.storage.sqlite_log`). The log's proofs
and exports read through a third connection on a thread of its own
(`SqliteStore.log_read`): a proof is many small reads, and one call there is
one hop, as for the writer.
Schema versions live in ``PRAGMA user_version``; migrations are the numbered
``.sql`` files in ``migrations/sqlite`` and run at open, in one transaction.
A database whose version is past the latest migration here (an operator
went back to an older mrx) is refused at open, untouched (`SchemaTooNew`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
from collections import ChainMap
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import aiosqlite

from mrx.schemas.codes import ConsignmentReferenceType
from mrx.schemas.messages import Body, ConsignmentReference

from ..sealchain import ChainEvent
from . import (
    AddressedRecord,
    AlarmEntry,
    Arrival,
    AuthorisationEntry,
    ControlResultOutcome,
    ControlResultWrite,
    Credential,
    DecisionEntry,
    Delivery,
    DeliveryResult,
    InvalidCursor,
    Itinerary,
    Order,
    OutboxItem,
    Outgoing,
    Page,
    ReceivedOutcome,
    ReceivedWrite,
    SealEventOutcome,
    SealEventWrite,
    SequenceGap,
    SignedRecord,
    Targeting,
    TimelineEntry,
    TimelineKey,
    WriteStatus,
    parse_position,
)

from . import sqlite_log
from . import sqlite_recognition as recognition
from .sqlite_rows import IN_CHUNK as _IN_CHUNK
from .sqlite_rows import RECORD_COLUMNS, record_from_row
from .sqlite_rows import classify as _classify
from .sqlite_rows import dt as _dt
from .sqlite_rows import insert_records as _insert_records
from .sqlite_rows import select_in as _select_in
from .sqlite_rows import sequence_owners
from .sqlite_rows import ts as _ts
from .sqlite_rows import update_in

log = logging.getLogger(__name__)



def _migrations() -> list[tuple[int, str]]:
    folder = resources.files(__package__).joinpath("migrations", "sqlite")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class StoreClosed(RuntimeError):
    pass


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer mrx than this one: refused, and left as it is."""


@dataclass(slots=True)
class _Op:
    kind: str
    payload: Any
    future: asyncio.Future[Any] = field(repr=False)


class SqliteStore:
    """`Store` on one SQLite file. Open with `SqliteStore.open`."""

    def __init__(
        self, path: Path, writer: sqlite3.Connection, thread: ThreadPoolExecutor, reader: aiosqlite.Connection,
        max_batch_ops: int,
    ) -> None:
        self.path = path
        self._writer_db = writer  # used only on self._thread
        self._thread = thread
        self._reader_db = reader
        self._max_batch_ops = max_batch_ops
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        self._log_state: sqlite_log.LogState | None = None  # the audit log's edge; writer thread only
        self._log_thread = ThreadPoolExecutor(1, thread_name_prefix="mrx-sqlite-log")
        self._log_db: sqlite3.Connection | None = None  # opened on, and used only on, _log_thread
        self._appliers: dict[str, Callable[[sqlite3.Connection, list[Any]], list[Any]]] = {
            "seal_events": _apply_seal_events,
            "control_result": _apply_control_results,
            "credential": _apply_credentials,
            "received": _apply_received,
            "call": _apply_calls,
            "made": recognition.apply_made,
        }
        # Observability: the writer's group-commit sizes, read by /metrics.
        self.on_commit: Callable[[int, float], None] | None = None
        # Called on the event loop after a commit queued records for these partners.
        self.on_queued: Callable[[set[str]], None] | None = None

    @classmethod
    async def open(cls, path: Path, *, max_batch_ops: int = 2000) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(1, thread_name_prefix="mrx-sqlite-writer")
        try:
            writer = await loop.run_in_executor(thread, _open_writer, path)
        except BaseException:
            thread.shutdown()
            raise
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout = 10000")
        await reader.execute("PRAGMA query_only = ON")
        store = cls(path, writer, thread, reader, max_batch_ops)
        await loop.run_in_executor(thread, store._transaction, [])  # log what an older version stored unlogged
        store._writer_task = loop.create_task(store._write_loop(), name="mrx-sqlite-writer")
        return store

    # -- the writer ---------------------------------------------------------

    async def _submit(self, kind: str, payload: Any) -> Any:
        if self._closed:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(kind, payload, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch_ops and not self._queue.empty():
                op = self._queue.get_nowait()
                if op is None:
                    stop = True
                    break
                batch.append(op)
            await self._apply_batch(batch)
            if stop:
                return

    async def _apply_batch(self, batch: list[_Op]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await loop.run_in_executor(self._thread, self._transaction, [(o.kind, o.payload) for o in batch])
        except Exception:
            log.exception("group commit of %d operations failed; retrying each alone", len(batch))
            for op in batch:
                try:
                    (result,) = await loop.run_in_executor(self._thread, self._transaction, [(op.kind, op.payload)])
                except Exception as exc:  # the op itself is bad: fail only it
                    if not op.future.done():
                        op.future.set_exception(exc)
                else:
                    if not op.future.done():
                        op.future.set_result(result)
            return
        if self.on_commit is not None:
            self.on_commit(len(batch), loop.time() - started)
        for op, result in zip(batch, results, strict=True):
            if not op.future.done():
                op.future.set_result(result)

    def _transaction(self, batch: list[tuple[str, Any]]) -> list[Any]:
        """One group commit, on the writer thread."""
        db = self._writer_db
        db.execute("BEGIN IMMEDIATE")
        try:
            by_kind: dict[str, list[int]] = {}
            for index, (kind, _) in enumerate(batch):
                by_kind.setdefault(kind, []).append(index)
            results: list[Any] = [None] * len(batch)
            for kind, indexes in by_kind.items():
                outcomes = self._appliers[kind](db, [batch[i][1] for i in indexes])
                for i, outcome in zip(indexes, outcomes, strict=True):
                    results[i] = outcome
            log_state = sqlite_log.append(db, self._log_state)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._log_state = log_state
        return results

    async def log_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` on the log reader's connection, on its thread (see `mrx.node.storage.sqlite_log`)."""
        if self._closed:
            raise StoreClosed("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._log_thread, self._on_log_thread, fn)

    async def log_write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in the writer's next group commit (the log's checkpoints and cosignatures)."""
        return await self._call(fn)

    def _on_log_thread(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._log_db is None:
            self._log_db = open_reader(self.path)
        return fn(self._log_db)

    # -- writes -------------------------------------------------------------

    async def store_seal_events(self, writes: list[SealEventWrite]) -> list[SealEventOutcome]:
        if not writes:
            return []
        outcomes: list[SealEventOutcome] = await self._submit("seal_events", writes)
        self._queued(w.record for w, o in zip(writes, outcomes, strict=True) if o.status is WriteStatus.ACCEPTED)
        return outcomes

    async def store_control_result(self, write: ControlResultWrite) -> ControlResultOutcome:
        outcome: ControlResultOutcome = await self._submit("control_result", write)
        self._queued([write.record] if outcome.status is WriteStatus.ACCEPTED else [])
        return outcome

    def _queued(self, records: Iterable[SignedRecord]) -> None:
        if self.on_queued is not None:
            partners = {partner for record in records for partner in record.recipients}
            if partners:
                self.on_queued(partners)

    async def add_credential(self, credential: Credential) -> None:
        await self._submit("credential", credential)

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """A small write, run in the writer's next group commit."""
        return await self._submit("call", fn)

    async def store_received(self, writes: list[ReceivedWrite]) -> list[ReceivedOutcome]:
        if not writes:
            return []
        return await self._submit("received", writes)

    async def mark_in_flight(self, outbox_ids: list[int]) -> None:
        now = _ts(datetime.now(timezone.utc))

        def mark(db: sqlite3.Connection) -> None:  # one statement per batch, not one per row
            update_in(
                db, "UPDATE outbox SET state = ?, attempts = attempts + 1, last_attempt_at = ? WHERE id IN ({})",
                (Delivery.IN_FLIGHT.value, now), outbox_ids,
            )

        if outbox_ids:
            await self._call(mark)

    async def settle_deliveries(self, results: list[DeliveryResult]) -> None:
        if results:
            await self._call(lambda db: _settle(db, results))

    async def retry_outbox(self, partner: str, message_ids: list[UUID] | None) -> int:
        def retry(db: sqlite3.Connection) -> int:
            sql = "UPDATE outbox SET state = 'queued' WHERE partner = ? AND state = 'failed'"
            if message_ids is None:
                return db.execute(sql, (partner,)).rowcount
            return sum(
                db.execute(sql + " AND message_id = ?", (partner, str(m))).rowcount for m in message_ids
            )

        return await self._call(retry)

    async def prune_delivered(self, before: datetime) -> int:
        cutoff = _ts(before)
        return await self._call(
            lambda db: db.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?", (cutoff,)
            ).rowcount
        )

    async def put_itinerary(self, itinerary: Itinerary) -> None:
        row = (
            itinerary.ref.type.value, itinerary.ref.id, " ".join(itinerary.offices), " ".join(itinerary.containers),
            _ts(itinerary.updated_at),
        )
        await self._call(
            lambda db: db.execute(
                "INSERT INTO itineraries (ref_type, ref_id, offices, containers, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (ref_type, ref_id) DO UPDATE SET offices = excluded.offices,"
                " containers = excluded.containers, updated_at = excluded.updated_at",
                row,
            )
        )

    async def save_key_statements(self, partner: str, statements: list[bytes]) -> None:
        text = "\n".join(t.decode("ascii") for t in statements)
        now = _ts(datetime.now(timezone.utc))
        await self._call(
            lambda db: db.execute(
                "INSERT INTO partner_state (partner, key_statements, keys_updated_at) VALUES (?,?,?)"
                " ON CONFLICT (partner) DO UPDATE SET key_statements = excluded.key_statements,"
                " keys_updated_at = excluded.keys_updated_at",
                (partner, text, now),
            )
        )

    async def save_pull_cursor(self, partner: str, cursor: str) -> None:
        await self._call(
            lambda db: db.execute(
                "INSERT INTO partner_state (partner, pull_cursor) VALUES (?,?)"
                " ON CONFLICT (partner) DO UPDATE SET pull_cursor = excluded.pull_cursor",
                (partner, cursor),
            )
        )

    # -- recognition (sqlite_recognition) ---------------------------------------

    async def store_made(self, record: SignedRecord, body: Body, *, fingerprint: bytes | None = None) -> bool:
        stored: bool = await self._submit("made", (record, body, fingerprint))
        self._queued([record] if stored else [])
        return stored

    async def put_arrival(self, arrival: Arrival) -> Arrival:
        now = datetime.now(timezone.utc)
        return await self._call(lambda db: recognition.put_arrival(db, arrival, now))  # type: ignore[no-any-return]

    async def put_targeting(self, ref: ConsignmentReference, targeting: Targeting) -> None:
        await self._call(lambda db: recognition.put_targeting(db, ref, targeting))

    async def acknowledge_alarm(self, alarm_id: UUID, officer: str, at: datetime) -> AlarmEntry | None:
        position = await self._call(lambda db: recognition.acknowledge_alarm(db, alarm_id, officer, at))
        if position is None:
            return None
        (entry,) = await recognition.alarms(self._reader_db, container=None, open_only=False, after=position - 1, limit=1)
        return entry

    async def arrival(self, ref: ConsignmentReference) -> Arrival | None:
        return await recognition.arrival(self._reader_db, ref)

    async def arrivals_of(self, containers: list[str]) -> list[Arrival]:
        return await recognition.arrivals_of(self._reader_db, containers) if containers else []

    async def arrived_containers(self, since: datetime) -> dict[str, datetime]:
        return await recognition.arrived_containers(self._reader_db, since)

    async def first_stored_since(self, at: datetime) -> int:
        return await recognition.first_stored_since(self._reader_db, at)

    async def latest_stored_at(self) -> datetime | None:
        return await recognition.latest_stored_at(self._reader_db)

    async def settled_before(self) -> datetime | None:
        return await recognition.settled_before(self._reader_db)

    async def save_settled_before(self, at: datetime) -> None:
        await self._call(lambda db: recognition.save_settled_before(db, at))

    async def records_after(self, seq: int, types: Sequence[str], limit: int) -> list[tuple[int, UUID, str, bytes]]:
        return await recognition.records_after(self._reader_db, seq, types, limit)

    async def targeting(self, ref: ConsignmentReference) -> list[Targeting]:
        return await recognition.targeting(self._reader_db, ref)

    async def control_results_for(self, ref: ConsignmentReference) -> list[SignedRecord]:
        return await recognition.control_results_for(self._reader_db, ref)

    async def consignments_of(self, container: str) -> list[ConsignmentReference]:
        return await recognition.consignments_of(self._reader_db, container)

    async def chain_events(self, containers: list[str]) -> list[ChainEvent]:
        return await recognition.chain_events(self._reader_db, containers) if containers else []

    async def authorisations(self, lock_ids: list[str]) -> list[AuthorisationEntry]:
        return await recognition.authorisations(self._reader_db, lock_ids=lock_ids) if lock_ids else []

    async def authorisation(self, authorization_id: UUID) -> AuthorisationEntry | None:
        found = await recognition.authorisations(self._reader_db, ids=[str(authorization_id)])
        return found[0] if found else None

    async def decisions(self, ref: ConsignmentReference) -> list[DecisionEntry]:
        return await recognition.decisions(self._reader_db, ref)

    async def alarms(self, *, container: str | None, open_only: bool, after: int, limit: int) -> list[AlarmEntry]:
        return await recognition.alarms(self._reader_db, container=container, open_only=open_only, after=after, limit=limit)

    # -- reads --------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run a query and fetch all its rows in one call on the reader's thread.

        Never ``execute`` now and ``fetch`` after an ``await``: SQLite keeps a connection's
        read snapshot while any statement on it is unfinished, so a query from another
        task started in between would read that old snapshot."""
        return list(await self._reader_db.execute_fetchall(sql, params))

    async def _one(self, sql: str, params: Sequence[Any]) -> Any:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def credential(self, name: str) -> Credential | None:
        row = await self._one(
            "SELECT name, role, lock_patterns, secret_hash, created_at, revoked_at FROM credentials WHERE name = ?",
            (name,),
        )
        if row is None:
            return None
        return Credential(
            name=row[0],
            role=row[1],
            lock_patterns=tuple(p for p in row[2].split("\n") if p),
            secret_hash=row[3],
            created_at=_dt(row[4]),
            revoked_at=_dt(row[5]) if row[5] else None,
        )

    async def record(self, message_id: UUID) -> SignedRecord | None:
        row = await self._one(f"SELECT {RECORD_COLUMNS} FROM records r WHERE r.message_id = ?", (str(message_id),))
        return None if row is None else record_from_row(row)

    async def timeline(self, key: TimelineKey, value: str, cursor: str | None, limit: int) -> Page:
        column, order_by = {
            TimelineKey.CONTAINER: ("container", ("device_time", "id")),
            TimelineKey.SEAL: ("seal_id", ("lock_seq", "id")),
            TimelineKey.LOCK: ("lock_id", ("lock_seq", "id")),
        }[key]
        params: list[Any] = [value]
        where = f"{column} = ?"
        if cursor is not None:
            after = _decode_cursor(cursor)
            where += f" AND ({order_by[0]}, {order_by[1]}) > (?, ?)"
            params.extend(after)
        params.append(limit + 1)
        rows = await self._rows(
                "SELECT event_id, message_id, lock_id, seal_id, container, lock_seq, event_type, device_time,"
                " receipt_time, order_status, locode, latitude, longitude, condition, gateway_id, id"
                f" FROM seal_events WHERE {where} ORDER BY {order_by[0]}, {order_by[1]} LIMIT ?",
                params,
            )
        items = [
            TimelineEntry(
                event_id=UUID(r[0]), message_id=UUID(r[1]), lock_id=r[2], seal_id=r[3], container=r[4],
                lock_sequence=r[5], event_type=r[6], device_time=_dt(r[7]), receipt_time=_dt(r[8]),
                order=Order(r[9]), locode=r[10], latitude=r[11], longitude=r[12], condition=r[13], gateway_id=r[14],
            )
            for r in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            sort_value = last[7] if order_by[0] == "device_time" else last[5]
            next_cursor = _encode_cursor([sort_value, last[15]])
        return Page(items=tuple(items), next_cursor=next_cursor)

    async def sequence_gaps(self, lock_id: str) -> list[SequenceGap]:
        rows = await self._rows(
                "SELECT lock_seq + 1, next_seq - 1 FROM ("
                " SELECT lock_seq, LEAD(lock_seq) OVER (ORDER BY lock_seq) AS next_seq"
                " FROM seal_events WHERE lock_id = ?) WHERE next_seq > lock_seq + 1 ORDER BY lock_seq",
                (lock_id,),
            )
        return [SequenceGap(lock_id, first, last) for first, last in rows]

    async def _select_in(self, sql: str, values: list[Any]) -> list[Any]:
        rows: list[Any] = []
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            rows.extend(await self._rows(sql.format(",".join("?" * len(chunk))), chunk))
        return rows

    async def receipts_for(self, received_digests: list[bytes]) -> dict[bytes, tuple[UUID | None, bytes]]:
        rows = await self._select_in(
            "SELECT i.received_digest, i.received_message_id, r.jws FROM receipts_issued i JOIN records r"
            " ON r.message_id = i.receipt_message_id WHERE i.received_digest IN ({})",
            received_digests,
        )
        return {bytes(digest): (UUID(m) if m else None, bytes(jws)) for digest, m, jws in rows}

    async def received(self, message_ids: list[UUID]) -> dict[UUID, tuple[bytes, bytes]]:
        rows = await self._select_in(
            "SELECT v.message_id, v.payload_digest, r.jws FROM received v JOIN records r"
            " ON r.message_id = v.receipt_message_id WHERE v.message_id IN ({})",
            [str(m) for m in message_ids],
        )
        return {UUID(m): (bytes(digest), bytes(jws)) for m, digest, jws in rows}

    async def outbox_due(self, partner: str, limit: int) -> list[Outgoing]:
        rows = await self._rows(
                "SELECT o.id, o.message_id, r.digest, r.jws FROM outbox o JOIN records r ON r.message_id = o.message_id"
                " WHERE o.partner = ? AND o.state = 'queued' ORDER BY o.id LIMIT ?",
                (partner, limit),
            )
        return [Outgoing(outbox_id, UUID(message_id), digest, jws) for outbox_id, message_id, digest, jws in rows]

    async def outbox(self, partner: str | None, state: Delivery | None, after: int, limit: int) -> list[OutboxItem]:
        where, params = ["o.id > ?"], [after]
        if partner is not None:
            where.append("o.partner = ?")
            params.append(partner)
        if state is not None:
            where.append("o.state = ?")
            params.append(state.value)
        rows = await self._rows(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox o JOIN records r ON r.message_id = o.message_id"
                f" WHERE {' AND '.join(where)} ORDER BY o.id LIMIT ?",
                (*params, limit),
            )
        return [_outbox_item(row) for row in rows]

    async def outbox_counts(self, partners: list[str]) -> dict[tuple[str, Delivery], int]:
        counts = {}
        for partner in partners:
            for state in (Delivery.QUEUED, Delivery.IN_FLIGHT, Delivery.FAILED):
                row = await self._one(
                    "SELECT COUNT(*) FROM outbox WHERE partner = ? AND state = ?", (partner, state.value)
                )
                counts[(partner, state)] = row[0]
        return counts

    async def addressed_to(
        self, partner: str, cursor: str | None, limit: int
    ) -> tuple[list[AddressedRecord], str | None]:
        after: int | None = 0
        if cursor is not None and (after := parse_position(cursor)) is None:
            raise InvalidCursor(f"cursor {cursor[:40]!r} was not issued by this node")
        rows = await self._rows(
                "SELECT o.id, r.jws FROM outbox o JOIN records r ON r.message_id = o.message_id"
                " WHERE o.partner = ? AND o.id > ? ORDER BY o.id LIMIT ?",
                (partner, after, limit + 1),
            )
        items = [AddressedRecord(str(row[0]), bytes(row[1])) for row in rows[:limit]]
        return items, (items[-1].cursor if len(rows) > limit else None)

    async def itineraries(self) -> list[Itinerary]:
        rows = await self._rows("SELECT ref_type, ref_id, offices, containers, updated_at FROM itineraries", ())
        return [
            Itinerary(
                ConsignmentReference(ConsignmentReferenceType(r[0]), r[1]), tuple(r[2].split()), tuple(r[3].split()),
                _dt(r[4]),
            )
            for r in rows
        ]

    async def key_statements(self, partner: str) -> list[bytes]:
        row = await self._one("SELECT key_statements FROM partner_state WHERE partner = ?", (partner,))
        return [line.encode("ascii") for line in row[0].split("\n") if line] if row else []

    async def pull_cursor(self, partner: str) -> str | None:
        row = await self._one("SELECT pull_cursor FROM partner_state WHERE partner = ?", (partner,))
        return row[0] if row else None

    async def ping(self) -> None:
        if self._closed or self._writer_task is None or self._writer_task.done():
            raise StoreClosed("the store's writer is not running")
        await self._one("SELECT 1", ())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._writer_task is not None:
            await self._writer_task
        await asyncio.get_running_loop().run_in_executor(self._thread, self._writer_db.close)
        self._thread.shutdown()
        if self._log_db is not None:
            await asyncio.get_running_loop().run_in_executor(self._log_thread, self._log_db.close)
        self._log_thread.shutdown()
        await self._reader_db.close()


# -- what the writer thread runs ------------------------------------------------


def _apply_seal_events(
    db: sqlite3.Connection, payloads: list[list[SealEventWrite]]
) -> list[list[SealEventOutcome]]:
    writes = [w for payload in payloads for w in payload]
    stored_at = _ts(datetime.now(timezone.utc))  # one commit, one time
    existing = {
        row[0]: row
        for row in _select_in(
            db,
            "SELECT event_id, content_hash, message_id, order_status FROM seal_events WHERE event_id IN ({})",
            [str(w.event.event_id) for w in writes],
        )
    }
    locks = sorted({w.event.lock_id for w in writes})
    high: dict[str, int] = {
        lock: top
        for lock, top in _select_in(
            db, "SELECT lock_id, MAX(lock_seq) FROM seal_events WHERE lock_id IN ({}) GROUP BY lock_id", locks
        )
    }
    wanted = {(w.event.lock_id, w.event.lock_sequence) for w in writes}
    taken: dict[tuple[str, int], str] = {}
    for lock, seq, event_id in sequence_owners(db, wanted):
        taken[(lock, seq)] = event_id

    outcomes: list[SealEventOutcome] = []
    accepted: dict[str, tuple[bytes, SealEventOutcome]] = {}
    records: list[SignedRecord] = []
    event_rows, link_rows = [], []
    for w in writes:
        ev = w.event
        eid = str(ev.event_id)
        if eid in accepted or eid in existing:
            first_hash, first = accepted[eid] if eid in accepted else _outcome_from_row(existing[eid])
            if first_hash == w.content_hash:
                outcomes.append(
                    SealEventOutcome(ev.event_id, WriteStatus.DUPLICATE, first.message_id, first.order)
                )
            else:
                outcomes.append(SealEventOutcome(ev.event_id, WriteStatus.KEY_CONFLICT))
            continue
        owner = taken.get((ev.lock_id, ev.lock_sequence))
        if owner is not None:
            outcomes.append(
                SealEventOutcome(ev.event_id, WriteStatus.SEQUENCE_CONFLICT, conflicting_event_id=UUID(owner))
            )
            continue
        order = _classify(high.get(ev.lock_id), ev.lock_sequence)
        high[ev.lock_id] = max(high.get(ev.lock_id, ev.lock_sequence), ev.lock_sequence)
        taken[(ev.lock_id, ev.lock_sequence)] = eid
        outcome = SealEventOutcome(ev.event_id, WriteStatus.ACCEPTED, w.record.message_id, order)
        accepted[eid] = (w.content_hash, outcome)
        outcomes.append(outcome)
        records.append(w.record)
        position = ev.location.position if ev.location else None
        event_rows.append(
            (
                eid, w.content_hash, str(w.record.message_id), ev.gateway_id, ev.lock_id, ev.lock_sequence,
                ev.seal_id, ev.container, ev.event_type.value, _ts(ev.device_time), _ts(ev.receipt_time),
                order.value, ev.location.locode if ev.location else None,
                str(position.latitude) if position else None, str(position.longitude) if position else None,
                ev.condition.value, str(ev.authorization_id) if ev.authorization_id else None,
            )
        )
        link_rows.extend((r.type.value, r.id, str(w.record.message_id)) for r in ev.consignment_refs)
    _insert_records(db, records, stored_at, deliver=True)
    if event_rows:
        db.executemany(
            "INSERT INTO seal_events (event_id, content_hash, message_id, gateway_id, lock_id, lock_seq, seal_id,"
            " container, event_type, device_time, receipt_time, order_status, locode, latitude, longitude,"
            " condition, authorization_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            event_rows,
        )
    _insert_links(db, link_rows)
    return _split(outcomes, [len(p) for p in payloads])

def _apply_control_results(db: sqlite3.Connection, writes: list[ControlResultWrite]) -> list[ControlResultOutcome]:
    stored_at = _ts(datetime.now(timezone.utc))  # one commit, one time
    existing = {
        row[0]: (row[1], UUID(row[2]))
        for row in _select_in(
            db,
            "SELECT control_id, content_hash, message_id FROM control_results WHERE control_id IN ({})",
            [w.result.control_id for w in writes],
        )
    }
    outcomes: list[ControlResultOutcome] = []
    records: list[SignedRecord] = []
    result_rows, link_rows = [], []
    for w in writes:
        cr = w.result
        if cr.control_id in existing:
            first_hash, first_id = existing[cr.control_id]
            status = WriteStatus.DUPLICATE if first_hash == w.content_hash else WriteStatus.KEY_CONFLICT
            outcomes.append(
                ControlResultOutcome(cr.control_id, status, first_id if status is WriteStatus.DUPLICATE else None)
            )
            continue
        existing[cr.control_id] = (w.content_hash, w.record.message_id)
        outcomes.append(ControlResultOutcome(cr.control_id, WriteStatus.ACCEPTED, w.record.message_id))
        records.append(w.record)
        result_rows.append(
            (
                cr.control_id, w.content_hash, str(w.record.message_id), cr.office, cr.control_type.value,
                cr.result.value, _ts(cr.controlled_at),
            )
        )
        link_rows.extend((r.type.value, r.id, str(w.record.message_id)) for r in cr.consignment_refs)
    _insert_records(db, records, stored_at, deliver=True)
    if result_rows:
        db.executemany(
            "INSERT INTO control_results (control_id, content_hash, message_id, office, control_type,"
            " result_code, controlled_at) VALUES (?,?,?,?,?,?,?)",
            result_rows,
        )
    _insert_links(db, link_rows)
    return outcomes

def _apply_credentials(db: sqlite3.Connection, credentials: list[Credential]) -> list[None]:
    for c in credentials:
        cursor = db.execute("SELECT 1 FROM credentials WHERE name = ?", (c.name,))
        if cursor.fetchone() is not None:
            raise ValueError(f"a credential named {c.name!r} exists already")
    db.executemany(
        "INSERT INTO credentials (name, role, lock_patterns, secret_hash, created_at, revoked_at)"
        " VALUES (?,?,?,?,?,?)",
        [
            (
                c.name, c.role, "\n".join(c.lock_patterns), c.secret_hash, _ts(c.created_at),
                _ts(c.revoked_at) if c.revoked_at else None,
            )
            for c in credentials
        ],
    )
    return [None] * len(credentials)


def _open_writer(path: Path) -> sqlite3.Connection:
    """The write connection, opened and migrated on the writer thread."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        _migrate(db)
        # A send the node did not live to see answered is sent again (the partner deduplicates).
        db.execute("UPDATE outbox SET state = 'queued' WHERE state = 'in-flight'")
    except BaseException:
        db.close()
        raise
    return db


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to a node's database, for reads beside the writer or on a stopped node."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 10000")
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to this code's latest migration; refuse (`SchemaTooNew`) one that is past it."""
    db.execute("BEGIN IMMEDIATE")  # before reading the version: two processes may open at once
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        migrations = _migrations()
        latest = migrations[-1][0]
        if version > latest:
            # An older mrx on a newer schema would misread it or write what the newer one cannot read.
            path = db.execute("PRAGMA database_list").fetchone()[2]
            raise SchemaTooNew(
                f"the database {path} has schema version {version}, but this mrx knows schema versions up to"
                f" {latest}: a newer mrx migrated it. Install that newer mrx again, or restore the database"
                " backup taken before the upgrade (docs/operations.md, Upgrading); the database was not changed"
            )
        for number, sql in migrations:
            if number <= version:
                continue
            log.info("applying schema migration %04d", number)
            for statement in _split_sql(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(number)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _outcome_from_row(row: Sequence[Any]) -> tuple[bytes, SealEventOutcome]:
    event_id, content_hash, message_id, order = row
    return bytes(content_hash), SealEventOutcome(UUID(event_id), WriteStatus.DUPLICATE, UUID(message_id), Order(order))


_OUTBOX_COLUMNS = (
    "o.id, o.partner, o.message_id, r.message_type, o.state, o.attempts, o.last_attempt_at, o.last_error,"
    " o.receipt_message_id, o.delivered_at"
)


_DELIVERY = {d.value: d for d in Delivery}


def _outbox_item(row: Sequence[Any]) -> OutboxItem:
    return OutboxItem(
        row[0], row[1], UUID(row[2]), row[3], _DELIVERY[row[4]], row[5], _dt(row[6]) if row[6] else None, row[7],
        UUID(row[8]) if row[8] else None, _dt(row[9]) if row[9] else None,
    )


def _settle(db: sqlite3.Connection, results: list[DeliveryResult]) -> None:
    now = _ts(datetime.now(timezone.utc))
    receipt_ids = [str(r.receipt.message_id) if r.receipt is not None else None for r in results]
    # A repeat's receipt is the original, kept already when the first answer was settled.
    known = {row[0] for row in _select_in(db, "SELECT message_id FROM records WHERE message_id IN ({})",
                                          [i for i in receipt_ids if i is not None])}
    fresh = {i: r.receipt for r, i in zip(results, receipt_ids) if r.receipt is not None and i not in known}
    _insert_records(db, list(fresh.values()), now, deliver=False)  # a receipt answering several rows goes in once
    # One statement per outcome: a batch's rows mostly share one, delivered under one of a few receipts.
    outcomes: dict[tuple[str, str | None, str | None], list[int]] = {}
    for r, i in zip(results, receipt_ids, strict=True):
        outcomes.setdefault((r.state.value, r.error, i), []).append(r.outbox_id)
    for (state, error, receipt_id), ids in outcomes.items():
        update_in(
            db, "UPDATE outbox SET state = ?, last_error = ?, receipt_message_id = ?, delivered_at = ? WHERE id IN ({})",
            (state, error, receipt_id, now if state == Delivery.DELIVERED.value else None), ids,
        )


def _apply_calls(db: sqlite3.Connection, calls: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    return [call(db) for call in calls]


def _apply_received(db: sqlite3.Connection, payloads: list[list[ReceivedWrite]]) -> list[list[ReceivedOutcome]]:
    """Store received messages with their receipts. Checked here, in the transaction, so that two copies
    of one message arriving at once (or in one batch) are stored once: the second gets the first's receipt.

    Each payload (one request's writes) is stored whole or not at all: a receipt acknowledges several of
    them, so if one turns out to be another message under an ID held already (KEY_CONFLICT, a race the
    receiver's own checks could not see), nothing of the payload is stored and the receiver signs its
    receipts again with that message refused. A receipt shared by several writes is stored once.
    """
    writes = [w for payload in payloads for w in payload]
    stored_at = _ts(datetime.now(timezone.utc))
    answered: dict[bytes, bytes] = {
        bytes(digest): bytes(jws)
        for digest, jws in _select_in(
            db,
            "SELECT i.received_digest, r.jws FROM receipts_issued i JOIN records r"
            " ON r.message_id = i.receipt_message_id WHERE i.received_digest IN ({})",
            [w.received_digest for w in writes],
        )
    }
    ids = [str(w.record.message_id) for w in writes if w.record is not None]
    firsts: dict[str, tuple[bytes | None, bytes]] = {
        m: (bytes(digest), bytes(jws))
        for m, digest, jws in _select_in(
            db,
            "SELECT v.message_id, v.payload_digest, r.jws FROM received v JOIN records r"
            " ON r.message_id = v.receipt_message_id WHERE v.message_id IN ({})",
            ids,
        )
    }
    held = {m: True for (m,) in _select_in(db, "SELECT message_id FROM records WHERE message_id IN ({})", ids)}
    stored = _Received(answered, firsts, held)
    results: list[list[ReceivedOutcome]] = []
    for payload in payloads:
        request = stored.layer()  # what this request adds, seen by its own later writes, kept if it is stored
        outcomes = [request.judge(w, stored_at) for w in payload]
        if any(o.status is WriteStatus.KEY_CONFLICT for o in outcomes):
            results.append([o if o.status is WriteStatus.KEY_CONFLICT else ReceivedOutcome(WriteStatus.NOT_STORED, None)
                            for o in outcomes])
            continue
        stored.keep(request)
        results.append(outcomes)
    records = {r.message_id: r for r in stored.records}  # a receipt shared by several writes goes in once
    _insert_records(db, list(records.values()), stored_at, deliver=False)
    db.executemany(
        "INSERT INTO received (message_id, partner, payload_digest, receipt_message_id, received_at) VALUES (?,?,?,?,?)",
        stored.received_rows,
    )
    recognition.index_bodies(db, stored.bodies, own=False)
    db.executemany(
        "INSERT INTO receipts_issued (received_digest, partner, received_message_id, receipt_message_id)"
        " VALUES (?,?,?,?)",
        stored.issued_rows,
    )
    return results


@dataclass
class _Received:
    """What is held of received messages (as far as a batch of writes goes), and the rows staged to add.

    `layer` stacks a request's own additions on top, so that its later writes see its earlier ones;
    `keep` folds them in once the request is known to be stored whole.
    """

    answered: MutableMapping[bytes, bytes]  # received digest -> receipt JWS
    firsts: MutableMapping[str, tuple[bytes | None, bytes]]  # message ID -> (payload digest, receipt JWS)
    held: MutableMapping[str, bool]  # message IDs held as records
    records: list[SignedRecord] = field(default_factory=list)
    received_rows: list[tuple[Any, ...]] = field(default_factory=list)
    issued_rows: list[tuple[Any, ...]] = field(default_factory=list)
    bodies: list[tuple[SignedRecord, Body]] = field(default_factory=list)

    def layer(self) -> _Received:
        return _Received(ChainMap({}, self.answered), ChainMap({}, self.firsts), ChainMap({}, self.held))

    def keep(self, layer: _Received) -> None:
        for mine, theirs in ((self.answered, layer.answered), (self.firsts, layer.firsts), (self.held, layer.held)):
            assert isinstance(theirs, ChainMap)
            mine.update(theirs.maps[0])
        self.records += layer.records
        self.received_rows += layer.received_rows
        self.issued_rows += layer.issued_rows
        self.bodies += layer.bodies

    def judge(self, write: ReceivedWrite, stored_at: str) -> ReceivedOutcome:
        """One received write, judged against what is held: its outcome, and its rows staged if it is new."""
        if write.received_digest in self.answered:  # these exact bytes were answered before
            return ReceivedOutcome(WriteStatus.DUPLICATE, self.answered[write.received_digest])
        receipt_id = str(write.receipt.message_id)
        if write.record is not None:
            message_id = str(write.record.message_id)
            if message_id in self.firsts:
                digest, receipt = self.firsts[message_id]
                if digest == write.payload_digest:
                    return ReceivedOutcome(WriteStatus.DUPLICATE, receipt)
                return ReceivedOutcome(WriteStatus.KEY_CONFLICT, None)
            if message_id in self.held:  # an ID this node holds already, not as a received message
                return ReceivedOutcome(WriteStatus.KEY_CONFLICT, None)
            self.records.append(write.record)
            self.received_rows.append((message_id, write.partner, write.payload_digest, receipt_id, stored_at))
            if write.body is not None:
                self.bodies.append((write.record, write.body))
            self.firsts[message_id] = (write.payload_digest, write.receipt.jws)
            self.held[message_id] = True
        self.records.append(write.receipt)
        received_id = str(write.received_message_id) if write.received_message_id else None
        self.issued_rows.append((write.received_digest, write.partner, received_id, receipt_id))
        self.answered[write.received_digest] = write.receipt.jws
        return ReceivedOutcome(WriteStatus.ACCEPTED, write.receipt.jws)


def _insert_links(db: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
    if rows:
        db.executemany(
            "INSERT OR IGNORE INTO consignment_links (ref_type, ref_id, message_id) VALUES (?,?,?)", rows
        )


def _split(items: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def _encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"cursor {cursor[:40]!r} was not issued by this node") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], (str, int))
        or isinstance(value[0], bool)
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
    ):
        raise InvalidCursor(f"cursor {cursor[:40]!r} was not issued by this node")
    return value[0], value[1]


def _split_sql(script: str) -> list[str]:
    """Statements of a migration file (no semicolons inside statements, by convention)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
