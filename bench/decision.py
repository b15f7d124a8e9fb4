"""Recognition decisions at the border: arrival → signed decision latency, decisions/s, memory, beside the ceiling.

Run from the repository root (about a minute; ``--quick``: a smoke run of about 15 seconds):

    PYTHONPATH=.dev .venv/bin/python bench/decision.py [--quick] [--containers N] [--json FILE]

What it measures
----------------
The issue: with 10,000 containers in transit and their event histories in
the database, the time from an arrival event to the signed decision being
available (p50/p99), and decisions/s. Goal: p99 under 50 ms, and a cost that
does not grow with the number of containers in transit.

One deciding node, Dostyk (KZ-DOS, office KZDOS), in its own process
(``make_node`` + ``NodeProcess``), with one partner, Alashankou (CN-AKL,
office CNAKL), and an ``[[agreements]]`` with it. CN-AKL is not running:
its URL is a closed port, and KZ-DOS trusts its key from the key-set
statements stored in its database (what a node keeps as its partner's last
known good keys). So the figures are KZ-DOS's alone; its outbox keeps the
decisions addressed to CN-AKL, retried with the node's own backoff.

Containers in transit are written into KZ-DOS's database *before* the node
starts, through the node's own store (`SqliteStore`, as its receiver writes
them): for each container, an itinerary ``CNAKL → KZDOS``, and the records
CN-AKL sent about it, each signed by CN-AKL (`RecordSigner`, addressed to
KZ-DOS) and stored as received with a receipt signed by KZ-DOS:

- a control result: a physical inspection, result A1, in which customs
  affixed the lock's electronic seal;
- 20 seal events of the container's lock, numbered 1 to 20: ``sealed`` at
  CNAKL 15 minutes after the inspection (naming the consignment), then a
  ``position`` every 30 minutes, the last one 15 minutes before the arrival.

Every container's evidence is intact, so every decision must be RECOGNISED;
one that is not stops the benchmark with the node's reasons (a benchmark of
failing decisions would measure something else). Records are signed in a
process pool and stored thousands per commit.

The node is measured twice: with ``N/10`` containers in transit (1,000 by
default), then stopped, given the other 90 % and started again (``N``,
10,000). Each time, on containers picked at random among those that have
not arrived yet, each used once:

- **arrival, national system**: ``POST /v1/arrivals`` for one consignment,
  one request at a time. The node records the arrival, reads the case,
  verifies the control result again, evaluates the seal chain, signs the
  decision and commits it before it answers with the signed decision: the
  figure is the request's latency. ``--sample`` arrivals (200).
- **arrival, gateway**: KZ-DOS's gateway posts the lock's next event (21),
  located at KZDOS: an arrival. The gateway's answer comes once the event is
  stored; the decision is taken in the background. The benchmark polls the
  database (read-only, every millisecond) for the node's decision on that
  consignment: latency = send → decision row visible (committed), so up to
  one poll late. Also shown: send → ``records.stored_at`` of the decision
  (taken as the node's commit starts, same clock), and the gateway's answer.
  ``--sample`` arrivals, one at a time.
- **decisions/s**: ``--throughput`` arrivals (500) posted by ``--connections``
  (4) concurrent clients, closed loop: decisions ÷ wall time from the first
  send to the last answer, with the latency under that load, the node's CPU
  per decision (its process and signing workers) and the rest of the
  machine's load.

A few unrecorded arrivals warm the node first (workers started, schemas
loaded). Also reported: the node's own decision timer over the one-at-a-time
national arrivals (``mrx_decision_seconds`` from ``/metrics``: take, sign and
store, without HTTP), and after each phase its peak RSS (``VmHWM``, summed
over its processes). The last column of the report divides the ``N``
figures by the ``N/10`` ones: 1.0 means the cost does not grow with the
containers in transit.

The ceiling, measured in the same run
--------------------------------------
As in ``bench/ingest.py`` (whose helpers this reuses), each figure is
printed beside what this machine can do at that moment for the same work:

- per decision, best of 5: an Ed25519 verification of the control result's
  real JWS signing input, lxml parse + XSD validation of its XML (the
  node's own ``ControlResultNotification.xsd``), an Ed25519 signature of a
  real decision record's signing input, parse + XSD validation of the
  decision's XML, and an SQLite insert of the decision's JWS (WAL,
  ``synchronous=FULL``): one commit (p50 of 200) for latency, 100 rows per
  commit for throughput;
- HTTP: ``ingest.py``'s bare aiohttp echo server, driven by the same client
  with the same bodies, one at a time and at the same concurrency, right
  before the node.

Latency floor = echo p50 + verify + XSD (control result) + sign + XSD
(decision) + one-row commit; the issue's goal (50 ms) is printed as p99 ÷
50 ms. Throughput ceiling = ``1 / (1/echo requests/s + verify + XSD + sign +
XSD + insert)``, serial on one core; ``ratio`` = decisions/s ÷ ceiling. The
node's work beyond these (recording the arrival, which is a commit of its
own; reading the case; evaluating the chain; HTTP routing; JSON) is its own
overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

try:
    import aiohttp
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from lxml import etree

    from bench.exchange import _sample, scrape
    from bench.ingest import (
        _met,
        _best_per_call,
        _echo_process,
        _percentile,
        _progress,
        machine_busy,
        measure_sqlite,
        measure_xsd,
        memory_kib,
        print_report,
        process_cpu,
    )
    from mrx.keys.b64url import decode as b64url_decode
    from mrx.keys.jws import SigningKey
    from mrx.keys.keyring import KeyStore
    from mrx.node.config import Exchange
    from mrx.node.records import RecordSigner
    from mrx.node.storage import Itinerary, ReceivedWrite, SignedRecord, WriteStatus
    from mrx.node.storage.sqlite import SqliteStore
    from mrx.schemas.codes import (
        ConsignmentReferenceType,
        ControlResultCode,
        ControlType,
        DecisionOutcome,
        ReceiptStatus,
        SealActionCode,
        SealChainVerdict,
        SealEventType,
        SealingPartyCode,
        SealTypeCode,
    )
    from mrx.schemas.messages import (
        Acknowledgement,
        Body,
        ConsignmentReference,
        ControlResult,
        GeoPosition,
        Location,
        Receipt,
        RecognitionDecision,
        Seal,
        SealEvent,
        TransportEquipment,
    )
    from tests import factories
    from tests.corridor import TEST_EXCHANGE, Member, free_port, write_partners
    from tests.nodeproc import NodeDir, NodeProcess, make_node
except ModuleNotFoundError as exc:  # pragma: no cover - a usage error, said plainly
    sys.exit(f"{exc}; run from the repository root as: PYTHONPATH=.dev .venv/bin/python bench/decision.py")

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # bench.exchange.scrape

# The goal, printed beside the figures (the benchmark reports; it does not gate).
GOAL_P99_MS = 50.0

DECIDER = ("KZ-DOS", "KZDOS")
INSPECTOR = ("CN-AKL", "CNAKL")
AGREEMENT_ID = "CN-KZ-MRA-2026"
GATEWAY = "GW-BENCH"  # KZ-DOS's gateway, which reports the arrivals
NATIONAL = "NCS"  # KZ-DOS's national system (make_node's national client)

EVENTS_PER_LOCK = 20  # seal events stored per container before it arrives
REPORT_EVERY = timedelta(minutes=30)  # a lock in transit reports this often (the node allows 60 min of silence)
SEALED_AFTER = timedelta(minutes=15)  # from the inspection to the lock's `sealed` event
LAST_REPORT_BEFORE = timedelta(minutes=15)  # from the lock's last stored event to the arrival
RECEIVED_AFTER = timedelta(seconds=5)  # from a lock's event to its receipt by CN-AKL's gateway
CHUNK = 250  # containers signed per pool task and stored per commit (21 records each)
POLL_SECONDS = 0.001  # gateway arrivals: how often the database is polled for the decision
DECISION_TIMEOUT = 30.0  # seconds a gateway arrival may take before the benchmark gives up


# -- the containers in transit ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Journey:
    """Container ``n``: one consignment, one container, one lock with one electronic seal."""

    n: int

    @property
    def ref(self) -> ConsignmentReference:
        return ConsignmentReference(ConsignmentReferenceType.MRN, f"26CN{self.n:012d}T7")

    @property
    def container(self) -> str:
        return factories.container("CSQ", 100_000 + self.n)

    @property
    def lock(self) -> str:
        return f"LK-CN-{self.n:06d}"

    @property
    def seal(self) -> str:
        return f"ES-{self.n:06d}"


@dataclass(frozen=True, slots=True)
class Timeline:
    """When things happen, from the arrival at KZDOS back: the same for every container."""

    arrival_at: datetime

    def event_time(self, seq: int) -> datetime:
        return self.arrival_at - LAST_REPORT_BEFORE - (EVENTS_PER_LOCK - seq) * REPORT_EVERY

    @property
    def inspected_at(self) -> datetime:
        return self.event_time(1) - SEALED_AFTER


def control_result(j: Journey, timeline: Timeline) -> ControlResult:
    """CN-AKL's inspection of the container: customs affixed the lock's electronic seal."""
    seal = Seal(j.seal, SealActionCode.AFFIXED, type=SealTypeCode.ELECTRONIC, sealing_party=SealingPartyCode.CUSTOMS)
    return ControlResult(
        control_id=f"CN-AKL-2026-{j.n:07d}",
        consignment_refs=(j.ref,),
        office=INSPECTOR[1],
        control_type=ControlType.PHYSICAL,
        result=ControlResultCode.A1,
        controlled_at=timeline.inspected_at,
        officer="OFF-4711",
        transport_equipment=(TransportEquipment(j.container, (seal,)),),
        hs_codes=("850440", "8471"),
        remarks="Seals intact; goods as declared.",
    )


def seal_event(j: Journey, seq: int, timeline: Timeline) -> SealEvent:
    """Event ``seq`` of the container's lock as CN-AKL's gateway received it: sealed at CNAKL, then positions."""
    at = timeline.event_time(seq)
    sealed = seq == 1
    position = GeoPosition(Decimal("45.1800") - Decimal(seq) / 100, Decimal("82.5600") + Decimal(seq) / 50)
    return SealEvent(
        event_id=uuid4(),
        gateway_id="CN-GW-01",
        lock_id=j.lock,
        seal_id=j.seal,
        container=j.container,
        lock_sequence=seq,
        event_type=SealEventType.SEALED if sealed else SealEventType.POSITION,
        device_time=at,
        receipt_time=at + RECEIVED_AFTER,
        location=Location(locode=INSPECTOR[1]) if sealed else Location(position=position),
        wagon=factories.wagon(),
        sealing_party=SealingPartyCode.CUSTOMS if sealed else None,
        consignment_refs=(j.ref,) if sealed else (),
        battery_percent=90,
    )


def gateway_arrival(j: Journey, timeline: Timeline) -> bytes:
    """KZ-DOS's gateway reports the lock at the office: its next event, located at KZDOS."""
    event = {
        "event_id": str(uuid4()),
        "lock_id": j.lock,
        "seal_id": j.seal,
        "container": j.container,
        "seq": EVENTS_PER_LOCK + 1,
        "type": "position",
        "device_time": _iso(timeline.arrival_at),
        "location": {"locode": DECIDER[1]},
        "wagon": factories.wagon(),
    }
    return json.dumps(event).encode()


