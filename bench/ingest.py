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

After the runs: the node's peak RSS (``VmHWM`` in ``/proc/<pid>/status``).

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
``--profile DIR`` adds, after the measured runs, a run of each closed-loop
load under ``py-spy record --pid`` (py-spy samples from outside; the node is
unchanged; install it with ``.venv/bin/pip install py-spy``). It writes the
collapsed stacks to ``DIR/node-batch*.txt`` (open them in speedscope, or
feed them to flamegraph.pl) and prints, per load, the event-loop thread's
busy share and its hottest functions by own time and by inclusive time.
Profiled runs are never part of the figures above.
"""

from __future__ import annotations

import argparse
import array
import asyncio
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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
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
    sequence number, device time), and the templates are checked against
    the factory at construction.
    """

    _HOLES = {"event_id": '"%(e)s"', "lock_id": '"%(l)s"', "seq": "%(s)d", "device_time": '"%(t)s"'}

    def __init__(self, namespace: int, locks: int = LOCKS_PER_RUN) -> None:
        self.locks = locks
        self._id_prefix = f"{secrets.randbits(32):08x}-{namespace & 0xFFFF:04x}-4000-8000-"
        self._lock_prefix = f"LK-{namespace:04d}-"
        self._templates = {kind: self._template(kind) for kind in ("sealed", "position")}
        self._times: list[str] = []
        self._next = 0
        for probe in (0, locks, 2 * locks + 7):  # a sealed event and position events
            rendered = json.loads(self._render(probe))
            expected = factories.seal_event(
                seq=rendered["seq"], lock=rendered["lock_id"], type=rendered["type"], event_id=rendered["event_id"]
            )
            if rendered != expected:
                raise AssertionError(f"event template drifted from tests.factories:\n{rendered}\n{expected}")

    def _template(self, kind: str) -> str:
        marked = factories.seal_event(type=kind) | {hole: f"@{hole}@" for hole in self._HOLES}
        text = json.dumps(marked, separators=(",", ":")).replace("%", "%%")
        for hole, placeholder in self._HOLES.items():
            text = text.replace(f'"@{hole}@"', placeholder)
        return text

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


@dataclass
class LoadResult:
    events: int  # accepted inside the window
    requests: int
    window: float
    total_events: int  # warm-up included: what the CPU figures divide by
    latency_ms: dict[str, float]
    client_cpu: float
    wall: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.window


class Refused(Exception):
    """The server answered anything but "all accepted"."""


