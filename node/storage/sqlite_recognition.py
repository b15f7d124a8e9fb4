"""The SQLite side of recognition: indexing records as evidence, and reading a case back.

Every record that can be evidence is indexed by its body when it is stored,
in the same transaction: seal events (a partner's too) into ``seal_events``,
unseal authorisations, decisions and alarms into their tables, and the
consignments a record names into ``consignment_links``. The recognition
service (`mrx.node.deciding`) then reads a case with a handful of indexed
look-ups, whose cost depends on the consignment's own records, not on how
many containers are in transit.

`SqliteStore` owns the connections; these functions are its recognition
half, split out by concept. The writer-thread functions take a plain
``sqlite3`` connection; the readers take the reader's ``aiosqlite`` one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import aiosqlite

from mrx.schemas.codes import ConsignmentReferenceType, SealConditionCode, SealEventType
from mrx.schemas.messages import Alarm, Body, ConsignmentReference, RecognitionDecision, SealEvent, UnsealAuthorization

from mrx.keys.jws import parse_compact
from mrx.schemas import codec

from ..sealchain import Authorisation, ChainEvent
from . import AlarmEntry, Arrival, AuthorisationEntry, DecisionEntry, SignedRecord, Targeting
from .sqlite_rows import RECORD_COLUMNS, classify, insert_records, record_from_row, select_in, sequence_owners
from .sqlite_rows import dt as _dt
from .sqlite_rows import ts as _ts

Db = aiosqlite.Connection


# -- writes (writer thread) --------------------------------------------------------------------------------------


def index_bodies(db: sqlite3.Connection, items: Iterable[tuple[SignedRecord, Body]], *, own: bool) -> None:
    """Index stored records by their bodies. ``own``: records this node made (a gateway's seal events are
    indexed by ingest itself, with their order); otherwise records received from partners."""
    links: list[tuple[str, str, str]] = []
    partner_events: list[tuple[SignedRecord, SealEvent]] = []
    for record, body in items:
        message_id = str(record.message_id)
        refs: tuple[ConsignmentReference, ...] = getattr(body, "consignment_refs", ())
        links.extend((ref.type.value, ref.id, message_id) for ref in refs)
        if isinstance(body, SealEvent) and not own:
            partner_events.append((record, body))
        elif isinstance(body, UnsealAuthorization):
            db.execute(
                "INSERT OR IGNORE INTO unseal_authorizations (authorization_id, message_id, issuer, lock_id, seal_id,"
                " container, office, valid_from, valid_to) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    str(body.authorization_id), message_id, record.sender, body.lock_id, body.seal_id, body.container,
                    body.office, _ts(body.valid_from), _ts(body.valid_to),
                ),
            )
        elif isinstance(body, RecognitionDecision) and not own:
            _insert_decision(db, record, body, None)
        elif isinstance(body, Alarm) and not own:
            _insert_alarm(db, record, body, None)
    _index_partner_events(db, partner_events)
    if links:
        db.executemany("INSERT OR IGNORE INTO consignment_links (ref_type, ref_id, message_id) VALUES (?,?,?)", links)


def apply_made(db: sqlite3.Connection, payloads: list[tuple[SignedRecord, Body, bytes | None]]) -> list[bool]:
    """Store records this node made, with their index rows and outbox; a repeated fingerprint stores nothing."""
    out: list[bool] = []
    for record, body, fingerprint in payloads:
        if fingerprint is not None and _fingerprint_known(db, body, fingerprint):
            out.append(False)
            continue
        insert_records(db, [record], _ts(datetime.now(timezone.utc)), deliver=True)
        if isinstance(body, RecognitionDecision):
            _insert_decision(db, record, body, fingerprint)
        elif isinstance(body, Alarm):
            _insert_alarm(db, record, body, fingerprint)
        index_bodies(db, [(record, body)], own=True)
        out.append(True)
    return out


def _fingerprint_known(db: sqlite3.Connection, body: Body, fingerprint: bytes) -> bool:
    if isinstance(body, RecognitionDecision):
        ref = body.consignment_refs[0]
        row = db.execute(
            "SELECT fingerprint FROM decisions WHERE ref_type = ? AND ref_id = ? AND fingerprint IS NOT NULL"
            " ORDER BY decided_at DESC, rowid DESC LIMIT 1",
            (ref.type.value, ref.id),
        ).fetchone()
        return row is not None and bytes(row[0]) == fingerprint
    return db.execute("SELECT 1 FROM alarms WHERE fingerprint = ?", (fingerprint,)).fetchone() is not None


def _index_partner_events(db: sqlite3.Connection, events: list[tuple[SignedRecord, SealEvent]]) -> None:
    """Partners' seal events into ``seal_events`` (their order classified as ingest does), or, where the lock's
    number or the event ID is held by another record already, into ``seal_event_claims``.

    Which are held is looked up first, as ingest does, so that the rest go in with one statement."""
    if not events:
        return
    high: dict[str, int] = dict(
        select_in(
            db, "SELECT lock_id, MAX(lock_seq) FROM seal_events WHERE lock_id IN ({}) GROUP BY lock_id",
            sorted({ev.lock_id for _, ev in events}),
        )
    )
    taken = {(lock, seq) for lock, seq, _ in sequence_owners(db, {(ev.lock_id, ev.lock_sequence) for _, ev in events})}
    held = {
        event_id
        for (event_id,) in select_in(
            db, "SELECT event_id FROM seal_events WHERE event_id IN ({})", [str(ev.event_id) for _, ev in events]
        )
    }
    rows, claims = [], []
    for record, ev in events:
        event_id, number = str(ev.event_id), (ev.lock_id, ev.lock_sequence)
        if number in taken or event_id in held:  # the lock's number (or the event ID) is held by another record
            claims.append((str(record.message_id), ev.lock_id, ev.lock_sequence, ev.container))
            continue
        taken.add(number)
        held.add(event_id)
        position = ev.location.position if ev.location else None
        rows.append((
            event_id, record.digest, str(record.message_id), ev.gateway_id, ev.lock_id, ev.lock_sequence,
            ev.seal_id, ev.container, ev.event_type.value, _ts(ev.device_time), _ts(ev.receipt_time),
            classify(high.get(ev.lock_id), ev.lock_sequence).value, ev.location.locode if ev.location else None,
            str(position.latitude) if position else None, str(position.longitude) if position else None,
            ev.condition.value, str(ev.authorization_id) if ev.authorization_id else None,
        ))
        high[ev.lock_id] = max(high.get(ev.lock_id, ev.lock_sequence), ev.lock_sequence)
    db.executemany(
        "INSERT INTO seal_events (event_id, content_hash, message_id, gateway_id, lock_id, lock_seq, seal_id,"
        " container, event_type, device_time, receipt_time, order_status, locode, latitude, longitude,"
        " condition, authorization_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    db.executemany(
        "INSERT OR IGNORE INTO seal_event_claims (message_id, lock_id, lock_seq, container) VALUES (?,?,?,?)", claims
    )


def _insert_decision(
    db: sqlite3.Connection, record: SignedRecord, d: RecognitionDecision, fingerprint: bytes | None
) -> None:
    ref = d.consignment_refs[0]
    db.execute(
        "INSERT OR IGNORE INTO decisions (message_id, decision_id, sender, office, ref_type, ref_id, outcome,"
        " decided_at, fingerprint) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            str(record.message_id), str(d.decision_id), record.sender, d.office, ref.type.value, ref.id, d.outcome.value,
            _ts(d.decided_at), fingerprint,
        ),
    )


def _insert_alarm(db: sqlite3.Connection, record: SignedRecord, a: Alarm, fingerprint: bytes | None) -> None:
    db.execute(
        "INSERT OR IGNORE INTO alarms (message_id, alarm_id, sender, alarm_type, lock_id, container, raised_at,"
        " fingerprint) VALUES (?,?,?,?,?,?,?,?)",
        (
            str(record.message_id), str(a.alarm_id), record.sender, a.alarm_type.value, a.lock_id, a.container,
            _ts(a.raised_at), fingerprint,
        ),
    )


def put_arrival(db: sqlite3.Connection, arrival: Arrival, recorded_at: datetime) -> Arrival:
    ref = arrival.ref
    db.execute(
        "INSERT OR IGNORE INTO arrivals (ref_type, ref_id, arrived_at, trigger_message_id, containers, recorded_at)"
        " VALUES (?,?,?,?,?,?)",
        (
            ref.type.value, ref.id, _ts(arrival.arrived_at), str(arrival.trigger) if arrival.trigger else None,
            " ".join(arrival.containers), _ts(recorded_at),
        ),
    )
    row = db.execute(
        f"SELECT {_ARRIVAL_COLUMNS} FROM arrivals WHERE ref_type = ? AND ref_id = ?", (ref.type.value, ref.id)
    ).fetchone()
    stood = _arrival(row)
    db.executemany(
        "INSERT OR IGNORE INTO arrival_containers (container, ref_type, ref_id) VALUES (?,?,?)",
        [(c, ref.type.value, ref.id) for c in stood.containers],
    )
    return stood


def put_targeting(db: sqlite3.Connection, ref: ConsignmentReference, t: Targeting) -> None:
    db.execute(
        "INSERT INTO targeting (ref_type, ref_id, reference, reason, marked_at) VALUES (?,?,?,?,?)"
        " ON CONFLICT (ref_type, ref_id, reference) DO UPDATE SET reason = excluded.reason",
        (ref.type.value, ref.id, t.reference, t.reason, _ts(t.marked_at)),
    )


def acknowledge_alarm(db: sqlite3.Connection, alarm_id: UUID, officer: str, at: datetime) -> int | None:
    """Acknowledge an alarm (the first acknowledgement stands); its listing position, or None if unknown."""
    db.execute(
        "UPDATE alarms SET acknowledged_at = ?, acknowledged_by = ? WHERE alarm_id = ? AND acknowledged_at IS NULL",
        (_ts(at), officer, str(alarm_id)),
    )
    row = db.execute("SELECT id FROM alarms WHERE alarm_id = ? ORDER BY id LIMIT 1", (str(alarm_id),)).fetchone()
    return None if row is None else int(row[0])


# -- reads (reader connection) -----------------------------------------------------------------------------------

_ARRIVAL_COLUMNS = "ref_type, ref_id, arrived_at, trigger_message_id, containers"


def _arrival(row: Sequence[Any]) -> Arrival:
    return Arrival(
        ConsignmentReference(ConsignmentReferenceType(row[0]), row[1]), _dt(row[2]), tuple(row[4].split()),
        UUID(row[3]) if row[3] else None,
    )


async def _all(db: Db, sql: str, params: Sequence[Any]) -> list[Any]:
    """All rows in one call on the reader's thread (see `SqliteStore._rows`: no snapshot held across an await)."""
    return list(await db.execute_fetchall(sql, params))


