"""Running a node: assemble its parts, serve HTTP, stop cleanly.

`Node` owns the lifetime of everything a running node holds — the key store,
the database, the background scheduler and the HTTP listener — and nothing
else. Start order is keys, store, scheduler, HTTP; stop order is the reverse,
so the listener stops taking requests, in-flight requests finish (their
writes commit), then the writer drains and the database closes. SIGKILL skips
all of that, which is fine: nothing was acknowledged before its commit.

Records are signed in worker processes (`mrx.node.signing`) unless
``[signing] workers = 0``. A key rotation done with ``mrx keys rotate`` while
the node runs takes effect at the next batch: signers ask the key store for
the active key once per batch, which costs one ``stat`` when nothing changed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mrx.keys.jws import SigningKey
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import COSIGNATURE_V1, NoteSigner

from .access import Access
from .api import API_VERSION, NodeApi, problem_middleware
from .auditlog import AuditLog
from .config import NodeConfig
from .deciding import Recognition, agreements_of, rules_of
from .ingest import Ingest
from .jobs import Jobs
from .metrics import NodeMetrics
from .national import NationalSystem
from .outbound import Adapters, build_adapters
from .partners import Partners
from .receiving import Receiver
from .records import RecordSigner
from .routing import PartnerOffices, Router
from .sending import Deliveries, Puller, Sender
from .signing import InlineSigning, Signing, SigningPool
from .storage.sqlite import SqliteStore
from .unsealing import Unsealing
from .witness import Cosigning, Witness

log = logging.getLogger(__name__)

RECOGNITION_PROGRESS_SECONDS = 5  # how often recognition's progress is recorded (mrx.node.deciding)
ITINERARY_RETENTION = timedelta(days=90)  # a journey takes weeks; routing forgets itineraries older than this


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.keystore: KeyStore | None = None
        self._signing_kid: str | None = None
        self.port: int | None = None
        # What start() opened, closed in reverse by stop(): every closer runs
        # even if another fails, and a start that fails halfway is unwound.
        self._opened = AsyncExitStack()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._opened.aclose()
            raise

    async def _start(self) -> None:
        config = self.config
        self.keystore = KeyStore.open(config.keys_path)
        self._current_key()  # fail now, not at the first event, if the node cannot sign
        inline = RecordSigner(config.node_id, self._current_key)
        signing: Signing = InlineSigning(inline)
        if config.signing.workers:
            pool = SigningPool(inline, config.keys_path, config.signing.workers)
            await pool.start()
            signing = pool
        self._opened.push_async_callback(signing.close)
        store = await SqliteStore.open(config.database_path, max_batch_ops=config.storage.max_batch_ops)
        self._opened.push_async_callback(store.close)
        store.on_commit = self.metrics.observe_commit

        router = Router(
            config.office, [PartnerOffices(p.node_id, tuple(p.offices)) for p in config.partners],
            route_to=config.exchange.route_to,
        )
        keep_since = datetime.now(timezone.utc) - ITINERARY_RETENTION
        for itinerary in await store.itineraries():
            if itinerary.updated_at >= keep_since:
                router.learn(itinerary)
        self.metrics.itineraries.set(len(router))

        settings = config.exchange
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.request_timeout_seconds, connect=5),
            headers={"User-Agent": f"mrx/{API_VERSION} ({config.node_id})"},
        )
        self._opened.push_async_callback(session.close)
        partners = Partners(config.node_id, config.partners, store, self.metrics)
        await partners.load(session)
        receiver = Receiver(
            config.node_id, partners, store, signing, self.metrics, max_xml_bytes=config.limits.max_xml_bytes
        )
        senders = [
            Sender(
                config.node_id, partner, store, partners, self._current_key, session, settings, self.metrics, signing
            )
            for partner in config.partners
        ]
        puller = Puller(config.node_id, partners, store, receiver, self._current_key, session, settings, self.metrics)
        deliveries = Deliveries(senders, puller)
        self._opened.push_async_callback(deliveries.close)
        store.on_queued = deliveries.queued

        jobs = Jobs(self.metrics)
        self._opened.push_async_callback(jobs.close)

        async def sweep() -> None:
            deliveries.sweep()
            counts = await store.outbox_counts([p.node_id for p in config.partners])
            for (partner, state), count in counts.items():
                self.metrics.outbox_messages.labels(partner, state.value).set(count)

        async def prune() -> None:
            now = datetime.now(timezone.utc)
            pruned = await store.prune_delivered(now - timedelta(days=settings.keep_delivered_days))
            partners.expire_replays()
            router.forget_before(now - ITINERARY_RETENTION)
            recognition.forget_before(now - ITINERARY_RETENTION)
            self.metrics.itineraries.set(len(router))
            if pruned:
                log.info("pruned %d delivered outbox rows", pruned)

        if config.partners:
            jobs.add("keys", partners.refresh_all, settings.key_refresh_seconds)
            jobs.add("catch-up", puller.pull_all, settings.pull_seconds)
            jobs.add("sweep", sweep, settings.sweep_seconds, at_start=True)
        jobs.add("prune", prune, 3600)
        audit = AuditLog.of(config, self.keystore, store, self.metrics.log_checkpoint_size.set)
        witness = Witness(
            store, NoteSigner(config.log_origin, self.keystore.note_key(), COSIGNATURE_V1),
            [p.log_verifier for p in config.partners if p.log_verifier is not None], self.metrics,
        )
        cosigning = Cosigning(store, audit, config.partners, session, self.metrics)

        async def checkpoint() -> None:
            await audit.checkpoint()
            await cosigning.collect()

        jobs.add("checkpoint", checkpoint, config.log.checkpoint_seconds, at_start=True)

        recognition = Recognition(
            node_id=config.node_id, office=config.office, store=store, signing=signing, router=router,
            partners=partners, agreements=agreements_of(config), rules=rules_of(config), metrics=self.metrics,
            max_xml_bytes=config.limits.max_xml_bytes,
        )
        await recognition.start(datetime.now(timezone.utc) - ITINERARY_RETENTION)
        self._opened.push_async_callback(recognition.close)
        jobs.add("recognition-progress", recognition.save_progress, RECOGNITION_PROGRESS_SECONDS)
        ingest = Ingest(store, signing, router, config.office, self.metrics)
        ingest.on_stored = receiver.on_stored = recognition.observe
        access = Access(store)
        unsealing = Unsealing(config.node_id, config.office, store, signing, router, recognition, self.metrics)
        national = NationalSystem(store, ingest, router, recognition, unsealing, self.metrics)
        adapters = Adapters.of(
            build_adapters(config), config.node_id, store, self.metrics,
            retry_min_seconds=settings.retry_min_seconds, retry_max_seconds=settings.retry_max_seconds,
        )

        def committed(count: int, seconds: float) -> None:
            self.metrics.observe_commit(count, seconds)
            adapters.committed()

        store.on_commit = committed

        api = NodeApi(
            config=config,
            store=store,
            ingest=ingest,
            access=access,
            keystore=self.keystore,
            metrics=self.metrics,
            partners=partners,
            receiver=receiver,
            deliveries=deliveries,
            router=router,
            recognition=recognition,
            unsealing=unsealing,
            national=national,
            audit=audit,
            witness=witness,
        )
        app = web.Application(middlewares=[problem_middleware(self.metrics)], client_max_size=config.limits.max_body_bytes)
        app.add_routes(api.routes())

        # Bodies are decompressed by mrx.node.body, with a bound; never by aiohttp.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await runner.setup()
        # Closed first: the listener stops and requests in flight finish (and
        # commit) while the signers and the store are still there.
        self._opened.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []  # the only way to learn port 0's choice
        self.port = sockets[0].getsockname()[1] if sockets else config.port

        if config.mqtt is not None:
            # Gateways over MQTT (`mrx.adapters.mqtt`): stopped before the HTTP listener, so that
            # messages being stored commit and are acknowledged while the store is still there.
            from mrx.adapters.mqtt import LockListener

            listener = LockListener.of(config, ingest=ingest, access=access, store=store, metrics=self.metrics)
            await listener.start()
            self._opened.push_async_callback(listener.stop)
            unsealing.on_issued = listener.authorised

        # National-system adapters: inbound work and outbound feeds, once the node answers.
        await adapters.start(national, self.metrics)
        self._opened.push_async_callback(adapters.stop)

        # Exchange starts once the node can answer: partners that pull from us
        # or push receipts back find it up. Keys first, so that what the first
        # catch-up brings verifies; neither waits for a partner that is down.
        jobs.start()
        deliveries.start()
        if config.partners:
            asyncio.get_running_loop().create_task(self._first_contact(jobs, partners, puller))

    async def _first_contact(self, jobs: Jobs, partners: Partners, puller: Puller) -> None:
        await jobs.run_now("keys", partners.refresh_all)
        await jobs.run_now("catch-up", puller.pull_all)

    def _current_key(self) -> SigningKey:
        assert self.keystore is not None
        self.keystore.reload()
        key = self.keystore.signing_key
        if key.kid != self._signing_kid:
            log.info("signing with key %s (%s)", key.kid, key.alg)
            self._signing_kid = key.kid
            self.metrics.signing_key_info.clear()
            self.metrics.signing_key_info.labels(key.kid, key.alg).set(1)
        return key

    async def stop(self) -> None:
        await self._opened.aclose()


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM or SIGINT."""
    node = Node(config)
    await node.start()
    # What start() built lives as long as the process: keep it out of the
    # collector's scans, and collect young objects less often (a request makes many).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = f"http://{config.host}:{node.port}"
    # One parseable line: scripts and tests wait for it to know the node is up,
    # and may stop it at once: the handlers above are already in place.
    print(f"mrx: node {config.node_id} ({config.office}) listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        print(f"mrx: node {config.node_id} stopping", file=sys.stderr, flush=True)
        await node.stop()


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the node's main coroutine on uvloop where it is installed (Linux, macOS).

    uvloop halves the event loop's own overhead, which is most of the cost of
    a one-event request; the node behaves the same on the standard loop.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every run of every job at INFO; the node counts them in /metrics instead.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def default_node_dir() -> Path:
    return Path.cwd() / "mrx-data"
