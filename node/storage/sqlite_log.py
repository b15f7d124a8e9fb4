"""The audit log's tables: appending leaves in the writer's transaction, and reading hashes back.

Appending (`LogAppender`, on the writer thread). Just before a group commit
commits, every record inserted since the last append — ``records.seq``
above the last logged one, in ``seq`` order, which is the order they were
inserted in — becomes the next leaves. `mrx.node.merkle.Frontier` gives the
tile-level hashes that completed; both go in with the records, in the same
transaction. The new frontier is adopted only after ``COMMIT`` returns, so a
rolled-back transaction leaves the appender as it was. Before each append the
appender checks that the stored log still ends where its frontier does
(another process may have written, e.g. a command run beside the node); if
not, it reloads the frontier from the tables: O(log n) reads.

Reading (`SqliteHashSource` and the functions below) works on any
connection: the node's log-reader thread, or a command on a stopped node.
Rows are immutable once committed, so a proof for a committed size reads a
consistent tree without a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass

from ..merkle import Frontier, leaf_hash


APPEND_CHUNK = 2000  # records read, hashed and logged at a time


@dataclass(frozen=True, slots=True)
class LogState:
    frontier: Frontier
    last_seq: int  # records.seq of the last leaf, 0 for an empty log


class SqliteHashSource:
    """`mrx.node.merkle.HashSource` over the log tables."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def tile_hashes(self, level: int, start: int, count: int) -> Sequence[bytes]:
        if level == 0:
            sql = "SELECT leaf_hash FROM log_leaves WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index"
            rows = self._db.execute(sql, (start, start + count)).fetchall()
        else:
            sql = "SELECT hash FROM log_tile_hashes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx"
            rows = self._db.execute(sql, (level, start, start + count)).fetchall()
        return [bytes(row[0]) for row in rows]


def log_size(db: sqlite3.Connection) -> int:
    (last,) = db.execute("SELECT MAX(leaf_index) FROM log_leaves").fetchone()
    return 0 if last is None else last + 1


def load_state(db: sqlite3.Connection) -> LogState:
    size = log_size(db)
    (last_seq,) = db.execute("SELECT COALESCE(MAX(record_seq), 0) FROM log_leaves").fetchone()
    return LogState(Frontier.load(size, SqliteHashSource(db)), last_seq)


def append(db: sqlite3.Connection, state: LogState | None) -> LogState:
    """Log the records inserted since ``state``, inside the caller's transaction; the state after."""
    if state is None or log_size(db) != state.frontier.size:
        state = load_state(db)
    while True:  # in chunks: the first open after an upgrade logs every record stored before
        rows = db.execute(
            "SELECT seq, jws FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (state.last_seq, APPEND_CHUNK)
        ).fetchall()
        if not rows:
            return state
        hashes = [leaf_hash(jws) for _, jws in rows]
        first = state.frontier.size
        frontier, completed = state.frontier.append(hashes)
        db.executemany(
            "INSERT INTO log_leaves (leaf_index, record_seq, leaf_hash) VALUES (?,?,?)",
            [(first + i, seq, h) for i, ((seq, _), h) in enumerate(zip(rows, hashes, strict=True))],
        )
        if completed:
            db.executemany(
                "INSERT INTO log_tile_hashes (level, idx, hash) VALUES (?,?,?)",
                [(t.level, t.index, t.hash) for t in completed],
            )
        state = LogState(frontier, rows[-1][0])


def entries(db: sqlite3.Connection, start: int, count: int) -> list[bytes]:
    """The JWS bytes of leaves ``start`` .. ``start + count - 1``, in order."""
    rows = db.execute(
        "SELECT r.jws FROM log_leaves l JOIN records r ON r.seq = l.record_seq"
        " WHERE l.leaf_index >= ? AND l.leaf_index < ? ORDER BY l.leaf_index",
        (start, start + count),
    ).fetchall()
    return [bytes(row[0]) for row in rows]


def leaf_of(db: sqlite3.Connection, message_id: str) -> tuple[int, bytes] | None:
    """(leaf index, JWS) of the record with this message ID, if it is logged."""
    row = db.execute(
        "SELECT l.leaf_index, r.jws FROM records r JOIN log_leaves l ON l.record_seq = r.seq WHERE r.message_id = ?",
        (message_id,),
    ).fetchone()
    return None if row is None else (row[0], bytes(row[1]))


def latest_checkpoint(db: sqlite3.Connection) -> tuple[int, str] | None:
    row = db.execute("SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    return None if row is None else (row[0], row[1])


def put_checkpoint(db: sqlite3.Connection, size: int, root: bytes, note: str, signed_at: str) -> bool:
    """Keep a signed checkpoint; False if one of that size is kept already (it is not replaced)."""
    cursor = db.execute(
        "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?,?,?,?) ON CONFLICT (size) DO NOTHING",
        (size, root, note, signed_at),
    )
    return cursor.rowcount == 1


# -- witnessing (mrx.node.witness) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Witnessed:
    """The latest checkpoint this node cosigned for a partner's log."""

    origin: str
    size: int
    root: bytes
    note: str


def witnessed(db: sqlite3.Connection, origin: str) -> Witnessed | None:
    row = db.execute("SELECT size, root, note FROM witnessed WHERE origin = ?", (origin,)).fetchone()
    return None if row is None else Witnessed(origin, row[0], bytes(row[1]), row[2])


def put_witnessed(db: sqlite3.Connection, checkpoint: Any, note: str, at: str) -> None:
    db.execute(
        "INSERT INTO witnessed (origin, size, root, note, updated_at) VALUES (?,?,?,?,?)"
        " ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, note = excluded.note,"
        " updated_at = excluded.updated_at",
        (checkpoint.origin, checkpoint.size, checkpoint.root, note, at),
    )


def put_evidence(db: sqlite3.Connection, origin: str, reason: str, held: Witnessed, request: str, at: str) -> None:
    db.execute(
        "INSERT INTO witness_evidence (origin, reason, held_size, held_note, request, received_at)"
        " VALUES (?,?,?,?,?,?)",
        (origin, reason, held.size, held.note, request, at),
    )


def evidence(db: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT id, origin, reason, held_size, held_note, request, received_at FROM witness_evidence ORDER BY id"
    ).fetchall()
    keys = ("id", "origin", "reason", "held_size", "held_note", "request", "received_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def cosigned_size(db: sqlite3.Connection, witness: str) -> int:
    row = db.execute("SELECT size FROM log_cosigners WHERE witness = ?", (witness,)).fetchone()
    return 0 if row is None else row[0]


def add_cosignature(db: sqlite3.Connection, size: int, witness: str, line: str, at: str) -> None:
    """Append a witness's cosignature line to the stored checkpoint of ``size``; note what it cosigned."""
    (note,) = db.execute("SELECT note FROM log_checkpoints WHERE size = ?", (size,)).fetchone()
    if line not in note:
        db.execute("UPDATE log_checkpoints SET note = ? WHERE size = ?", (note + line, size))
    db.execute(
        "INSERT INTO log_cosigners (witness, size, cosigned_at) VALUES (?,?,?)"
        " ON CONFLICT (witness) DO UPDATE SET size = MAX(size, excluded.size), cosigned_at = excluded.cosigned_at",
        (witness, size, at),
    )
