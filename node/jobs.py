"""Background work on an APScheduler inside the node, with its state in ``/metrics``.

| job            | every                          | does                                              |
|----------------|--------------------------------|---------------------------------------------------|
| ``keys``       | ``exchange.key_refresh_seconds`` | follow each partner's key-set statements        |
| ``sweep``      | ``exchange.sweep_seconds``     | wake senders whose backoff passed; outbox gauges  |
| ``catch-up``   | ``exchange.pull_seconds``      | pull what partners hold for this node             |
| ``prune``      | hourly                         | delivered outbox rows past retention, replay cache, old itineraries |
| ``checkpoint`` | ``log.checkpoint_seconds``     | sign an audit-log checkpoint if the log grew, ask witnesses to cosign it (also at start) |

``keys`` and ``catch-up`` also run once at start, in that order (keys first,
so that pulled records verify). Each run is counted in
``mrx_job_runs{job,outcome}``, timed in ``mrx_job_seconds`` and, when it
succeeds, stamped in ``mrx_job_last_success_timestamp_seconds``: alert when
a stamp grows old. A job never runs twice at once (``max_instances=1``); a
run missed while the previous one was still going is skipped, not queued up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .metrics import NodeMetrics

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class Jobs:
    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._scheduler = AsyncIOScheduler(timezone=timezone.utc)

    def add(self, name: str, job: Job, every_seconds: float, *, at_start: bool = False) -> None:
        first = datetime.now(timezone.utc) + (timedelta(0) if at_start else timedelta(seconds=every_seconds))
        self._scheduler.add_job(
            self._observed(name, job), "interval", seconds=every_seconds, id=name, name=name,
            next_run_time=first, max_instances=1, coalesce=True, misfire_grace_time=None,
        )

    async def run_now(self, name: str, job: Job) -> None:
        """Run a job once, observed like a scheduled run (used at start, before serving)."""
        await self._observed(name, job)()

    def _observed(self, name: str, job: Job) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started = time.perf_counter()
            try:
                await job()
            except asyncio.CancelledError:  # the node is stopping
                self._metrics.job_runs.labels(name, "cancelled").inc()
                return
            except Exception:
                log.exception("background job %s failed", name)
                self._metrics.job_runs.labels(name, "error").inc()
            else:
                self._metrics.job_runs.labels(name, "ok").inc()
                self._metrics.job_last_success.labels(name).set(time.time())
            finally:
                self._metrics.job_seconds.labels(name).observe(time.perf_counter() - started)

        return run

    def start(self) -> None:
        self._scheduler.start()

    async def close(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
