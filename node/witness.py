"""Witnessing: partner nodes cosign each other's checkpoints, so that neither can rewrite its history unseen.

Protocol: C2SP ``tlog-witness`` ``add-checkpoint`` and ``tlog-cosignature`` v1,
over the node's HTTP API at ``POST /v1/log/witness/add-checkpoint``. Each node
is a witness for the logs of the partners whose ``log_key`` its config holds,
and asks those partners to witness its own log. The witness key is the
node's note key (`mrx.keys.keyring.KeyStore.note_key`) as a cosigning key
(type 0x04) under the node's log origin; so a partner that holds a node's
``log_key`` also knows its witness key, and one out-of-band exchange of keys
sets up both directions.

As a witness (`Witness`)
    A request is ``old <size>``, the consistency proof lines, an empty line and
    the signed checkpoint. Whatever the request, the witness keeps the latest
    checkpoint it cosigned per log, and judges the new one against it
    (`judge`, pure), atomically with the update (one writer transaction):

    ======================================  =======  ===========================
    the request                             status   kept as evidence of a fork
    ======================================  =======  ===========================
    malformed, or old size > its size       400
    an origin this node does not witness    404
    not signed by that log's key            403
    smaller than the checkpoint held        409      yes: the log was rolled back
    old size is not the size held           409      (body: the size held)
    same size as held, another root         409      yes: two histories
    consistency proof does not verify       422      yes: history rewritten
    consistent                              200      (body: the cosignature)
    ======================================  =======  ===========================

    Evidence is the checkpoint held, the request as received, and the reason,
    in ``witness_evidence``; it is counted in ``mrx_witness_evidence`` (alert
    on any) and logged at ERROR. A 409's body is the size held, as
    ``text/x.tlog.size``, so the log can retry with the right old size.

As a log (`Cosigning`)
    After each checkpoint, the node sends the latest one to each witness from
    the size that witness last cosigned (0 at first), with the consistency
    proof; on a 409 it retries once from the size the witness names. A
    cosignature that verifies under the witness key is appended to the stored
    checkpoint note, which is what ``GET /v1/log/checkpoint`` and every
    ``tlog-proof`` then carry. A witness that is down is asked again at the
    next checkpoint run; nothing queues up, since only the latest checkpoint
    matters.
"""

from __future__ import annotations

import base64
import binascii
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from mrx.keys import notes
from mrx.keys.notes import (
    COSIGNATURE_V1,
    DECIMAL,
    Checkpoint,
    NoteError,
    NoteSigner,
    VerifierKey,
)

from . import merkle
from .auditlog import AuditLog
from .config import Partner
from .metrics import NodeMetrics
from .problems import Problem
from .storage import sqlite_log
from .storage.sqlite import SqliteStore
from .storage.sqlite_log import Witnessed
from .storage.sqlite_rows import ts

log = logging.getLogger(__name__)

WITNESS_PATH = "/v1/log/witness/add-checkpoint"
SIZE_MEDIA_TYPE = "text/x.tlog.size"
MAX_REQUEST_BYTES = 16_384  # 63 proof lines and a checkpoint with a few cosignatures fit in 8 KiB
MAX_PROOF_LINES = 63


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """An ``add-checkpoint`` request: the size the witness is believed to hold, a proof from it, the checkpoint."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str  # the signed checkpoint, verbatim

    def body(self) -> bytes:
        lines = [f"old {self.old_size}", *(base64.b64encode(h).decode() for h in self.proof)]
        return ("\n".join(lines) + "\n\n" + self.note).encode()

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpoint:
        """The request in ``body``; `Problem` ``witness-request-malformed`` saying what is wrong."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("the body is not UTF-8 text") from None
        head, blank, note = text.partition("\n\n")
        if not blank:
            raise _malformed("an add-checkpoint body is 'old N', proof lines, an empty line, then the checkpoint")
        lines = head.split("\n")
        if not lines[0].startswith("old ") or not DECIMAL.fullmatch(lines[0][4:]):
            raise _malformed("the first line is 'old N', N a decimal without leading zeros")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise _malformed(f"the request has {len(lines) - 1} proof lines; at most {MAX_PROOF_LINES}")
        try:
            proof = tuple(base64.b64decode(line, validate=True) for line in lines[1:])
        except binascii.Error:
            raise _malformed("a proof line is not base64") from None
        if any(len(h) != 32 for h in proof):
            raise _malformed("a proof line is not a 32-byte hash")
        return cls(int(lines[0][4:]), proof, note)


