"""Outbound delivery to national-system adapters: the records table is the queue.

Each configured adapter (`mrx.adapters.interface`) has one durable cursor,
``adapter_cursors.delivered_seq``: every record up to it has been delivered to
the adapter or was not for it. A `Feed` per adapter reads the records after
its cursor, in commit order, of the message types the adapter asked for
(`KINDS`); skips this node's own control results (the national system made
them); decodes each and calls `Adapter.deliver`; and moves the cursor past it
only when that returned. Nothing is written into the ingest transaction, so
adapters cost the hot path nothing, and an adapter that is down, or a node
killed mid-delivery, loses nothing: after a restart delivery resumes at the
cursor, so an event may be delivered twice (at least once; each carries its
``message_id`` for the receiver to deduplicate), never skipped.

Failures. `DeliveryFailed` (or any exception) is retried, the same event
again so that order holds, after an exponential backoff with full jitter,
capped at ``[exchange] retry_max_seconds`` (minutes, never hours): a
national system back after an hour's outage is reached within that cap.
``DeliveryFailed(permanent=True)`` means retrying cannot help: the record is
kept in the database's ``adapter_failures`` table with the reason, logged at
WARNING and counted as ``refused`` in ``mrx_adapter_deliveries_total``, and
delivery goes on. A feed that has caught up sleeps until the store commits
again (`wake`) or a sweep interval passes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Awaitable, Sequence
from datetime import datetime, timezone
from typing import Any

from mrx.adapters.interface import (
    KINDS,
    Adapter,
    AdapterConfigError,
    AdapterContext,
    DeliveryFailed,
    NationalInbound,
    Outbound,
    resolve,
)
from mrx.keys.jws import parse_compact
from mrx.schemas import codec

from .config import ConfigError, NodeConfig
from .metrics import NodeMetrics
from .problems import Problem
from .storage import sqlite_adapters
from .storage.sqlite import SqliteStore
from .storage.sqlite_adapters import Cursor, PendingRecord
from .storage.sqlite_rows import ts

log = logging.getLogger(__name__)

BATCH = 100
SWEEP_SECONDS = 5.0


class Feed:
    """One adapter's deliveries, in commit order, from its durable cursor."""

    def __init__(self, adapter: Adapter, node_id: str, store: SqliteStore, metrics: NodeMetrics, *,
                 retry_min_seconds: float, retry_max_seconds: float) -> None:
        self.adapter = adapter
        self._node_id = node_id
        self._store = store
        self._metrics = metrics
        self._retry = (retry_min_seconds, retry_max_seconds)
        self._types: Sequence[str] = [t for t, kind in KINDS.items() if kind in adapter.kinds]
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._types:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"adapter-{self.adapter.name}")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        name = self.adapter.name
        gauged = -SWEEP_SECONDS
        while True:
            self._wake.clear()
            cursor, batch = await self._store.log_read(self._next_batch)
            loop_time = asyncio.get_running_loop().time()
            if loop_time - gauged >= SWEEP_SECONDS:  # a count over the backlog: not on every batch
                gauged = loop_time
                backlog = await self._store.log_read(
                    lambda db: sqlite_adapters.backlog(db, cursor.delivered_seq, self._types)
                )
                self._metrics.adapter_backlog.labels(name).set(backlog)
            if not batch:
                self._metrics.adapter_backlog.labels(name).set(0)
                try:
                    await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)
                except TimeoutError:
                    pass
                continue
            attempts = cursor.attempts
            for record in batch:
                if not await self._offer(record):
                    attempts += 1
                    await asyncio.sleep(self._backoff(attempts))
                    break
                attempts = 0

    def _next_batch(self, db: sqlite3.Connection) -> tuple[Cursor, list[PendingRecord]]:
        """The adapter's cursor and the records after it, in one read."""
        cursor = sqlite_adapters.cursor(db, self.adapter.name)
        return cursor, sqlite_adapters.pending(db, cursor.delivered_seq, self._types, BATCH)

    async def _offer(self, record: PendingRecord) -> bool:
        """Deliver one record; True if the cursor moved past it."""
        name, now = self.adapter.name, _now()
        event = self._event(record)
        if event is None:  # this node's own control result: its national system made it
            await self._store.log_write(lambda db: sqlite_adapters.advance(db, name, record.seq, now))
            return True
        try:
            await self.adapter.deliver(event)
        except asyncio.CancelledError:
            raise
        except DeliveryFailed as exc:
            if exc.permanent:
                log.warning("adapter %s refused record %s for good: %s", name, record.message_id, exc.detail)
                self._metrics.adapter_deliveries.labels(name, "refused").inc()
                reason = exc.detail
                await self._store.log_write(lambda db: sqlite_adapters.refused(db, name, record, reason, now))
                return True
            return await self._failed(record, exc.detail)
        except Exception as exc:  # an adapter's bug or its system's: retried, and said loudly
            log.exception("adapter %s failed on record %s", name, record.message_id)
            return await self._failed(record, f"{type(exc).__name__}: {exc}")
        self._metrics.adapter_deliveries.labels(name, "delivered").inc()
        await self._store.log_write(lambda db: sqlite_adapters.advance(db, name, record.seq, now))
        return True

    async def _failed(self, record: PendingRecord, detail: str) -> bool:
        name, now = self.adapter.name, _now()
        log.info("adapter %s could not take record %s yet: %s", name, record.message_id, detail)
        self._metrics.adapter_deliveries.labels(name, "failed").inc()
        await self._store.log_write(lambda db: sqlite_adapters.failed_attempt(db, name, detail[:500], now))
        return False

    def _event(self, record: PendingRecord) -> Outbound | None:
        kind = KINDS[record.message_type]
        if kind == "control-result" and record.sender == self._node_id:
            return None
        payload = parse_compact(record.jws, max_bytes=len(record.jws)).payload  # verified when it was stored
        return Outbound(seq=record.seq, kind=kind, message=codec.decode(payload), jws=record.jws, xml=payload)

    def _backoff(self, attempts: int) -> float:
        low, cap = self._retry
        return random.uniform(low, min(cap, low * 2 ** min(attempts, 30)))


