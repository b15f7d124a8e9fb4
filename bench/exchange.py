"""Forwarding seal-event records to a partner node: delivered records/s and end-to-end latency.

Run from the repository root (``--quick`` for a smoke run of about a minute):

    PYTHONPATH=.dev .venv/bin/python bench/exchange.py [--quick] [--json FILE] [--exchange KEY=VALUE ...]

What it measures
----------------
Two partnered nodes, each its own OS process with its own directory
(``tests.corridor.make_corridor``): Alashankou (CN-AKL, office CNAKL) and
Dostyk (KZ-DOS, KZDOS). Before any load, CN-AKL's national system registers
one itinerary ``CNAKL → KZDOS`` per container the load uses (100 containers,
one per lock), so every seal event CN-AKL accepts is signed as a record
addressed to KZ-DOS and queued in CN-AKL's outbox, which delivers it and
keeps KZ-DOS's signed receipt. A third node, alone (no partners, the same
itineraries, so its router does the same work and addresses nobody), is the
single-node reference. The load generator, echo server and ceiling parts are
those of ``bench/ingest.py`` (same process model, same event bodies, but each
lock's events are in that lock's container).

First 100 events go through the corridor unmeasured (keys fetched, connections
open). Then, per repeat, four loads, all but one right after an echo-server
run of the same load. Before each single-node run the lone node is filled,
unmeasured, to as many seal events as CN-AKL holds (`Corridor.fill_single`):
a node slows a little as its database grows, and CN-AKL takes three loads
per repeat to the lone node's one, so the two are compared at one size.

- throughput, single node: closed loop, batch 100, 4 connections, into the
  lone node. Figure: accepted events/s in the window.
- throughput, forwarding: the same load into CN-AKL. Figures: accepted
  events/s in the window; and **delivered records/s**, the rate at which
  CN-AKL's outbox rows became ``delivered`` (a receipt from KZ-DOS verified
  and stored), from CN-AKL's own ``outbox.delivered_at``: every record of the
  run (warm-up included) ÷ the span from the first POST to the last receipt.
  The benchmark waits for the outbox to drain before going on, and also
  reports the rate inside the window and the backlog left when the load
  stopped. **Forwarding cost** = 1 − forwarding accepted/s ÷ single accepted/s
  (the issue's figure); and end to end, 1 − delivered/s ÷ single accepted/s,
  which is what the node sustains when its outbox falls behind.
- apart: the throughput load into CN-AKL once more, with KZ-DOS paused
  (SIGSTOP: its socket still accepts, so CN-AKL's first request just waits;
  past ``request_timeout_seconds``, 30 s, it would be retried after a short
  backoff), then KZ-DOS resumed and the backlog drained.
  Figures: CN-AKL's ingest alone (events/s, CPU per event, the outbox
  included), then the drain rate and the CPU each node (and its signing
  workers) spent per delivered record. By CPU, forwarding costs the sender
  1 − single ÷ (ingest + delivery): the question the figure above answers,
  with ingest and delivery measured one after the other rather than mixed
  in one window (less noisy).
- latency: open loop, batch 1, one event every 2 ms (``--rate`` 500/s) into
  CN-AKL. For each event scheduled inside the window, end-to-end latency =
  ``records.stored_at`` of its record in KZ-DOS's database − the *scheduled*
  wall-clock time of the gateway's POST (the two processes share this
  machine's clock); the event's message ID comes from CN-AKL's answer. Also:
  to the verified receipt at CN-AKL (``outbox.delivered_at``), and the
  gateway's own answer time. A record still missing when the outbox has
  drained (or the drain timed out) counts as infinitely late.

CPUs (``--cpus``; `CpuPlan`). By default the node under test (the lone node,
CN-AKL) and the echo server get the first half of the CPUs, KZ-DOS, the load
generator and this script the rest: the partner is another authority's
machine in service, and the single node and CN-AKL get the same CPUs, so the
cost figures are what forwarding takes from the sender's own ingest.
``--cpus shared`` lets every process run anywhere (KZ-DOS then competes with
CN-AKL for the same cores).

The ceiling, as in ``bench/ingest.py``: each node run is preceded by an echo
run of the same load, and the single-node ceiling is
``1 / (1/echo events/s + sign + XSD + insert)``; every throughput is printed as
a ratio to it. Latencies are printed beside a floor: the ingest floor (echo p50
+ sign + XSD + one-row commit) plus one hop (echo p50 + Ed25519 verify + XSD +
sign the receipt + one-row commit).

CPU and memory. Each node run is metered from the load's start to the end of
the drain: CPU seconds of each node (its process and its signing workers) per
event, so forwarding's cost also shows as CPU per event at CN-AKL against the
single node's (less noisy than events/s), the load generator's and everyone
else's use of the machine. After the runs: each node's peak RSS (VmHWM).

Where the delivery time goes: around each forwarding run, CN-AKL's and
KZ-DOS's ``/metrics`` are read: batches sent, records per batch, the batch
round trip the sender sees (``mrx_exchange_batch_seconds``), the receiver's
handler time for ``POST /v1/exchange/messages``, and the sender's cycle (the
drain span ÷ batches; the sender keeps one request in flight, so the cycle's
remainder beyond the round trip is the sender's own work: reading the
outbox, marking rows in flight, verifying receipts, settling).

``--exchange KEY=VALUE`` sets a node ``[exchange]`` setting on both nodes;
otherwise the nodes run with the node's own defaults (``make_corridor``'s
quick test retries are undone). ``--profile DIR`` adds one forwarding run
under ``py-spy record --native`` of both nodes (not in the figures).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

try:
    import aiohttp
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from lxml import etree
    from prometheus_client.parser import text_string_to_metric_families

    from bench.ingest import (
        LOCKS_PER_RUN,
        Bench,
        Load,
        LoadResult,
        Parts,
        Run,
        Target,
        _best_per_call,
        _echo_process,
        _median,
        _percentile,
        _pool_size,
        _progress,
        ceiling_events_per_s,
        family,
        machine_busy,
        measure_parts,
        memory_kib,
        process_cpu,
        print_report,
        run_defaults,
        summarise_profile,
    )
    from mrx.node.config import Exchange
    from tests import factories
    from tests.corridor import TEST_EXCHANGE, Db, Member, call, make_corridor
    from tests.nodeproc import NodeDir, NodeProcess, make_node
except ModuleNotFoundError as exc:  # pragma: no cover - a usage error, said plainly
    sys.exit(f"{exc}; run from the repository root as: PYTHONPATH=.dev .venv/bin/python bench/exchange.py")

# The goals, printed beside the figures (the benchmark reports; it does not gate).
GOAL_COST = 0.25  # forwarding to one partner costs at most 25 % of single-node throughput
GOAL_P99_MS = 200.0  # end to end, at 500 events/s offered

SENDER, RECEIVER = ("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")
GATEWAY = "GW-BENCH"
# One container per lock (EventWriter's locks), each on its own consignment's itinerary.
CONTAINERS = tuple(factories.container(serial=200_000 + n) for n in range(LOCKS_PER_RUN))
POLL_SECONDS = 0.1  # how often the drain is checked (the figures come from stored timestamps)


# -- the corridor ---------------------------------------------------------------------


def itinerary(n: int) -> dict[str, Any]:
    return {
        "consignment": {"type": "MRN", "id": f"26CN{n:012d}A1"},
        "offices": [SENDER[1], RECEIVER[1]],
        "containers": [CONTAINERS[n]],
    }


def register_itineraries(url: str, token: str, recipients: list[str]) -> None:
    """One itinerary per container, as the national system would send them; check who they address."""
    for n in range(len(CONTAINERS)):
        status, body = call(url + "/v1/itineraries", token, itinerary(n))
        if status != 200 or body.get("recipients") != recipients:
            raise SystemExit(f"registering itinerary {n} at {url}: HTTP {status}: {body}")


def exchange_settings(overrides: Sequence[str]) -> dict[str, Any]:
    """The node's own [exchange] defaults (make_corridor would set quick test retries), then ``KEY=VALUE``s."""
    defaults = Exchange().model_dump()
    settings = {key: defaults[key] for key in TEST_EXCHANGE}
    for item in overrides:
        key, _, text = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"--exchange {item}: [exchange] has no {key!r} ({', '.join(defaults)})")
        kind = type(defaults[key])
        settings[key] = kind(float(text)) if kind in (int, float) else text
    Exchange.model_validate({**defaults, **settings})  # fail now, not in the node
    return settings