def _load_process(conn: Connection) -> None:
    """Serve `LoadSpec` → "ready" → "go" → `LoadResult` (or an error string) until None."""
    while (spec := conn.recv()) is not None:
        try:
            writer = EventWriter(spec.namespace)
            if spec.unique_events:
                bodies: Iterator[bytes] = iter(writer.bodies(spec.batch, -(-spec.unique_events // spec.batch)))
            else:
                pool = writer.bodies(spec.batch, 64)
                bodies = (pool[i % len(pool)] for i in range(1 << 62))
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
    counted = {"events": 0, "requests": 0, "total": 0}
    cpu0, t0 = time.process_time(), time.perf_counter()
    window_start, window_end = t0 + spec.warmup, t0 + spec.warmup + spec.duration
    failure: list[BaseException] = []

    async def post(session: aiohttp.ClientSession, body: bytes, started: float) -> None:
        async with session.post(url, data=body, headers=headers) as response:
            data = await response.read()
        done = time.perf_counter()
        if spec.strict:
            _check_accepted(response.status, data, spec.batch)
        elif not 200 <= response.status < 300:
            raise Refused(f"HTTP {response.status}: {data[:300]!r}")
        counted["total"] += spec.batch
        in_window = window_start <= (started if spec.rate else done) < window_end
        if in_window:
            counted["events"] += spec.batch
            counted["requests"] += 1
            latencies.append(done - started)

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
    )


def _check_accepted(status: int, data: bytes, batch: int) -> None:
    try:
        answer = json.loads(data)
    except ValueError:
        raise Refused(f"HTTP {status}, not JSON: {data[:300]!r}") from None
    if batch == 1:
        ok = status == 201 and answer.get("status") == "accepted"
    else:
        ok = status == 200 and (answer.get("accepted"), answer.get("duplicate"), answer.get("rejected")) == (batch, 0, 0)
        if not ok and isinstance(answer.get("results"), list):
            answer = next((r for r in answer["results"] if r.get("status") != "accepted"), answer)
    if not ok:
        raise Refused(f"HTTP {status}: {json.dumps(answer)[:1000]}")


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
    domain = SealEventIn.model_validate(event).to_domain("GW-1", datetime.now(timezone.utc))
    node_key = SigningKey.generate("EdDSA")
    record = RecordSigner("CN-AKL", lambda: node_key).sign(domain)
    signing_input, _, _ = record.jws.rpartition(b".")
    xml = b64url_decode(signing_input.partition(b".")[2])

    key = Ed25519PrivateKey.generate()
    sign = _best_per_call(lambda: key.sign(signing_input), 2000)

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    schema = etree.XMLSchema(etree.parse(str(mrx_xml.schema_path("SealEventNotification")), parser))
    if not schema.validate(etree.fromstring(xml, parser)):
        raise AssertionError(f"the node's own record does not validate: {schema.error_log}")
    xsd = _best_per_call(lambda: schema.validate(etree.fromstring(xml, parser)), 2000)

    path = directory / "ceiling.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, jws BLOB NOT NULL)")
        ids = iter(range(1 << 62))

        def commit(rows: int) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO records (message_id, jws) VALUES (?, ?)", [(f"m{next(ids)}", record.jws) for _ in range(rows)]
            )
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
    return Parts(
        sign=sign,
        xsd=xsd,
        insert=insert,
        commit_one_p50=_percentile(single, 0.5),
        commit_one_p99=_percentile(single, 0.99),
        signing_input_bytes=len(signing_input),
        xml_bytes=len(xml),
        jws_bytes=len(record.jws),
    )


# -- /proc --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """CPU seconds all cores have spent not idle since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


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