def arrival_notice(j: Journey, timeline: Timeline) -> bytes:
    """The national system's ``POST /v1/arrivals`` for one consignment."""
    notice = {
        "consignments": [{"type": j.ref.type.value, "id": j.ref.id}],
        "arrived_at": _iso(timeline.arrival_at),
        "containers": [j.container],
    }
    return json.dumps(notice).encode()


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# -- signing the histories (pool workers) ---------------------------------------------------------

_partner: RecordSigner | None = None  # CN-AKL: signs the records
_own: RecordSigner | None = None  # KZ-DOS: signs the receipts
_timeline: Timeline | None = None


def _start_signer(partner_keys: str, own_keys: str, arrival_at: datetime) -> None:
    global _partner, _own, _timeline
    partner_key, own_key = KeyStore.open(partner_keys).signing_key, KeyStore.open(own_keys).signing_key
    _partner = RecordSigner(INSPECTOR[0], lambda: partner_key)
    _own = RecordSigner(DECIDER[0], lambda: own_key)
    _timeline = Timeline(arrival_at)


@dataclass(frozen=True, slots=True)
class Chunk:
    itineraries: list[Itinerary]
    writes: list[ReceivedWrite]


def _sign_chunk(start: int, stop: int) -> Chunk:
    """Containers ``start`` to ``stop - 1``: their itineraries and their records as KZ-DOS's receiver stores them."""
    assert _partner is not None and _own is not None and _timeline is not None
    now = datetime.now(UTC)
    itineraries, writes = [], []
    for n in range(start, stop):
        j = Journey(n)
        itineraries.append(Itinerary(j.ref, (INSPECTOR[1], DECIDER[1]), (j.container,), now))
        bodies: list[Body] = [control_result(j, _timeline)]
        bodies += [seal_event(j, seq, _timeline) for seq in range(1, EVENTS_PER_LOCK + 1)]
        writes += [_received(_partner.sign(body, recipients=(DECIDER[0],)), body, now) for body in bodies]
    return Chunk(itineraries, writes)