class Conflict(Exception):
    """409: the witness holds another size for this log; the body says which."""

    def __init__(self, held_size: int) -> None:
        super().__init__(f"the witness holds a checkpoint of size {held_size}")
        self.held_size = held_size


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a witness makes of a checkpoint: cosign it, or refuse it (and whether that is evidence of a fork)."""

    cosign: bool
    status: int = 200
    reason: str = ""
    evidence: bool = False
    held_size: int = 0


def judge(held: Witnessed | None, old_size: int, proof: Sequence[bytes], checkpoint: Checkpoint) -> Verdict:
    """The witness's decision on a checkpoint already verified as signed by its log (see the module table)."""
    held_size = held.size if held is not None else 0
    if held is not None and checkpoint.size < held.size:
        return Verdict(False, 409, f"the log offers size {checkpoint.size}, smaller than the size {held.size} "
                                   "this witness cosigned: it was rolled back", True, held.size)
    if old_size > checkpoint.size:
        return Verdict(False, 400, f"old size {old_size} is larger than the checkpoint's size {checkpoint.size}")
    if old_size != held_size:
        return Verdict(False, 409, f"this witness holds size {held_size}, not {old_size}", False, held_size)
    if held is None:
        if proof:
            return Verdict(False, 422, "a request from old size 0 carries no consistency proof")
        return Verdict(True)
    if held.size == checkpoint.size:
        if held.root != checkpoint.root:
            return Verdict(False, 409, f"the log offers a second tree of size {held.size} with another root: "
                                       "two histories", True, held.size)
        return Verdict(True)
    try:
        merkle.verify_consistency(held.size, checkpoint.size, proof, held.root, checkpoint.root)
    except merkle.ProofError as exc:
        return Verdict(False, 422, f"the checkpoint does not extend the one of size {held.size} this witness "
                                   f"cosigned ({exc})", True, held.size)
    return Verdict(True)