async def arrival(db: Db, ref: ConsignmentReference) -> Arrival | None:
    rows = await _all(
        db, f"SELECT {_ARRIVAL_COLUMNS} FROM arrivals WHERE ref_type = ? AND ref_id = ?", (ref.type.value, ref.id)
    )
    return _arrival(rows[0]) if rows else None


async def arrivals_of(db: Db, containers: list[str]) -> list[Arrival]:
    marks = ",".join("?" * len(containers))
    rows = await _all(
        db,
        f"SELECT DISTINCT {', '.join('a.' + c.strip() for c in _ARRIVAL_COLUMNS.split(','))} FROM arrival_containers ac"
        f" JOIN arrivals a ON a.ref_type = ac.ref_type AND a.ref_id = ac.ref_id WHERE ac.container IN ({marks})",
        containers,
    )
    return [_arrival(r) for r in rows]


async def arrived_containers(db: Db, since: datetime) -> dict[str, datetime]:
    rows = await _all(
        db,
        "SELECT ac.container, MAX(a.arrived_at) FROM arrival_containers ac JOIN arrivals a"
        " ON a.ref_type = ac.ref_type AND a.ref_id = ac.ref_id WHERE a.recorded_at >= ? GROUP BY ac.container",
        (_ts(since),),
    )
    return {container: _dt(at) for container, at in rows}


