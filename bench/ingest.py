"""Seal-event ingest throughput, latency and memory of one node, beside this machine's ceiling.

Run from the repository root (``--quick`` for a 3-second smoke run):

    PYTHONPATH=.dev .venv/bin/python bench/ingest.py [--quick] [--json FILE] [--profile DIR]

What it measures
----------------
A fresh node (``make_node`` + ``NodeProcess``: its own OS process, its own
temporary directory) ingests gateway events sent by a load generator in
another process: asyncio + one aiohttp session, N keep-alive connections,
every request body built before the clock starts. Three loads:

- closed loop, batch 1: N connections each post one event, await the
  answer, post the next. Figure: accepted events/s.
- closed loop, batch 100: the same with ``{"events": [100 events]}``.
- open loop, batch 1: one event every 1/rate s (500/s by default) whatever
  the node does, each on its own task. Latency runs from the *scheduled*
  send time, so a stalled node is charged for the requests it delayed
  (no coordinated omission). Figure: p50/p99 latency.

Each run has a warm-up (load on, nothing recorded) and a fixed window; a
request counts when it completes inside the window. Only events the node
answers ``accepted`` count: any other answer stops the benchmark with the
node's problem document. Latency is per request (a batch-100 request
carries 100 events). Every event is new and valid: unique event IDs, 100
locks per run numbering their events 1, 2, 3 ..., each lock's first event
``sealed`` (with consignment references), the rest ``position`` events.

One node serves every run, so its database grows as in service; each run
records how many seal events were already stored, and the report lists
the runs in order, so a node that slows down as it fills shows it. After
the runs: the node's peak RSS (``VmHWM`` in ``/proc/<pid>/status``, summed
over the node process and its signing workers).

The ceiling, measured in the same run
--------------------------------------
Figures from a shared 2-core machine are noisy, so each is printed beside
what this machine can do *at that moment* for the same work:

- HTTP: a bare aiohttp server in its own process that reads the body and
  answers a small JSON, driven by the same load generator with the same
  bodies, connections and schedule, right before the node's run.
- Ed25519 signature (``cryptography``) of a record's real JWS signing input.
- lxml parse + XSD validation of the record's real XML, against the
  node's own compiled ``SealEventNotification.xsd``.
- SQLite insert of the record's real JWS bytes: WAL, ``synchronous=FULL``,
  one commit per 100 rows, in the same file system as the node's database.

The last three are best of 5 (a ceiling is what the machine can do), per
event. The ceiling of a closed-loop load is::

    1 / (1/echo events/s + sign + XSD + insert)

that is, the same work done serially on one core with nothing else in the
way. ``ratio`` is node/ceiling; 1.0 would mean the node adds no overhead of
its own. For the open loop the reference is a latency floor: the echo's
p50 at the same schedule + sign + XSD + a one-row commit (an fsync).

Each row also says where the CPU went over the run, warm-up included: the
server's CPU time per event (node, and the echo for comparison), the load
generator's and everything else's use of the machine in cores (``other``
above ~0.2 means someone else's tests were competing).

Profile
-------
``--profile DIR`` then runs each closed-loop load once more under
``py-spy record --native --threads --pid`` (py-spy samples from outside;
the node is unchanged; ``.venv/bin/pip install py-spy``). It writes the
collapsed stacks to ``DIR/node-batch*.txt`` (speedscope or flamegraph.pl
read them) and prints, per load: each thread's state (running, idle,
in fsync, waiting for the GIL, read from the native stack), and the event
loop's running samples by package, by function (own time, with the C it
calls) and by mrx function (inclusive). Profiled runs are not in the figures.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `tests` importable
    sys.path.insert(0, str(ROOT))

try:
    import aiohttp
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from lxml import etree

    from mrx.keys.b64url import decode as b64url_decode
    from mrx.keys.jws import SigningKey
    from mrx.node.inputs import SealEventIn
    from mrx.node.records import RecordSigner
    from mrx.schemas import xml as mrx_xml
    from tests import factories
    from tests.nodeproc import NodeProcess, make_node
except ModuleNotFoundError as exc:  # pragma: no cover - a usage error, said plainly
    sys.exit(f"{exc}; run from the repository root as: PYTHONPATH=.dev .venv/bin/python bench/ingest.py")

# The goals, printed beside the figures (the benchmark reports; it does not gate).
GOAL_BATCH_100 = 3000.0  # signed durable events/s; aim 5,000
AIM_BATCH_100 = 5000.0
GOAL_BATCH_1 = 1200.0
GOAL_P99_MS = 50.0  # at 500 events/s offered, open loop, batch 1
GOAL_RSS_MB = 200.0

LOCKS_PER_RUN = 100
CEILING_RUNS = 5
POOL_MARGIN = 2.0  # unique events pre-built for a node run: this many times the ceiling's worth


# -- the workload ----------------------------------------------------------------


class EventWriter:
    """Valid, unique seal-event JSON, about a microsecond per event.

    ``tests.factories.seal_event`` is the reference; it is too slow to build a
    run's worth of events (tens of µs each), so each event type is rendered
    once into a %-template with holes for what varies (event ID, lock,
    sequence number, device time, container), and the templates are checked
    against the factory at construction.

    Every event is in ``factories.container()``, unless ``containers`` gives
    one per lock (lock ``i`` seals ``containers[i % len(containers)]``): the
    exchange benchmark routes events by container.
    """

    _HOLES = {
        "event_id": '"%(e)s"', "lock_id": '"%(l)s"', "seq": "%(s)d", "device_time": '"%(t)s"', "container": '"%(c)s"'
    }

    def __init__(self, namespace: int, locks: int = LOCKS_PER_RUN, containers: Sequence[str] = ()) -> None:
        self.locks = locks
        self._containers = tuple(containers) or (factories.container(),)
        self._id_prefix = f"{secrets.randbits(32):08x}-{namespace & 0xFFFF:04x}-4000-8000-"
        self._lock_prefix = f"LK-{namespace:04d}-"
        self._templates = {kind: self._template(kind) for kind in ("sealed", "position")}
        self._times: list[str] = []
        self._next = 0
        for probe in (0, locks, 2 * locks + 7):  # a sealed event and position events
            rendered = json.loads(self._render(probe))
            expected = factories.seal_event(
                seq=rendered["seq"], lock=rendered["lock_id"], type=rendered["type"], event_id=rendered["event_id"],
                container=self._container(probe % locks),
            )
            if rendered != expected:
                raise AssertionError(f"event template drifted from tests.factories:\n{rendered}\n{expected}")

    def _template(self, kind: str) -> str:
        marked = factories.seal_event(type=kind) | {hole: f"@{hole}@" for hole in self._HOLES}
        text = json.dumps(marked, separators=(",", ":")).replace("%", "%%")
        for hole, placeholder in self._HOLES.items():
            text = text.replace(f'"@{hole}@"', placeholder)
        return text

    def _container(self, lock: int) -> str:
        return self._containers[lock % len(self._containers)]

    def _device_time(self, seq: int) -> str:
        while len(self._times) <= seq:
            t = factories.T0 + timedelta(minutes=len(self._times))
            self._times.append(t.isoformat().replace("+00:00", "Z"))
        return self._times[seq]

    def _render(self, index: int) -> str:
        lock, seq = index % self.locks, index // self.locks + 1
        template = self._templates["sealed" if seq == 1 else "position"]
        return template % {
            "e": f"{self._id_prefix}{index:012x}",
            "l": f"{self._lock_prefix}{lock:05d}",
            "s": seq,
            "t": self._device_time(seq),
            "c": self._container(lock),
        }

    def events(self, count: int) -> list[str]:
        start, self._next = self._next, self._next + count
        return [self._render(i) for i in range(start, start + count)]

    def bodies(self, batch: int, count: int) -> list[bytes]:
        """``count`` request bodies: one event object, or ``{"events": [...]}`` of ``batch`` events."""
        if batch == 1:
            return [event.encode() for event in self.events(count)]
        return [('{"events":[' + ",".join(self.events(batch)) + "]}").encode() for _ in range(count)]


# -- the load generator (its own process) ---------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    url: str
    token: str
    batch: int
    connections: int
    warmup: float
    duration: float
    rate: float | None  # offered events/s: open loop; None: closed loop
    unique_events: int  # events to pre-build; 0: reuse a small pool (the echo does not care)
    namespace: int
    strict: bool  # require every event accepted (the node), or only a 2xx (the echo)
    containers: tuple[str, ...] = ()  # one per lock (EventWriter); () for the default container
    message_ids: bool = False  # collect (scheduled wall time, message ID) of the events counted (strict only)


@dataclass
class LoadResult:
    events: int  # accepted inside the window
    requests: int
    window: float
    total_events: int  # warm-up included: what the CPU figures divide by
    latency_ms: dict[str, float]
    client_cpu: float
    wall: float
    wall_start: float = math.nan  # time.time() when the load started (warm-up included)
    # With LoadSpec.message_ids: (wall-clock send time, message ID) of each event counted, the
    # send time as scheduled in the open loop; a batch's events share their request's time.
    sent: list[tuple[float, str]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.window


class Refused(Exception):
    """The server answered anything but "all accepted"."""


def _load_process(conn: Connection) -> None:
    """Serve `LoadSpec` → "ready" → "go" → `LoadResult` (or an error string) until None."""
    while (spec := conn.recv()) is not None:
        try:
            writer = EventWriter(spec.namespace, containers=spec.containers)
            if spec.unique_events:
                bodies: Iterator[bytes] = iter(writer.bodies(spec.batch, math.ceil(spec.unique_events / spec.batch)))
            else:
                bodies = itertools.cycle(writer.bodies(spec.batch, 64))
            conn.send("ready")
            if conn.recv() != "go":
                continue
            conn.send(asyncio.run(_drive(spec, bodies)))
        except Exception as exc:  # reported to the orchestrator, which stops the benchmark
            conn.send(f"{type(exc).__name__}: {exc}")


async def _drive(spec: LoadSpec, bodies: Iterator[bytes]) -> LoadResult:
    url = spec.url + "/v1/seal-events"
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}
    latencies = array.array("d")
    sent: list[tuple[float, str]] = []
    counted = {"events": 0, "requests": 0, "total": 0}
    cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
    window_start, window_end = t0 + spec.warmup, t0 + spec.warmup + spec.duration
    failure: list[BaseException] = []

    async def post(session: aiohttp.ClientSession, body: bytes, started: float) -> None:
        async with session.post(url, data=body, headers=headers) as response:
            data = await response.read()
        done = time.perf_counter()
        answer = None
        if spec.strict:
            answer = _check_accepted(response.status, data, spec.batch)
        elif not 200 <= response.status < 300:
            raise Refused(f"HTTP {response.status}: {data[:300]!r}")
        counted["total"] += spec.batch
        in_window = window_start <= (started if spec.rate else done) < window_end
        if in_window:
            counted["events"] += spec.batch
            counted["requests"] += 1
            latencies.append(done - started)
            if spec.message_ids and answer is not None:
                at = wall0 + (started - t0)
                sent.extend((at, r["message_id"]) for r in (answer["results"] if spec.batch > 1 else (answer,)))

    connector = aiohttp.TCPConnector(limit=spec.connections)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        if spec.rate is None:

            async def worker() -> None:
                try:
                    while not failure and time.perf_counter() < window_end:
                        body = next(bodies, None)
                        if body is None:
                            raise RuntimeError("the pre-built events ran out: the node beat its ceiling by POOL_MARGIN")
                        await post(session, body, time.perf_counter())
                except Exception as exc:  # stop every worker at the first refusal
                    failure.append(exc)

            await asyncio.gather(*(worker() for _ in range(spec.connections)))
        else:
            interval = spec.batch / spec.rate
            tasks: set[asyncio.Task[None]] = set()

            def settle(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    failure.append(task.exception())  # type: ignore[arg-type]

            n = 0
            while not failure:
                scheduled = t0 + n * interval
                if scheduled >= window_end:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(post(session, next(bodies), scheduled))
                tasks.add(task)
                task.add_done_callback(settle)
                n += 1
            if tasks:
                await asyncio.wait(set(tasks))
    if failure:
        raise failure[0]
    ordered = sorted(latencies)
    return LoadResult(
        events=counted["events"],
        requests=counted["requests"],
        window=spec.duration,
        total_events=counted["total"],
        latency_ms={q: _percentile(ordered, p) * 1e3 for q, p in (("p50", 0.50), ("p99", 0.99), ("max", 1.0))},
        client_cpu=time.process_time() - cpu0,
        wall=time.perf_counter() - t0,
        wall_start=wall0,
        sent=sent,
    )


def _check_accepted(status: int, data: bytes, batch: int) -> dict[str, Any]:
    """The node's answer, if it accepted every event; else `Refused` with its problem document."""
    try:
        answer = json.loads(data)
    except ValueError:
        raise Refused(f"HTTP {status}, not JSON: {data[:300]!r}") from None
    if batch == 1:
        ok = status == 201 and answer.get("status") == "accepted"
    else:
        counts = (answer.get("accepted"), answer.get("duplicate"), answer.get("rejected"))
        ok = status == 200 and counts == (batch, 0, 0)
        if not ok and isinstance(answer.get("results"), list):
            answer = next((r for r in answer["results"] if r.get("status") != "accepted"), answer)
    if not ok:
        raise Refused(f"HTTP {status}: {json.dumps(answer)[:1000]}")
    return answer


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (NaN if there are none)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- the echo server (its own process) --------------------------------------------------


