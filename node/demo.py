"""``mrx demo``: a working day on the corridor, four customs authorities' nodes on this machine.

What it shows, end to end, with nothing mocked: four nodes — Chongqing
(CN-CQI), Alashankou (CN-AKL), Dostyk (KZ-DOS) and Małaszewicze (PL-MAA) —
each its own OS process with its own keys, SQLite database, national-system
adapter and agreements, partners of one another over HTTP on loopback and
witnesses of one another's audit logs. The gateway simulator
(`mrx.adapters.simulator`) plays a few dozen containers from Chongqing to
Duisburg; each border node decides, for each container that arrives,
whether Chongqing's inspection stands; at the end every decision is checked
against what the day's script says it must be, every record against its
receipt, every log against its witnesses, and an evidence bundle against
``mrx verify``. Any check that fails makes the exit status 1.

The day (`plan_day`, pure)
    The simulator's journeys, in time-lapse (``time_scale`` 1/15: the
    fortnight's timetable in about a day, the locks reporting every 30
    minutes as they would), dated so that the last train has reached
    Duisburg a little before now: every event is in the past when it is
    sent, as a node requires. Scripted on top: one container's lock reports
    tamper in transit, one container is opened at Dostyk on an unseal
    authorisation and re-sealed by customs, one inspection at Chongqing is
    not satisfactory (``B1``); trains cross radio dead zones at random and
    back-fill. `Expected` says, for each container and border, the outcome
    and reasons the agreements and the seal chain must give.

The corridor (`Corridor`)
    ``mrx init`` for each node, then its ``mrx.toml``: every other node as a
    partner (with the anchor and log key an operator would take out of band),
    an agreement with every node upstream (``unseal_offices``: the borders
    upstream, so Dostyk's authorised opening counts at Małaszewicze), a
    national-system adapter (file exchange; NCTS-style at the EU end), quick
    retries and a checkpoint every second. Credentials: one gateway, one
    national system, one auditor per node. The chaos run
    (tests/demo/test_chaos.py) plays the same day with a fault proxy in
    front of each node (`Node.front`: its partners and gateways go through
    it) and nodes killed and started again (`Corridor.kill`, `start_node`).

Playing the day (`Gateways`)
    The national system at Chongqing files the inspections as a CSV in its
    adapter's inbox; every node's national system registers the itineraries.
    Then the deliveries go out in the fleet's order, one at a time, each to
    the node of the territory the container is in (the last of the four
    offices it passed). Two things happen on the way, as at a real border:

    - before an **arrival** (the first report of a lock at a border node's
      office) is delivered, the demo waits until the nodes upstream have
      delivered everything they hold for that node — on the real corridor,
      hours pass between the last report upstream and the arrival, and the
      exchange takes seconds; then it times the decision;
    - before an **opening** is delivered, the office's officer asks its node
      for the unseal authorisation, and the event cites it.

The end (`Checks`)
    Every border's latest decision for every container equals `Expected`;
    every node's outbox is delivered, each with a partner's signed receipt;
    every node's latest checkpoint is cosigned by all three partners; the
    gateways saw no refusal; each national system got its files; and
    ``mrx evidence`` + ``mrx verify`` on the opened container's records at
    Małaszewicze pass.

``--keep DIR`` keeps the four node directories (configs, keys, databases,
the national systems' file exchanges, the nodes' logs) for the other
commands; otherwise the demo works in a temporary directory. It always stops
its nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote
from uuid import UUID

import aiohttp

from mrx.adapters import simulator
from mrx.adapters.simulator import Delivery, GatewayEvent, Journey, Outcome
from mrx.keys.keyring import KeyStore
from mrx.keys.notes import NoteSigner, VerifierKey, parse as parse_note
from mrx.schemas.codes import SealEventType

from .config import CONFIG_NAME, load_config
from .processes import ServerProcess

# -- the corridor's nodes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Office:
    node_id: str
    locode: str
    name: str
    adapter: str  # the national system's adapter kind


OFFICES: tuple[Office, ...] = (
    Office("CN-CQI", "CNCQI", "Chongqing", "files"),
    Office("CN-AKL", "CNAKL", "Alashankou", "files"),
    Office("KZ-DOS", "KZDOS", "Dostyk", "files"),
    Office("PL-MAA", "PLMAA", "Małaszewicze", "ncts"),
)
ORIGIN = OFFICES[0]
BORDERS = OFFICES[1:]
AGREED_RESULTS = ("A1", "A2")
RECOGNISED, NOT_RECOGNISED = "RECOGNISED", "NOT_RECOGNISED"

# -- the day's script (pure) -------------------------------------------------------------------------------------

TIME_SCALE = 1 / 15  # the fortnight from Chongqing to Duisburg in about a day
REPORT_EVERY = timedelta(minutes=30)
TRAIN_SIZE = 10
INSPECTION_BEFORE_SEALING = timedelta(minutes=20)


@dataclass(frozen=True, slots=True)
class Expected:
    """What a border must decide for one container, and why."""

    outcome: str
    reasons: tuple[str, ...]  # reason codes, in the order docs/recognition.md lists them


@dataclass(frozen=True, slots=True)
class Day:
    journeys: list[Journey]
    results: dict[int, str]  # journey index -> result code of Chongqing's inspection
    tampered: int
    opened: int  # opened at Dostyk on an authorisation, re-sealed by customs
    unsatisfactory: int
    expected: dict[tuple[int, str], Expected]  # (journey index, border locode) -> what it must decide

    def inspected_at(self, journey: Journey) -> datetime:
        return journey.events[0].device_time - INSPECTION_BEFORE_SEALING


def plan_day(seed: int, containers: int, now: datetime) -> Day:
    """The day's journeys, scripted happenings and the decisions they must lead to; the same arguments, the same day."""
    if containers < 3:
        raise ValueError("the day needs at least 3 containers: one tampered, one opened, one failed inspection")
    trains = (containers + TRAIN_SIZE - 1) // TRAIN_SIZE
    tampered, opened, unsatisfactory = 1, min(TRAIN_SIZE + 2, containers - 2), containers - 1
    if opened == tampered:
        opened = 0
    # The longest journey's timetable, time-lapsed, is under 31 hours; trains leave 12 minutes apart.
    start = (now - timedelta(hours=31) - timedelta(hours=3) * TIME_SCALE * trains).replace(second=0, microsecond=0)
    journeys = simulator.journeys(
        seed, containers, start=start, report_every=REPORT_EVERY, train_size=TRAIN_SIZE, time_scale=TIME_SCALE,
        tamper_rate=0.0, unseal_rate=0.0, gap_rate=0.5,
        tampered={tampered: "CNAKL"},  # between Chongqing and Alashankou: every border sees it
        unsealed={opened: "KZDOS"},
    )
    results = {j.index: ("B1" if j.index == unsatisfactory else AGREED_RESULTS[j.index % 3 == 0]) for j in journeys}
    expected = {}
    for journey in journeys:
        for border in BORDERS:
            reasons = []
            if results[journey.index] not in AGREED_RESULTS:
                reasons.append("RESULT_NOT_SATISFACTORY")
            if _tampered_before(journey, border.locode):
                reasons.append("SEAL_CHAIN_BROKEN")
            # An opening on an authorisation of a border the agreement accepts, re-sealed by customs, is no reason.
            expected[(journey.index, border.locode)] = Expected(NOT_RECOGNISED if reasons else RECOGNISED,
                                                                tuple(reasons))
    return Day(journeys, results, tampered, opened, unsatisfactory, expected)