@dataclass
class Target:
    name: str  # "node" | "echo"
    url: str
    token: str
    pid: int


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, node: Target, echo: Target) -> None:
        self.args = args
        self.workdir = workdir
        self.node = node
        self.echo = echo
        self._namespaces = iter(range(1, 10_000))
        self._ctx = multiprocessing.get_context("spawn")
        self._conn, child = self._ctx.Pipe()
        self._loader = self._ctx.Process(target=_load_process, args=(child,), name="mrx-bench-load", daemon=True)
        self._loader.start()

    def close(self) -> None:
        self._conn.send(None)
        self._loader.join(10)
        if self._loader.is_alive():
            self._loader.kill()

    def run(self, load: Load, target: Target, *, unique_events: int = 0, during: Callable[[], None] | None = None) -> Run:
        a = self.args
        spec = LoadSpec(
            url=target.url,
            token=target.token,
            batch=load.batch,
            connections=load.connections,
            warmup=a.warmup,
            duration=a.duration,
            rate=load.rate,
            unique_events=unique_events,
            namespace=next(self._namespaces),
            strict=target.name == "node",
        )
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
        )

    def _expect(self, message: Any, expected: Any, load: Load, target: Target) -> Any:
        if message == expected or (isinstance(expected, type) and isinstance(message, expected)):
            return message
        raise SystemExit(f"{load.title} against the {target.name} failed: {message}")


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
    started_at = datetime.now(timezone.utc)
    load_average = os.getloadavg()[0]
    parts = measure_parts(workdir)
    node_dir = make_node(workdir / "node", gateways={"GW-BENCH": ("LK-*",)})
    ctx = multiprocessing.get_context("spawn")
    echo_conn, child = ctx.Pipe()
    echo_proc = ctx.Process(target=_echo_process, args=(child,), name="mrx-bench-echo", daemon=True)
    echo_proc.start()
    node_proc = NodeProcess(node_dir).start()
    bench: Bench | None = None
    try:
        assert node_proc.proc is not None and echo_proc.pid is not None
        token = node_dir.tokens["GW-BENCH"]
        node = Target("node", node_proc.url, token, node_proc.proc.pid)
        echo = Target("echo", f"http://127.0.0.1:{echo_conn.recv()}", token, echo_proc.pid)
        idle_rss = memory_kib(node.pid, "VmRSS")
        bench = Bench(args, workdir, node, echo)
        runs: dict[str, dict[str, list[Run]]] = {load.key: {"echo": [], "node": []} for load in loads(args)}
        for repeat in range(args.repeat):
            for load in loads(args):
                echo_run = bench.run(load, echo)
                unique = _pool_size(args, load, ceiling_events_per_s(echo_run, parts))
                node_run = bench.run(load, node, unique_events=unique)
                runs[load.key]["echo"].append(echo_run)
                runs[load.key]["node"].append(node_run)
                _progress(f"repeat {repeat + 1}/{args.repeat}  {load.title:<26} echo {echo_run.result.events_per_s:>9,.0f}/s"
                          f"  node {node_run.result.events_per_s:>7,.0f}/s")
        peak_rss = memory_kib(node.pid, "VmHWM")
        echo_rss = memory_kib(echo.pid, "VmHWM")
        report = _report(args, started_at, load_average, workdir, parts, runs, idle_rss, peak_rss, echo_rss)
        if args.profile:
            report["profiles"] = profile(bench, args, node, runs)
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
            {**asdict(r.result), "events_per_s": r.result.events_per_s, "server_cpu_us_per_event": r.server_cpu_per_event * 1e6,
             "client_cores": r.client_cores, "other_cores": r.other_cores}
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
    idle_rss: int,
    peak_rss: int,
    echo_rss: int,
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
        "memory": {
            "node_idle_rss_mb": idle_rss / 1024,
            "node_peak_rss_mb": peak_rss / 1024,
            "echo_peak_rss_mb": echo_rss / 1024,
            "goal_mb": GOAL_RSS_MB,
            "met": peak_rss / 1024 < GOAL_RSS_MB,
        },
    }
    for load in loads(args):
        node, echo = _summary(runs[load.key]["node"]), _summary(runs[load.key]["echo"])
        entry: dict[str, Any] = {
            "title": load.title, "batch": load.batch, "connections": load.connections, "offered_events_per_s": load.rate,
            "node": node, "echo": echo,
        }  # fmt: skip
        if load.rate is None:
            ceiling = _median([ceiling_events_per_s(e, parts) for e in runs[load.key]["echo"]])
            goal = GOAL_BATCH_1 if load.batch == 1 else GOAL_BATCH_100
            entry |= {
                "ceiling_events_per_s": ceiling,
                "ratio": node["events_per_s"] / ceiling,
                "echo_us_per_event": 1e6 / echo["events_per_s"],
                "goal": {"events_per_s": goal, "met": node["events_per_s"] >= goal}
                | ({"aim_events_per_s": AIM_BATCH_100} if load.batch == 100 else {}),
            }
        else:
            floor = echo["p50_ms"] + (parts.sign + parts.xsd + parts.commit_one_p50) * 1e3
            entry |= {"floor_p50_ms": floor, "goal": {"p99_ms": GOAL_P99_MS, "met": node["p99_ms"] < GOAL_P99_MS}}
        out["loads"][load.key] = entry
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(report: dict[str, Any]) -> str:
    v, s, p = report["versions"], report["settings"], report["ceiling_parts_us"]
    z = report["sizes_bytes"]
    lines = [
        f"mrx ingest benchmark  {report['started_at'][:16].replace('T', ' ')} UTC  {report['machine']['cpus']} CPUs"
        f"  load {report['machine']['load_average_1m']:.2f}  Python {v['python']}  aiohttp {v['aiohttp']}"
        f"  lxml {v['lxml']}  SQLite {v['sqlite']}",
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up, {s['repeat']} repeat(s): medians",
        "",
        "Ceiling parts, per event (best of 5)",
        *(f"  {label:<58}{value}" for label, value in (
            (f"Ed25519 sign, {z['signing_input']:,} B JWS signing input", f"{p['sign_ed25519']:7.1f} µs"),
            (f"lxml parse + XSD validate, {z['xml']:,} B XML", f"{p['xsd_parse_validate']:7.1f} µs"),
            (f"SQLite insert, {z['jws']:,} B rows, 100 per commit (WAL, FULL)",
             f"{p['sqlite_insert_100_per_commit']:7.1f} µs"),
            ("SQLite commit of one row (an fsync), p50 / p99",
             f"{p['sqlite_commit_1_row_p50']:7.0f} µs / {p['sqlite_commit_1_row_p99']:.0f} µs"),
        )),  # fmt: skip
        "",
        f"  {'load':<27}{'conns':>5}{'events/s':>10}{'ceiling':>9}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}   goal",
    ]
    for entry in report["loads"].values():
        n, e = entry["node"], entry["echo"]
        if "ceiling_events_per_s" in entry:
            g = entry["goal"]
            aim = f" (aim {g['aim_events_per_s']:,.0f})" if "aim_events_per_s" in g else ""
            lines.append(
                f"  {entry['title']:<27}{entry['connections']:>5}{n['events_per_s']:>10,.0f}"
                f"{entry['ceiling_events_per_s']:>9,.0f}{entry['ratio']:>7.2f}{n['p50_ms']:>8.1f}{n['p99_ms']:>8.1f}"
                f"   ≥ {g['events_per_s']:,.0f}/s{aim}: {_met(g['met'])}"
            )
        else:
            lines.append(
                f"  {entry['title']:<27}{entry['connections']:>5}{n['events_per_s']:>10,.0f}{'':>9}{'':>7}"
                f"{n['p50_ms']:>8.1f}{n['p99_ms']:>8.1f}   p99 < {entry['goal']['p99_ms']:g} ms: {_met(entry['goal']['met'])}"
            )
    m = report["memory"]
    lines += [
        f"  node peak RSS (VmHWM) {m['node_peak_rss_mb']:.0f} MB, idle {m['node_idle_rss_mb']:.0f} MB,"
        f" bare aiohttp echo {m['echo_peak_rss_mb']:.0f} MB   < {m['goal_mb']:g} MB: {_met(m['met'])}",
        "",
        "Where the time goes, per event (ceiling = echo + sign + XSD + insert; CPU over each run, warm-up included)",
        f"  {'load':<27}{'echo ev/s':>10}{'echo µs':>9}{'ceiling µs':>12}{'node CPU µs':>13}{'echo CPU µs':>13}"
        f"{'client cores':>14}{'other cores':>13}",
    ]
    for entry in report["loads"].values():
        n, e = entry["node"], entry["echo"]
        if "ceiling_events_per_s" in entry:
            costs = f"{entry['echo_us_per_event']:>9.1f}{1e6 / entry['ceiling_events_per_s']:>12.1f}"
        else:
            costs = f"{'-':>9}{'-':>12}"
        lines.append(
            f"  {entry['title']:<27}{e['events_per_s']:>10,.0f}{costs}{n['server_cpu_us_per_event']:>13.0f}"
            f"{e['server_cpu_us_per_event']:>13.0f}{n['client_cores']:>14.2f}{n['other_cores']:>13.2f}"
        )
    open_loop = next(e for e in report["loads"].values() if "floor_p50_ms" in e)
    lines.append(
        f"  open loop: echo p50 / p99 {open_loop['echo']['p50_ms']:.2f} / {open_loop['echo']['p99_ms']:.2f} ms;"
        f" floor p50 (echo p50 + sign + XSD + one-row commit) {open_loop['floor_p50_ms']:.2f} ms;"
        f" node max {open_loop['node']['max_ms']:.0f} ms"
    )
    return "\n".join(lines)