def _echo_process(conn: Connection) -> None:
    """A bare aiohttp server, configured like the node's: read the body, answer a small JSON."""

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"status":"accepted"}', content_type="application/json")

    async def serve() -> None:
        app = web.Application(client_max_size=1_048_576)
        app.router.add_post("/v1/seal-events", echo)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        await web.SockSite(runner, sock, backlog=1024).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(sock.getsockname()[1])
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


# -- the ceiling's CPU and disk parts ---------------------------------------------------------


@dataclass
class Parts:
    """Per-event costs of the ceiling, in seconds, and what they were measured on."""

    sign: float
    xsd: float
    insert: float
    commit_one_p50: float
    commit_one_p99: float
    signing_input_bytes: int
    xml_bytes: int
    jws_bytes: int

    @property
    def cpu_and_disk(self) -> float:
        return self.sign + self.xsd + self.insert


def _best_per_call(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=CEILING_RUNS)) / number


def measure_parts(directory: Path) -> Parts:
    # A real record, as the node makes it: a position event (most of the workload), signed.
    event = json.loads(EventWriter(namespace=9999).events(LOCKS_PER_RUN + 1)[-1])
    domain = SealEventIn.model_validate(event).to_domain("GW-1", datetime.now(UTC))
    node_key = SigningKey.generate("EdDSA")
    record = RecordSigner("CN-AKL", lambda: node_key).sign(domain)
    signing_input, _, _ = record.jws.rpartition(b".")
    xml = b64url_decode(signing_input.partition(b".")[2])

    key = Ed25519PrivateKey.generate()
    sign = _best_per_call(lambda: key.sign(signing_input), 2000)

    xsd = measure_xsd(xml, "SealEventNotification")
    insert, commit_one_p50, commit_one_p99 = measure_sqlite(directory, record.jws)
    return Parts(
        sign=sign,
        xsd=xsd,
        insert=insert,
        commit_one_p50=commit_one_p50,
        commit_one_p99=commit_one_p99,
        signing_input_bytes=len(signing_input),
        xml_bytes=len(xml),
        jws_bytes=len(record.jws),
    )


