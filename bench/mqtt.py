"""Seal events through the MQTT lock listener, beside the same node's HTTP batch ingest, measured in the same run.

Run from the repository root (``--quick`` for a smoke run of about half a minute):

    PYTHONPATH=.dev .venv/bin/python bench/mqtt.py [--quick] [--json FILE] [--broker HOST:PORT] [--listener-only]

What it measures
----------------
One node (``make_node`` + ``NodeProcess``, its own process and directory)
with an ``[mqtt]`` section, and a Mosquitto broker of the benchmark's own
(``/usr/sbin/mosquitto`` on a free port, persistence on, no queue limit;
``--broker`` uses a running one instead). Per repeat, three runs, each a
``--warmup`` (unrecorded) and a ``--duration`` window:

- **HTTP batch ingest**, the reference: ``bench/ingest.py``'s load generator
  (imported, not copied), closed loop, batches of 100, 4 connections, into
  the node. Figure: accepted events/s in the window.
- **MQTT throughput**: a publisher in its own process (`Gateways`: a bare
  MQTT 3.1.1 client whose PUBLISH packets are encoded before the clock
  starts, as ``ingest.py`` builds its HTTP bodies; QoS 1, one event per
  message by default, ``--mqtt-batch``) publishes the same
  kind of events as the HTTP load on the gateway's events topic, at an
  offered rate of ``--offered`` (1.25) × the HTTP figure just measured, so
  that the listener is saturated without the publisher taking more of the
  machine than it needs. Figure: events whose records were committed inside
  the window ÷ the window (``records.stored_at``, which the node takes at
  the start of each commit), read from the node's database after the backlog
  has drained. **ratio** = MQTT events/s ÷ HTTP events/s (the issue's goal:
  ≥ 0.80). A run that committed about what was offered (``KEPT_UP``) did
  not reach the listener's ceiling: its ratio is a floor, and the report
  says so (``--offered`` higher finds the ceiling, at the price of the
  publisher and the broker taking more of the machine).
- **MQTT latency**: the publisher at ``--rate`` (500) events/s, open loop.
  For each event scheduled inside the window: ``records.stored_at`` of its
  record − the wall-clock time its publish was *scheduled* (the publisher
  and the node share this machine's clock; a publisher that falls behind is
  charged to the figure). p50/p99/max. ``stored_at`` is the commit's start,
  so a figure is up to one commit short of durable.

Every event must be stored exactly once: a run that loses or refuses one
stops the benchmark. CPU per event (the node with its signing workers, the
broker, the publisher, everyone else's use of the machine) is metered over
each run as in ``bench/ingest.py``.

Then **the listener alone** (also by itself: ``--listener-only``, a few
seconds, no Mosquitto needed): `LockListener` in this process, against a
scripted broker process that streams pre-encoded PUBLISHes (a window of
``--max-inflight``) and counts PUBACKs, with an ``Ingest`` that accepts
every event at once. Figure: this process's CPU per message, the
listener's own work (reading, checks, JSON, chunking, acknowledging) —
CPU time of one process, which other people's load hardly moves, so it
compares two versions of the listener where the node runs cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.metadata
import math
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

try:
    from bench.exchange import _sample, _wall, scrape
    from bench.ingest import (
        Bench,
        EventWriter,
        Load,
        Run,
        Target,
        _median,
        _percentile,
        _pool_size,
        _progress,
        machine_busy,
        memory_kib,
        print_report,
        process_cpu,
        run_defaults,
        summarise_profile,
    )
    from mrx.adapters.mqtt import LockListener
    from mrx.node.access import Caller
    from mrx.node.config import Limits, Mqtt
    from mrx.node.ingest import EventResult
    from mrx.node.metrics import NodeMetrics
    from mrx.node.storage import Credential
    from tests.nodeproc import NodeDir, NodeProcess, make_node
except ModuleNotFoundError as exc:  # pragma: no cover - a usage error, said plainly
    sys.exit(f"{exc}; run from the repository root as: PYTHONPATH=.dev .venv/bin/python bench/mqtt.py")

GOAL_RATIO = 0.80  # MQTT events/s ≥ 80 % of HTTP batch ingest on the same node
KEPT_UP = 0.97  # a throughput run committing this share of the offered rate kept up: its figure is a floor
GATEWAY = "GW-BENCH"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
FIRST_MQTT_NAMESPACE = 5000  # bench.ingest's Bench numbers its runs from 1: lock IDs never collide
HTTP_GUESS = 10_000.0  # events/s, to size the first HTTP run's pre-built events (ingest's POOL_MARGIN on top)


# -- the broker ---------------------------------------------------------------------------------


class Broker:
    """A Mosquitto of the benchmark's own: anonymous on 127.0.0.1, persistence on, no queue limit."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            f"persistence true\npersistence_location {directory}/\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 1000\nset_tcp_nodelay true\n"
            "log_dest stderr\nlog_type error\n"
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"mosquitto did not start: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# -- the publisher (its own process) ----------------------------------------------------------