class Witness:
    """This node as a witness of its partners' logs."""

    def __init__(self, store: SqliteStore, key: NoteSigner, logs: Sequence[VerifierKey], metrics: NodeMetrics) -> None:
        if key.verifier.kind != COSIGNATURE_V1:
            raise ValueError("a witness signs with a cosignature/v1 key")
        self._store = store
        self._key = key
        self._logs = {k.name: k for k in logs}
        self._metrics = metrics

    async def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line for the checkpoint in ``body``; `Problem` or `Conflict` if it is refused."""
        request = AddCheckpoint.parse(body)
        try:
            note = notes.parse(request.note)
            checkpoint = Checkpoint.from_text(note.text)
        except NoteError as exc:
            raise _malformed(f"the checkpoint is not a signed note: {exc}") from None
        key = self._logs.get(checkpoint.origin)
        if key is None:
            raise Problem("witness-unknown-log", f"this node witnesses no log named {checkpoint.origin!r}; "
                                                 "its operator adds the partner's log_key to the node's config")
        try:
            signed = notes.verify(note, [key])
        except NoteError as exc:
            signed, why = [], str(exc)
        else:
            why = "it carries no signature by that log's key"
        if key not in signed:
            raise Problem("witness-signature-invalid", f"the checkpoint of {checkpoint.origin} is not signed by "
                                                       f"the log key this node holds for it: {why}")
        received_at = ts(datetime.now(UTC))
        text = body.decode()

        def decide(db: sqlite3.Connection) -> Verdict:
            held = sqlite_log.witnessed(db, checkpoint.origin)
            verdict = judge(held, request.old_size, request.proof, checkpoint)
            if verdict.evidence and held is not None:
                sqlite_log.put_evidence(db, checkpoint.origin, verdict.reason, held, text, received_at)
            if verdict.cosign:
                sqlite_log.put_witnessed(db, checkpoint, request.note, received_at)
            return verdict

        verdict: Verdict = await self._store.log_write(decide)
        outcome = "cosigned" if verdict.cosign else str(verdict.status)
        self._metrics.witness_requests.labels(checkpoint.origin, outcome).inc()
        if verdict.evidence:
            self._metrics.witness_evidence.labels(checkpoint.origin).inc()
            log.error("witnessing %s: %s; the request is kept as evidence", checkpoint.origin, verdict.reason)
        if verdict.cosign:
            return self._key.cosign(note.text, int(time.time()))
        if verdict.status == 409:
            raise Conflict(verdict.held_size)
        code = "witness-request-malformed" if verdict.status == 400 else "witness-proof-invalid"
        raise Problem(code, verdict.reason)


class Cosigning:
    """This node's log, asking its partners to witness it."""

    def __init__(self, store: SqliteStore, audit: AuditLog, partners: Sequence[Partner], session: aiohttp.ClientSession,
                 metrics: NodeMetrics) -> None:
        self._store = store
        self._audit = audit
        self._witnesses = [(p, p.log_verifier.cosigning()) for p in partners if p.log_verifier is not None]
        self._session = session
        self._metrics = metrics

    async def collect(self) -> None:
        """Ask every witness that has not cosigned the latest checkpoint to do so."""
        latest = await self._audit.latest()
        if latest is None:
            return
        for partner, key in self._witnesses:
            try:
                await self._ask(partner, key, *latest)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._metrics.cosignatures.labels(partner.node_id, "unreachable").inc()
                log.info("witness %s unreachable (%s); asking again at the next checkpoint", partner.node_id, exc)

    async def _ask(self, partner: Partner, key: VerifierKey, size: int, note: str) -> None:
        old = await self._store.log_read(lambda db: sqlite_log.cosigned_size(db, key.name))
        if old >= size:
            return
        for _ in range(2):
            proof = await self._audit.consistency(old, size) if old else []
            body = AddCheckpoint(old, tuple(proof), note).body()
            async with self._session.post(partner.base_url + WITNESS_PATH, data=body,
                                          headers={"Content-Type": "text/plain"}) as response:
                text = (await response.content.read(MAX_REQUEST_BYTES)).decode("utf-8", "replace")
                status = response.status
            if status == 409 and DECIMAL.fullmatch(text.strip()):
                held = int(text.strip())
                # The witness holding this very size cosigned this checkpoint already (its answer was lost, or
                # the request arrived twice): asked from that size, it cosigns it again. A larger size, or a 409
                # to a request from the size it holds (another root at that size), is another history.
                if held > size or held == old:
                    self._metrics.cosignatures.labels(partner.node_id, "conflict").inc()
                    log.error("witness %s holds a checkpoint of size %d of this log, and this log offers %d: "
                              "this log was rolled back or forked; see docs/audit.md", partner.node_id, held, size)
                    return
                old = held
                continue
            if status != 200:
                self._metrics.cosignatures.labels(partner.node_id, str(status)).inc()
                log.warning("witness %s refused checkpoint %d: HTTP %d %s", partner.node_id, size, status, text[:300])
                return
            await self._keep(partner, key, size, note, text)
            return

    async def _keep(self, partner: Partner, key: VerifierKey, size: int, note: str, lines: str) -> None:
        try:
            cosigned = notes.parse(note).with_lines(lines.splitlines(keepends=True))
            valid = key in notes.verify(cosigned, [key])
        except NoteError as exc:
            valid, lines = False, f"{lines[:200]} ({exc})"
        if not valid:
            self._metrics.cosignatures.labels(partner.node_id, "invalid").inc()
            log.error("witness %s answered checkpoint %d without a valid cosignature: %s", partner.node_id, size, lines)
            return
        line = next(s.line for s in cosigned.signatures if (s.name, s.key_id) == (key.name, key.id))
        now = ts(datetime.now(UTC))
        await self._store.log_write(
            lambda db: sqlite_log.add_cosignature(db, size, key.name, line, now)
        )
        self._metrics.cosignatures.labels(partner.node_id, "cosigned").inc()


def _malformed(detail: str) -> Problem:
    return Problem("witness-request-malformed", detail)
