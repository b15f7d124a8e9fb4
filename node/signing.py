"""Signing off the event loop: records are encoded, validated and signed in worker processes.

(And verified: a batch of records received from a partner, or of its
receipts, is verified in the same workers, `SigningPool.verify_all`.)

Encoding a record, validating it against its XSD and signing it is about two
thirds of the event loop's work at high load, and it is pure: message values
in, signed bytes out. So it runs where it does not hold up the loop:

- ``workers = 0`` signs inline, on the event loop (`InlineSigning`);
- ``workers = N`` runs N worker processes (`SigningPool`), each with its own
  `RecordSigner` over the node's key store, asking the store for the active
  key once per batch (a rotation made while the node runs is seen at the
  next batch, as inline).

The pool coalesces like the store's writer: callers put their items on a
queue, a dispatcher takes everything queued (up to ``max_batch`` records) and
sends it to a worker as one call, with at most one batch in flight per
worker. Many one-event requests therefore still cross to a worker in
batches, and the pickling and pipe cost is paid per batch.

A hop to a worker costs more CPU than signing one record (measured: about a
millisecond through ``ProcessPoolExecutor``'s queues and threads, against
~110 µs to sign), so a batch smaller than ``inline_below`` records is signed
on the event loop instead. Light load keeps its latency; under heavy load
requests queue while the loop signs, batches grow past the threshold, and
the workers take over by themselves. The threshold counts work, not items
(`_work`): a receipt acknowledging 150 records, or a token of 60 KB, weighs
what 150 records or 30 record-sized tokens do, so a batch's receipts are
signed and verified in the workers, not on the loop that takes ingest.

Each record comes back as a `SignedRecord` or as the exception that stopped
it (an XSD refusal, a key store that cannot sign), so one bad record never
fails its neighbours. A worker that dies fails only the batch it held; the
pool is rebuilt for the next one.

Workers are started with ``spawn``: the node has threads (the SQLite writer,
aiosqlite), and forking a threaded process is unsafe.

What crosses to and from a worker is pickled: bodies to sign, signed
records, verified messages. A frozen, slotted dataclass pickles through
the generic ``__getstate__``/``__setstate__`` of `dataclasses`, which look
its fields up again for every object, and a UUID through a state dict:
half of what a verified record cost to cross. So multiprocessing's
pickler (`ForkingPickler`, not pickle at large) rebuilds the message
values, records and verdicts by their constructors, and a UUID from its
integer: equal values, at half the cost (measured, pickling and
unpickling per record: a verified seal event 54 → 28 µs, a verified
receipt 34 → 14 µs, a receipt to sign 15 → 6 µs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import operator
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from mrx.keys.jwks import PublicKey
from mrx.keys.jws import SigningKey
from mrx.keys.keyring import KeyStore
from mrx.schemas import messages
from mrx.schemas.messages import Message

from .records import RecordSigner, Refusal, TrustedKey, Unsigned, VerifiedRecord, verify_records
from .storage import SignedRecord

log = logging.getLogger(__name__)

Outcome = SignedRecord | Exception


class Signing(Protocol):
    async def sign_all(self, items: Sequence[Unsigned]) -> list[Outcome]: ...

    async def verify_all(
        self, tokens: Sequence[bytes], keys: Mapping[str, TrustedKey], *, max_xml_bytes: int
    ) -> list[VerifiedRecord | Refusal]: ...

    async def close(self) -> None: ...


def sign_each(signer: RecordSigner, items: Sequence[Unsigned]) -> list[Outcome]:
    """Sign ``items`` with one key; an item that cannot be signed yields its exception."""
    try:
        key = signer.current_key()
    except Exception as exc:  # e.g. the active key was revoked: every record fails alike
        return [exc] * len(items)
    outcomes: list[Outcome] = []
    for item in items:
        try:
            outcomes.append(
                signer.sign_with(key, item.body, recipients=item.recipients, correlation_id=item.correlation_id)
            )
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


class InlineSigning:
    """Signing on the event loop: for small nodes and for ``workers = 0``."""

    def __init__(self, signer: RecordSigner) -> None:
        self._signer = signer

    async def sign_all(self, items: Sequence[Unsigned]) -> list[Outcome]:
        return sign_each(self._signer, items)

    async def verify_all(
        self, tokens: Sequence[bytes], keys: Mapping[str, TrustedKey], *, max_xml_bytes: int
    ) -> list[VerifiedRecord | Refusal]:
        return verify_records(tokens, keys, max_xml_bytes=max_xml_bytes)

    async def close(self) -> None:
        return None


# -- what crosses the pipe (see the module docstring) ----------------------------


def _by_constructor(cls: type) -> Callable[[Any], tuple[type, tuple[Any, ...]]]:
    """A reducer that rebuilds a dataclass by calling it with its fields, in order.

    Only for a class whose constructor just stores its fields: one that computes or checks
    anything would not be rebuilt faithfully, so it is refused when the module loads.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    if not all(f.init for f in dataclasses.fields(cls)) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} does more than store its fields when constructed")
    if len(names) == 1:
        return lambda value: (cls, (getattr(value, names[0]),))
    values = operator.attrgetter(*names)
    return lambda value: (cls, values(value))


def _uuid_by_int(value: UUID) -> tuple[type[UUID], tuple[None, None, None, None, int]]:
    return UUID, (None, None, None, None, value.int)


_CROSSING = [
    c for c in vars(messages).values()
    if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == messages.__name__
] + [SignedRecord, Unsigned, Refusal]
for _cls in _CROSSING:
    ForkingPickler.register(_cls, _by_constructor(_cls))
ForkingPickler.register(UUID, _uuid_by_int)