@dataclass(frozen=True)
class PublishSpec:
    host: str
    port: int
    topic: str
    namespace: int
    rate: float  # events/s offered
    seconds: float  # warm-up + window
    batch: int  # events per message


@dataclass
class Published:
    wall0: float  # time.time() at the first scheduled publish
    events: int
    messages: int
    behind_s: float  # how late the last publish was against its schedule
    client_cpu: float
    wall: float  # first publish to the last PUBACK from the broker


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def _string(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


class Gateways:
    """The load's MQTT side: a bare MQTT 3.1.1 client over a plain socket, every PUBLISH encoded beforehand.

    A gateway library would do more per message; the benchmark's client should
    cost the shared machine as little as ``ingest.py``'s pre-built HTTP bodies do,
    so that the figures are the node's. QoS 1; PUBACKs are counted by a reader thread.
    """

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connect = _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id.encode())
        self.sock.sendall(_packet(0x10, connect))  # clean session, no keepalive
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"the broker refused the benchmark's connection: {connack!r}")
        self.sock.settimeout(None)
        self.acknowledged = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = 0
        while data := self.sock.recv(65536):
            pending += len(data)  # only PUBACKs come back: four bytes each
            self.acknowledged, pending = self.acknowledged + pending // 4, pending % 4

    @staticmethod
    def publishes(topic: str, bodies: Sequence[bytes]) -> list[bytes]:
        head = _string(topic.encode())
        return [_packet(0x32, head + struct.pack("!H", n % 65535 + 1) + body) for n, body in enumerate(bodies)]

    def send(self, packets: Sequence[bytes]) -> None:
        self.sock.sendall(b"".join(packets))

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()
            self._reader.join(5)


def _publisher_process(conn: Connection) -> None:
    """Serve `PublishSpec` → "ready" → "go" → `Published` (or an error string) until None."""
    while (spec := conn.recv()) is not None:
        try:
            messages = math.ceil(spec.rate * spec.seconds / spec.batch)
            writer = EventWriter(spec.namespace)
            if spec.batch == 1:
                bodies = [event.encode() for event in writer.events(messages)]
            else:
                bodies = writer.bodies(spec.batch, messages)
            packets = Gateways.publishes(spec.topic, bodies)
            gateways = Gateways(spec.host, spec.port, f"mrx-bench-{spec.namespace}")
            conn.send("ready")
            if conn.recv() != "go":
                gateways.close()
                continue
            interval = spec.batch / spec.rate
            cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
            sent = 0
            while sent < len(packets):
                due = min(len(packets), int((time.perf_counter() - t0) / interval) + 1)  # all whose time has come
                if due > sent:
                    gateways.send(packets[sent:due])
                    sent = due
                else:  # until the next one is due, a millisecond at most
                    time.sleep(max(0.0, min(0.001, t0 + sent * interval - time.perf_counter())))
            behind = time.perf_counter() - (t0 + (len(packets) - 1) * interval)
            deadline = time.perf_counter() + 120
            while gateways.acknowledged < len(packets) and time.perf_counter() < deadline:
                time.sleep(0.005)
            if gateways.acknowledged < len(packets):
                raise RuntimeError(f"the broker acknowledged {gateways.acknowledged} of {len(packets)} messages")
            wall = time.perf_counter() - t0
            gateways.close()
            conn.send(Published(wall0, len(bodies) * spec.batch, len(bodies), behind, time.process_time() - cpu0, wall))
        except Exception as exc:  # reported to the orchestrator, which stops the benchmark
            conn.send(f"{type(exc).__name__}: {exc}")