def wait_for_delivery(sender: Member, after_id: int, timeout: float) -> tuple[bool, dict[str, int]]:
    """Poll the sender's outbox until every row after ``after_id`` is delivered; (drained, rows by state)."""
    deadline = time.monotonic() + timeout
    while True:
        states = dict(Db(sender).rows("SELECT state, COUNT(*) FROM outbox WHERE id > ? GROUP BY state", (after_id,)))
        if "failed" in states:
            error = Db(sender).value("SELECT last_error FROM outbox WHERE id > ? AND state = 'failed'", (after_id,))
            raise SystemExit(f"{sender.node_id} could not deliver a record to its partner: {error}")
        if set(states) <= {"delivered"}:
            return True, states
        if time.monotonic() > deadline:
            return False, states
        time.sleep(POLL_SECONDS)


def _wall(text: str) -> float:
    """A stored UTC time ('2026-11-22T06:43:19.905123Z') as time.time() seconds."""
    return datetime.fromisoformat(text).timestamp()


# -- /metrics ---------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a node's /metrics, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sample(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= set(ls))


@dataclass
class Batches:
    """What the nodes' /metrics say about the exchange batches of one run."""

    batches: float
    delivered: float  # records the sender counted delivered
    retried: float  # records sent again after a failed or deferred attempt
    round_trip_s: float  # sender: POST to answer, summed over the batches
    receiver_handler_s: float  # receiver: handler time of POST /v1/exchange/messages, summed
    receiver_requests: float

    @classmethod
    def between(cls, before: tuple[dict, dict], after: tuple[dict, dict]) -> Batches:
        (s0, r0), (s1, r1) = before, after

        def delta(s_or_r: int, name: str, **labels: str) -> float:
            a, b = ((s0, s1), (r0, r1))[s_or_r]
            return _sample(b, name, **labels) - _sample(a, name, **labels)

        route = {"route": "/v1/exchange/messages", "method": "POST"}
        return cls(
            batches=delta(0, "mrx_exchange_batch_seconds_count"),
            delivered=delta(0, "mrx_exchange_sent_total", outcome="delivered"),
            retried=delta(0, "mrx_exchange_sent_total", outcome="retry"),
            round_trip_s=delta(0, "mrx_exchange_batch_seconds_sum"),
            receiver_handler_s=delta(1, "mrx_http_request_duration_seconds_sum", **route),
            receiver_requests=delta(1, "mrx_http_request_duration_seconds_count", **route),
        )


# -- metering a run -------------------------------------------------------------------------


@dataclass
class Snapshot:
    cpu: dict[str, float]  # CPU seconds by node name: the node process and its signing workers
    workers: dict[str, float]  # ... of which its signing workers
    busy: float
    at: float  # perf_counter

    @classmethod
    def take(cls, pids: dict[str, int]) -> Snapshot:
        cpu = {name: process_cpu(pid) for name, pid in pids.items()}
        workers = {name: cpu[name] - _own_cpu(pid) for name, pid in pids.items()}
        return cls(cpu, workers, machine_busy(), time.perf_counter())


def _own_cpu(pid: int) -> float:
    """User + system CPU seconds of the process alone (all its threads, none of its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- where each process runs ------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the node under test gets, and which everything else gets (``--cpus``).

    ``split`` (the default, with two CPUs or more): the node under test, the lone node or
    CN-AKL, and the echo server that stands in for it in the ceiling runs, on the first half
    of this process's CPUs; KZ-DOS, the load generator and this script on the rest. In
    service the partner is another authority's machine, so what forwarding costs the sender
    is what its own outbox, requests and receipts take from its ingest, not the CPU its
    partner's node takes on a shared host. ``shared``: every process on every CPU, the
    partner competing with the sender for them.
    """

    mode: str
    node: tuple[int, ...]  # the node under test and the echo server
    others: tuple[int, ...]  # the partner, the load generator, this script

    @classmethod
    def choose(cls, mode: str) -> CpuPlan:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        if mode == "shared" or len(cpus) < 2:
            return cls("shared", cpus, cpus)
        half = len(cpus) // 2
        return cls("split", cpus[:half], cpus[half:])

    def describe(self) -> str:
        if self.mode == "shared":
            return f"shared: every process on CPUs {_cpu_list(self.node)}"
        return (f"split: the node under test and the echo server on CPUs {_cpu_list(self.node)}; {RECEIVER[0]},"
                f" the load generator and the benchmark on CPUs {_cpu_list(self.others)}")


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus))


