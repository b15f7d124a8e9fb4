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
from dataclasses import dataclass

from ..merkle import Frontier, leaf_hash


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
    rows = db.execute("SELECT seq, jws FROM records WHERE seq > ? ORDER BY seq", (state.last_seq,)).fetchall()
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
    return LogState(frontier, rows[-1][0])


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


def checkpoint_at(db: sqlite3.Connection, size: int) -> str | None:
    row = db.execute("SELECT note FROM log_checkpoints WHERE size = ?", (size,)).fetchone()
    return None if row is None else row[0]


def put_checkpoint(db: sqlite3.Connection, size: int, root: bytes, note: str, signed_at: str) -> bool:
    """Keep a signed checkpoint; False if one of that size is kept already (it is not replaced)."""
    cursor = db.execute(
        "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?,?,?,?) ON CONFLICT (size) DO NOTHING",
        (size, root, note, signed_at),
    )
    return cursor.rowcount == 1