async def first_stored_since(db: Db, at: datetime) -> int:
    """The ``seq`` of the first record stored at or after ``at`` (1 past the last record: none).

    Found by bisection on ``seq``, which ``stored_at`` follows (both are the
    commit order): some twenty look-ups by primary key, not a scan."""
    last = await _all(db, "SELECT seq, stored_at FROM records ORDER BY seq DESC LIMIT 1", ())
    if not last:
        return 1
    cutoff = _ts(at)
    if last[0][1] < cutoff:
        return int(last[0][0]) + 1
    low, high = 0, int(last[0][0])  # the answer is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        row = await _all(db, "SELECT stored_at FROM records WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,))
        if row[0][0] >= cutoff:
            high = middle
        else:
            low = middle
    return high


async def latest_stored_at(db: Db) -> datetime | None:
    rows = await _all(db, "SELECT stored_at FROM records ORDER BY seq DESC LIMIT 1", ())
    return _dt(rows[0][0]) if rows else None


async def settled_before(db: Db) -> datetime | None:
    rows = await _all(db, "SELECT settled_before FROM recognition_progress WHERE id = 1", ())
    return _dt(rows[0][0]) if rows else None


def save_settled_before(db: sqlite3.Connection, at: datetime) -> None:
    """Never moves back: two savers (a job and the stop) may race."""
    db.execute(
        "INSERT INTO recognition_progress (id, settled_before) VALUES (1, ?) ON CONFLICT (id) DO UPDATE"
        " SET settled_before = max(settled_before, excluded.settled_before)",
        (_ts(at),),
    )