# -- profiling with py-spy ----------------------------------------------------------------


def profile(bench: Bench, args: argparse.Namespace, node: Target, runs: dict[str, dict[str, list[Run]]]) -> dict[str, Any]:
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, Any] = {}
    for load in loads(args):
        if load.rate is not None:
            continue
        measured = _median([r.result.events_per_s for r in runs[load.key]["node"]])
        output = out_dir / f"node-batch{load.batch}.txt"
        seconds = max(1, math.floor(args.duration))

        def record(output: Path = output) -> None:
            time.sleep(args.warmup)
            subprocess.run(
                [py_spy, "record", "--pid", str(node.pid), "--duration", str(seconds), "--rate", str(args.profile_rate),
                 "--format", "raw", "--threads", "--nonblocking", "--output", str(output)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip

        unique = _pool_size(args, load, measured)
        bench.run(load, node, unique_events=unique, during=record)
        summary = summarise_profile(output, seconds * args.profile_rate)
        profiles[load.key] = {"title": load.title, "file": str(output), **summary}
    return profiles


def _frame(frame: str) -> tuple[str, str]:
    """("function", "file") of a py-spy frame "function (file:line)"."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        for package in ("node/", "schemas/", "keys/"):
            if f"/{package}" in path:
                path = "mrx/" + package + path.rsplit(f"/{package}", 1)[1]
                break
    return name, path


def summarise_profile(path: Path, expected_samples: int, top: int = 15) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    main = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        thread_name = thread.partition(": ")[2] or thread
        threads[thread_name] += count
        if thread_name != "MainThread" or not frames:
            continue
        main += count
        names = [f"{name}  {file}" for name, file in map(_frame, frames)]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    mrx_inclusive = [(n, c) for n, c in inclusive.most_common() if "  mrx/" in n]
    return {
        "samples": sum(threads.values()),
        "main_thread_samples": main,
        "main_thread_busy": main / expected_samples if expected_samples else math.nan,
        "threads": {name: count / max(sum(threads.values()), 1) for name, count in threads.most_common()},
        "own": [(n, c / max(main, 1)) for n, c in own.most_common(top)],
        "inclusive_mrx": [(n, c / max(main, 1)) for n, c in mrx_inclusive[:top]],
    }


def render_profile(summary: dict[str, Any]) -> str:
    threads = ", ".join(f"{name} {share:.0%}" for name, share in summary["threads"].items())
    lines = [
        "",
        f"Profile of the node, {summary['title']} (py-spy, {summary['samples']:,} samples: {summary['file']})",
        f"  event-loop thread busy ≈ {summary['main_thread_busy']:.0%} of wall time; samples by thread: {threads}",
        "  hottest functions on the event-loop thread, own time (% of its samples):",
    ]
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["own"]]
    lines.append("  mrx functions, inclusive time (% of its samples):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["inclusive_mrx"]]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="load seconds before each window (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per load; figures are medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s windows, 1 s warm-up, 1 repeat")
    parser.add_argument("--connections-1", type=int, default=32, help="connections, closed loop batch 1 (32)")
    parser.add_argument("--connections-100", type=int, default=4, help="connections, closed loop batch 100 (4)")
    parser.add_argument("--connections-open", type=int, default=256, help="connection cap, open loop (256)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s, open loop (500)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="then profile the node with py-spy; stacks go to DIR")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (200)")
    parser.add_argument("--dir", help="where the node and the SQLite ceiling run (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the node directory afterwards")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat = 3.0, 1.0, 1
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.rate <= 0:
        parser.error("--duration and --rate must be positive, --warmup not negative, --repeat at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = benchmark(args)
    print(render(report))
    for entry in report.get("profiles", {}).values():
        print(render_profile(entry))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