def pin(pid: int, cpus: Sequence[int], *, descendants: bool = True) -> None:
    """Every thread of a process (and of its descendants) onto ``cpus``; what they start later inherits it."""
    for member in family(pid) if descendants else [pid]:
        for task in Path(f"/proc/{member}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass


@dataclass
class Metered:
    """One load against a node (or the corridor), metered from the load's start to the end of its drain."""

    run: Run  # what the load generator saw
    cpu_us_per_event: dict[str, float]  # by node, over the whole run, warm-up and drain included
    worker_cpu_us_per_event: dict[str, float]  # ... of which in the node's signing workers
    wall_s: float
    client_cores: float
    other_cores: float
    stored_before: int  # seal events already stored at the node the load hits
    delivery: dict[str, Any] = field(default_factory=dict)  # forwarding runs
    latency: dict[str, Any] = field(default_factory=dict)  # the latency run
    batches: Batches | None = None

    @property
    def result(self) -> LoadResult:
        return self.run.result


class Corridor:
    """The three nodes, the echo server and the load generator, with what each run needs."""

    def __init__(self, args: argparse.Namespace, workdir: Path, parts: Parts, stack: ExitStack) -> None:
        self.args, self.parts = args, parts
        self.settings = exchange_settings(args.exchange)
        gateways = {GATEWAY: ("LK-*",)}
        self.sender, self.receiver = make_corridor(
            workdir / "corridor", [SENDER, RECEIVER], exchange=self.settings, gateways=gateways
        )
        self.single: NodeDir = make_node(workdir / "single", SENDER[0], SENDER[1], gateways=gateways)
        self.procs: dict[str, NodeProcess] = {}
        for name, node in (("KZ-DOS", self.receiver.node), ("CN-AKL", self.sender.node), ("single", self.single)):
            proc = NodeProcess(node)
            stack.callback(_stop, name, proc)  # stopped even if a later one fails to start
            self.procs[name] = proc.start()
        self.pids = {name: p.proc.pid for name, p in self.procs.items() if p.proc is not None}
        self.idle_rss_mb = {name: memory_kib(pid, "VmRSS") / 1024 for name, pid in self.pids.items()}

        ctx = multiprocessing.get_context("spawn")
        echo_conn, child = ctx.Pipe()
        echo = ctx.Process(target=_echo_process, args=(child,), name="mrx-bench-echo", daemon=True)
        echo.start()
        stack.callback(_stop_echo, echo)
        assert echo.pid is not None
        self.echo_pid = echo.pid
        self.bench = Bench(args)
        stack.callback(self.bench.close)
        self.cpus = CpuPlan.choose(args.cpus)
        pin(os.getpid(), self.cpus.others, descendants=False)  # its children are placed one by one
        for pid in (self.pids["KZ-DOS"], self.bench.loader_pid):
            pin(pid, self.cpus.others)
        for pid in (self.pids["CN-AKL"], self.pids["single"], echo.pid):
            pin(pid, self.cpus.node)

        single_url = self.procs["single"].url
        self.targets = {
            "echo": Target("echo", f"http://127.0.0.1:{echo_conn.recv()}", "-", echo.pid),
            "single": Target("node", single_url, self.single.tokens[GATEWAY], self.pids["single"], self.single.database),
            "forwarding": Target(
                "node", self.sender.url, self.sender.node.tokens[GATEWAY], self.pids["CN-AKL"], self.sender.node.database
            ),
        }
        register_itineraries(self.sender.url, self.sender.node.tokens["NCS"], [RECEIVER[0]])
        register_itineraries(single_url, self.single.tokens["NCS"], [])
        self._filled = 0  # events `fill_single` has stored

    def prime(self) -> float:
        """Deliver a first batch, so that keys are fetched and connections open before anything is measured."""
        after = self._last_outbox_id()
        status, body = call(
            self.sender.url + "/v1/seal-events", self.sender.node.tokens[GATEWAY],
            {"events": [factories.seal_event(lock=f"LK-PRIME-{n}", container=c) for n, c in enumerate(CONTAINERS)]},
        )
        if status != 200 or body.get("accepted") != len(CONTAINERS):
            raise SystemExit(f"priming the corridor: HTTP {status}: {json.dumps(body)[:1000]}")
        started = time.perf_counter()
        drained, states = wait_for_delivery(self.sender, after, self.args.drain_timeout)
        if not drained:
            raise SystemExit(f"the first records were not delivered within {self.args.drain_timeout:g} s: {states}")
        return time.perf_counter() - started

    def echo(self, load: Load) -> Run:
        return self.bench.run(load, self.targets["echo"], containers=CONTAINERS)

    def node_run(self, which: str, load: Load, echo: Run, during: Callable[[], None] | None = None) -> Metered:
        """``which``: "single" or "forwarding". A forwarding run lasts until CN-AKL's outbox has drained.

        ``during`` runs once the load has started (the profiler), as in `Bench.run`.
        """
        target = self.targets[which]
        forwarding = which == "forwarding"
        pids = {"single": self.pids["single"]} if not forwarding else {k: self.pids[k] for k in ("CN-AKL", "KZ-DOS")}
        stored = _stored_seal_events(target.database)
        outbox_before = self._last_outbox_id() if forwarding else 0
        seq_before = Db(self.receiver).value("SELECT COALESCE(MAX(seq), 0) FROM records") if forwarding else 0
        scraped = self._scrape() if forwarding else None
        started: list[Snapshot] = []

        def at_start() -> None:
            started.append(Snapshot.take(pids))
            if during is not None:
                during()

        run = self.bench.run(
            load, target, unique_events=_pool_size(self.args, load, ceiling_events_per_s(echo, self.parts)),
            during=at_start, containers=CONTAINERS, message_ids=load.rate is not None,
        )
        drained, states = (True, {}) if not forwarding else wait_for_delivery(
            self.sender, outbox_before, self.args.drain_timeout
        )
        end = Snapshot.take(pids)
        wall = end.at - started[0].at
        cpu = {name: end.cpu[name] - started[0].cpu[name] for name in pids}
        events = max(run.result.total_events, 1)
        metered = Metered(
            run=run,
            cpu_us_per_event={name: seconds / events * 1e6 for name, seconds in cpu.items()},
            worker_cpu_us_per_event={
                name: (end.workers[name] - started[0].workers[name]) / events * 1e6 for name in pids
            },
            wall_s=wall,
            client_cores=run.result.client_cpu / wall,
            other_cores=max(0.0, end.busy - started[0].busy - sum(cpu.values()) - run.result.client_cpu) / wall,
            stored_before=stored,
        )
        if forwarding:
            metered.batches = Batches.between(scraped, self._scrape())  # type: ignore[arg-type]
            if load.rate is None:
                metered.delivery = self._delivery(run.result, outbox_before, drained, states)
            else:
                metered.latency = self._latency(run.result, outbox_before, seq_before, drained, states)
        return metered

    def _delivery(self, result: LoadResult, after_id: int, drained: bool, states: dict[str, int]) -> dict[str, Any]:
        """Delivered records/s from the sender's outbox, over the run and inside the window."""
        rows = Db(self.sender).rows(
            "SELECT o.delivered_at, r.stored_at, o.receipt_message_id IS NOT NULL FROM outbox o"
            " JOIN records r ON r.message_id = o.message_id WHERE o.id > ?",
            (after_id,),
        )
        delivered = sorted(_wall(d) for d, _, receipt in rows if d is not None and receipt)
        stored = sorted(_wall(s) for _, s, _ in rows)
        window_start = result.wall_start + self.args.warmup
        window_end = window_start + self.args.duration
        load_end = result.wall_start + result.wall
        last = delivered[-1] if delivered else math.nan
        in_window = sum(1 for t in delivered if window_start <= t < window_end)
        after_load = sum(1 for t in delivered if t >= load_end)
        return {
            "records": len(rows),
            "delivered": len(delivered),
            "drained": drained,
            "undelivered_by_state": {k: v for k, v in states.items() if k != "delivered"},
            "records_per_s": len(delivered) / (last - result.wall_start) if delivered else 0.0,
            "span_s": last - result.wall_start,
            "in_window_records_per_s": in_window / self.args.duration,
            "backlog_at_window_end": sum(1 for t in stored if t < window_end)
            - sum(1 for t in delivered if t < window_end),
            "drain_after_load_s": last - load_end,
            # the sender and receiver alone: the backlog delivered after the load stopped
            "drain_records_per_s": after_load / (last - load_end) if after_load and last > load_end else math.nan,
        }

    def _latency(
        self, result: LoadResult, after_id: int, seq_before: int, drained: bool, states: dict[str, int]
    ) -> dict[str, Any]:
        """End-to-end latencies of the events scheduled in the window, from both nodes' stored timestamps."""
        at_receiver = dict(
            Db(self.receiver).rows(
                "SELECT message_id, stored_at FROM records WHERE seq > ? AND sender = ?", (seq_before, SENDER[0])
            )
        )
        receipts = dict(
            Db(self.sender).rows("SELECT message_id, delivered_at FROM outbox WHERE id > ? AND delivered_at IS NOT NULL",
                                 (after_id,))
        )

        def latencies(stamps: dict[str, str]) -> tuple[dict[str, float], int]:
            values = sorted(
                (_wall(stamps[m]) - sent) * 1e3 if m in stamps else math.inf for sent, m in result.sent
            )
            figures = {q: _percentile(values, p) for q, p in (("p50", 0.50), ("p99", 0.99), ("max", 1.0))}
            return figures, sum(1 for v in values if v == math.inf)

        stored, missing = latencies(at_receiver)
        receipt, no_receipt = latencies(receipts)
        return {
            "events": len(result.sent),
            "stored_at_partner_ms": stored,
            "missing_at_partner": missing,
            "receipt_at_sender_ms": receipt,
            "missing_receipts": no_receipt,
            "ack_ms": result.latency_ms,
            "drained": drained,
            "undelivered_by_state": {k: v for k, v in states.items() if k != "delivered"},
        }

    def apart_run(self, load: Load, echo: Run) -> dict[str, Any]:
        """The forwarding load with KZ-DOS paused, then KZ-DOS resumed and the backlog drained.

        What ingest costs CN-AKL with an outbox but no delivery competing, and what delivering
        a record costs each node, measured one after the other instead of at once.
        """
        names = ("CN-AKL", "KZ-DOS")
        pids = {name: self.pids[name] for name in names}
        outbox_before = self._last_outbox_id()
        started: list[Snapshot] = []
        os.kill(pids["KZ-DOS"], signal.SIGSTOP)  # its socket still accepts: CN-AKL's first request waits
        try:
            run = self.bench.run(
                load, self.targets["forwarding"],
                unique_events=_pool_size(self.args, load, ceiling_events_per_s(echo, self.parts)),
                during=lambda: started.append(Snapshot.take(pids)), containers=CONTAINERS,
            )
            loaded = Snapshot.take(pids)
        finally:
            os.kill(pids["KZ-DOS"], signal.SIGCONT)
        drained, states = wait_for_delivery(self.sender, outbox_before, self.args.drain_timeout)
        end = Snapshot.take(pids)
        events = max(run.result.total_events, 1)
        records = int(Db(self.sender).value(
            "SELECT COUNT(*) FROM outbox WHERE id > ? AND state = 'delivered'", (outbox_before,)
        ))

        def per_record(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
            return {name: (after[name] - before[name]) / max(records, 1) * 1e6 for name in names}

        return {
            "accepted_events_per_s": run.result.events_per_s,
            "ingest_cpu_us_per_event": (loaded.cpu["CN-AKL"] - started[0].cpu["CN-AKL"]) / events * 1e6,
            "records": records,
            "drain_records_per_s": records / (end.at - loaded.at),
            "delivery_cpu_us_per_record": per_record(loaded.cpu, end.cpu),
            "delivery_worker_cpu_us_per_record": per_record(loaded.workers, end.workers),
            "drained": drained,
            "undelivered_by_state": {k: v for k, v in states.items() if k != "delivered"},
        }

    def fill_single(self) -> int:
        """Store unmeasured events at the lone node up to as many as CN-AKL holds; how many were added.

        A node slows a little as its database fills (each run's "stored before" shows it), and CN-AKL takes
        more load than the lone node (the apart and latency runs too), so without this the single-node
        figure would be taken on a smaller database than the forwarding figure it is compared with.
        """
        target = _stored_seal_events(self.sender.node.database)
        missing = target - _stored_seal_events(self.single.database)
        url, token = self.procs["single"].url + "/v1/seal-events", self.single.tokens[GATEWAY]
        added = 0
        while added < missing:
            events = []
            for _ in range(min(100, missing - added)):
                lock = self._filled % len(CONTAINERS)
                events.append(factories.seal_event(
                    seq=self._filled // len(CONTAINERS) + 1, lock=f"LK-FILL-{lock}", seal=f"ES-FILL-{lock}",
                    container=CONTAINERS[lock],
                ))
                self._filled += 1
            status, body = call(url, token, {"events": events})
            if status != 200 or body.get("accepted") != len(events):
                raise SystemExit(f"filling the lone node: HTTP {status}: {json.dumps(body)[:1000]}")
            added += len(events)
        return max(added, 0)

    def _scrape(self) -> tuple[dict, dict]:
        return scrape(self.sender.url), scrape(self.receiver.url)

    def _last_outbox_id(self) -> int:
        return int(Db(self.sender).value("SELECT COALESCE(MAX(id), 0) FROM outbox"))

    def peak_rss_mb(self) -> dict[str, float]:
        pids = self.pids | {"echo": self.echo_pid}
        return {name: memory_kib(pid, "VmHWM") / 1024 for name, pid in pids.items()}


def _stop(name: str, proc: NodeProcess) -> None:
    code = proc.stop()
    if code not in (0, -signal.SIGTERM):
        print(f"node {name} exited with {code}:\n{proc.stderr()[-3000:]}", file=sys.stderr)


def _stop_echo(echo: multiprocessing.process.BaseProcess) -> None:
    echo.terminate()
    echo.join(10)


def _stored_seal_events(database: Path | None) -> int:
    assert database is not None
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM seal_events").fetchone()[0])


def measure_verify() -> float:
    """Ed25519 verification of a record-sized signing input: what the receiver does per record."""
    key = Ed25519PrivateKey.generate()
    message = os.urandom(1500)
    signature, public = key.sign(message), key.public_key()
    return _best_per_call(lambda: public.verify(signature, message), 2000)


# -- the benchmark ----------------------------------------------------------------------------


def loads(args: argparse.Namespace) -> tuple[Load, Load]:
    return (
        Load("closed_batch_100", "closed loop, batch 100", 100, args.connections_100),
        Load("open_batch_1", f"open loop {args.rate:g}/s, batch 1", 1, args.connections_open, rate=args.rate),
    )


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-exchange-", dir=args.dir))
    started_at = datetime.now(UTC)
    load_average = os.getloadavg()[0]
    try:
        parts = measure_parts(workdir)
        verify = measure_verify()
        throughput, latency = loads(args)
        runs: dict[str, list[Any]] = {"echo_throughput": [], "single": [], "echo_forwarding": [], "forwarding": [],
                                      "apart": [], "echo_latency": [], "latency": []}  # fmt: skip
        with ExitStack() as stack:
            corridor = Corridor(args, workdir, parts, stack)
            _progress(f"corridor primed: the first {len(CONTAINERS)} records delivered in {corridor.prime():.2f} s")
            for repeat in range(args.repeat):
                tag = f"repeat {repeat + 1}/{args.repeat}"
                for which, echo_key in (("single", "echo_throughput"), ("forwarding", "echo_forwarding")):
                    if which == "single":
                        corridor.fill_single()  # compared at CN-AKL's database size
                    echo = corridor.echo(throughput)
                    node = corridor.node_run(which, throughput, echo)
                    runs[echo_key].append(echo)
                    runs[which].append(node)
                    line = f"{tag}  {which:<10} echo {echo.result.events_per_s:>7,.0f}/s  accepted {node.result.events_per_s:>6,.0f}/s"
                    if node.delivery:
                        d = node.delivery
                        line += f"  delivered {d['records_per_s']:>6,.0f}/s (drained {d['drain_after_load_s']:.1f} s after)"
                    _progress(f"{line}  ({node.stored_before:,} events stored before)")
                apart = corridor.apart_run(throughput, runs["echo_forwarding"][-1])
                runs["apart"].append(apart)
                _progress(
                    f"{tag}  apart      {RECEIVER[0]} paused: accepted {apart['accepted_events_per_s']:>6,.0f}/s,"
                    f" then delivered {apart['drain_records_per_s']:>6,.0f}/s"
                )
                echo = corridor.echo(latency)
                node = corridor.node_run("forwarding", latency, echo)
                runs["echo_latency"].append(echo)
                runs["latency"].append(node)
                s = node.latency["stored_at_partner_ms"]
                _progress(
                    f"{tag}  latency    {latency.title}: stored at {RECEIVER[0]} p50 {s['p50']:.1f} ms  p99 {s['p99']:.1f} ms"
                    f"  max {s['max']:.0f} ms  ({node.latency['events']:,} events, {node.latency['missing_at_partner']} missing)"
                )
            memory = {"peak_rss_mb": corridor.peak_rss_mb(), "idle_rss_mb": corridor.idle_rss_mb}
            report = _report(
                args, started_at, load_average, workdir, parts, verify, corridor.settings, corridor.cpus, runs, memory
            )
            if args.profile:
                report["profiles"] = profile(corridor, args, throughput)
        return report
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------------


def _run_json(m: Metered) -> dict[str, Any]:
    r = m.result
    out = {
        "accepted_events_per_s": r.events_per_s,
        "events_total": r.total_events,
        "latency_ms": r.latency_ms,
        "cpu_us_per_event": m.cpu_us_per_event,
        "worker_cpu_us_per_event": m.worker_cpu_us_per_event,
        "wall_s": m.wall_s,
        "client_cores": m.client_cores,
        "other_cores": m.other_cores,
        "stored_before": m.stored_before,
    }
    if m.delivery:
        out["delivery"] = m.delivery
    if m.latency:
        out["latency"] = m.latency
    if m.batches is not None and m.batches.batches:
        b = m.batches
        span = m.delivery.get("span_s", m.wall_s)
        out["batches"] = {
            "batches": b.batches,
            "records_per_batch": b.delivered / b.batches,
            "retried_records": b.retried,
            "round_trip_ms": b.round_trip_s / b.batches * 1e3,
            "receiver_handler_ms": b.receiver_handler_s / max(b.receiver_requests, 1) * 1e3,
            "sender_cycle_ms": span / b.batches * 1e3,
            "round_trip_share_of_span": b.round_trip_s / span,
        }
    return out


def _med(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return _median(values)


def _report(
    args: argparse.Namespace, started_at: datetime, load_average: float, workdir: Path, parts: Parts, verify: float,
    settings: dict[str, Any], cpus: CpuPlan, runs: dict[str, list[Any]], memory: dict[str, Any],
) -> dict[str, Any]:
    single = [_run_json(m) for m in runs["single"]]
    forwarding = [_run_json(m) for m in runs["forwarding"]]
    latency = [_run_json(m) for m in runs["latency"]]
    ceilings = {
        key: _median([ceiling_events_per_s(e, parts) for e in runs[echo_key]])
        for key, echo_key in (("single", "echo_throughput"), ("forwarding", "echo_forwarding"))
    }
    single_eps = _med(single, "accepted_events_per_s")
    forwarding_eps = _med(forwarding, "accepted_events_per_s")
    delivered_eps = _med(forwarding, "delivery", "records_per_s")
    cost = 1 - forwarding_eps / single_eps
    single_cpu = _med(single, "cpu_us_per_event", "single")
    sender_cpu = _med(forwarding, "cpu_us_per_event", "CN-AKL")
    apart = runs["apart"]
    apart_ingest = _med(apart, "ingest_cpu_us_per_event")
    apart_delivery = {name: _med(apart, "delivery_cpu_us_per_record", name) for name in ("CN-AKL", "KZ-DOS")}
    echo_p50 = _median([e.result.latency_ms["p50"] for e in runs["echo_latency"]])
    ingest_floor = echo_p50 + (parts.sign + parts.xsd + parts.commit_one_p50) * 1e3
    hop_floor = echo_p50 + (verify + parts.xsd + parts.sign + parts.commit_one_p50) * 1e3
    e2e_p99 = _med(latency, "latency", "stored_at_partner_ms", "p99")
    defaults = Exchange().model_dump()
    return {
        "benchmark": "exchange",
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": load_average, "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "aiohttp": aiohttp.__version__, "lxml": etree.__version__,
                     "sqlite": sqlite3.sqlite_version},  # fmt: skip
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat, "dir": str(workdir),
            "connections_100": args.connections_100, "connections_open": args.connections_open, "rate": args.rate,
            "cpus": cpus.describe(),
            "exchange": {**defaults, **settings},
            "exchange_changed": {k: v for k, v in settings.items() if v != defaults[k]},
        },  # fmt: skip
        "ceiling_parts_us": {
            "sign_ed25519": parts.sign * 1e6,
            "verify_ed25519": verify * 1e6,
            "xsd_parse_validate": parts.xsd * 1e6,
            "sqlite_insert_100_per_commit": parts.insert * 1e6,
            "sqlite_commit_1_row_p50": parts.commit_one_p50 * 1e6,
            "sqlite_commit_1_row_p99": parts.commit_one_p99 * 1e6,
        },
        "throughput": {
            "single": {"accepted_events_per_s": single_eps, "ceiling_events_per_s": ceilings["single"],
                       "ratio": single_eps / ceilings["single"], "cpu_us_per_event": single_cpu,
                       "worker_cpu_us_per_event": _med(single, "worker_cpu_us_per_event", "single"), "runs": single},
            "forwarding": {
                "accepted_events_per_s": forwarding_eps,
                "delivered_records_per_s": delivered_eps,
                "in_window_delivered_records_per_s": _med(forwarding, "delivery", "in_window_records_per_s"),
                "backlog_at_window_end": _med(forwarding, "delivery", "backlog_at_window_end"),
                "drain_after_load_s": _med(forwarding, "delivery", "drain_after_load_s"),
                "drain_delivered_records_per_s": _med(forwarding, "delivery", "drain_records_per_s"),
                "ceiling_events_per_s": ceilings["forwarding"],
                "ratio": forwarding_eps / ceilings["forwarding"],
                "delivered_ratio": delivered_eps / ceilings["forwarding"],
                "cpu_us_per_event": {"CN-AKL": sender_cpu, "KZ-DOS": _med(forwarding, "cpu_us_per_event", "KZ-DOS")},
                "worker_cpu_us_per_event": {
                    name: _med(forwarding, "worker_cpu_us_per_event", name) for name in ("CN-AKL", "KZ-DOS")
                },
                "runs": forwarding,
            },
            "forwarding_cost": cost,
            "forwarding_cost_delivered": 1 - delivered_eps / single_eps,
            "forwarding_cost_cpu": 1 - single_cpu / sender_cpu,
            "apart": {
                "accepted_events_per_s": _med(apart, "accepted_events_per_s"),
                "ingest_cpu_us_per_event": apart_ingest,
                "drain_records_per_s": _med(apart, "drain_records_per_s"),
                "delivery_cpu_us_per_record": apart_delivery,
                "delivery_worker_cpu_us_per_record": {
                    name: _med(apart, "delivery_worker_cpu_us_per_record", name) for name in ("CN-AKL", "KZ-DOS")
                },
                "forwarding_cost_cpu": 1 - single_cpu / (apart_ingest + apart_delivery["CN-AKL"]),
                "runs": apart,
            },
            "goal": {"cost_at_most": GOAL_COST, "met": cost <= GOAL_COST},
        },  # fmt: skip
        "latency": {
            "offered_events_per_s": args.rate,
            "stored_at_partner_ms": {q: _med(latency, "latency", "stored_at_partner_ms", q) for q in ("p50", "p99", "max")},
            "receipt_at_sender_ms": {q: _med(latency, "latency", "receipt_at_sender_ms", q) for q in ("p50", "p99", "max")},
            "ack_ms": {q: _med(latency, "latency", "ack_ms", q) for q in ("p50", "p99", "max")},
            "echo_p50_ms": echo_p50,
            "floor_ms": {"ingest": ingest_floor, "hop": hop_floor, "end_to_end": ingest_floor + hop_floor},
            "goal": {"p99_ms": GOAL_P99_MS, "met": e2e_p99 < GOAL_P99_MS},
            "runs": latency,
        },  # fmt: skip
        "memory": memory,
    }


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _row(label: str, events_per_s: float, ceiling: float) -> str:
    return f"  {label:<58}{events_per_s:>9,.0f}{ceiling:>9,.0f}{events_per_s / ceiling:>7.2f}"


def render(report: dict[str, Any]) -> str:
    v, s, p = report["versions"], report["settings"], report["ceiling_parts_us"]
    t, lat, mem = report["throughput"], report["latency"], report["memory"]
    single, fwd, ap = t["single"], t["forwarding"], t["apart"]
    changed = ", ".join(f"{k} = {v}" for k, v in s["exchange_changed"].items()) or "none"
    x = s["exchange"]
    lines = [
        f"mrx exchange benchmark  {report['started_at'][:16].replace('T', ' ')} UTC  {report['machine']['cpus']} CPUs"
        f"  load {report['machine']['load_average_1m']:.2f}  Python {v['python']}  aiohttp {v['aiohttp']}"
        f"  lxml {v['lxml']}  SQLite {v['sqlite']}",
        f"{SENDER[0]} → {RECEIVER[0]}: [exchange] batch_size {x['batch_size']}, sweep_seconds {x['sweep_seconds']:g},"
        f" retry {x['retry_min_seconds']:g}–{x['retry_max_seconds']:g} s; changed from the node's defaults: {changed}",
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up, {s['repeat']} repeat(s): medians",
        f"CPUs: {s['cpus']}",
        "",
        "Ceiling parts, per event (best of 5)",
        f"  Ed25519 sign {p['sign_ed25519']:.1f} µs, verify {p['verify_ed25519']:.1f} µs;"
        f" lxml parse + XSD {p['xsd_parse_validate']:.1f} µs; SQLite insert (100 per commit) "
        f"{p['sqlite_insert_100_per_commit']:.1f} µs; one-row commit p50 / p99 {p['sqlite_commit_1_row_p50']:.0f}"
        f" / {p['sqlite_commit_1_row_p99']:.0f} µs",
        "",
        f"Throughput, closed loop, batch 100, {s['connections_100']} connections",
        f"  {'':<58}{'events/s':>9}{'ceiling':>9}{'ratio':>7}",
        _row("single node (no partner): accepted", single["accepted_events_per_s"], single["ceiling_events_per_s"]),
        _row(f"forwarding: accepted at {SENDER[0]}", fwd["accepted_events_per_s"], fwd["ceiling_events_per_s"]),
        _row("forwarding: delivered with verified receipts", fwd["delivered_records_per_s"], fwd["ceiling_events_per_s"]),
        f"    every record of the run ÷ (last receipt − first POST); inside the window {fwd['in_window_delivered_records_per_s']:,.0f} records/s; backlog when the window"
        f" closed {fwd['backlog_at_window_end']:,.0f}; drained at {fwd['drain_delivered_records_per_s']:,.0f} records/s,"
        f" in {fwd['drain_after_load_s']:.1f} s after the load stopped",
        f"  forwarding costs {t['forwarding_cost']:.0%} of single-node throughput (accepted at {SENDER[0]} ÷ single)"
        f"   goal ≤ {t['goal']['cost_at_most']:.0%}: {_met(t['goal']['met'])}",
        f"  delivered ÷ single: {1 - t['forwarding_cost_delivered']:.2f}, i.e. forwarding end to end costs"
        f" {t['forwarding_cost_delivered']:.0%}",
        f"  CPU per event (run + drain): single node {single['cpu_us_per_event']:.0f} µs;"
        f" {SENDER[0]} {fwd['cpu_us_per_event']['CN-AKL']:.0f} µs, {RECEIVER[0]} {fwd['cpu_us_per_event']['KZ-DOS']:.0f} µs"
        f"  → by CPU, forwarding costs the sender {t['forwarding_cost_cpu']:.0%}",
        f"    of which in the signing workers: single node {single['worker_cpu_us_per_event']:.0f} µs;"
        f" {SENDER[0]} {fwd['worker_cpu_us_per_event']['CN-AKL']:.0f} µs,"
        f" {RECEIVER[0]} {fwd['worker_cpu_us_per_event']['KZ-DOS']:.0f} µs (the rest: event loop, SQLite, threads)",
        "",
        f"Apart: the same load with {RECEIVER[0]} paused, then {RECEIVER[0]} resumed and the backlog delivered",
        f"  {SENDER[0]} ingest alone: {ap['accepted_events_per_s']:,.0f} events/s, {ap['ingest_cpu_us_per_event']:.0f} µs"
        f" per event (single node {single['cpu_us_per_event']:.0f} µs)",
        f"  delivery: {ap['drain_records_per_s']:,.0f} records/s; per record {SENDER[0]}"
        f" {ap['delivery_cpu_us_per_record']['CN-AKL']:.0f} µs (workers {ap['delivery_worker_cpu_us_per_record']['CN-AKL']:.0f}),"
        f" {RECEIVER[0]} {ap['delivery_cpu_us_per_record']['KZ-DOS']:.0f} µs"
        f" (workers {ap['delivery_worker_cpu_us_per_record']['KZ-DOS']:.0f})",
        f"  by CPU, forwarding costs the sender {ap['forwarding_cost_cpu']:.0%} (1 − single ÷ (ingest + delivery))",
        "",
        f"Latency, open loop {lat['offered_events_per_s']:g} events/s, batch 1",
        f"  {'':<58}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    rows = (
        (f"gateway POST (scheduled) → stored at {RECEIVER[0]}", lat["stored_at_partner_ms"]),
        (f"gateway POST (scheduled) → receipt verified at {SENDER[0]}", lat["receipt_at_sender_ms"]),
        (f"gateway POST (scheduled) → {SENDER[0]}'s answer", lat["ack_ms"]),
    )
    for label, q in rows:
        lines.append(f"  {label:<58}{q['p50']:>9.1f}{q['p99']:>9.1f}{q['max']:>9.0f}")
    f = lat["floor_ms"]
    missing = sum(r["latency"]["missing_at_partner"] for r in lat["runs"])
    events = sum(r["latency"]["events"] for r in lat["runs"])
    lines += [
        f"  p99 end to end < {lat['goal']['p99_ms']:g} ms: {_met(lat['goal']['met'])}   ({events:,} events over the"
        f" repeats, {missing} never stored at {RECEIVER[0]})",
        f"  floor p50: ingest {f['ingest']:.2f} ms (echo p50 + sign + XSD + one-row commit) + hop {f['hop']:.2f} ms"
        f" (echo p50 + verify + XSD + sign + one-row commit) = {f['end_to_end']:.2f} ms",
        "",
        "Exchange batches (from the nodes' /metrics; cycle = span ÷ batches, one request in flight)",
        f"  {'run':<28}{'batches':>8}{'records/batch':>15}{'round trip ms':>15}{'receiver ms':>13}"
        f"{'cycle ms':>10}{'round trip share':>18}",
    ]
    for name, group in (("throughput", fwd["runs"]), ("latency", lat["runs"])):
        for i, run in enumerate(group):
            b = run.get("batches")
            if b:
                lines.append(
                    f"  {name + f' {i + 1}':<28}{b['batches']:>8,.0f}{b['records_per_batch']:>15.1f}"
                    f"{b['round_trip_ms']:>15.1f}{b['receiver_handler_ms']:>13.1f}{b['sender_cycle_ms']:>10.1f}"
                    f"{b['round_trip_share_of_span']:>18.0%}"
                    + (f"   ({b['retried_records']:,.0f} records retried)" if b["retried_records"] else "")
                )
    undrained = (
        sum(1 for r in fwd["runs"] if not r["delivery"]["drained"])
        + sum(1 for r in lat["runs"] if not r["latency"]["drained"])
        + sum(1 for r in ap["runs"] if not r["drained"])
    )
    if undrained:
        lines.append(f"  WARNING: in {undrained} run(s) the outbox had not drained within --drain-timeout;"
                     " their delivery figures count what was delivered by then")
    peak, idle = mem["peak_rss_mb"], mem["idle_rss_mb"]
    lines += [
        "",
        "Peak RSS (VmHWM, node with its signing workers): "
        + ", ".join(f"{name} {peak[name]:.0f} MB (idle {idle[name]:.0f})" for name in ("CN-AKL", "KZ-DOS", "single"))
        + f"; bare aiohttp echo {peak['echo']:.0f} MB",
        "",
        "By repeat, in run order (seal events stored before → figures; cores used by the load generator / others)",
    ]
    for i in range(s["repeat"]):
        sr, fr, lr = single["runs"][i], fwd["runs"][i], lat["runs"][i]
        lines.append(
            f"  {i + 1}: single {sr['stored_before']:>8,} → {sr['accepted_events_per_s']:>6,.0f}/s"
            f" [{sr['client_cores']:.2f}/{sr['other_cores']:.2f}]"
            f"   forwarding {fr['stored_before']:>8,} → {fr['accepted_events_per_s']:>6,.0f}/s accepted,"
            f" {fr['delivery']['records_per_s']:>6,.0f}/s delivered [{fr['client_cores']:.2f}/{fr['other_cores']:.2f}]"
            f"   latency p99 {lr['latency']['stored_at_partner_ms']['p99']:>7.1f} ms"
            f" [{lr['client_cores']:.2f}/{lr['other_cores']:.2f}]"
        )
    return "\n".join(lines)


# -- profiling ----------------------------------------------------------------------------------


def profile(corridor: Corridor, args: argparse.Namespace, load: Load) -> dict[str, Any]:
    """One more forwarding run, both nodes under ``py-spy record --native`` for the window."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = max(1, math.floor(args.duration))
    outputs = {name: out_dir / f"{name}-forwarding-batch{load.batch}.txt" for name in ("CN-AKL", "KZ-DOS")}

    def record() -> None:
        time.sleep(args.warmup)
        spies = [
            subprocess.Popen(
                [py_spy, "record", "--pid", str(corridor.pids[name]), "--duration", str(seconds), "--rate",
                 str(args.profile_rate), "--format", "raw", "--threads", "--native", "--output", str(output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            for name, output in outputs.items()
        ]
        for spy in spies:
            _, err = spy.communicate()
            if spy.returncode:
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")

    echo = corridor.echo(load)
    stored = _stored_seal_events(corridor.targets["forwarding"].database)
    metered = corridor.node_run("forwarding", load, echo, during=record)
    rates = {"CN-AKL": metered.result.events_per_s, "KZ-DOS": metered.delivery["in_window_records_per_s"]}
    return {
        name: {
            "title": f"{name}, forwarding, closed loop batch {load.batch} ({'accepted' if name == 'CN-AKL' else 'delivered'})",
            "file": str(output),
            "events_per_s_while_profiled": rates[name],
            "stored_before": stored,
            **summarise_profile(output),
        }
        for name, output in outputs.items()
    }


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window (default 2; --quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per load, figures are medians (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter windows, one repeat")
    parser.add_argument("--connections-100", type=int, default=4, help="connections, closed loop batch 100 (4)")
    parser.add_argument("--connections-open", type=int, default=256, help="connection cap, open loop (256)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s, latency run (500)")
    parser.add_argument("--exchange", action="append", default=[], metavar="KEY=VALUE",
                        help="an [exchange] setting for both nodes, e.g. sweep_seconds=0.5 (default: the node's)")
    parser.add_argument("--cpus", choices=("split", "shared"), default="split",
                        help="split: the node under test on half the CPUs, its partner and the load on the rest"
                        " (default); shared: every process on every CPU")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="longest wait for the sender's outbox to drain after a run, s (300)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="then profile both nodes with py-spy; stacks go to DIR")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (100)")
    parser.add_argument("--dir", help="where the nodes and the SQLite ceiling run (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' directories afterwards")
    args = parser.parse_args(argv)
    run_defaults(args)
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.rate <= 0 or args.drain_timeout <= 0:
        parser.error("--duration, --rate and --drain-timeout must be positive, --warmup not negative, --repeat ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return print_report(args, benchmark(args), render)


if __name__ == "__main__":
    sys.exit(main())