def _received(record: SignedRecord, body: Body, now: datetime) -> ReceivedWrite:
    """What `mrx.node.receiving` stores for an accepted record: it, its body, and KZ-DOS's signed receipt."""
    assert _own is not None
    receipt = _own.sign(
        Receipt((Acknowledgement(record.message_id, record.digest, ReceiptStatus.ACCEPTED, now),)),
        recipients=(INSPECTOR[0],),
        correlation_id=record.message_id,
    )
    payload_digest = hashlib.sha256(record.jws.split(b".")[1]).digest()
    return ReceivedWrite(INSPECTOR[0], record.digest, receipt, record.message_id, record, payload_digest, body)


# -- the deciding node ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AbsentPartner:
    """CN-AKL as KZ-DOS's config names it; nothing listens at its URL."""

    node_id: str
    office: str
    url: str
    anchor: str


class Border:
    """KZ-DOS's node directory, CN-AKL's key store, and the containers stored so far."""

    def __init__(self, workdir: Path, timeline: Timeline) -> None:
        self.timeline = timeline
        self.node: NodeDir = make_node(workdir / DECIDER[0], DECIDER[0], DECIDER[1], gateways={GATEWAY: ("LK-*",)})
        self.partner_keys = KeyStore.create(workdir / f"{INSPECTOR[0]}-keys")
        partner = AbsentPartner(
            INSPECTOR[0], INSPECTOR[1], f"http://127.0.0.1:{free_port()}", self.partner_keys.signing_key.kid
        )
        # The node's own [exchange] defaults: write_partners would set quick test retries.
        defaults = Exchange().model_dump()
        member = Member(self.node, DECIDER[0], DECIDER[1], 0)
        write_partners(member, [partner], exchange={key: defaults[key] for key in TEST_EXCHANGE})
        with self.node.config_path.open("a") as fh:
            fh.write(
                f'\n[[agreements]]\nid = "{AGREEMENT_ID}"\npartner = "{INSPECTOR[0]}"\n'
                'control_types = ["physical", "non-intrusive"]\nresult_codes = ["A1", "A2"]\n'
                'excluded_hs_prefixes = ["93"]\nmax_age_hours = 72\nrequire_intact_chain = true\n'
            )
        self.stored = 0  # containers 0 .. stored-1 are in the database

    def fill(self, containers: int) -> float:
        """Store containers up to ``containers`` (the node is not running); the seconds it took."""
        started = time.perf_counter()
        asyncio.run(self._fill(self.stored, containers))
        self.stored = containers
        return time.perf_counter() - started

    async def _fill(self, start: int, stop: int) -> None:
        store = await SqliteStore.open(self.node.database)
        try:
            if start == 0:  # CN-AKL's keys, as the node keeps them after following its statements
                await store.save_key_statements(INSPECTOR[0], self.partner_keys.statements())
            loop = asyncio.get_running_loop()
            workers = os.cpu_count() or 1
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_signer,
                initargs=(str(self.partner_keys.path), str(self.node.config.keys_path), self.timeline.arrival_at),
            )
            with pool:
                pending: deque[Awaitable[Chunk]] = deque()
                for first in range(start, stop, CHUNK):
                    pending.append(loop.run_in_executor(pool, _sign_chunk, first, min(first + CHUNK, stop)))
                    if len(pending) > 2 * workers:  # bounded: signed chunks wait in memory for the writer
                        await _store(store, await pending.popleft())
                while pending:
                    await _store(store, await pending.popleft())
            # Written as the receiver would, these records call for no work (no container has arrived): the node
            # need not look at them again when it starts (`Recognition._recover`), as after a clean stop.
            await store.save_settled_before(datetime.now(UTC))
        finally:
            await store.close()

    def counts(self) -> dict[str, float]:
        with closing(sqlite3.connect(f"file:{self.node.database}?mode=ro", uri=True)) as db:

            def count(table: str) -> int:
                return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

            sizes = [Path(f"{self.node.database}{s}") for s in ("", "-wal")]
            return {
                "itineraries": count("itineraries"),
                "records": count("records"),
                "seal_events": count("seal_events"),
                "database_mb": sum(p.stat().st_size for p in sizes if p.exists()) / 1e6,
            }