# -- the listener alone: its own CPU per message, with no node and no broker to share the machine with -------


class _Packets:
    """Whole MQTT packets off a blocking socket (the scripted broker's reader)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def next(self) -> tuple[int, bytes]:
        """The next packet: (its type, its body)."""
        while True:
            length, shift, at = 0, 0, 1
            while at < min(len(self.buffer), 5):
                byte = self.buffer[at]
                length, shift, at = length | (byte & 0x7F) << shift, shift + 7, at + 1
                if not byte & 0x80:
                    if len(self.buffer) >= at + length:
                        kind, body = self.buffer[0] >> 4, bytes(self.buffer[at : at + length])
                        del self.buffer[: at + length]
                        return kind, body
                    break
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the listener closed the connection")
            self.buffer += data


def _scripted_broker(conn: Connection, topic: str, messages: int, batch: int, window: int) -> None:
    """The broker of `listener_cost`, in its own process: a stream of PUBLISHes, the seconds until the last PUBACK.

    It answers the listener's CONNECT and SUBSCRIBE, then sends ``messages``
    pre-encoded PUBLISHes (QoS 1) with at most ``window`` unacknowledged. It
    keeps no state, so it costs the machine little.
    """
    packets = Gateways.publishes(topic, EventWriter(FIRST_MQTT_NAMESPACE - 1).bodies(batch, messages))
    with socket.create_server(("127.0.0.1", 0)) as server:
        conn.send(server.getsockname()[1])
        sock, _ = server.accept()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _Packets(sock)
        stream.next()  # CONNECT
        sock.sendall(b"\x20\x02\x00\x00")
        _, subscribe = stream.next()
        sock.sendall(b"\x90\x03" + subscribe[:2] + b"\x01")  # SUBACK: QoS 1
        conn.send("streaming")
        sent = acknowledged = 0
        t0 = time.perf_counter()
        while acknowledged < len(packets):
            if sent - acknowledged <= window // 2 and sent < len(packets):
                upto = min(len(packets), acknowledged + window)
                sock.sendall(b"".join(packets[sent:upto]))
                sent = upto
            kind, _ = stream.next()
            if kind == 4:  # PUBACK
                acknowledged += 1
            elif kind == 12:  # PINGREQ
                sock.sendall(b"\xd0\x00")
        conn.send(time.perf_counter() - t0)
        while stream.next()[0] != 14:  # until the listener's DISCONNECT: it stops without a warning
            pass


class _Accepted:
    """The listener's `Ingest` in `listener_cost`: every event accepted at once, nothing signed or stored."""

    async def seal_events(self, gateway: Caller, items: list[Any], pointer_prefix: str = "") -> list[EventResult]:
        return [EventResult(index, None, "accepted") for index in range(len(items))]


class _AnyGateway:
    """The listener's `Access` in `listener_cost`: the topic's gateway exists and may report any lock."""

    def __init__(self) -> None:
        self.caller = Caller(Credential(GATEWAY, "gateway", ("*",), b"", datetime.now(UTC)), re.compile(".*"))

    async def gateway(self, name: str) -> Caller | None:
        return self.caller


async def _listener_cpu(args: argparse.Namespace, port: int, prefix: str, conn: Connection) -> tuple[float, float, float]:
    """(The listener's CPU seconds, the broker's wall seconds, messages stored) for one scripted stream."""
    metrics = NodeMetrics()
    listener = LockListener(
        Mqtt(host="127.0.0.1", port=port, topic_prefix=prefix, max_inflight=args.max_inflight),
        client_id="mrx-bench-listener", password=None, ingest=_Accepted(), access=_AnyGateway(),  # type: ignore[arg-type]
        store=None, metrics=metrics, limits=Limits(),  # type: ignore[arg-type]
    )  # fmt: skip
    await listener.start()
    loop = asyncio.get_running_loop()
    try:
        if (streaming := await loop.run_in_executor(None, conn.recv)) != "streaming":
            raise SystemExit(f"the scripted broker failed: {streaming}")
        cpu0 = time.process_time()
        wall = await loop.run_in_executor(None, conn.recv)
        cpu = time.process_time() - cpu0
    finally:
        await listener.stop()
    return cpu, wall, metrics.registry.get_sample_value("mrx_mqtt_messages_total", {"outcome": "stored"}) or 0.0


