"""Adapters' durable delivery positions: plain functions over a ``sqlite3.Connection``.

An adapter reads the records table in commit order (``records.seq``) from its
cursor; reads run on the store's reader (`SqliteStore.log_read`), writes in
the writer's next group commit (`SqliteStore.log_write`). See `mrx.node.outbound`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cursor:
    adapter: str
    delivered_seq: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class PendingRecord:
    seq: int
    message_id: str
    message_type: str
    sender: str
    jws: bytes


def cursor(db: sqlite3.Connection, adapter: str) -> Cursor:
    row = db.execute(
        "SELECT delivered_seq, attempts, last_error FROM adapter_cursors WHERE adapter = ?", (adapter,)
    ).fetchone()
    return Cursor(adapter, 0, 0, None) if row is None else Cursor(adapter, row[0], row[1], row[2])


def pending(db: sqlite3.Connection, after_seq: int, types: Sequence[str], limit: int) -> list[PendingRecord]:
    """Records after ``after_seq`` of these message types, oldest first."""
    marks = ", ".join("?" * len(types))
    rows = db.execute(
        f"SELECT seq, message_id, message_type, sender, jws FROM records WHERE seq > ? AND message_type IN ({marks})"
        " ORDER BY seq LIMIT ?",
        (after_seq, *types, limit),
    ).fetchall()
    return [PendingRecord(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def backlog(db: sqlite3.Connection, after_seq: int, types: Sequence[str]) -> int:
    marks = ", ".join("?" * len(types))
    row = db.execute(
        f"SELECT count(*) FROM records WHERE seq > ? AND message_type IN ({marks})", (after_seq, *types)
    ).fetchone()
    return int(row[0])


def advance(db: sqlite3.Connection, adapter: str, seq: int, at: str) -> None:
    """Every record up to ``seq`` is done for ``adapter``; never moves a cursor back."""
    db.execute(
        "INSERT INTO adapter_cursors (adapter, delivered_seq, attempts, last_error, updated_at) VALUES (?, ?, 0, NULL, ?)"
        " ON CONFLICT (adapter) DO UPDATE SET delivered_seq = max(delivered_seq, excluded.delivered_seq),"
        " attempts = 0, last_error = NULL, updated_at = excluded.updated_at",
        (adapter, seq, at),
    )


def failed_attempt(db: sqlite3.Connection, adapter: str, error: str, at: str) -> None:
    db.execute(
        "INSERT INTO adapter_cursors (adapter, delivered_seq, attempts, last_error, updated_at) VALUES (?, 0, 1, ?, ?)"
        " ON CONFLICT (adapter) DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error,"
        " updated_at = excluded.updated_at",
        (adapter, error, at),
    )


def refused(db: sqlite3.Connection, adapter: str, record: PendingRecord, reason: str, at: str) -> None:
    """The adapter refused ``record`` for good: keep why, and move past it."""
    db.execute(
        "INSERT OR REPLACE INTO adapter_failures (adapter, record_seq, message_id, reason, failed_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (adapter, record.seq, record.message_id, reason, at),
    )
    advance(db, adapter, record.seq, at)


def failures(db: sqlite3.Connection, adapter: str, limit: int = 100) -> list[dict[str, object]]:
    rows = db.execute(
        "SELECT record_seq, message_id, reason, failed_at FROM adapter_failures WHERE adapter = ?"
        " ORDER BY record_seq DESC LIMIT ?",
        (adapter, limit),
    ).fetchall()
    return [{"seq": r[0], "message_id": r[1], "reason": r[2], "failed_at": r[3]} for r in rows]