async def records_after(db: Db, seq: int, types: Sequence[str], limit: int) -> list[tuple[int, UUID, str, bytes]]:
    """(seq, message ID, sender, JWS) of the records of these types after ``seq``, oldest first."""
    marks = ", ".join("?" * len(types))
    rows = await _all(
        db,
        f"SELECT seq, message_id, sender, jws FROM records WHERE seq > ? AND message_type IN ({marks})"
        " ORDER BY seq LIMIT ?",
        (seq, *types, limit),
    )
    return [(r[0], UUID(r[1]), r[2], bytes(r[3])) for r in rows]


async def targeting(db: Db, ref: ConsignmentReference) -> list[Targeting]:
    rows = await _all(
        db,
        "SELECT reference, reason, marked_at FROM targeting WHERE ref_type = ? AND ref_id = ? ORDER BY reference",
        (ref.type.value, ref.id),
    )
    return [Targeting(r[0], r[1], _dt(r[2])) for r in rows]


async def control_results_for(db: Db, ref: ConsignmentReference) -> list[SignedRecord]:
    rows = await _all(
        db,
        f"SELECT {RECORD_COLUMNS} FROM consignment_links l JOIN records r ON r.message_id = l.message_id"
        " WHERE l.ref_type = ? AND l.ref_id = ? AND r.message_type = 'ControlResultNotification' ORDER BY r.seq",
        (ref.type.value, ref.id),
    )
    return [record_from_row(r) for r in rows]


async def consignments_of(db: Db, container: str) -> list[ConsignmentReference]:
    # The latest sealing that named consignments: a container travels for other consignments on other journeys.
    rows = await _all(
        db,
        "SELECT l.ref_type, l.ref_id FROM consignment_links l WHERE l.message_id = ("
        " SELECT e.message_id FROM seal_events e JOIN consignment_links n ON n.message_id = e.message_id"
        " WHERE e.container = ? AND e.event_type = 'sealed' ORDER BY e.device_time DESC, e.id DESC LIMIT 1)"
        " ORDER BY l.ref_type, l.ref_id",
        (container,),
    )
    return [ConsignmentReference(ConsignmentReferenceType(t), i) for t, i in rows]


async def chain_events(db: Db, containers: list[str]) -> list[ChainEvent]:
    """The seal events of these containers, and the claims that collide with them (read from their records)."""
    marks = ",".join("?" * len(containers))
    rows = await _all(
        db,
        "SELECT message_id, lock_id, lock_seq, seal_id, container, event_type, device_time, receipt_time, locode,"
        f" condition, authorization_id FROM seal_events WHERE container IN ({marks})",
        containers,
    )
    events = [
        ChainEvent(
            UUID(r[0]), r[1], r[2], r[3], r[4], SealEventType(r[5]), _dt(r[6]), _dt(r[7]), r[8],
            SealConditionCode(r[9]), UUID(r[10]) if r[10] else None,
        )
        for r in rows
    ]
    claims = await _all(
        db,
        f"SELECT r.jws FROM seal_event_claims c JOIN records r ON r.message_id = c.message_id"
        f" WHERE c.container IN ({marks})",
        containers,
    )
    events.extend(_claimed_event(bytes(jws)) for (jws,) in claims)
    return events