def listener_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The listener's CPU per message, `--repeat` times: a scripted broker streams, an `Ingest` accepts at once.

    What is left is the listener's own work per message (reading and cutting
    the stream, the topic, JSON and shape checks, chunking, acknowledging),
    in this one process's CPU time: unlike the node runs' figures, other
    people's load hardly moves it.
    """
    ctx = multiprocessing.get_context("spawn")
    prefix = f"mrxbench/{secrets.token_hex(4)}"
    messages = args.listener_messages
    runs = []
    for _ in range(args.repeat):
        conn, child = ctx.Pipe()
        broker = ctx.Process(
            target=_scripted_broker, name="mrx-bench-scripted-broker", daemon=True,
            args=(child, f"{prefix}/gateways/{GATEWAY}/events", messages, args.mqtt_batch, args.max_inflight),
        )  # fmt: skip
        broker.start()
        try:
            cpu, wall, stored = asyncio.run(_listener_cpu(args, conn.recv(), prefix, conn))
        finally:
            broker.join(10)
            if broker.is_alive():
                broker.kill()
        if stored != messages:
            raise SystemExit(f"the listener stored {stored:,.0f} of {messages:,} scripted messages")
        runs.append({"us_per_message": cpu / messages * 1e6, "messages_per_s": messages / wall})
    return {
        "messages": messages,
        "events_per_message": args.mqtt_batch,
        "us_per_message": _median([r["us_per_message"] for r in runs]),
        "runs": runs,
    }


# -- one MQTT run ---------------------------------------------------------------------------------


@dataclass
class MqttRun:
    namespace: int
    offered_events_per_s: float
    published: Published
    events_per_s: float  # committed inside the window
    latency_ms: dict[str, float]  # scheduled publish → commit start, events scheduled in the window
    node_cpu_us_per_event: float
    broker_cpu_us_per_event: float
    client_cores: float
    other_cores: float
    drain_s: float  # after the last publish, until every event was stored
    stored_before: int
    listener: dict[str, float]  # mrx_mqtt_messages_total by outcome over the run
    kept_up: bool  # committed about what was offered: the listener's ceiling is higher than this figure


class Rig:
    """The node, the broker, the publisher and ingest.py's HTTP load generator, with what each run needs."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: ExitStack) -> None:
        self.args = args
        if args.broker:
            host, _, port = args.broker.rpartition(":")
            self.host, self.port, self.broker_pid = host, int(port), None
        else:
            broker = Broker(workdir / "broker")
            stack.callback(broker.stop)
            self.host, self.port, self.broker_pid = "127.0.0.1", broker.port, broker.proc.pid
        self.prefix = f"mrxbench/{secrets.token_hex(4)}"
        self.node_dir: NodeDir = make_node(workdir / "node", gateways={GATEWAY: ("LK-*",)})
        with self.node_dir.config_path.open("a") as fh:
            fh.write(
                f'\n[mqtt]\nhost = "{self.host}"\nport = {self.port}\ntopic_prefix = "{self.prefix}"\n'
                f'client_id = "mrx-bench-{secrets.token_hex(4)}"\nmax_inflight = {args.max_inflight}\n'
            )
        node = NodeProcess(self.node_dir)
        stack.callback(_stop_node, node)
        node.start()
        assert node.proc is not None
        self.node, self.pid = node, node.proc.pid
        deadline = time.monotonic() + 30
        while _sample(scrape(node.url), "mrx_mqtt_connected") != 1.0:
            if time.monotonic() > deadline:
                raise SystemExit(f"the node's MQTT listener did not subscribe:\n{node.stderr()[-3000:]}")
            time.sleep(0.1)
        self.idle_rss_mb = memory_kib(self.pid, "VmRSS") / 1024
        self.bench = Bench(args)
        stack.callback(self.bench.close)
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._conn, child = ctx.Pipe()
        publisher = ctx.Process(target=_publisher_process, args=(child,), name="mrx-bench-publisher", daemon=True)
        publisher.start()
        stack.callback(self._close_publisher, publisher)
        assert publisher.pid is not None
        self.publisher_pid = publisher.pid
        self.target = Target("node", node.url, self.node_dir.tokens[GATEWAY], self.pid, self.node_dir.database)
        self._namespaces = iter(range(FIRST_MQTT_NAMESPACE, 10_000))

    def _close_publisher(self, publisher: multiprocessing.process.BaseProcess) -> None:
        self._conn.send(None)
        publisher.join(10)
        if publisher.is_alive():
            publisher.kill()

    def http(self, load: Load, reference: float) -> Run:
        return self.bench.run(load, self.target, unique_events=_pool_size(self.args, load, reference))

    def mqtt(self, rate: float, during: Callable[[], None] | None = None) -> MqttRun:
        args = self.args
        namespace = next(self._namespaces)
        spec = PublishSpec(
            self.host, self.port, f"{self.prefix}/gateways/{GATEWAY}/events", namespace, rate,
            args.warmup + args.duration, args.mqtt_batch,
        )
        stored_before = _count(self.node_dir.database)
        before = scrape(self.node.url)
        self._conn.send(spec)
        if (ready := self._conn.recv()) != "ready":
            raise SystemExit(f"the publisher failed: {ready}")
        cpu0, broker0, busy0, t0 = process_cpu(self.pid), self._broker_cpu(), machine_busy(), time.perf_counter()
        self._conn.send("go")
        if during is not None:
            during()
        published = self._conn.recv()
        if not isinstance(published, Published):
            raise SystemExit(f"the publisher failed: {published}")
        published_at = time.perf_counter()
        stored = self._drain(namespace, published.events)
        drain = time.perf_counter() - published_at
        wall = time.perf_counter() - t0
        node_cpu, broker_cpu, busy = process_cpu(self.pid) - cpu0, self._broker_cpu() - broker0, machine_busy() - busy0
        after = scrape(self.node.url)

        window_start = published.wall0 + args.warmup
        window_end = window_start + args.duration
        committed = sum(1 for _, at in stored if window_start <= at < window_end)
        interval = 1.0 / rate
        latencies = sorted(
            at - scheduled
            for index, at in stored
            if window_start <= (scheduled := published.wall0 + (index // args.mqtt_batch) * args.mqtt_batch * interval) < window_end
        )
        return MqttRun(
            namespace=namespace,
            offered_events_per_s=rate,
            published=published,
            events_per_s=committed / args.duration,
            kept_up=committed / args.duration >= KEPT_UP * rate,
            latency_ms={q: _percentile(latencies, p) * 1e3 for q, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
            node_cpu_us_per_event=node_cpu / published.events * 1e6,
            broker_cpu_us_per_event=broker_cpu / published.events * 1e6,
            client_cores=published.client_cpu / wall,
            other_cores=max(0.0, busy - node_cpu - broker_cpu - published.client_cpu) / wall,
            drain_s=drain,
            stored_before=stored_before,
            listener={
                outcome: _sample(after, "mrx_mqtt_messages_total", outcome=outcome)
                - _sample(before, "mrx_mqtt_messages_total", outcome=outcome)
                for outcome in ("stored", "refused", "retry")
            },
        )

    def _broker_cpu(self) -> float:
        return process_cpu(self.broker_pid) if self.broker_pid is not None else 0.0

    def _drain(self, namespace: int, events: int) -> list[tuple[int, float]]:
        """Wait until the run's events are all stored; (event index, commit start as time.time()) of each."""
        deadline = time.monotonic() + self.args.drain_timeout
        low, high = f"LK-{namespace:04d}-", f"LK-{namespace:04d}."
        with closing(sqlite3.connect(f"file:{self.node_dir.database}?mode=ro", uri=True)) as db:
            while True:
                count = db.execute(
                    "SELECT count(*) FROM seal_events WHERE lock_id >= ? AND lock_id < ?", (low, high)
                ).fetchone()[0]
                if count >= events:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {count:,} of {events:,} published events were stored; stopping")
                time.sleep(0.1)
            rows = db.execute(
                "SELECT s.event_id, r.stored_at FROM seal_events s JOIN records r ON r.message_id = s.message_id"
                " WHERE s.lock_id >= ? AND s.lock_id < ?",
                (low, high),
            ).fetchall()
        if len(rows) != events:
            raise SystemExit(f"{len(rows):,} events stored for {events:,} published")
        # EventWriter's event IDs end in the event's index (12 hex digits).
        return [(int(event_id[-12:], 16), _wall(stored_at)) for event_id, stored_at in rows]

    def peak_rss_mb(self) -> float:
        return memory_kib(self.pid, "VmHWM") / 1024


def _count(database: Path) -> int:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM seal_events").fetchone()[0])


def _stop_node(node: NodeProcess) -> None:
    code = node.stop()
    if code not in (0, -15):
        print(f"node exited with {code}:\n{node.stderr()[-3000:]}", file=sys.stderr)


# -- the benchmark ----------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mrx-bench-mqtt-", dir=args.dir))
    started_at = datetime.now(UTC)
    load_average = os.getloadavg()[0]
    http_load = Load("closed_batch_100", "HTTP closed loop, batch 100", 100, args.connections_100)
    runs: dict[str, list[Any]] = {"http": [], "mqtt": [], "latency": []}
    try:
        with ExitStack() as stack:
            rig = Rig(args, workdir, stack)
            reference = HTTP_GUESS
            for repeat in range(args.repeat):
                tag = f"repeat {repeat + 1}/{args.repeat}"
                http = rig.http(http_load, reference)
                reference = http.result.events_per_s
                runs["http"].append(http)
                _progress(
                    f"{tag}  HTTP batch 100   {http.result.events_per_s:>7,.0f} events/s"
                    f"  ({http.stored_before:,} events stored before)"
                )
                mqtt = rig.mqtt(args.offered * reference)
                runs["mqtt"].append(mqtt)
                _progress(
                    f"{tag}  MQTT throughput  {mqtt.events_per_s:>7,.0f} events/s  (offered {mqtt.offered_events_per_s:,.0f}/s,"
                    f" ratio {mqtt.events_per_s / reference:.2f}, drained {mqtt.drain_s:.1f} s after the last publish)"
                    + ("  kept up: a floor" if mqtt.kept_up else "")
                )
                latency = rig.mqtt(args.rate)
                runs["latency"].append(latency)
                lat = latency.latency_ms
                _progress(
                    f"{tag}  MQTT latency     {args.rate:g}/s offered: p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms"
                    f"  max {lat['max']:.0f} ms"
                )
            memory = {"node_peak_rss_mb": rig.peak_rss_mb(), "node_idle_rss_mb": rig.idle_rss_mb}
            stored = _count(rig.node_dir.database)
            report = _report(args, started_at, load_average, runs, memory, stored)
            report["listener_alone"] = listener_cost(args)
            if args.profile:
                report["profiles"] = {"mqtt": profile(rig, args, args.offered * reference)}
        return report
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def profile(rig: Rig, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """One more MQTT throughput run with the node under ``py-spy record --native`` (not in the figures)."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "node-mqtt.txt"

    def record() -> None:
        time.sleep(args.warmup)
        subprocess.run(
            [py_spy, "record", "--pid", str(rig.pid), "--duration", str(max(1, math.floor(args.duration))),
             "--rate", "100", "--format", "raw", "--threads", "--native", "--output", str(output)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    run = rig.mqtt(rate, during=record)
    return {
        "title": f"MQTT, offered {rate:,.0f} events/s",
        "file": str(output),
        "events_per_s_while_profiled": run.events_per_s,
        "stored_before": run.stored_before,
        **summarise_profile(output),
    }


# -- the report ---------------------------------------------------------------------------------------


def _report(
    args: argparse.Namespace,
    started_at: datetime,
    load_average: float,
    runs: dict[str, list[Any]],
    memory: dict[str, float],
    stored: int,
) -> dict[str, Any]:
    http: list[Run] = runs["http"]
    mqtt: list[MqttRun] = runs["mqtt"]
    latency: list[MqttRun] = runs["latency"]
    ratios = [m.events_per_s / h.result.events_per_s for h, m in zip(http, mqtt, strict=True)]
    mqtt_rate = _median([m.events_per_s for m in mqtt])
    http_rate = _median([h.result.events_per_s for h in http])
    return {
        "benchmark": "mqtt",
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": load_average, "platform": platform.platform()},
        "versions": {
            "python": platform.python_version(),
            "paho_mqtt": importlib.metadata.version("paho-mqtt"),
            "mosquitto": _mosquitto_version(),
        },
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat, "offered_factor": args.offered,
            "latency_rate": args.rate, "events_per_message": args.mqtt_batch, "max_inflight": args.max_inflight,
            "http_connections": args.connections_100, "broker": args.broker or "own",
        },  # fmt: skip
        "http_batch_100": {
            "events_per_s": http_rate,
            "p99_ms": _median([h.result.latency_ms["p99"] for h in http]),
            "node_cpu_us_per_event": _median([h.server_cpu_per_event * 1e6 for h in http]),
            "runs": [
                {"events_per_s": h.result.events_per_s, "latency_ms": h.result.latency_ms, "stored_before": h.stored_before,
                 "node_cpu_us_per_event": h.server_cpu_per_event * 1e6, "client_cores": h.client_cores,
                 "other_cores": h.other_cores}  # fmt: skip
                for h in http
            ],
        },
        "mqtt": {
            "events_per_s": mqtt_rate,
            "ratio": _median(ratios),
            "ratio_of_medians": mqtt_rate / http_rate,
            "node_cpu_us_per_event": _median([m.node_cpu_us_per_event for m in mqtt]),
            # The same comparison by the node's CPU per event: less noisy on a shared machine.
            "ratio_by_cpu": _median([h.server_cpu_per_event * 1e6 / m.node_cpu_us_per_event for h, m in zip(http, mqtt, strict=True)]),
            "broker_cpu_us_per_event": _median([m.broker_cpu_us_per_event for m in mqtt]),
            "runs_kept_up": sum(m.kept_up for m in mqtt),
            "runs": [_run_json(m) for m in mqtt],
        },
        "latency": {
            "offered_events_per_s": args.rate,
            "p50_ms": _median([m.latency_ms["p50"] for m in latency]),
            "p99_ms": _median([m.latency_ms["p99"] for m in latency]),
            "max_ms": _median([m.latency_ms["max"] for m in latency]),
            "runs": [_run_json(m) for m in latency],
        },
        "goal": {"ratio": GOAL_RATIO, "met": _median(ratios) >= GOAL_RATIO},
        "memory": memory,
        "stored_events_at_end": stored,
    }


def _run_json(m: MqttRun) -> dict[str, Any]:
    return asdict(m) | {"published": asdict(m.published)}


def _mosquitto_version() -> str:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return ""
    match = re.search(r"mosquitto version (\S+)", out)
    return match.group(1) if match else ""


def render(report: dict[str, Any]) -> str:
    s, h, m, lat = report["settings"], report["http_batch_100"], report["mqtt"], report["latency"]
    per_message = "one event" if s["events_per_message"] == 1 else f"{s['events_per_message']} events"
    lines = [
        f"mrx MQTT listener benchmark  {report['started_at'][:16].replace('T', ' ')} UTC  {report['machine']['cpus']} CPUs"
        f"  load {report['machine']['load_average_1m']:.2f}  Python {report['versions']['python']}"
        f"  Mosquitto {report['versions']['mosquitto']}",
        f"{s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up, {s['repeat']} repeat(s): medians;"
        f" MQTT 3.1.1, QoS 1, {per_message} per message, max_inflight {s['max_inflight']}",
        "",
        f"  {'':<44}{'events/s':>10}{'node CPU µs/event':>19}",
        f"  {'HTTP batch ingest (100 per POST, ' + str(s['http_connections']) + ' connections)':<44}"
        f"{h['events_per_s']:>10,.0f}{h['node_cpu_us_per_event']:>19.0f}",
        f"  {'MQTT listener (offered ' + format(s['offered_factor'], 'g') + ' × HTTP)':<44}"
        f"{m['events_per_s']:>10,.0f}{m['node_cpu_us_per_event']:>19.0f}   broker {m['broker_cpu_us_per_event']:.0f} µs/event",
        f"  ratio MQTT ÷ HTTP {m['ratio']:.2f} (median of the repeats' ratios; of the medians {m['ratio_of_medians']:.2f})"
        f"   goal ≥ {report['goal']['ratio']:.2f}: {'met' if report['goal']['met'] else 'MISSED'}",
        f"  by the node's CPU per event, HTTP ÷ MQTT {m['ratio_by_cpu']:.2f} (less noisy when others share the machine)",
        *(
            [
                (
                    f"  {m['runs_kept_up']} of {s['repeat']} MQTT runs kept up with the offered rate: their ratio is"
                    " a floor (the offered factor); --offered higher finds the ceiling"
                )
            ]
            if m["runs_kept_up"]
            else []
        ),
        f"  publish → commit at {lat['offered_events_per_s']:g} events/s offered: p50 {lat['p50_ms']:.1f} ms,"
        f" p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.0f} ms",
        f"  node peak RSS (VmHWM, with its signing workers) {report['memory']['node_peak_rss_mb']:.0f} MB,"
        f" idle {report['memory']['node_idle_rss_mb']:.0f} MB",
        "",
        "By repeat, in run order (seal events already stored → events/s; [publisher cores / other cores])",
    ]
    for i, run in enumerate(h["runs"]):
        mq, lt = m["runs"][i], lat["runs"][i]
        lines.append(
            f"  {i + 1}: HTTP {run['stored_before']:>9,} → {run['events_per_s']:>6,.0f}/s"
            f"   MQTT {mq['stored_before']:>9,} → {mq['events_per_s']:>6,.0f}/s"
            f" (offered {mq['offered_events_per_s']:,.0f}{', kept up' if mq['kept_up'] else ''},"
            f" drained {mq['drain_s']:.1f} s after)"
            f" [{mq['client_cores']:.2f} / {mq['other_cores']:.2f}]"
            f"   latency p99 {lt['latency_ms']['p99']:.1f} ms [{lt['client_cores']:.2f} / {lt['other_cores']:.2f}]"
        )
        outcomes = mq["listener"]
        if outcomes["refused"] or outcomes["retry"]:
            lines.append(f"     listener: {outcomes}")
    lines.append(f"  {report['stored_events_at_end']:,} seal events stored at the end")
    lines.append(render_listener_alone(report["listener_alone"]))
    return "\n".join(lines)


def render_listener_alone(alone: dict[str, Any]) -> str:
    per_message = "one event" if alone["events_per_message"] == 1 else f"{alone['events_per_message']} events"
    runs = ", ".join(f"{r['us_per_message']:.1f}" for r in alone["runs"])
    return (
        f"The listener alone (a scripted broker, nothing signed or stored; {alone['messages']:,} messages of {per_message}):"
        f" {alone['us_per_message']:.1f} µs of CPU per message, median of {runs}"
    )


# -- command line -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 10; --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window (default 2; --quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per load, figures are medians (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter windows, one repeat")
    parser.add_argument("--connections-100", type=int, default=4, help="HTTP connections, batch 100 (4)")
    parser.add_argument("--offered", type=float, default=1.25, help="MQTT offered rate ÷ the HTTP figure (1.25)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s, MQTT latency run (500)")
    parser.add_argument("--mqtt-batch", type=int, default=1, help="events per MQTT message (1)")
    parser.add_argument("--max-inflight", type=int, default=1000,
                        help="the node's [mqtt] max_inflight (1000, the broker's max_inflight_messages)")
    parser.add_argument("--broker", metavar="HOST:PORT", help="use this broker (anonymous) instead of starting one")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for the backlog, s (300)")
    parser.add_argument("--listener-only", action="store_true",
                        help="measure only the listener alone (no node, no Mosquitto): its CPU per message")
    parser.add_argument("--listener-messages", type=int, default=40_000,
                        help="messages per listener-alone run (40,000)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--profile", metavar="DIR", help="then profile the node on MQTT with py-spy; stacks go to DIR")
    parser.add_argument("--dir", help="where the node and the broker run (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory afterwards")
    args = parser.parse_args(argv)
    run_defaults(args)
    if (args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.rate <= 0 or args.offered <= 0
            or not 1 <= args.mqtt_batch <= 500):  # fmt: skip
        parser.error("--duration, --rate, --offered positive, --warmup not negative, --repeat ≥ 1, --mqtt-batch 1–500")
    if args.listener_messages < 1:
        parser.error("--listener-messages must be at least 1")
    if args.broker is None and not args.listener_only and not Path(MOSQUITTO).exists():
        parser.error("no mosquitto binary to start a broker; install mosquitto or give --broker HOST:PORT")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.listener_only:
        return print_report(args, {"listener_alone": listener_cost(args)}, lambda r: render_listener_alone(r["listener_alone"]))
    return print_report(args, benchmark(args), render)


if __name__ == "__main__":
    sys.exit(main())