async def _store(store: SqliteStore, chunk: Chunk) -> None:
    """One commit: the chunk's itineraries and received records (the writer groups what is queued)."""
    *_, outcomes = await asyncio.gather(*(store.put_itinerary(i) for i in chunk.itineraries),
                                        store.store_received(chunk.writes))  # fmt: skip
    refused = [o for o in outcomes if o.status is not WriteStatus.ACCEPTED]
    if refused:
        raise SystemExit(f"the store refused {len(refused)} of the benchmark's records: {refused[0]}")


# -- the client ------------------------------------------------------------------------------------------


class NotRecognised(SystemExit):
    """A decision that is not RECOGNISED: the evidence should have been intact, so the benchmark stops."""


def _recognised(status: int, data: bytes, j: Journey) -> None:
    """Check the node's answer to an arrival: one new, RECOGNISED decision with an intact chain."""
    try:
        answer = json.loads(data)
    except ValueError:
        raise NotRecognised(f"arrival of {j.ref.id}: HTTP {status}, not JSON: {data[:300]!r}") from None
    decisions = answer.get("decisions") if status == 200 and isinstance(answer, dict) else None
    if not decisions:
        raise NotRecognised(f"arrival of {j.ref.id}: HTTP {status}: {json.dumps(answer)[:1000]}")
    (decision,) = decisions
    if decision["outcome"] != DecisionOutcome.RECOGNISED.value or not decision.get("issued"):
        raise NotRecognised(
            f"container {j.container} ({j.ref.id}) was not recognised, so the benchmark's evidence is not what"
            f" it should be (or the node decides wrongly): {json.dumps(decision, indent=1)[:3000]}"
        )


@dataclass
class Latencies:
    """Seconds, one per request, in the order sent."""

    values: list[float]

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.values)
        return {
            "count": len(ordered),
            **{q: _percentile(ordered, p) * 1e3 for q, p in (("p50_ms", 0.50), ("p99_ms", 0.99), ("max_ms", 1.0))},
        }


class Client:
    """One aiohttp session against one server (the node or the echo), as one credential."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def post(self, path: str, body: bytes) -> tuple[float, int, bytes]:
        """(seconds, status, answer) of one POST."""
        started = time.perf_counter()
        async with self._session.post(self._url + path, data=body, headers=self._headers) as response:
            data = await response.read()
        return time.perf_counter() - started, response.status, data

    async def one_at_a_time(
        self, path: str, bodies: Sequence[bytes], check: Callable[[int, bytes, int], None]
    ) -> Latencies:
        out = []
        for index, body in enumerate(bodies):
            seconds, status, data = await self.post(path, body)
            check(status, data, index)
            out.append(seconds)
        return Latencies(out)

    async def closed_loop(
        self, path: str, bodies: Sequence[bytes], connections: int, check: Callable[[int, bytes, int], None]
    ) -> tuple[Latencies, float]:
        """``connections`` clients post the bodies, each the next one not yet sent; (latencies, wall seconds)."""
        queue = iter(enumerate(bodies))
        out: list[float] = []

        async def client() -> None:
            for index, body in queue:
                seconds, status, data = await self.post(path, body)
                check(status, data, index)
                out.append(seconds)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        return Latencies(out), time.perf_counter() - started


def _session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False)


def _any_2xx(status: int, data: bytes, index: int) -> None:
    if not 200 <= status < 300:
        raise SystemExit(f"the echo server answered {status}: {data[:300]!r}")


# -- one phase: the node with some containers in transit -----------------------------------------------------


@dataclass(frozen=True)
class Picks:
    """The containers one phase uses, each once: warm-up, the two latency samples, the throughput run."""

    warmup: list[Journey]
    national: list[Journey]
    gateway: list[Journey]
    throughput: list[Journey]


def pick(rng: random.Random, stored: int, used: set[int], args: argparse.Namespace) -> Picks:
    free = [n for n in range(stored) if n not in used]
    wanted = args.warmup + 2 * args.sample + args.throughput
    if len(free) < wanted:
        raise SystemExit(f"{stored:,} containers leave {len(free):,} unused; a phase needs {wanted:,}: lower"
                         " --sample, --throughput or --warmup, or raise --containers")  # fmt: skip
    chosen = rng.sample(free, wanted)
    used.update(chosen)
    journeys = [Journey(n) for n in chosen]
    a, b = args.warmup, args.warmup + args.sample
    return Picks(journeys[:a], journeys[a:b], journeys[b : b + args.sample], journeys[b + args.sample :])


def _decision_ms(before: Metrics, after: Metrics) -> float:
    """The node's mean ``mrx_decision_seconds`` between two scrapes of its /metrics: take, sign, store."""
    count = _sample(after, "mrx_decision_seconds_count") - _sample(before, "mrx_decision_seconds_count")
    seconds = _sample(after, "mrx_decision_seconds_sum") - _sample(before, "mrx_decision_seconds_sum")
    return seconds / count * 1e3 if count else math.nan