def _tampered_before(journey: Journey, locode: str) -> bool:
    tamper = next((e.device_time for e in journey.events if e.type is SealEventType.TAMPER), None)
    arrival = _arrival(journey, locode)
    return tamper is not None and arrival is not None and tamper < arrival.device_time


def _arrival(journey: Journey, locode: str) -> GatewayEvent | None:
    """The lock's first report at the office: what makes the border's node decide."""
    return next(
        (e for e in journey.events if e.location.locode == locode and e.type is not SealEventType.SEALED), None
    )


def inspections_csv(day: Day) -> str:
    """Chongqing's inspections as its national system files them (the files adapter's control-results CSV)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["control_id", "consignments", "control_type", "result", "controlled_at", "officer", "office",
                     "container", "seals_affixed", "hs_codes", "remarks"])
    for journey in day.journeys:
        kind, ident = journey.consignment
        code = day.results[journey.index]
        writer.writerow([
            f"CNCQI-2026-{journey.index + 1:06d}", f"{kind}:{ident}", ("physical", "non-intrusive")[journey.index % 2],
            code, simulator.rfc3339(day.inspected_at(journey)), f"OFF-CNCQI-{7 + journey.index % 5:02d}", "CNCQI",
            journey.container, journey.events[0].seal_id, "847130 850440",
            "Goods as declared; sealed under customs lock." if code in AGREED_RESULTS
            else "Quantity differs from the declaration.",
        ])
    return out.getvalue()


# -- the corridor: directories, configs, processes -----------------------------------------------------------


@dataclass
class Node:
    office: Office
    directory: Path
    port: int
    tokens: dict[str, str] = field(default_factory=dict)  # role -> bearer credential
    process: ServerProcess | None = None
    front: str | None = None  # the URL of something in front of the node (a proxy, say); None: nothing is

    @property
    def node_id(self) -> str:
        return self.office.node_id

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def url(self) -> str:
        """Where the node listens: its national system and auditor call it here."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        """Where its partners and its gateways reach it, over the network: through `front`, if set."""
        return self.front or self.url

    @property
    def exchange_dir(self) -> Path:
        """The national system's file exchange with the node (the adapter's directory)."""
        return self.directory / "national"

    def keys(self) -> KeyStore:
        return KeyStore.open(load_config(self.config_path).keys_path)

    def anchor(self) -> str:
        return self.keys().signing_key.kid

    def log_key(self) -> VerifierKey:
        return NoteSigner(load_config(self.config_path).log_origin, self.keys().note_key()).verifier


class Corridor:
    """The four nodes: created as an operator would, started as separate processes, always stopped.

    A node can be killed (SIGKILL) and started again on its directory and
    port; each of its processes' logs is kept, in turn, in its ``node.log``.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes = [Node(office, base / office.node_id, _free_port()) for office in OFFICES]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def create(self) -> None:
        from .cli import _add_credential, init_node  # the CLI's own functions: the demo does what an operator does

        for node in self.nodes:
            config = init_node(node.directory, node.node_id, node.office.locode, node.port)
            for role, name, locks in (("gateway", f"GW-{node.office.locode}", ("LK-CQ-*",)),
                                      ("national", f"NCS-{node.office.locode}", ()), ("auditor", "AUDIT", ())):
                node.tokens[role] = asyncio.run(_add_credential(config, name, role, locks))
            (node.exchange_dir / "inbox").mkdir(parents=True)
        for node in self.nodes:
            node.config_path.write_text(self._config(node))
            load_config(node.config_path)  # the node would refuse it at start; better to know now

    def _config(self, node: Node) -> str:
        me = OFFICES.index(node.office)
        lines = [
            "# Written by mrx demo: one node of a four-node corridor on this machine (docs/operations.md).",
            f'node_id = "{node.node_id}"', f'office = "{node.office.locode}"', 'host = "127.0.0.1"',
            f"port = {node.port}", 'data_dir = "data"', 'keys_dir = "keys"', 'log_level = "warning"', "",
            "[signing]", "workers = 0  # four nodes share this machine: sign on each node's event loop", "",
            "[exchange]", "retry_min_seconds = 0.2", "retry_max_seconds = 2.0", "sweep_seconds = 0.5", "",
            "[log]", "checkpoint_seconds = 1", "",
        ]
        for other in self.nodes:
            if other is node:
                continue
            lines += ["[[partners]]", f'node_id = "{other.node_id}"', f'url = "{other.public_url}"',
                      f'anchors = ["{other.anchor()}"]', f'offices = ["{other.office.locode}"]',
                      f'log_key = "{other.log_key()}"', ""]
        for upstream in OFFICES[:me]:
            borders = [o.locode for o in OFFICES[1:me]]
            lines += ["[[agreements]]", f'id = "{node.node_id}-{upstream.node_id}-MRA"',
                      f'partner = "{upstream.node_id}"', 'control_types = ["physical", "non-intrusive"]',
                      f"result_codes = {json.dumps(list(AGREED_RESULTS))}", 'excluded_hs_prefixes = ["93"]',
                      "max_age_hours = 168", "require_intact_chain = true", f"unseal_offices = {json.dumps(borders)}", ""]
        lines += ["[[adapters]]", f'name = "national-{node.office.adapter}"', f'kind = "{node.office.adapter}"',
                  'directory = "national"', "poll_seconds = 0.2", "settle_seconds = 0.1", ""]
        return "\n".join(lines)

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self.start_node, self.nodes))

    def start_node(self, node: Node) -> None:
        """``mrx serve`` for one node, as a separate process; returns once it listens. Blocks."""
        node.process = ServerProcess(
            [sys.executable, "-m", "mrx.node.cli", "serve", "--config", str(node.config_path)],
            env={"PYTHONUNBUFFERED": "1"},
        )
        node.process.what = f"node {node.node_id}"
        node.process.start(timeout=60)

    def kill(self, node: Node) -> None:
        """SIGKILL the node's process, as a power cut would; `start_node` brings it back."""
        if (process := node.process) is not None:
            process.kill()
            self._ended(node, process)

    def stop(self) -> None:
        for node in self.nodes:
            if (process := node.process) is not None:
                process.stop()
                self._ended(node, process)

    @staticmethod
    def _ended(node: Node, process: ServerProcess) -> None:
        """The node's process has ended: its log joins the node's ``node.log``."""
        node.process = None
        if log := process.stderr():
            with (node.directory / "node.log").open("a") as out:
                out.write(log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- talking to the nodes ----------------------------------------------------------------------------------------


class DemoFailed(Exception):
    """The day could not be played (a node refused what the script sends); one sentence."""


class Api:
    """The demo's HTTP client for the nodes' APIs, as their national systems and auditors use them."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, node: Node, method: str, path: str, role: str = "national", body: Any = None) -> Any:
        """One API call; a node that cannot be reached, or that stops mid-answer (restarting, say), is tried again
        for up to a minute."""
        headers = {"Authorization": f"Bearer {node.tokens[role]}"}
        deadline, pause = time.monotonic() + 60, 0.1
        while True:
            try:
                async with self.session.request(method, node.url + path, json=body, headers=headers) as response:
                    text = await response.text()
                    break
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if time.monotonic() > deadline:
                    raise DemoFailed(f"{node.node_id} cannot be reached at {node.url}: {exc}") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        if response.status >= 400:
            raise DemoFailed(f"{node.node_id} answered {method} {path} with {response.status}: {text[:300]}")
        return json.loads(text) if response.content_type.endswith("json") else text

    async def consignment(self, node: Node, journey: Journey) -> dict[str, Any]:
        kind, ident = journey.consignment
        return await self.call(node, "GET", f"/v1/consignments/{kind}/{quote(ident, safe='')}")

    async def own_decision(self, node: Node, journey: Journey) -> dict[str, Any] | None:
        own = [d for d in (await self.consignment(node, journey))["decisions"] if d["sender"] == node.node_id]
        return own[-1] if own else None

    async def outbox(self, node: Node, state: str, partner: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        path = f"/v1/outbox?state={state}&limit=1000" + (f"&partner={partner}" if partner else "")
        while path:
            page = await self.call(node, "GET", path)
            items += page["items"]
            path = page["next"]
        return items


# -- playing the day ---------------------------------------------------------------------------------------------


class Timeline:
    """What happened, where, which node decided what and why: one line each, stamped with the demo's clock."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.began = time.monotonic()

    def say(self, where: str, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {where:<7} {text}", file=self.out, flush=True)


@dataclass
class Arrival:
    journey: Journey
    border: Office
    sent: float  # monotonic, when the arrival was handed to the node
    decision: dict[str, Any] | None = None
    seconds: float | None = None  # from the arrival's delivery to the node's decision


class Gateways:
    """The lock gateways along the route: each delivery to the node of the territory the container is in.

    Implements the simulator's `Gateway`: `simulator.play` hands it the
    deliveries in order, and it hands each to that node's `HttpGateway`
    after doing what the border would do first (module docstring). Like a
    real gateway, it keeps a delivery until the node takes it: a node that
    cannot be reached, or answers 5xx, is tried again every 2 s at most for
    about a minute, as `Api` does; an event sent again whose first answer
    was lost is answered ``duplicate``, as the record the node holds.
    """

    def __init__(self, corridor: Corridor, day: Day, api: Api, timeline: Timeline) -> None:
        self.corridor = corridor
        self.day = day
        self.api = api
        self.timeline = timeline
        self.http: dict[str, simulator.HttpGateway] = {}
        self.routes = {id(d): n for j in day.journeys for d, n in self._routes(j)}
        self.journey_of = {j.lock_id: j for j in day.journeys}
        self.arrival_at = {  # event ID -> the border it is the arrival at
            event.event_id: border
            for j in day.journeys for border in BORDERS if (event := _arrival(j, border.locode)) is not None
        }
        self.arrivals: list[Arrival] = []
        self.sent: dict[str, list[GatewayEvent]] = defaultdict(list)  # node ID -> the events handed to it, as sent
        self.waiting: set[asyncio.Task[None]] = set()
        self.gap_reported: dict[str, datetime] = {}  # train -> when its last radio gap was told
        self.decided: Counter[tuple[str, str]] = Counter()  # (train, border) -> containers decided

    def _routes(self, journey: Journey) -> Iterator[tuple[Delivery, str]]:
        by_office = {o.locode: o.node_id for o in OFFICES}
        here = ORIGIN.node_id
        for delivery in journey.deliveries:
            for event in delivery.events:
                here = by_office.get(event.location.locode or "", here)
            yield delivery, here

    async def __aenter__(self) -> Gateways:
        for node in self.corridor.nodes:
            # Tries again after 0.2, 0.4, 0.8, 1.6, then every 2 s: 35 sends take about a minute.
            gateway = simulator.HttpGateway(node.public_url, node.tokens["gateway"], backoff=0.2, max_wait=2.0,
                                            max_attempts=35)
            self.http[node.node_id] = await gateway.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gateway in self.http.values():
            await gateway.__aexit__(None, None, None)

    async def send(self, delivery: Delivery) -> Outcome:
        node = self.corridor.node(self.routes[id(delivery)])
        journey = self.journey_of[delivery.events[0].lock_id]
        event = delivery.events[0]
        arrival = None
        if delivery.backfill:
            self._backfill(journey, delivery, node)
        elif event.type is SealEventType.UNSEALED:
            delivery = await self._authorise(journey, delivery, node)
        elif event.type is SealEventType.SEALED and event.seq == 1 and journey.index % TRAIN_SIZE == 0:
            self.timeline.say(node.node_id, f"train {journey.train} loading at Chongqing: containers sealed by "
                                            "customs after inspection, locks reporting")
        for tamper in (e for e in delivery.events if e.type is SealEventType.TAMPER):
            self.timeline.say(node.node_id, f"{journey.container}: its lock reports TAMPER near "
                                            f"{tamper.location.lat:.2f}, {tamper.location.lon:.2f}")
        border = self.arrival_at.get(event.event_id)
        if border is not None and not delivery.backfill:
            await self._upstream_delivered(node)
            arrival = Arrival(journey, border, time.monotonic())
        self.sent[node.node_id].extend(delivery.events)
        outcome = await self.http[node.node_id].send(delivery)
        if outcome.rejected:
            raise DemoFailed(f"{node.node_id} refused {journey.container}'s event: {', '.join(outcome.problems)}")
        if arrival is not None:
            self.arrivals.append(arrival)
            task = asyncio.create_task(self._await_decision(node, arrival))
            self.waiting.add(task)
            task.add_done_callback(self.waiting.discard)
        return outcome

    def _backfill(self, journey: Journey, delivery: Delivery, node: Node) -> None:
        told = self.gap_reported.get(journey.train)
        if told is not None and delivery.send_at - told < timedelta(hours=1):
            return  # the same dead zone, another lock of the train
        self.gap_reported[journey.train] = delivery.send_at
        silent = delivery.send_at - delivery.events[0].device_time
        self.timeline.say(node.node_id, f"train {journey.train} leaves a radio dead zone after {_duration(silent)}: "
                                        "its locks back-fill the reports they kept (filed late, chain unbroken)")

    async def _authorise(self, journey: Journey, delivery: Delivery, node: Node) -> Delivery:
        """The officer at the office asks its node for the authorisation; the opening cites it."""
        (event,) = delivery.events
        request = next(r for r in journey.unseal_requests if r.event_id == event.event_id)
        body = request.as_json()
        # The day is replayed: the window the officer gave closed hours ago; a node only issues one that has not.
        body["valid_to"] = simulator.rfc3339(datetime.now(timezone.utc) + timedelta(hours=1))
        answer = await self.api.call(self.corridor.node(node.node_id), "POST", "/v1/unseal-authorizations", body=body)
        self.timeline.say(node.node_id, f"{journey.container}: officer {request.officer} authorises opening lock "
                                        f"{journey.lock_id} (authorisation {answer['authorization_id'][:8]}…); "
                                        "opened, then re-sealed by customs")
        cited = replace(event, authorization_id=UUID(answer["authorization_id"]))
        return replace(delivery, events=(cited,))

    async def _upstream_delivered(self, node: Node) -> None:
        """Wait until no node still holds a record for ``node``: what the hours before an arrival give."""
        others = [n for n in self.corridor.nodes if n is not node]
        deadline = time.monotonic() + 60
        while True:
            pending = 0
            for other in others:
                for state in ("queued", "in-flight"):
                    pending += len(await self.api.outbox(other, state, node.node_id))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"the partners of {node.node_id} still hold {pending} records for it after 60 s")
            await asyncio.sleep(0.05)

    async def _await_decision(self, node: Node, arrival: Arrival) -> None:
        deadline = time.monotonic() + 60
        while (decision := await self.api.own_decision(node, arrival.journey)) is None:
            if time.monotonic() > deadline:
                return  # the checks at the end report it
            await asyncio.sleep(0.02)
        arrival.decision, arrival.seconds = decision, time.monotonic() - arrival.sent
        journey = arrival.journey
        key = (journey.train, arrival.border.locode)
        self.decided[key] += 1
        if decision["outcome"] != RECOGNISED:
            codes = ", ".join(r["code"] for r in decision["reasons"])
            first = decision["reasons"][0]["description"] if decision["reasons"] else ""
            self.timeline.say(node.node_id, f"{journey.container} arrived at {arrival.border.name}: INSPECT "
                                            f"({codes}) — {first}")
        if self.decided[key] == sum(1 for j in self.day.journeys if j.train == journey.train):
            decisions = [a.decision for a in self.arrivals if a.decision and (a.journey.train, a.border.locode) == key]
            released = sum(1 for d in decisions if d["outcome"] == RECOGNISED)
            self.timeline.say(node.node_id, f"train {journey.train} at {arrival.border.name}: {len(decisions)} "
                                            f"containers decided, {released} released without re-inspection, "
                                            f"{len(decisions) - released} to inspect")

    async def settled(self) -> None:
        while self.waiting:
            await asyncio.gather(*list(self.waiting))


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# -- the checks at the end ---------------------------------------------------------------------------------------


@dataclass
class Checks:
    """Each check's verdict; the demo fails if any failed."""

    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        (self.passed if ok else self.failures).append(what)
        return ok


async def check_decisions(api: Api, corridor: Corridor, day: Day, checks: Checks) -> dict[str, list[dict[str, Any]]]:
    """Every border's latest decision on every container against `Expected`; the decisions, by border."""
    by_border: dict[str, list[dict[str, Any]]] = defaultdict(list)
    wrong = []
    for border in BORDERS:
        node = corridor.node(border.node_id)
        for journey in day.journeys:
            want = day.expected[(journey.index, border.locode)]
            got = await api.own_decision(node, journey)
            if got is None:
                wrong.append(f"{border.node_id} took no decision on {journey.container}")
                continue
            by_border[border.locode].append(got)
            codes = tuple(r["code"] for r in got["reasons"])
            if (got["outcome"], codes) != (want.outcome, want.reasons):
                wrong.append(f"{border.node_id} decided {got['outcome']} {list(codes)} on {journey.container}, "
                              f"expected {want.outcome} {list(want.reasons)}")
    checks.check(not wrong, f"{len(day.journeys) * len(BORDERS)} decisions as the agreements and seal chains require"
                 + ("" if not wrong else ": " + "; ".join(wrong[:5])))
    return by_border


async def exchanged(api: Api, corridor: Corridor, checks: Checks) -> dict[str, tuple[int, int]]:
    """Wait for every outbox to drain; per node (records delivered, receipts held). Any failed delivery fails."""
    deadline = time.monotonic() + 120
    while True:
        pending = {n.node_id: sum([len(await api.outbox(n, s)) for s in ("queued", "in-flight")]) for n in corridor.nodes}
        if not any(pending.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    out = {}
    for node in corridor.nodes:
        delivered = await api.outbox(node, "delivered")
        failed = await api.outbox(node, "failed")
        receipts = sum(1 for item in delivered if item.get("receipt"))
        out[node.node_id] = (len(delivered), receipts)
        checks.check(not pending[node.node_id] and not failed and receipts == len(delivered),
                     f"{node.node_id}: {len(delivered)} records delivered, each with the partner's signed receipt"
                     + (f"; {pending[node.node_id]} undelivered" if pending[node.node_id] else "")
                     + (f"; {len(failed)} refused" if failed else ""))
    return out


async def witnessed(api: Api, corridor: Corridor, checks: Checks) -> dict[str, str]:
    """Each node's latest checkpoint, cosigned by its three partners: per node, the signed note."""
    out = {}
    for node in corridor.nodes:
        witnesses = {other.log_key().name for other in corridor.nodes if other is not node}
        await api.call(node, "POST", "/v1/log/checkpoint")
        deadline = time.monotonic() + 60
        while True:
            text = await api.call(node, "GET", "/v1/log/checkpoint")
            note = parse_note(text)
            cosigned = {s.name for s in note.signatures} & witnesses
            if cosigned == witnesses or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        size = int(note.text.splitlines()[1])
        out[node.node_id] = text
        checks.check(cosigned == witnesses, f"{node.node_id}: checkpoint of {size} records cosigned by "
                                            f"{len(cosigned)} of {len(witnesses)} witnesses")
    return out


def national_files(corridor: Corridor, checks: Checks) -> dict[str, int]:
    """What each national system received through its adapter (files in its outbox), waiting for it to settle."""
    counts: dict[str, int] = {}
    for node in corridor.nodes:
        outbox, last, stable_since = node.exchange_dir / "outbox", -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            count = len(list(outbox.glob("*.xml"))) if outbox.exists() else 0
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.1)
        counts[node.node_id] = last
        processed = list((node.exchange_dir / "processed").glob("*")) if node is corridor.nodes[0] else []
        if node is corridor.nodes[0]:
            checks.check(len(processed) == 1, "Chongqing's inspections file was accepted whole (processed/)")
        checks.check(last > 0, f"{node.node_id}'s national system received {last} files ({node.office.adapter} adapter)")
    return counts


def evidence(corridor: Corridor, day: Day, base: Path, checks: Checks, timeline: Timeline) -> None:
    """``mrx evidence`` for the opened container at Małaszewicze, then ``mrx verify`` on it: the auditor's view."""
    node = corridor.nodes[-1]
    journey = next(j for j in day.journeys if j.index == day.opened)
    bundle = base / f"evidence-{journey.container}.json"
    mrx = [sys.executable, "-m", "mrx.node.cli"]
    made = subprocess.run([*mrx, "evidence", "--config", str(node.config_path), "--container", journey.container,
                           "--out", str(bundle)], capture_output=True, text=True)
    if not checks.check(made.returncode == 0, f"mrx evidence wrote a bundle for {journey.container}"):
        print(made.stderr, file=sys.stderr)
        return
    verify = [*mrx, "verify", str(bundle), "--log-key", str(node.log_key()), "--failures-only"]
    for other in corridor.nodes:
        verify += ["--anchor", f"{other.node_id}={other.anchor()}"]
        if other is not node:
            verify += ["--witness-key", str(other.log_key().cosigning())]
    checked = subprocess.run(verify, capture_output=True, text=True)
    last = (checked.stdout.strip().splitlines() or ["(no output)"])[-1]
    timeline.say("auditor", f"mrx verify {bundle.name}: {last}")
    if checked.returncode != 0:
        print(checked.stdout, checked.stderr, file=sys.stderr)
    checks.check(checked.returncode == 0, f"mrx verify on the evidence bundle of {journey.container}: {last}")


# -- the whole run -------------------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(result: DayResult, out: TextIO) -> None:
    arrivals, by_border = result.arrivals, result.decisions
    exchange, files = result.exchange, result.files
    print("\nThe day at each border", file=out)
    print(f"{'border':<22} {'decided':>7} {'released':>8} {'inspect':>7}  {'arrival→decision p50 / p99':>27}  why inspected",
          file=out)
    for border in BORDERS:
        decisions = by_border.get(border.locode, [])
        released = sum(1 for d in decisions if d["outcome"] == RECOGNISED)
        times = [a.seconds * 1000 for a in arrivals if a.border is border and a.seconds is not None]
        timing = f"{statistics.median(times):.0f} / {_percentile(times, 0.99):.0f} ms" if times else "-"
        why = Counter(r["code"] for d in decisions for r in d["reasons"])
        print(f"{border.name + ' (' + border.node_id + ')':<22} {len(decisions):>7} {released:>8} "
              f"{len(decisions) - released:>7}  {timing:>27}  {', '.join(f'{c} {n}' for c, n in sorted(why.items()))}",
              file=out)
    times = [a.seconds * 1000 for a in arrivals if a.seconds is not None]
    if times:
        print(f"all borders: arrival to decision p50 {statistics.median(times):.0f} ms, "
              f"p99 {_percentile(times, 0.99):.0f} ms over {len(times)} arrivals", file=out)
    print(f"\n{'node':<8} {'records sent':>12} {'receipts held':>13} {'log size':>9} {'cosigned by':>11} "
          f"{'files to national system':>25}", file=out)
    for office in OFFICES:
        sent, receipts = exchange.get(office.node_id, (0, 0))
        note = parse_note(result.checkpoints[office.node_id]) if office.node_id in result.checkpoints else None
        size = int(note.text.splitlines()[1]) if note else 0
        cosigners = len(note.signatures) - 1 if note else 0
        print(f"{office.node_id:<8} {sent:>12} {receipts:>13} {size:>9} {cosigners:>11} "
              f"{files.get(office.node_id, 0):>25}", file=out)


@dataclass
class DayResult:
    """What the day came to: the checks' verdicts, and the figures of the summary."""

    day: Day
    checks: Checks
    arrivals: list[Arrival] = field(default_factory=list)
    decisions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # border locode -> latest decisions
    exchange: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (records delivered, receipts)
    checkpoints: dict[str, str] = field(default_factory=dict)  # node -> its latest checkpoint, with cosignatures
    files: dict[str, int] = field(default_factory=dict)  # node -> files its national system received


API_TIMEOUT = aiohttp.ClientTimeout(total=60)


async def play_day(corridor: Corridor, day: Day, base: Path, timeline: Timeline) -> DayResult:
    checks = Checks()
    result = DayResult(day, checks)
    async with aiohttp.ClientSession(timeout=API_TIMEOUT) as session:
        api = Api(session)
        await open_day(api, corridor, day, timeline)
        async with Gateways(corridor, day, api, timeline) as gateways:
            tally = await simulator.play(day.journeys, gateways, concurrency=1)
            await gateways.settled()
        result.arrivals = gateways.arrivals
        checks.check(tally.rejected == 0 and tally.accepted == tally.sent,
                     f"gateways: {tally.summary()}")
        timeline.say("all", "the day is over; checking what every node holds")
        await close_day(api, corridor, result)
    result.files = national_files(corridor, checks)
    evidence(corridor, day, base, checks, timeline)
    return result


async def open_day(api: Api, corridor: Corridor, day: Day, timeline: Timeline) -> None:
    """Before the first train: every national system registers the itineraries, Chongqing's files the inspections."""
    for journey in day.journeys:
        for node in corridor.nodes:
            await api.call(node, "POST", "/v1/itineraries", body=journey.itinerary())
    timeline.say("all", f"each national system registered the {len(day.journeys)} consignments' itineraries "
                        "(Chongqing → Alashankou → Dostyk → Almaty → Brest → Małaszewicze → Duisburg)")
    origin = corridor.nodes[0]
    inbox = origin.exchange_dir / "inbox"
    (inbox / ".control-results-today.csv.part").write_text(inspections_csv(day))
    os.replace(inbox / ".control-results-today.csv.part", inbox / "control-results-today.csv")
    deadline = time.monotonic() + 60
    while inbox.joinpath("control-results-today.csv").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    codes = Counter(day.results.values())
    timeline.say(origin.node_id, f"national system files {len(day.journeys)} inspections (CSV, file adapter): "
                                 + ", ".join(f"{n} × {c}" for c, n in sorted(codes.items()))
                                 + "; each signed and sent to the nodes down the route")


async def close_day(api: Api, corridor: Corridor, result: DayResult) -> None:
    """The checks through the nodes' APIs: decisions, deliveries and receipts, cosigned checkpoints."""
    result.decisions = await check_decisions(api, corridor, result.day, result.checks)
    result.exchange = await exchanged(api, corridor, result.checks)
    result.checkpoints = await witnessed(api, corridor, result.checks)


def run_day(base: Path, *, seed: int, containers: int, out: TextIO) -> DayResult:
    """The whole day in ``base`` (an empty directory): create and start the corridor, play, check, stop.

    Raises `DemoFailed` when the day cannot be played to its end.
    """
    day = plan_day(seed, containers, datetime.now(timezone.utc))
    print(f"mrx demo: {len(day.journeys)} containers from Chongqing to Duisburg, in time-lapse (a fortnight's "
          f"timetable in about a day), through four nodes on this machine, in {base}", file=out)
    corridor = Corridor(base)
    timeline = Timeline(out)
    try:
        corridor.create()
        corridor.start()
        for node in corridor.nodes:
            timeline.say(node.node_id, f"node of {node.office.name} ({node.office.locode}) listening on {node.url}")
        result = asyncio.run(play_day(corridor, day, base, timeline))
    finally:
        corridor.stop()
    summary(result, out)
    return result


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and any(keep.iterdir()):
        print(f"mrx demo: {keep} is not empty; give a new or empty directory to --keep", file=sys.stderr)
        return 1
    if args.containers < 3:
        print("mrx demo: --containers must be at least 3 (one tampered, one opened, one failed inspection)",
              file=sys.stderr)
        return 1
    base = keep or Path(tempfile.mkdtemp(prefix="mrx-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        checks = run_day(base, seed=args.seed, containers=args.containers, out=out).checks
    except (DemoFailed, RuntimeError) as exc:  # RuntimeError: a node did not start (its log is in the message)
        print(f"mrx demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{len(checks.passed)} checks passed, {len(checks.failures)} failed", file=out)
    for failure in checks.failures:
        print(f"FAIL  {failure}", file=out)
    if keep is not None:
        print(f"\nThe four nodes' directories are in {keep}. Look around, e.g.:\n"
              f"  mrx serve --config {keep}/PL-MAA/{CONFIG_NAME}      # start a node again\n"
              f"  mrx log checkpoint --config {keep}/KZ-DOS/{CONFIG_NAME}\n"
              f"  mrx outbox --config {keep}/CN-CQI/{CONFIG_NAME}\n"
              f"  ls {keep}/PL-MAA/national/outbox                 # the CD018C files the EU national system got",
              file=out)
    return 1 if checks.failures else 0