def build_adapters(config: NodeConfig) -> list[Adapter]:
    """The adapters ``[[adapters]]`` names, built and configured; `ConfigError` with the fix if one cannot be."""
    context = AdapterContext(node_id=config.node_id, office=config.office, base_dir=config.base_dir)
    built = []
    for table in config.adapters:
        try:
            built.append(resolve(table.kind).from_config(table.name, table.options, context))
        except AdapterConfigError as exc:
            raise ConfigError(str(exc)) from None
    return built


class Adapters:
    """The configured adapters: started with the node, fed after every commit, stopped with it."""

    def __init__(self, adapters: Sequence[Adapter], feeds: Sequence[Feed]) -> None:
        self._adapters = list(adapters)
        self._feeds = list(feeds)

    @classmethod
    def of(cls, adapters: Sequence[Adapter], node_id: str, store: SqliteStore, metrics: NodeMetrics, *,
           retry_min_seconds: float, retry_max_seconds: float) -> Adapters:
        feeds = [
            Feed(a, node_id, store, metrics, retry_min_seconds=retry_min_seconds, retry_max_seconds=retry_max_seconds)
            for a in adapters
        ]
        return cls(adapters, feeds)

    async def start(self, inbound: NationalInbound, metrics: NodeMetrics) -> None:
        for adapter in self._adapters:
            await adapter.start(_Counted(inbound, adapter.name, metrics))
        for feed in self._feeds:
            feed.start()

    def committed(self) -> None:
        for feed in self._feeds:
            feed.wake()

    async def stop(self) -> None:
        for feed in self._feeds:
            await feed.close()
        for adapter in reversed(self._adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("adapter %s did not stop cleanly", adapter.name)


class _Counted:
    """The inbound port as one adapter sees it: each item counted by outcome in ``mrx_adapter_inbound``."""

    def __init__(self, inbound: NationalInbound, name: str, metrics: NodeMetrics) -> None:
        self._inbound, self._name, self._metrics = inbound, name, metrics

    async def _counted(self, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            answer = await call
        except Problem:
            self._metrics.adapter_inbound.labels(self._name, "rejected").inc()
            raise
        self._metrics.adapter_inbound.labels(self._name, "accepted").inc()
        return answer

    async def control_result(self, data: Any) -> dict[str, Any]:
        return await self._counted(self._inbound.control_result(data))

    async def itinerary(self, data: Any) -> dict[str, Any]:
        return await self._counted(self._inbound.itinerary(data))

    async def arrival(self, data: Any) -> dict[str, Any]:
        return await self._counted(self._inbound.arrival(data))

    async def unseal_request(self, data: Any) -> dict[str, Any]:
        return await self._counted(self._inbound.unseal_request(data))


def _now() -> str:
    return ts(datetime.now(timezone.utc))
