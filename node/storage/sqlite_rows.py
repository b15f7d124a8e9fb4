"""Row helpers shared by the SQLite store's modules: times as sortable text, records as rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from . import Order, SignedRecord

IN_CHUNK = 500  # host parameters per IN (...) list

RECORD_COLUMNS = "r.message_id, r.message_type, r.sender, r.recipients, r.prepared_at, r.kid, r.jws, r.digest"


def ts(value: datetime) -> str:
    # isoformat is several times faster than strftime, and this runs per stored row.
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def classify(highest: int | None, seq: int) -> Order:
    if highest is None:
        return Order.FIRST
    if seq == highest + 1:
        return Order.NEXT
    if seq > highest + 1:
        return Order.GAP
    return Order.LATE


def record_row(r: SignedRecord, stored_at: str) -> tuple[Any, ...]:
    return (
        str(r.message_id), r.message_type, r.sender, " ".join(r.recipients), ts(r.prepared_at), r.kid, r.digest,
        r.jws, stored_at,
    )


def insert_records(db: sqlite3.Connection, records: list[SignedRecord], stored_at: str, *, deliver: bool) -> None:
    """Append records; with ``deliver``, queue each for every recipient (records this node made)."""
    if not records:
        return
    db.executemany(
        "INSERT INTO records (message_id, message_type, sender, recipients, prepared_at, kid, digest, jws,"
        " stored_at) VALUES (?,?,?,?,?,?,?,?,?)",
        [record_row(r, stored_at) for r in records],
    )
    if deliver:
        db.executemany(
            "INSERT INTO outbox (partner, message_id, state) VALUES (?,?,'queued')",
            [(partner, str(r.message_id)) for r in records for partner in r.recipients],
        )


def record_from_row(row: Sequence[Any]) -> SignedRecord:
    """A record from the columns of `RECORD_COLUMNS`, in that order."""
    return SignedRecord(
        message_id=UUID(row[0]),
        message_type=row[1],
        sender=row[2],
        recipients=tuple(row[3].split()),
        prepared_at=dt(row[4]),
        kid=row[5],
        jws=bytes(row[6]),
        digest=bytes(row[7]),
    )


def select_in(db: sqlite3.Connection, sql: str, values: Iterable[Any]) -> list[Any]:
    values = list(values)
    rows: list[Any] = []
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        rows.extend(db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall())
    return rows


def update_in(db: sqlite3.Connection, sql: str, params: Sequence[Any], ids: Sequence[Any]) -> None:
    """Run ``sql`` (its ``IN ({})`` last) with ``params`` then the ``ids``, in chunks: one statement per chunk."""
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        db.execute(sql.format(",".join("?" * len(chunk))), (*params, *chunk))


def sequence_owners(db: sqlite3.Connection, wanted: set[tuple[str, int]]) -> list[tuple[str, int, str]]:
    """The (lock ID, lock sequence number, event ID) of the seal events holding any of these (lock, number)."""
    found: list[tuple[str, int, str]] = []
    pairs = sorted(wanted)
    for start in range(0, len(pairs), IN_CHUNK):
        chunk = pairs[start : start + IN_CHUNK]
        values = ",".join("(?,?)" for _ in chunk)
        params = [item for pair in chunk for item in pair]
        # A join, not `(lock_id, lock_seq) IN (VALUES ...)`: SQLite scans the
        # whole table for the row-value IN, but searches the unique index here.
        cursor = db.execute(
            f"WITH wanted(lock_id, lock_seq) AS (VALUES {values})"
            " SELECT e.lock_id, e.lock_seq, e.event_id FROM wanted"
            " JOIN seal_events e ON e.lock_id = wanted.lock_id AND e.lock_seq = wanted.lock_seq",
            params,
        )
        found.extend(cursor.fetchall())  # type: ignore[arg-type]
    return found
