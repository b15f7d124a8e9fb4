"""The audit log: checkpoints, proofs and the tiles export of every signed record a node holds.

What is logged
    Every record the node stores — its own records, partners' records it
    accepted, receipts it signed or was given, decisions, alarms, unseal
    authorisations — in commit order, the leaf being the record's exact JWS
    bytes. The store appends them in the transaction that stores them
    (`mrx.node.storage.sqlite_log`), so there is no record outside the log
    and no leaf without its record. A record is at most 65,535 bytes
    (`mrx.node.records.LOG_ENTRY_MAX_BYTES`): the node refuses to make or
    accept a larger one, so that every leaf fits a tiles entry bundle.

Checkpoints
    `AuditLog.checkpoint` signs a C2SP ``tlog-checkpoint`` with the node's
    note key (`mrx.keys.keyring.KeyStore.note_key`) when the log has grown
    since the last one, and keeps it; the node's scheduler calls it every
    ``[log] checkpoint_seconds``, and ``POST /v1/log/checkpoint`` or ``mrx log
    checkpoint`` on demand. The origin and the verifier key are in the
    discovery document (``/.well-known/mrx``).

Proofs and export
    An inclusion proof is given against a signed checkpoint, as a C2SP
    ``tlog-proof`` (`tlog_proof`); a consistency proof between two sizes, as
    RFC 9162 hashes. `export_tiles` writes the log as of a checkpoint in the
    C2SP ``tlog-tiles`` layout; `reprove_tiles` checks such a directory
    offline: every entry hashes to its level-0 tile, every tile hash above
    is the root of the full tile below, and the tiles give the checkpoint's
    root. Both stream, 256 leaves at a time: memory does not grow with the log.

The functions that take a ``sqlite3.Connection`` read a node's database
directly, running or stopped; `AuditLog` runs them on the store's log-reader
thread.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mrx.keys import notes
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import Checkpoint, NoteSigner, VerifierKey

from . import evidence, merkle
from .config import NodeConfig, Partner
from .merkle import TILE_WIDTH, ProofError
from .storage import sqlite_audit, sqlite_log
from .storage.sqlite import SqliteStore
from .storage.sqlite_audit import AuditQuery
from .storage.sqlite_log import SqliteHashSource
from .storage.sqlite_rows import ts

PROOF_HEADER = "c2sp.org/tlog-proof@v1"
MAX_BUNDLE_RECORDS = 100_000
Progress = Callable[[int, int], None]  # (done, total)


# -- reading a node's log (any connection) ------------------------------------


def tree_head(db: sqlite3.Connection) -> Checkpoint:
    """The log's current size and root, unsigned (``origin`` left empty)."""
    size = sqlite_log.log_size(db)
    return Checkpoint("", size, merkle.subtree_hash(SqliteHashSource(db), 0, size))


def inclusion(db: sqlite3.Connection, index: int, size: int) -> list[bytes]:
    return merkle.inclusion_proof(SqliteHashSource(db), index, size)


def consistency(db: sqlite3.Connection, old_size: int, new_size: int) -> list[bytes]:
    return merkle.consistency_proof(SqliteHashSource(db), old_size, new_size)


def tlog_proof(index: int, proof: list[bytes], checkpoint_note: str) -> str:
    """A C2SP ``tlog-proof`` file: that leaf ``index`` is in the tree of the (signed) checkpoint."""
    lines = [PROOF_HEADER, f"index {index}", *(base64.b64encode(h).decode() for h in proof)]
    return "\n".join(lines) + "\n\n" + checkpoint_note


@dataclass(frozen=True, slots=True)
class ParsedProof:
    index: int
    proof: list[bytes]
    checkpoint_note: str