def measure_xsd(xml: bytes, schema_name: str) -> float:
    """lxml parse + ``XMLSchema.validate`` of a record's XML with the node's own schema, s per call (best of 5)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    schema = etree.XMLSchema(etree.parse(str(mrx_xml.schema_path(schema_name)), parser))
    if not schema.validate(etree.fromstring(xml, parser)):
        raise AssertionError(f"the node's own record does not validate: {schema.error_log}")
    return _best_per_call(lambda: schema.validate(etree.fromstring(xml, parser)), 2000)


def measure_sqlite(directory: Path, jws: bytes) -> tuple[float, float, float]:
    """SQLite inserts of ``jws`` rows in ``directory`` (WAL, synchronous=FULL), in seconds: per row at 100 rows
    per commit (best of 5), and the p50 and p99 of committing one row (an fsync)."""
    path = directory / "ceiling.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, jws BLOB NOT NULL)")
        ids = iter(range(1 << 62))

        def commit(count: int) -> None:
            rows = [(f"m{next(ids)}", jws) for _ in range(count)]
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO records (message_id, jws) VALUES (?, ?)", rows)
            db.execute("COMMIT")

        insert = _best_per_call(lambda: commit(100), 20) / 100
        single: list[float] = []
        for _ in range(200):
            started = time.perf_counter()
            commit(1)
            single.append(time.perf_counter() - started)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    single.sort()
    return insert, _percentile(single, 0.5), _percentile(single, 0.99)


# -- /proc --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """A process and its live descendants: the node and its signing workers."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(family(int(child)))
    return found


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants, all threads."""
    total = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy() -> float:
    """CPU seconds all cores have spent not idle since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def memory_kib(pid: int, field_name: str) -> int:
    """``field_name`` of /proc/<pid>/status summed over the process and its descendants.

    For VmHWM the sum of the peaks bounds the peak of the sum from above: the
    figure can only overstate the node's memory.
    """
    total = 0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                total += int(line.split()[1])
                break
        else:
            raise KeyError(field_name)
    return total