def _claimed_event(jws: bytes) -> ChainEvent:
    """A colliding partner event, decoded from its stored (verified) record: rare, so not indexed."""
    message = codec.decode(parse_compact(jws, max_bytes=len(jws) + 1).payload)
    ev = message.body
    assert isinstance(ev, SealEvent)
    return ChainEvent(
        message.header.message_id, ev.lock_id, ev.lock_sequence, ev.seal_id, ev.container, ev.event_type,
        ev.device_time, ev.receipt_time, ev.location.locode if ev.location else None, ev.condition, ev.authorization_id,
    )


_AUTH_COLUMNS = (
    "a.authorization_id, a.message_id, a.lock_id, a.seal_id, a.office, a.valid_from, a.valid_to, a.issuer, r.jws,"
    " (SELECT e.message_id FROM seal_events e WHERE e.authorization_id = a.authorization_id"
    "  AND e.event_type = 'unsealed' ORDER BY e.lock_seq LIMIT 1)"
)


def _authorisation(r: Sequence[Any]) -> AuthorisationEntry:
    auth = Authorisation(UUID(r[0]), UUID(r[1]), r[2], r[3], r[4], _dt(r[5]), _dt(r[6]))
    return AuthorisationEntry(auth, r[7], bytes(r[8]), UUID(r[9]) if r[9] else None)


async def authorisations(db: Db, *, lock_ids: Sequence[str] = (), ids: Sequence[str] = ()) -> list[AuthorisationEntry]:
    """Authorisations for these locks, or with these IDs."""
    column, values = ("a.lock_id", list(lock_ids)) if lock_ids else ("a.authorization_id", list(ids))
    rows = await _all(
        db,
        f"SELECT {_AUTH_COLUMNS} FROM unseal_authorizations a JOIN records r ON r.message_id = a.message_id"
        f" WHERE {column} IN ({','.join('?' * len(values))}) ORDER BY a.valid_from, a.authorization_id",
        values,
    )
    return [_authorisation(r) for r in rows]


async def decisions(db: Db, ref: ConsignmentReference) -> list[DecisionEntry]:
    rows = await _all(
        db,
        "SELECT d.message_id, d.sender, d.outcome, d.decided_at, d.fingerprint, r.jws FROM consignment_links l"
        " JOIN decisions d ON d.message_id = l.message_id JOIN records r ON r.message_id = d.message_id"
        " WHERE l.ref_type = ? AND l.ref_id = ? ORDER BY d.decided_at, r.seq",
        (ref.type.value, ref.id),
    )
    return [
        DecisionEntry(UUID(r[0]), r[1], r[2], _dt(r[3]), bytes(r[4]) if r[4] is not None else None, bytes(r[5]))
        for r in rows
    ]


async def alarms(db: Db, *, container: str | None, open_only: bool, after: int, limit: int) -> list[AlarmEntry]:
    where, params = ["a.id > ?"], [after]
    if container is not None:
        where.append("a.container = ?")
        params.append(container)
    if open_only:
        where.append("a.acknowledged_at IS NULL")
    rows = await _all(
        db,
        "SELECT a.id, a.message_id, a.alarm_id, a.sender, a.alarm_type, a.lock_id, a.container, a.raised_at,"
        " a.acknowledged_at, a.acknowledged_by, r.jws FROM alarms a JOIN records r ON r.message_id = a.message_id"
        f" WHERE {' AND '.join(where)} ORDER BY a.id LIMIT ?",
        (*params, limit),
    )
    return [
        AlarmEntry(
            r[0], UUID(r[1]), UUID(r[2]), r[3], r[4], r[5], r[6], _dt(r[7]), _dt(r[8]) if r[8] else None, r[9],
            bytes(r[10]),
        )
        for r in rows
    ]