def parse_tlog_proof(text: str) -> ParsedProof:
    """The parts of a ``tlog-proof`` file; `ValueError` naming what is malformed. Extra data is refused."""
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise ValueError("a tlog-proof has an empty line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != PROOF_HEADER:
        raise ValueError(f"a tlog-proof starts with {PROOF_HEADER!r}")
    if len(lines) < 2 or not lines[1].startswith("index "):
        raise ValueError("a tlog-proof's second line is 'index N' (mrx proofs carry no extra data)")
    index_text = lines[1][6:]
    if not notes.DECIMAL.fullmatch(index_text):
        raise ValueError(f"the tlog-proof's index {index_text[:30]!r} is not a decimal without leading zeros")
    if len(lines) - 2 > 64:
        raise ValueError("the tlog-proof has more than 64 hashes; no tree is that high")
    try:
        hashes = [base64.b64decode(line, validate=True) for line in lines[2:]]
    except ValueError:
        raise ValueError("a tlog-proof hash line is not base64") from None
    if any(len(h) != 32 for h in hashes):
        raise ValueError("a tlog-proof hash line is not 32 bytes")
    return ParsedProof(int(index_text), hashes, note)


# -- the service ----------------------------------------------------------------


class AuditLog:
    """A node's log: checkpoints on a schedule and on demand, proofs, evidence bundles.

    The same object serves the running node and the ``mrx log`` / ``mrx evidence``
    commands on a stopped node's data (`AuditLog.of`)."""

    def __init__(
        self, store: SqliteStore, signer: NoteSigner, *, node_id: str, partners: Sequence[Partner] = (),
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._node_id = node_id
        self._partners = [p.node_id for p in partners]
        # The partners that witness this log: their log keys, as cosigning keys.
        self.witness_keys = [p.log_verifier.cosigning() for p in partners if p.log_verifier is not None]
        self._on_checkpoint = on_checkpoint

    @classmethod
    def of(cls, config: NodeConfig, keys: KeyStore, store: SqliteStore,
           on_checkpoint: Callable[[int], None] | None = None) -> AuditLog:
        """The log of the node ``config`` describes, signing with its key store's note key."""
        signer = NoteSigner(config.log_origin, keys.note_key())
        return cls(store, signer, node_id=config.node_id, partners=config.partners, on_checkpoint=on_checkpoint)

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def verifier(self) -> VerifierKey:
        return self._signer.verifier

    async def latest(self) -> tuple[int, str] | None:
        """(size, note) of the latest signed checkpoint, if any."""
        return await self._store.log_read(sqlite_log.latest_checkpoint)

    async def checkpoint(self) -> tuple[int, str]:
        """The latest checkpoint, signing a new one first if the log grew since (or there is none)."""
        head = await self._store.log_read(tree_head)
        latest = await self.latest()
        if latest is not None and latest[0] >= head.size:
            return latest
        note = str(notes.sign_checkpoint(Checkpoint(self.origin, head.size, head.root), self._signer))
        signed_at = ts(datetime.now(timezone.utc))
        await self._store.log_write(lambda db: sqlite_log.put_checkpoint(db, head.size, head.root, note, signed_at))
        if self._on_checkpoint is not None:
            self._on_checkpoint(head.size)
        return head.size, note

    async def proof_for(self, message_id: str) -> str | None:
        """A ``tlog-proof`` for a record against the latest checkpoint that holds it; None if not logged."""
        leaf = await self._store.log_read(lambda db: sqlite_log.leaf_of(db, message_id))
        if leaf is None:
            return None
        index, _ = leaf
        size, note = await self.checkpoint()  # the record is committed, so this checkpoint holds it
        path = await self._store.log_read(lambda db: inclusion(db, index, size))
        return tlog_proof(index, path, note)

    async def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        return await self._store.log_read(lambda db: consistency(db, old_size, new_size))

    async def evidence(
        self, query: AuditQuery, own_statements: list[bytes], since_size: int | None = None
    ) -> dict[str, Any] | None:
        """An evidence bundle (`mrx.node.evidence`) of the records ``query`` finds, or None if it finds none.

        ``own_statements`` is this node's key-set chain (`KeyStore.statements`); partners' come from the store."""
        size, note = await self.checkpoint()
        if since_size is not None and since_size > size:
            raise ValueError(f"the checkpoint you hold ({since_size} records) is larger than this log ({size})")
        chains = {self._node_id: own_statements}
        for partner in self._partners:
            chains[partner] = await self._store.key_statements(partner)

        def build(db: sqlite3.Connection) -> dict[str, Any] | None:
            found = sqlite_audit.search(db, replace(query, limit=MAX_BUNDLE_RECORDS))
            if not found:
                return None
            return evidence.build(
                db, node_id=self._node_id, log_key=self.verifier, witness_keys=self.witness_keys,
                checkpoint=(size, note), key_statements=chains, message_ids=[f.message_id for f in found],
                since_size=since_size,
            )

        return await self._store.log_read(build)


# -- the tiles export -------------------------------------------------------------


def tile_path(level: int | str, index: int, width: int = TILE_WIDTH) -> Path:
    """``tile/<L>/<N>[.p/<W>]`` of C2SP tlog-tiles (``level`` "entries" for entry bundles)."""
    parts = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        parts.insert(0, f"x{index % 1000:03d}")
        index //= 1000
    if width < TILE_WIDTH:
        parts[-1] += ".p"
        parts.append(str(width))
    return Path("tile", str(level), *parts)


def _tiles(size: int, level: int) -> Iterator[tuple[int, int]]:
    """(tile index, width) of every tile of ``level`` in a tree of ``size`` leaves, the partial one last."""
    count = size // TILE_WIDTH**level
    full, partial = divmod(count, TILE_WIDTH)
    for n in range(full):
        yield n, TILE_WIDTH
    if partial:
        yield full, partial


def _levels(size: int) -> range:
    level = 0
    while size // TILE_WIDTH**level:
        level += 1
    return range(level)


def export_tiles(db: sqlite3.Connection, size: int, checkpoint_note: str, out: Path,
                 progress: Progress | None = None) -> int:
    """Write the log as of the checkpoint of ``size`` leaves to ``out`` in tlog-tiles layout; files written."""
    source = SqliteHashSource(db)
    written = 0
    total = sum(1 for _ in _tiles(size, 0))

    def put(path: Path, data: bytes) -> None:
        nonlocal written
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(target)
        written += 1

    for done, (n, width) in enumerate(_tiles(size, 0), 1):
        entries = sqlite_log.entries(db, n * TILE_WIDTH, width)
        if len(entries) != width:
            raise LookupError(f"the database holds {len(entries)} of the {width} entries of bundle {n}")
        put(tile_path("entries", n, width), b"".join(len(e).to_bytes(2, "big") + e for e in entries))
        put(tile_path(0, n, width), b"".join(source.tile_hashes(0, n * TILE_WIDTH, width)))
        if progress is not None:
            progress(done, total)
    for level in _levels(size)[1:]:
        for n, width in _tiles(size, level):
            put(tile_path(level, n, width), b"".join(source.tile_hashes(level, n * TILE_WIDTH, width)))
    put(Path("checkpoint"), checkpoint_note.encode())
    return written


class FileHashSource:
    """`mrx.node.merkle.HashSource` over a tiles export as of ``size`` leaves."""

    def __init__(self, root: Path, size: int) -> None:
        self._root = root
        self._size = size
        self._cache: dict[tuple[int, int], bytes] = {}

    def tile(self, level: int, n: int) -> bytes:
        key = (level, n)
        if key not in self._cache:
            width = min(TILE_WIDTH, self._size // TILE_WIDTH**level - n * TILE_WIDTH)
            if width <= 0:
                raise LookupError(f"a tree of {self._size} leaves has no tile {n} at level {level}")
            path = self._root / tile_path(level, n, width)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise LookupError(f"{path} is missing from the export") from None
            if len(data) != 32 * width:
                raise ProofError(f"{path} is {len(data)} bytes; a tile of {width} hashes is {32 * width}")
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = data
        return self._cache[key]

    def tile_hashes(self, level: int, start: int, count: int) -> list[bytes]:
        out = []
        for i in range(start, start + count):
            data = self.tile(level, i // TILE_WIDTH)
            offset = (i % TILE_WIDTH) * 32
            if offset + 32 > len(data):
                raise LookupError(f"tile level {level} has no hash {i} in a tree of {self._size}")
            out.append(data[offset : offset + 32])
        return out


def read_entries(bundle: bytes, width: int, where: Path) -> list[bytes]:
    """The entries of an entry bundle, refusing a truncated or overlong one."""
    entries, at = [], 0
    while at < len(bundle):
        if at + 2 > len(bundle):
            raise ProofError(f"{where} ends inside an entry's length")
        length = int.from_bytes(bundle[at : at + 2], "big")
        if at + 2 + length > len(bundle):
            raise ProofError(f"{where} ends inside entry {len(entries)}")
        entries.append(bundle[at + 2 : at + 2 + length])
        at += 2 + length
    if len(entries) != width:
        raise ProofError(f"{where} holds {len(entries)} entries, not {width}")
    return entries


def reprove_tiles(out: Path, log_key: VerifierKey, progress: Progress | None = None,
                  on_entry: Callable[[int, bytes], None] | None = None) -> Checkpoint:
    """Re-prove a tiles export offline; the verified checkpoint, or `ProofError`/`NoteError` naming the fault.

    ``on_entry(index, entry)`` sees every entry as it is proven (to check the records themselves)."""
    try:
        note_text = (out / "checkpoint").read_bytes()
    except FileNotFoundError:
        raise ProofError(f"{out / 'checkpoint'} is missing: this is not a tiles export") from None
    checkpoint, _, _ = notes.open_checkpoint(note_text, log_key)
    size = checkpoint.size
    source = FileHashSource(out, size)
    total = sum(1 for _ in _tiles(size, 0))
    for done, (n, width) in enumerate(_tiles(size, 0), 1):
        where = out / tile_path("entries", n, width)
        try:
            bundle = where.read_bytes()
        except FileNotFoundError:
            raise ProofError(f"{where} is missing from the export") from None
        entries = read_entries(bundle, width, where)
        hashes = source.tile_hashes(0, n * TILE_WIDTH, width)
        for i, (entry, stored) in enumerate(zip(entries, hashes, strict=True)):
            if merkle.leaf_hash(entry) != stored:
                raise ProofError(f"entry {n * TILE_WIDTH + i} does not hash to its leaf in "
                                 f"{tile_path(0, n, width)}: the record or the tile was altered")
            if on_entry is not None:
                on_entry(n * TILE_WIDTH + i, entry)
        if progress is not None:
            progress(done, total)
    for level in _levels(size)[1:]:
        for n, width in _tiles(size, level):
            for i, stored in enumerate(source.tile_hashes(level, n * TILE_WIDTH, width)):
                below = level - 1
                first = (n * TILE_WIDTH + i) * TILE_WIDTH
                if merkle.root_of(source.tile_hashes(below, first, TILE_WIDTH)) != stored:
                    raise ProofError(f"hash {i} of {tile_path(level, n, width)} is not the root of the full tile "
                                     f"below it: the export was altered")
    root = merkle.subtree_hash(source, 0, size)
    if root != checkpoint.root:
        raise ProofError(f"the tiles give root {root.hex()}, but the signed checkpoint says "
                         f"{checkpoint.root.hex()}: the export does not match its checkpoint")
    return checkpoint