# -- the orchestrator ---------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    key: str
    title: str
    batch: int
    connections: int
    rate: float | None = None


@dataclass
class Run:
    """One load against one server: what the client saw and what it cost."""

    result: LoadResult
    server_cpu_per_event: float  # seconds
    client_cores: float
    other_cores: float
    stored_before: int | None  # seal events already in the node's database


@dataclass(frozen=True)
class Target:
    name: str  # "node" | "echo"
    url: str
    token: str
    pid: int
    database: Path | None = None  # the node's, to report how full it was


class Bench:
    """Drives loads from the load-generator process and meters the server they hit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._namespaces = iter(range(1, 10_000))
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._conn, child = ctx.Pipe()
        self._loader = ctx.Process(target=_load_process, args=(child,), name="mrx-bench-load", daemon=True)
        self._loader.start()

    @property
    def loader_pid(self) -> int:
        assert self._loader.pid is not None
        return self._loader.pid

    def close(self) -> None:
        self._conn.send(None)
        self._loader.join(10)
        if self._loader.is_alive():
            self._loader.kill()

    def run(
        self,
        load: Load,
        target: Target,
        *,
        unique_events: int = 0,
        during: Callable[[], None] | None = None,
        containers: Sequence[str] = (),
        message_ids: bool = False,
    ) -> Run:
        spec = LoadSpec(
            url=target.url,
            token=target.token,
            batch=load.batch,
            connections=load.connections,
            warmup=self.args.warmup,
            duration=self.args.duration,
            rate=load.rate,
            unique_events=unique_events,
            namespace=next(self._namespaces),
            strict=target.name == "node",
            containers=tuple(containers),
            message_ids=message_ids,
        )
        stored = stored_seal_events(target.database) if target.database else None
        self._conn.send(spec)
        self._expect(self._conn.recv(), "ready", load, target)
        cpu0, busy0, t0 = process_cpu(target.pid), machine_busy(), time.perf_counter()
        self._conn.send("go")
        if during is not None:
            during()
        result = self._expect(self._conn.recv(), LoadResult, load, target)
        wall = time.perf_counter() - t0
        server = process_cpu(target.pid) - cpu0
        busy = machine_busy() - busy0
        return Run(
            result=result,
            server_cpu_per_event=server / max(result.total_events, 1),
            client_cores=result.client_cpu / wall,
            other_cores=max(0.0, busy - server - result.client_cpu) / wall,
            stored_before=stored,
        )

    @staticmethod
    def _expect(message: Any, expected: Any, load: Load, target: Target) -> Any:
        if message == expected or (isinstance(expected, type) and isinstance(message, expected)):
            return message
        raise SystemExit(f"{load.title} against the {target.name} failed: {message}")


def stored_seal_events(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM seal_events").fetchone()[0])


def loads(args: argparse.Namespace) -> list[Load]:
    return [
        Load("closed_batch_1", "closed loop, batch 1", 1, args.connections_1),
        Load("closed_batch_100", "closed loop, batch 100", 100, args.connections_100),
        Load("open_batch_1", f"open loop {args.rate:g}/s, batch 1", 1, args.connections_open, rate=args.rate),
    ]


def ceiling_events_per_s(echo: Run, parts: Parts) -> float:
    return 1.0 / (1.0 / echo.result.events_per_s + parts.cpu_and_disk)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-", dir=args.dir))
    started_at = datetime.now(UTC)
    load_average = os.getloadavg()[0]
    parts = measure_parts(workdir)
    node_dir = make_node(workdir / "node", gateways={"GW-BENCH": ("LK-*",)})
    token = node_dir.tokens["GW-BENCH"]
    ctx = multiprocessing.get_context("spawn")
    echo_conn, child = ctx.Pipe()
    echo_proc = ctx.Process(target=_echo_process, args=(child,), name="mrx-bench-echo", daemon=True)
    echo_proc.start()
    node_proc = NodeProcess(node_dir).start()
    bench: Bench | None = None
    try:
        assert node_proc.proc is not None and echo_proc.pid is not None
        node = Target("node", node_proc.url, token, node_proc.proc.pid, node_dir.database)
        echo = Target("echo", f"http://127.0.0.1:{echo_conn.recv()}", token, echo_proc.pid)
        idle_rss = memory_kib(node.pid, "VmRSS")
        bench = Bench(args)
        runs: dict[str, dict[str, list[Run]]] = {load.key: {"echo": [], "node": []} for load in loads(args)}
        for repeat in range(args.repeat):
            for load in loads(args):
                echo_run = bench.run(load, echo)
                unique = _pool_size(args, load, ceiling_events_per_s(echo_run, parts))
                node_run = bench.run(load, node, unique_events=unique)
                runs[load.key]["echo"].append(echo_run)
                runs[load.key]["node"].append(node_run)
                _progress(
                    f"repeat {repeat + 1}/{args.repeat}  {load.title:<26} echo {echo_run.result.events_per_s:>9,.0f}/s"
                    f"  node {node_run.result.events_per_s:>7,.0f}/s  p99 {node_run.result.latency_ms['p99']:7.1f} ms"
                    f"  ({node_run.stored_before:,} events stored before)"
                )
        memory = {
            "node_idle_rss_mb": idle_rss / 1024,
            "node_peak_rss_mb": memory_kib(node.pid, "VmHWM") / 1024,
            "echo_peak_rss_mb": memory_kib(echo.pid, "VmHWM") / 1024,
        }
        report = _report(args, started_at, load_average, workdir, parts, runs, memory)
        if args.profile:
            report["profiles"] = profile(bench, args, node, runs)
        report["stored_events_at_end"] = stored_seal_events(node_dir.database)
        return report
    finally:
        if bench is not None:
            bench.close()
        code = node_proc.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"node exited with {code}:\n{node_proc.stderr()[-3000:]}", file=sys.stderr)
        echo_proc.terminate()
        echo_proc.join(10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _pool_size(args: argparse.Namespace, load: Load, ceiling: float) -> int:
    if load.rate is not None:
        return math.ceil(load.rate * (args.warmup + args.duration)) + load.batch
    return math.ceil(POOL_MARGIN * ceiling * (args.warmup + args.duration)) + load.batch * load.connections


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- the report ---------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _summary(rs: list[Run]) -> dict[str, Any]:
    return {
        "events_per_s": _median([r.result.events_per_s for r in rs]),
        "p50_ms": _median([r.result.latency_ms["p50"] for r in rs]),
        "p99_ms": _median([r.result.latency_ms["p99"] for r in rs]),
        "max_ms": _median([r.result.latency_ms["max"] for r in rs]),
        "server_cpu_us_per_event": _median([r.server_cpu_per_event * 1e6 for r in rs]),
        "client_cores": _median([r.client_cores for r in rs]),
        "other_cores": _median([r.other_cores for r in rs]),
        "runs": [
            {k: v for k, v in asdict(r.result).items() if k != "sent"}
            | {
                "events_per_s": r.result.events_per_s,
                "server_cpu_us_per_event": r.server_cpu_per_event * 1e6,
                "client_cores": r.client_cores,
                "other_cores": r.other_cores,
                "stored_before": r.stored_before,
            }
            for r in rs
        ],
    }


def _report(
    args: argparse.Namespace,
    started_at: datetime,
    load_average: float,
    workdir: Path,
    parts: Parts,
    runs: dict[str, dict[str, list[Run]]],
    memory: dict[str, float],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "ingest",
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": load_average, "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "lxml": etree.__version__,
            "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
            "sqlite": sqlite3.sqlite_version,
        },
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat, "dir": str(workdir)},
        "ceiling_parts_us": {
            "sign_ed25519": parts.sign * 1e6,
            "xsd_parse_validate": parts.xsd * 1e6,
            "sqlite_insert_100_per_commit": parts.insert * 1e6,
            "sqlite_commit_1_row_p50": parts.commit_one_p50 * 1e6,
            "sqlite_commit_1_row_p99": parts.commit_one_p99 * 1e6,
        },
        "sizes_bytes": {"signing_input": parts.signing_input_bytes, "xml": parts.xml_bytes, "jws": parts.jws_bytes},
        "loads": {},
        "memory": memory | {"goal_mb": GOAL_RSS_MB, "met": memory["node_peak_rss_mb"] < GOAL_RSS_MB},
    }
    for load in loads(args):
        node, echo = _summary(runs[load.key]["node"]), _summary(runs[load.key]["echo"])
        entry: dict[str, Any] = {
            "title": load.title,
            "batch": load.batch,
            "connections": load.connections,
            "offered_events_per_s": load.rate,
            "node": node,
            "echo": echo,
        }
        if load.rate is None:
            ceiling = _median([ceiling_events_per_s(e, parts) for e in runs[load.key]["echo"]])
            goal: dict[str, Any] = {"events_per_s": GOAL_BATCH_1 if load.batch == 1 else GOAL_BATCH_100}
            if load.batch == 100:
                goal["aim_events_per_s"] = AIM_BATCH_100
            goal["met"] = node["events_per_s"] >= goal["events_per_s"]
            entry |= {
                "ceiling_events_per_s": ceiling,
                "ratio": node["events_per_s"] / ceiling,
                "echo_us_per_event": 1e6 / echo["events_per_s"],
                "goal": goal,
            }
        else:
            floor = echo["p50_ms"] + (parts.sign + parts.xsd + parts.commit_one_p50) * 1e3
            entry |= {"floor_p50_ms": floor, "goal": {"p99_ms": GOAL_P99_MS, "met": node["p99_ms"] < GOAL_P99_MS}}
        out["loads"][load.key] = entry
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(report: dict[str, Any]) -> str:
    v, s, p, z = report["versions"], report["settings"], report["ceiling_parts_us"], report["sizes_bytes"]
    m, loads_ = report["memory"], report["loads"]
    parts = (
        (f"Ed25519 sign, {z['signing_input']:,} B JWS signing input", f"{p['sign_ed25519']:7.1f} µs"),
        (f"lxml parse + XSD validate, {z['xml']:,} B XML", f"{p['xsd_parse_validate']:7.1f} µs"),
        (
            f"SQLite insert, {z['jws']:,} B rows, 100 per commit (WAL, FULL)",
            f"{p['sqlite_insert_100_per_commit']:7.1f} µs",
        ),
        (
            "SQLite commit of one row (an fsync), p50 / p99",
            f"{p['sqlite_commit_1_row_p50']:7.0f} µs / {p['sqlite_commit_1_row_p99']:.0f} µs",
        ),
    )
    lines = [
        f"mrx ingest benchmark  {report['started_at'][:16].replace('T', ' ')} UTC  {report['machine']['cpus']} CPUs"
        f"  load {report['machine']['load_average_1m']:.2f}  Python {v['python']}  aiohttp {v['aiohttp']}"
        f"  lxml {v['lxml']}  SQLite {v['sqlite']}",
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up, {s['repeat']} repeat(s): medians",
        "",
        "Ceiling parts, per event (best of 5)",
        *(f"  {label:<58}{value}" for label, value in parts),
        "",
        f"  {'load':<27}{'conns':>6}{'events/s':>10}{'ceiling':>9}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}   goal",
    ]
    for e in loads_.values():
        n, g = e["node"], e["goal"]
        if "ceiling_events_per_s" in e:
            aim = f" (aim {g['aim_events_per_s']:,.0f})" if "aim_events_per_s" in g else ""
            ceiling = f"{e['ceiling_events_per_s']:>9,.0f}{e['ratio']:>7.2f}"
            goal, conns = f"≥ {g['events_per_s']:,.0f}/s{aim}", f"{e['connections']}"
        else:
            ceiling, goal, conns = f"{'':>16}", f"p99 < {g['p99_ms']:g} ms", f"≤{e['connections']}"
        lines.append(
            f"  {e['title']:<27}{conns:>6}{n['events_per_s']:>10,.0f}{ceiling}{n['p50_ms']:>8.1f}{n['p99_ms']:>8.1f}"
            f"   {goal}: {_met(g['met'])}"
        )
    lines += [
        f"  node peak RSS (VmHWM, with its signing workers) {m['node_peak_rss_mb']:.0f} MB, idle {m['node_idle_rss_mb']:.0f} MB,"
        f" bare aiohttp echo {m['echo_peak_rss_mb']:.0f} MB   < {m['goal_mb']:g} MB: {_met(m['met'])}",
        "",
        "Where the time goes, per event (ceiling = echo + sign + XSD + insert; CPU over each run, warm-up included)",
        f"  {'load':<27}{'echo ev/s':>10}{'echo µs':>9}{'ceiling µs':>12}{'node CPU µs':>13}{'echo CPU µs':>13}"
        f"{'client cores':>14}{'other cores':>13}",
    ]
    for e in loads_.values():
        n, echo = e["node"], e["echo"]
        if "ceiling_events_per_s" in e:
            costs = f"{e['echo_us_per_event']:>9.1f}{1e6 / e['ceiling_events_per_s']:>12.1f}"
        else:
            costs = f"{'-':>9}{'-':>12}"
        lines.append(
            f"  {e['title']:<27}{echo['events_per_s']:>10,.0f}{costs}{n['server_cpu_us_per_event']:>13.0f}"
            f"{echo['server_cpu_us_per_event']:>13.0f}{n['client_cores']:>14.2f}{n['other_cores']:>13.2f}"
        )
    for e in loads_.values():
        if "floor_p50_ms" in e:
            lines.append(
                f"  {e['title']}: echo p50 / p99 {e['echo']['p50_ms']:.2f} / {e['echo']['p99_ms']:.2f} ms;"
                f" floor p50 (echo p50 + sign + XSD + one-row commit) {e['floor_p50_ms']:.2f} ms;"
                f" node max {e['node']['max_ms']:.0f} ms"
            )
    lines += ["", "By repeat, in run order (seal events already stored → node events/s, p99 ms)"]
    for e in loads_.values():
        cells = [
            f"{r['stored_before']:>9,} → {r['events_per_s']:>6,.0f}/s {r['latency_ms']['p99']:>6.1f}"
            for r in e["node"]["runs"]
        ]
        lines.append(f"  {e['title']:<27}" + "   ".join(cells))
    lines.append(f"  {report.get('stored_events_at_end', 0):,} seal events stored at the end")
    return "\n".join(lines)


# -- profiling with py-spy ----------------------------------------------------------------


def profile(
    bench: Bench, args: argparse.Namespace, node: Target, runs: dict[str, dict[str, list[Run]]]
) -> dict[str, Any]:
    """Run each closed-loop load again under ``py-spy record --native``; summarise where the node's threads were."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = max(1, math.floor(args.duration))
    profiles: dict[str, Any] = {}
    for load in loads(args):
        if load.rate is not None:
            continue
        output = out_dir / f"node-batch{load.batch}.txt"

        def record(output: Path = output) -> None:
            time.sleep(args.warmup)  # py-spy sees the loaded node only
            subprocess.run(
                [py_spy, "record", "--pid", str(node.pid), "--duration", str(seconds), "--rate", str(args.profile_rate),
                 "--format", "raw", "--threads", "--native", "--output", str(output)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip

        measured = _median([r.result.events_per_s for r in runs[load.key]["node"]])
        run = bench.run(load, node, unique_events=_pool_size(args, load, measured), during=record)
        profiles[load.key] = {
            "title": load.title,
            "file": str(output),
            "events_per_s_while_profiled": run.result.events_per_s,
            "stored_before": run.stored_before,
            **summarise_profile(output),
        }
    return profiles


# How a sample's stack says what its thread was doing. The stacks are native
# (--native), so a thread blocked in the kernel shows where it blocked.
_GIL_WAIT = ("take_gil",)
_IDLE = ("epoll_wait", "epoll_pwait", "poll", "select", "PyThread_acquire_lock_timed", "pthread_cond_wait",
         "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "sem_clockwait")  # fmt: skip  (epoll_pwait: uvloop)
_FSYNC = ("fdatasync", "fsync")
_PYTHON_FRAME = (".py:", "<frozen ", "<string>:")
_INTERPRETER = ("libpython", "libc.so", "python3")


def _name(frame: str) -> str:
    return frame.rpartition(" (")[0]


def _where(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")")


def _python_frame(frame: str) -> str:
    """ "function  file" of a Python frame; mrx's own files as mrx/..., line numbers dropped."""
    path = _where(frame).rpartition(":")[0]
    if path == "<string>" and _name(frame).endswith("__init__"):
        return "dataclass __init__ (generated)"
    if path.startswith(("node/", "schemas/", "keys/")):  # a source checkout on sys.path
        path = "mrx/" + path
    return f"{_name(frame)}  {path}"


def _state(frames: list[str]) -> str:
    names = {_name(f) for f in frames}
    if names.intersection(_GIL_WAIT):
        return "waiting for the GIL"
    if names.intersection(_FSYNC):
        return "in fsync"
    if names.intersection(_IDLE):
        return "idle"
    return "running"


def _package(frames: list[str]) -> str:
    """Who the CPU of a running sample belongs to: a C library at the leaf, else the deepest Python module."""
    if any(_name(f) == "gc_collect_main" for f in frames):
        return "garbage collector"
    leaf = _where(frames[-1])
    if not _is_python(frames[-1]) and not leaf.startswith(_INTERPRETER):
        # "lxml/etree.cpython-311-....so", "libsqlite3.so.0.8.6", "_datetimemodule.c:1234"
        library = leaf.split("/")[0] if "/" in leaf else leaf.split(".")[0]
        return f"{library.lstrip('_').removesuffix('module')} (native)"
    python = [f for f in frames if _is_python(f)]
    frame = _python_frame(python[-1]) if python else "?"
    if frame.startswith("dataclass"):
        return frame
    parts = frame.partition("  ")[2].split("/")
    return "/".join(parts[:2]) if parts[0] == "mrx" else parts[0].removesuffix(".py")


def _is_python(frame: str) -> bool:
    return any(marker in frame for marker in _PYTHON_FRAME)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Thread states, and the event-loop thread's running samples by package, own function and mrx function."""
    states: dict[str, Counter[str]] = defaultdict(Counter)
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    running = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if not frames:
            continue
        count = int(count_text)
        thread_name = thread.partition(": ")[2] or thread
        state = _state(frames)
        states[thread_name][state] += count
        if thread_name != "MainThread" or state != "running":
            continue
        running += count
        package = _package(frames)
        packages[package] += count
        python = [_python_frame(f) for f in frames if _is_python(f)]
        if python:
            own[package if package == "garbage collector" else python[-1]] += count
        for name in set(python):
            if "  mrx/" in name and not name.endswith("mrx/node/cli.py"):  # cli: the entry point holds every sample
                inclusive[name] += count
    share = lambda counter, total: [(k, v / max(total, 1)) for k, v in counter.most_common(top)]  # noqa: E731
    return {
        "threads": {
            name: {state: n / sum(c.values()) for state, n in c.most_common()} | {"samples": sum(c.values())}
            for name, c in sorted(states.items(), key=lambda kv: kv[0] != "MainThread")
        },
        "main_running_samples": running,
        "packages": share(packages, running),
        "own": share(own, running),
        "inclusive_mrx": share(inclusive, running),
    }


def render_profile(summary: dict[str, Any]) -> str:
    lines = [
        "",
        f"Profile of the node, {summary['title']}: {summary['events_per_s_while_profiled']:,.0f} events/s"
        f" while sampled, {summary['stored_before']:,} events stored before; stacks in {summary['file']}",
    ]
    for name, states in summary["threads"].items():
        shares = ", ".join(f"{state} {n:.0%}" for state, n in states.items() if state != "samples" and n >= 0.005)
        role = " (event loop)" if name == "MainThread" else ""
        lines.append(f"  {name}{role}: {shares}  [{states['samples']:,} samples]")
    lines.append("  event-loop CPU by package (% of its running samples):")
    lines.append("    " + ", ".join(f"{name} {n:.0%}" for name, n in summary["packages"] if n >= 0.01))
    lines.append("  hottest functions, own time (incl. the C they call; % of the event loop's running samples):")
    lines += [f"    {n:6.1%}  {name}" for name, n in summary["own"]]
    lines.append("  mrx functions, inclusive time:")
    lines += [f"    {n:6.1%}  {name}" for name, n in summary["inclusive_mrx"]]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window (default 2; --quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per load, figures are medians (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter windows, one repeat")
    parser.add_argument("--connections-1", type=int, default=32, help="connections, closed loop batch 1 (32)")
    parser.add_argument("--connections-100", type=int, default=4, help="connections, closed loop batch 100 (4)")
    parser.add_argument("--connections-open", type=int, default=256, help="connection cap, open loop (256)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s, open loop (500)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="then profile the node with py-spy; stacks go to DIR")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s (100)")
    parser.add_argument("--dir", help="where the node and the SQLite ceiling run (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the node directory afterwards")
    args = parser.parse_args(argv)
    run_defaults(args)
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.rate <= 0:
        parser.error("--duration and --rate must be positive, --warmup not negative, --repeat at least 1")
    return args


def run_defaults(args: argparse.Namespace) -> None:
    """Fill --duration, --warmup and --repeat left unset: a full run, or a --quick one."""
    for name, normal, quick in (("duration", 10.0, 3.0), ("warmup", 2.0, 1.0), ("repeat", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)


def print_report(args: argparse.Namespace, figures: dict[str, Any], render_figures: Callable[[dict[str, Any]], str]) -> int:
    """Print a benchmark's figures and its profiles; with --json, write them too."""
    print(render_figures(figures))
    for entry in figures.get("profiles", {}).values():
        print(render_profile(entry))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return print_report(args, benchmark(args), render)


if __name__ == "__main__":
    sys.exit(main())