class Phase:
    """The running node with ``border.stored`` containers in transit, and the echo server beside it."""

    def __init__(self, args: argparse.Namespace, border: Border, node: NodeProcess, echo_url: str) -> None:
        assert node.proc is not None
        self.args, self.border, self.timeline = args, border, border.timeline
        self.pid = node.proc.pid
        self.url, self.echo_url = node.url, echo_url
        self.tokens = border.node.tokens
        self.decisions = sqlite3.connect(f"file:{border.node.database}?mode=ro", uri=True, timeout=10)

    def close(self) -> None:
        self.decisions.close()

    async def run(self, picks: Picks) -> dict[str, Any]:
        args, timeline = self.args, self.timeline
        out: dict[str, Any] = {}
        async with _session(args.connections) as session:
            national = Client(session, self.url, self.tokens[NATIONAL])
            gateway = Client(session, self.url, self.tokens[GATEWAY])
            echo = Client(session, self.echo_url, "-")

            warm = picks.warmup
            await national.one_at_a_time("/v1/arrivals", [arrival_notice(j, timeline) for j in warm[2:]],
                                         lambda s, d, i: _recognised(s, d, warm[2 + i]))  # fmt: skip
            await self._gateway_arrivals(gateway, warm[:2])

            bodies = [arrival_notice(j, timeline) for j in picks.national]
            echo_one = await echo.one_at_a_time("/v1/seal-events", bodies, _any_2xx)
            before = scrape(self.url)
            node_one = await national.one_at_a_time(
                "/v1/arrivals", bodies, lambda s, d, i: _recognised(s, d, picks.national[i])
            )
            out["national"] = node_one.summary() | {
                "echo": echo_one.summary(),
                "node_decision_ms_mean": _decision_ms(before, scrape(self.url)),
            }

            out["gateway"] = await self._gateway_arrivals(gateway, picks.gateway)

            bodies = [arrival_notice(j, timeline) for j in picks.throughput]
            echo_lat, echo_wall = await echo.closed_loop("/v1/seal-events", bodies, args.connections, _any_2xx)
            cpu0, busy0, client0 = process_cpu(self.pid), machine_busy(), time.process_time()
            node_lat, node_wall = await national.closed_loop(
                "/v1/arrivals", bodies, args.connections, lambda s, d, i: _recognised(s, d, picks.throughput[i])
            )
            cpu, busy, client = process_cpu(self.pid) - cpu0, machine_busy() - busy0, time.process_time() - client0
            out["throughput"] = {
                "decisions": len(bodies),
                "connections": args.connections,
                "decisions_per_s": len(bodies) / node_wall,
                **node_lat.summary(),
                "node_cpu_us_per_decision": cpu / len(bodies) * 1e6,
                "client_cores": client / node_wall,
                "other_cores": max(0.0, busy - cpu - client) / node_wall,
                "echo": {"requests_per_s": len(bodies) / echo_wall, **echo_lat.summary()},
            }
        return out

    async def _gateway_arrivals(self, gateway: Client, journeys: Sequence[Journey]) -> dict[str, Any]:
        """Each lock reports at the office; wait for the node's decision on its consignment, one at a time."""
        visible, stored, answered = [], [], []
        for j in journeys:
            wall = time.time()
            answer_s, status, data = await gateway.post("/v1/seal-events", gateway_arrival(j, self.timeline))
            if status != 201 or json.loads(data).get("status") != "accepted":
                raise SystemExit(
                    f"the gateway's arrival event for {j.lock} was refused: HTTP {status}: {data[:1000]!r}"
                )
            while (row := self._decision(j)) is None:
                if time.time() - wall > DECISION_TIMEOUT:
                    raise SystemExit(f"no decision on {j.ref.id} {DECISION_TIMEOUT:g} s after its container"
                                     f" {j.container} arrived at {DECIDER[1]}")  # fmt: skip
                await asyncio.sleep(POLL_SECONDS)
            seen = time.time()
            outcome, stored_at = row
            if outcome != DecisionOutcome.RECOGNISED.value:
                raise NotRecognised(
                    f"container {j.container} ({j.ref.id}), arrived through the gateway, was not recognised: "
                    f"{self._reasons(j)}"
                )
            answered.append(answer_s)
            visible.append(seen - wall)
            stored.append(datetime.fromisoformat(stored_at).timestamp() - wall)
        return {
            **Latencies(visible).summary(),
            "commit_started": Latencies(stored).summary(),
            "gateway_answer": Latencies(answered).summary(),
            "poll_ms": POLL_SECONDS * 1e3,
        }

    def _decision(self, j: Journey) -> tuple[str, str] | None:
        row = self.decisions.execute(
            "SELECT d.outcome, r.stored_at FROM decisions d JOIN records r ON r.message_id = d.message_id"
            " WHERE d.ref_type = ? AND d.ref_id = ? AND d.sender = ?",
            (j.ref.type.value, j.ref.id, DECIDER[0]),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _reasons(self, j: Journey) -> str:
        request = urllib.request.Request(
            f"{self.url}/v1/consignments/{j.ref.type.value}/{j.ref.id}",
            headers={"Authorization": f"Bearer {self.tokens[NATIONAL]}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            view = json.loads(response.read())
        return json.dumps([d for d in view.get("decisions", []) if d.get("sender") == DECIDER[0]], indent=1)[:3000]


# -- the ceiling's CPU and disk parts -------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """Per-decision costs of the ceiling, in seconds, and what they were measured on."""

    verify: float  # Ed25519 verification of the control result
    result_xsd: float  # parse + XSD validation of the control result
    sign: float  # Ed25519 signature of the decision
    decision_xsd: float  # parse + XSD validation of the decision
    insert: float  # SQLite, 100 rows per commit
    commit_one_p50: float
    commit_one_p99: float
    sizes: dict[str, int]

    @property
    def cpu(self) -> float:
        return self.verify + self.result_xsd + self.sign + self.decision_xsd


def measure_parts(directory: Path, timeline: Timeline) -> Parts:
    # Real records, as the nodes make them: CN-AKL's control result, and KZ-DOS's decision on it.
    j = Journey(0)
    partner_key, own_key = SigningKey.generate("EdDSA"), SigningKey.generate("EdDSA")
    result = RecordSigner(INSPECTOR[0], lambda: partner_key).sign(control_result(j, timeline), recipients=(DECIDER[0],))
    decision = RecordSigner(DECIDER[0], lambda: own_key).sign(
        RecognitionDecision(
            decision_id=uuid4(),
            office=DECIDER[1],
            consignment_refs=(j.ref,),
            outcome=DecisionOutcome.RECOGNISED,
            decided_at=datetime.now(UTC),
            containers=(j.container,),
            control_result_message_id=result.message_id,
            seal_chain_verdict=SealChainVerdict.INTACT,
            agreement_id=AGREEMENT_ID,
        ),
        recipients=(INSPECTOR[0],),
    )
    result_input, decision_input = result.jws.rpartition(b".")[0], decision.jws.rpartition(b".")[0]
    result_xml = b64url_decode(result_input.partition(b".")[2])
    decision_xml = b64url_decode(decision_input.partition(b".")[2])

    key = Ed25519PrivateKey.generate()
    signature, public = key.sign(result_input), key.public_key()
    verify = _best_per_call(lambda: public.verify(signature, result_input), 2000)
    sign = _best_per_call(lambda: key.sign(decision_input), 2000)
    insert, commit_one_p50, commit_one_p99 = measure_sqlite(directory, decision.jws)
    return Parts(
        verify=verify,
        result_xsd=measure_xsd(result_xml, "ControlResultNotification"),
        sign=sign,
        decision_xsd=measure_xsd(decision_xml, "RecognitionDecisionNotification"),
        insert=insert,
        commit_one_p50=commit_one_p50,
        commit_one_p99=commit_one_p99,
        sizes={
            "result_signing_input": len(result_input),
            "result_xml": len(result_xml),
            "decision_signing_input": len(decision_input),
            "decision_xml": len(decision_xml),
            "decision_jws": len(decision.jws),
        },
    )


# -- the benchmark ---------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-decision-", dir=args.dir))
    started_at = datetime.now(UTC)
    load_average = os.getloadavg()[0]
    timeline = Timeline(started_at.replace(second=0, microsecond=0))
    rng = random.Random(args.seed)
    ctx = multiprocessing.get_context("spawn")
    echo_conn, child = ctx.Pipe()
    echo = ctx.Process(target=_echo_process, args=(child,), name="mrx-bench-echo", daemon=True)
    try:
        parts = measure_parts(workdir, timeline)
        echo.start()
        echo_url = f"http://127.0.0.1:{echo_conn.recv()}"
        border = Border(workdir, timeline)
        used: set[int] = set()
        phases = []
        for containers in (args.containers // 10, args.containers):
            seconds = border.fill(containers)
            stored = border.counts()
            _progress(
                f"{containers:,} containers in transit: {stored['records']:,} records stored"
                f" ({stored['database_mb']:,.0f} MB) in {seconds:.1f} s; starting {DECIDER[0]}"
            )
            picks = pick(rng, containers, used, args)
            phases.append(_phase(args, border, picks, echo_url) | {"setup_s": seconds, "stored": stored})
        return _report(args, started_at, load_average, workdir, parts, phases)
    finally:
        if echo.pid is not None:
            echo.terminate()
            echo.join(10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _phase(args: argparse.Namespace, border: Border, picks: Picks, echo_url: str) -> dict[str, Any]:
    node = NodeProcess(border.node).start()
    phase: Phase | None = None
    try:
        assert node.proc is not None
        idle_rss = memory_kib(node.proc.pid, "VmRSS")
        phase = Phase(args, border, node, echo_url)
        figures = asyncio.run(phase.run(picks))
        figures["memory"] = {
            "node_idle_rss_mb": idle_rss / 1024,
            "node_peak_rss_mb": memory_kib(node.proc.pid, "VmHWM") / 1024,
        }
    finally:
        if phase is not None:
            phase.close()
        code = node.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"{DECIDER[0]} exited with {code}:\n{node.stderr()[-3000:]}", file=sys.stderr)
    n, g, t = figures["national"], figures["gateway"], figures["throughput"]
    _progress(
        f"  {border.stored:,} in transit: arrivals p50 {n['p50_ms']:.1f} ms p99 {n['p99_ms']:.1f} ms;"
        f" gateway p50 {g['p50_ms']:.1f} ms p99 {g['p99_ms']:.1f} ms;"
        f" {t['decisions_per_s']:,.0f} decisions/s at {t['connections']} connections"
    )
    return {"containers_in_transit": border.stored} | figures


# -- the report --------------------------------------------------------------------------------------------


def _report(
    args: argparse.Namespace,
    started_at: datetime,
    load_average: float,
    workdir: Path,
    parts: Parts,
    phases: list[dict[str, Any]],
) -> dict[str, Any]:
    for phase in phases:
        echo_p50_s = phase["national"]["echo"]["p50_ms"] / 1e3
        floor = echo_p50_s + parts.cpu + parts.commit_one_p50
        ceiling = 1.0 / (1.0 / phase["throughput"]["echo"]["requests_per_s"] + parts.cpu + parts.insert)
        phase["national"]["floor_p50_ms"] = floor * 1e3
        phase["throughput"]["ceiling_decisions_per_s"] = ceiling
        phase["throughput"]["ratio"] = phase["throughput"]["decisions_per_s"] / ceiling
        for path in ("national", "gateway"):
            phase[path]["goal_ratio"] = phase[path]["p99_ms"] / GOAL_P99_MS
    small, large = phases[0], phases[-1]
    growth = {
        name: _get(large, key) / _get(small, key)
        for name, key in (
            ("national_p50", ("national", "p50_ms")),
            ("national_p99", ("national", "p99_ms")),
            ("gateway_p50", ("gateway", "p50_ms")),
            ("gateway_p99", ("gateway", "p99_ms")),
            ("decisions_per_s", ("throughput", "decisions_per_s")),
            ("node_cpu_us_per_decision", ("throughput", "node_cpu_us_per_decision")),
            ("node_decision_ms_mean", ("national", "node_decision_ms_mean")),
        )
    }
    return {
        "benchmark": "decision",
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": load_average, "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "lxml": etree.__version__,
            "sqlite": sqlite3.sqlite_version,
        },
        "settings": {
            "containers": [p["containers_in_transit"] for p in phases],
            "events_per_container": EVENTS_PER_LOCK,
            "sample": args.sample,
            "throughput": args.throughput,
            "connections": args.connections,
            "warmup": args.warmup,
            "seed": args.seed,
            "dir": str(workdir),
        },
        "ceiling_parts_us": {
            "verify_ed25519": parts.verify * 1e6,
            "control_result_xsd": parts.result_xsd * 1e6,
            "sign_ed25519": parts.sign * 1e6,
            "decision_xsd": parts.decision_xsd * 1e6,
            "sqlite_insert_100_per_commit": parts.insert * 1e6,
            "sqlite_commit_1_row_p50": parts.commit_one_p50 * 1e6,
            "sqlite_commit_1_row_p99": parts.commit_one_p99 * 1e6,
        },
        "sizes_bytes": parts.sizes,
        "phases": phases,
        "growth": growth,
        "goal": {
            "p99_ms": GOAL_P99_MS,
            "met": all(p[path]["p99_ms"] < GOAL_P99_MS for p in phases for path in ("national", "gateway")),
        },
    }


def _get(entry: dict[str, Any], key: tuple[str, ...]) -> float:
    value: Any = entry
    for part in key:
        value = value[part]
    return float(value)


def render(report: dict[str, Any]) -> str:
    v, s, p, z = report["versions"], report["settings"], report["ceiling_parts_us"], report["sizes_bytes"]
    phases, growth = report["phases"], report["growth"]
    parts = (
        (f"Ed25519 verify of the control result, {z['result_signing_input']:,} B signing input", f"{p['verify_ed25519']:7.1f} µs"),
        (f"lxml parse + XSD validate of the control result, {z['result_xml']:,} B XML", f"{p['control_result_xsd']:7.1f} µs"),
        (f"Ed25519 sign of the decision, {z['decision_signing_input']:,} B signing input", f"{p['sign_ed25519']:7.1f} µs"),
        (f"lxml parse + XSD validate of the decision, {z['decision_xml']:,} B XML", f"{p['decision_xsd']:7.1f} µs"),
        (f"SQLite insert, {z['decision_jws']:,} B rows, 100 per commit (WAL, FULL)",
         f"{p['sqlite_insert_100_per_commit']:7.1f} µs"),
        ("SQLite commit of one row (an fsync), p50 / p99",
         f"{p['sqlite_commit_1_row_p50']:7.0f} µs / {p['sqlite_commit_1_row_p99']:.0f} µs"),
    )  # fmt: skip
    lines = [
        (
            f"mrx decision benchmark  {report['started_at'][:16].replace('T', ' ')} UTC  {report['machine']['cpus']}"
            f" CPUs  load {report['machine']['load_average_1m']:.2f}  Python {v['python']}  aiohttp {v['aiohttp']}"
            f"  lxml {v['lxml']}  SQLite {v['sqlite']}"
        ),
        (
            f"{DECIDER[0]} decides on {INSPECTOR[0]}'s inspections; per container in transit 1 control result +"
            f" {s['events_per_container']} seal events (signed, stored with {DECIDER[0]}'s receipts)."
        ),
        (
            f"Per phase: {s['sample']} national arrivals and {s['sample']} gateway arrivals one at a time,"
            f" {s['throughput']} arrivals at {s['connections']} connections; {s['warmup']} warm-up arrivals first."
        ),
        "",
        "Ceiling parts, per decision (best of 5)",
        *(f"  {label:<66}{value}" for label, value in parts),
        "",
    ]
    label_width, col = 60, 18
    heads = "".join(f"{ph['containers_in_transit']:,} in transit".rjust(col) for ph in phases)
    lines.append(f"  {'':<{label_width}}{heads}{'ratio':>9}")

    def row(label: str, fmt: Callable[[dict[str, Any]], str], growth_of: str | None = None) -> None:
        cells = "".join(fmt(ph).rjust(col) for ph in phases)
        lines.append(f"  {label:<{label_width}}{cells}{f'{growth[growth_of]:9.2f}' if growth_of else ''}")

    def p50_p99(figures: dict[str, Any]) -> str:
        return f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f}"

    lines.append("  arrival, national system: POST /v1/arrivals → signed decision, one at a time")
    row("  p50 ms", lambda ph: f"{ph['national']['p50_ms']:.1f}", "national_p50")
    row("  p99 ms", lambda ph: f"{ph['national']['p99_ms']:.1f}", "national_p99")
    row(f"  p99 ÷ goal ({GOAL_P99_MS:g} ms)", lambda ph: f"{ph['national']['goal_ratio']:.2f}")
    row("  max ms", lambda ph: f"{ph['national']['max_ms']:.1f}")
    row("  floor p50 ms: echo + verify + XSD + sign + XSD + commit", lambda ph: f"{ph['national']['floor_p50_ms']:.2f}")
    row(
        "  echo p50 / p99 ms",
        lambda ph: f"{ph['national']['echo']['p50_ms']:.2f} / {ph['national']['echo']['p99_ms']:.2f}",
    )
    poll = phases[0]["gateway"]["poll_ms"]
    lines.append(f"  arrival, gateway: seal event at {DECIDER[1]} → decision committed (polled every {poll:g} ms)")
    row("  p50 ms", lambda ph: f"{ph['gateway']['p50_ms']:.1f}", "gateway_p50")
    row("  p99 ms", lambda ph: f"{ph['gateway']['p99_ms']:.1f}", "gateway_p99")
    row(f"  p99 ÷ goal ({GOAL_P99_MS:g} ms)", lambda ph: f"{ph['gateway']['goal_ratio']:.2f}")
    row("  max ms", lambda ph: f"{ph['gateway']['max_ms']:.1f}")
    row("  to the decision's commit start, p50 / p99 ms", lambda ph: p50_p99(ph["gateway"]["commit_started"]))
    row("  the gateway's answer (event stored), p50 / p99 ms", lambda ph: p50_p99(ph["gateway"]["gateway_answer"]))
    t0 = phases[0]["throughput"]
    lines.append(f"  decisions/s: {t0['decisions']} national arrivals, closed loop, {t0['connections']} connections")
    row("  decisions/s", lambda ph: f"{ph['throughput']['decisions_per_s']:,.0f}", "decisions_per_s")
    row(
        "  ceiling /s: 1/(echo + verify + XSD + sign + XSD + insert)",
        lambda ph: f"{ph['throughput']['ceiling_decisions_per_s']:,.0f}",
    )
    row("  ratio", lambda ph: f"{ph['throughput']['ratio']:.2f}")
    row("  p50 / p99 ms under load", lambda ph: p50_p99(ph["throughput"]))
    row("  echo requests/s", lambda ph: f"{ph['throughput']['echo']['requests_per_s']:,.0f}")
    row(
        "  node CPU µs per decision (with its signing workers)",
        lambda ph: f"{ph['throughput']['node_cpu_us_per_decision']:,.0f}",
        "node_cpu_us_per_decision",
    )
    row(
        "  client cores / other cores",
        lambda ph: f"{ph['throughput']['client_cores']:.2f} / {ph['throughput']['other_cores']:.2f}",
    )
    lines.append("  the node")
    row(
        "  own decision time, mean ms (mrx_decision_seconds) *",
        lambda ph: f"{ph['national']['node_decision_ms_mean']:.2f}",
        "node_decision_ms_mean",
    )
    row(
        "  peak RSS MB (VmHWM, with workers) / idle",
        lambda ph: f"{ph['memory']['node_peak_rss_mb']:.0f} / {ph['memory']['node_idle_rss_mb']:.0f}",
    )
    row(
        "  records stored / database MB", lambda ph: f"{ph['stored']['records']:,} / {ph['stored']['database_mb']:,.0f}"
    )
    row("  setup s (sign and store the histories added)", lambda ph: f"{ph['setup_s']:.1f}")
    goal = report["goal"]
    small, large = (f"{ph['containers_in_transit']:,}" for ph in (phases[0], phases[-1]))
    lines += [
        "  * over the one-at-a-time national arrivals: the node's timer around take, sign and store, without HTTP",
        "",
        f"Goal p99 < {goal['p99_ms']:g} ms, both arrival paths, every phase: {_met(goal['met'])}.",
        (
            f"Growth from {small} to {large} in transit (ratio column, {large} ÷ {small}; 1.0 = none):"
            f" p50 {growth['national_p50']:.2f} national, {growth['gateway_p50']:.2f} gateway;"
            f" decisions/s {growth['decisions_per_s']:.2f}; CPU per decision {growth['node_cpu_us_per_decision']:.2f}."
        ),
    ]
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--containers", type=int, help="containers in transit at the second phase; the first has a"
                        " tenth (default 10,000; --quick 1,000)")  # fmt: skip
    parser.add_argument(
        "--sample", type=int, help="arrivals measured one at a time, per path and phase (200; --quick 20)"
    )
    parser.add_argument("--throughput", type=int, help="arrivals in the decisions/s run, per phase (500; --quick 40)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent clients in the decisions/s run (4)")
    parser.add_argument("--warmup", type=int, help="unrecorded arrivals before each phase (10; --quick 5; at least 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer containers and samples")
    parser.add_argument("--seed", type=int, default=1, help="which containers arrive (1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--dir", help="where the node and the SQLite ceiling run (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the node directory afterwards")
    args = parser.parse_args(argv)
    for name, normal, quick in (("containers", 10_000, 1_000), ("sample", 200, 20), ("throughput", 500, 40),
                                ("warmup", 10, 5)):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    if args.containers < 10 or args.sample < 1 or args.throughput < 1 or args.connections < 1 or args.warmup < 2:
        parser.error("--containers must be at least 10, --sample, --throughput and --connections at least 1,"
                     " --warmup at least 2")  # fmt: skip
    if args.containers // 10 < args.warmup + 2 * args.sample + args.throughput:
        parser.error(f"the first phase ({args.containers // 10:,} containers) needs warm-up + 2 × sample + throughput"
                     " containers, each used once: raise --containers or lower the others")  # fmt: skip
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return print_report(args, benchmark(args), render)


if __name__ == "__main__":
    sys.exit(main())