# -- the worker side -------------------------------------------------------------

_worker_signer: RecordSigner | None = None


def _start_worker(node_id: str, keys_path: str) -> None:
    global _worker_signer
    _exit_with_parent(os.getppid())
    store = KeyStore.open(keys_path)

    def current_key() -> SigningKey:
        store.reload()
        return store.signing_key

    _worker_signer = RecordSigner(node_id, current_key)


def _exit_with_parent(parent: int) -> None:
    """End this worker when the node is gone, however it went (SIGKILL included).

    A worker blocked on its task queue does not notice its parent dying, and
    an orphaned worker would hold the key store open and a process slot.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="mrx-parent-watch", daemon=True).start()


def _sign_in_worker(items: list[Unsigned]) -> list[Outcome]:
    assert _worker_signer is not None, "worker not initialised"
    return sign_each(_worker_signer, items)


def _verify_in_worker(
    tokens: list[bytes], keys: list[tuple[str, dict[str, str]]], max_xml_bytes: int
) -> list[tuple[Message, SignedRecord, str] | Refusal]:
    """`verify_records` in a worker: keys travel as (owner, JWKS member); results without the key objects."""
    lookup = {}
    for owner, member in keys:
        key = PublicKey.from_jwk(member)
        lookup[key.kid] = TrustedKey(owner, key)
    return [
        r if isinstance(r, Refusal) else (r.message, r.record, r.key.key.kid)
        for r in verify_records(tokens, lookup, max_xml_bytes=max_xml_bytes)
    ]


def _ready() -> bool:
    return _worker_signer is not None


# -- the pool --------------------------------------------------------------------

_RECORD_BYTES = 2048  # a record's compact JWS, about: what one unit of verification work is


def _work(items: Sequence[Unsigned]) -> int:
    """How many records' worth of encoding and signing ``items`` are: a Receipt counts its acknowledgements."""
    return sum(len(i.body.acknowledgements) if isinstance(i.body, messages.Receipt) else 1 for i in items)



class SigningPool:
    def __init__(
        self,
        inline: RecordSigner,
        keys_path: Path,
        workers: int,
        *,
        max_batch: int = 500,
        inline_below: int = 8,
    ) -> None:
        if workers < 1:
            raise ValueError("a signing pool needs at least one worker; use InlineSigning for none")
        self._inline = inline
        self._inline_below = inline_below
        self._node_id = inline.node_id
        self._keys_path = str(keys_path)
        self._workers = workers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Sequence[Unsigned], asyncio.Future[list[Outcome]]] | None] = asyncio.Queue()
        self._pool: ProcessPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._node_id, self._keys_path),
        )

    async def start(self) -> None:
        """Start the workers and wait until each has opened the key store."""
        loop = asyncio.get_running_loop()
        self._pool = self._new_pool()
        ready = await asyncio.gather(*(loop.run_in_executor(self._pool, _ready) for _ in range(self._workers)))
        if not all(ready):
            raise RuntimeError("a signing worker did not start")
        self._dispatcher = loop.create_task(self._dispatch(), name="mrx-signing-dispatcher")

    async def sign_all(self, items: Sequence[Unsigned]) -> list[Outcome]:
        if not items:
            return []
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((items, future))
        return await future

    async def verify_all(
        self, tokens: Sequence[bytes], keys: Mapping[str, TrustedKey], *, max_xml_bytes: int
    ) -> list[VerifiedRecord | Refusal]:
        if sum(len(t) for t in tokens) < self._inline_below * _RECORD_BYTES or self._pool is None:
            return verify_records(tokens, keys, max_xml_bytes=max_xml_bytes)
        members = [(key.owner, key.key.to_jwk()) for key in keys.values()]
        try:
            done = await asyncio.get_running_loop().run_in_executor(
                self._pool, _verify_in_worker, list(tokens), members, max_xml_bytes
            )
        except BrokenProcessPool:  # the dispatcher rebuilds the pool with its next batch; verify here meanwhile
            log.error("a worker died while verifying %d records; verifying them on the event loop", len(tokens))
            return verify_records(tokens, keys, max_xml_bytes=max_xml_bytes)
        return [r if isinstance(r, Refusal) else VerifiedRecord(r[0], r[1], keys[r[2]]) for r in done]

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self._workers)
        while True:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            size = _work(first[0])
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    self._queue.put_nowait(None)  # stop after this batch
                    break
                batch.append(item)
                size += _work(item[0])
            if size < self._inline_below:
                self._deliver(batch, sign_each(self._inline, [item for part, _ in batch for item in part]))
                continue
            await slots.acquire()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(lambda t: (self._in_flight.discard(t), slots.release()))
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _run(self, batch: list[tuple[Sequence[Unsigned], asyncio.Future[list[Outcome]]]]) -> None:
        items = [item for part, _ in batch for item in part]
        pool = self._pool
        assert pool is not None
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(pool, _sign_in_worker, items)
        except BrokenProcessPool as exc:
            log.error("a signing worker died; restarting the pool (%d records failed)", len(items))
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            outcomes = [exc] * len(items)
        except Exception as exc:  # e.g. a body that would not pickle: a bug, but fail only this batch
            log.exception("signing batch of %d records failed", len(items))
            outcomes = [exc] * len(items)
        self._deliver(batch, outcomes)

    @staticmethod
    def _deliver(batch: list[tuple[Sequence[Unsigned], asyncio.Future[list[Outcome]]]], outcomes: list[Outcome]) -> None:
        start = 0
        for part, future in batch:
            if not future.done():
                future.set_result(outcomes[start : start + len(part)])
            start += len(part)

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._pool is not None:
            # Off the loop: a pool whose worker was killed may take a moment to wind down.
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
