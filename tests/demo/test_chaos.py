"""The corridor's day under chaos (issue 7): faulty links and power cuts, and nothing comes of them.

The calm run's day (conftest.py: the same journeys, events and scripted
happenings), played again by four new node processes while

- every link to a node, its partners' and its gateway's, goes through a fault
  proxy in front of it (tests/faultproxy.py) that drops requests, loses
  answers after the work was done, delays, duplicates, reorders and fails
  `FAULT_RATE` of them, every kind drawn many times over the day;
- nodes lose power (SIGKILL) at moments drawn with `CHAOS_SEED`, each
  started again on its own directory at once: every border once right after
  it took an arrival, while it decides on it, and every node once while it
  takes one of its gateway's deliveries, so an event may be committed with
  its answer lost. The gateways keep each delivery until the node takes it.

Once the day is over the network heals and the corridor settles (no outbox
holds an undelivered record, no log grows). Then every gateway event is sent
once more, as a gateway that lost its answers would: each must be answered
as the record the node holds. The nodes are stopped and their databases
read (holdings.py), and:

1. every node agrees on every record: each record addressed to a node is held
   there once, with its sender's digest, and verifies with its sender's keys;
2. every border's latest decision on every container is the calm run's, and
   the script's (`demo.Expected`), with the same reasons; every node raised
   alarms of the kinds, on the containers, it raised them in the calm run;
3. nothing is lost: every event a gateway sent is held once, by the node it
   was sent to; nothing is doubled: no record is held twice, no decision is
   issued the same as the one before it, no alarm twice for one cause;
4. every delivery has the partner's signed receipt, and every node's latest
   checkpoint verifies and is cosigned by its three partners.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mrx.adapters import simulator
from mrx.adapters.simulator import Delivery, GatewayEvent, Outcome
from mrx.node import demo
from mrx.schemas.messages import SealEvent
from tests.demo import holdings
from tests.faultproxy import FAULT_KINDS, FaultProxyProcess

CHAOS_SEED = 20261122
FAULT_RATE = 0.1
FAULT_DELAY = ("0.05", "0.8")  # seconds, a delayed request's wait


@dataclass(frozen=True, slots=True)
class PowerCut:
    node_id: str
    delay: float  # seconds after the delivery went out, or after the node took the arrival
    deciding: bool  # right after a border took an arrival: while it decides on it


class ChaosGateways(demo.Gateways):
    """The demo's gateways, with power cuts at the deliveries `plan` drew."""

    def __init__(self, corridor: demo.Corridor, day: demo.Day, api: demo.Api, timeline: demo.Timeline) -> None:
        super().__init__(corridor, day, api, timeline)
        self.cuts = self.plan(random.Random(CHAOS_SEED))
        self.done: list[str] = []  # what was cut, for the report
        self.restarting: dict[str, asyncio.Task[None]] = {}

    def plan(self, rng: random.Random) -> dict[int, PowerCut]:
        """By delivery (its id()): each border once right after an arrival (one of them the tampered container's,
        whose decision raises an alarm), each node once while taking one of its gateway's other deliveries."""
        order = [delivery for _, delivery in simulator.schedule(self.day.journeys)]
        arriving = {id(d): self.arrival_at.get(d.events[0].event_id) for d in order if not d.backfill}
        tampered_at = rng.choice(demo.BORDERS)
        cuts: dict[int, PowerCut] = {}
        for border in demo.BORDERS:
            arrivals = [d for d in order if arriving.get(id(d)) is border]
            tampered = [d for d in arrivals if self.journey_of[d.events[0].lock_id].index == self.day.tampered]
            if border is tampered_at and tampered:  # (its arrival may have come in a back-fill instead)
                arrivals = tampered
            cuts[id(rng.choice(arrivals))] = PowerCut(border.node_id, rng.uniform(0.0, 0.1), deciding=True)
        for office in demo.OFFICES:
            taking = [d for d in order
                      if self.routes[id(d)] == office.node_id and arriving.get(id(d)) is None and id(d) not in cuts]
            cuts[id(rng.choice(taking))] = PowerCut(office.node_id, rng.uniform(0.0, 0.03), deciding=False)
        return cuts

    async def send(self, delivery: Delivery) -> Outcome:
        cut = self.cuts.get(id(delivery))
        if cut is None:
            return await super().send(delivery)
        node = self.corridor.node(cut.node_id)
        container = self.journey_of[delivery.events[0].lock_id].container
        if cut.deciding:
            outcome = await super().send(delivery)
            await asyncio.sleep(cut.delay)
            await self.power_cut(node, f"{cut.delay * 1000:.0f} ms after it took {container}'s arrival")
            return outcome
        sending = asyncio.create_task(super().send(delivery))
        await asyncio.sleep(cut.delay)
        await self.power_cut(node, f"{cut.delay * 1000:.0f} ms into its gateway's delivery of "
                                   f"{len(delivery.events)} events of {container}")
        return await sending

    async def power_cut(self, node: demo.Node, when: str) -> None:
        if (restarting := self.restarting.get(node.node_id)) is not None:
            await restarting
        self.corridor.kill(node)
        self.done.append(f"{node.node_id} {when}")
        self.timeline.say(node.node_id, f"power cut (SIGKILL) {when}; starting again on its directory")
        self.restarting[node.node_id] = asyncio.create_task(asyncio.to_thread(self.corridor.start_node, node))

    async def settled(self) -> None:
        await asyncio.gather(*self.restarting.values())
        await super().settled()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*self.restarting.values(), return_exceptions=True)  # no node starts after the day
        await super().__aexit__(*exc)


@dataclass
class ChaosDay:
    base: Path
    result: demo.DayResult
    tally: simulator.Tally
    cuts: list[str]
    faults: Counter[str]  # fault kind -> requests that drew it, over the four proxies
    sent: dict[str, list[GatewayEvent]]  # node ID -> the events its gateway sent it
    replayed: dict[str, list[dict[str, Any]]]  # node ID -> its answers when every event was sent again
    held: dict[str, holdings.Holdings] = field(default_factory=dict)


def _pending(base: Path) -> dict[str, tuple[int, int]]:
    """Per node: (outbox rows not yet delivered, its latest record's seq), read-only."""
    out = {}
    for office in demo.OFFICES:
        db = holdings.database(base, office.node_id)
        try:
            (queued,) = db.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'in-flight')").fetchone()
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()
        finally:
            db.close()
        out[office.node_id] = (queued, last)
    return out


async def _settle(base: Path, quiet: float = 3.0, timeout: float = 120.0) -> None:
    """Until no node has an undelivered record and no node's records have changed for ``quiet`` seconds."""
    deadline, seen, since = time.monotonic() + timeout, _pending(base), time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        now = _pending(base)
        if now != seen or any(queued for queued, _ in now.values()):
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        assert time.monotonic() < deadline, f"the corridor did not settle within {timeout} s: {now}"


async def _replay(
    api: demo.Api, corridor: demo.Corridor, sent: dict[str, list[GatewayEvent]]
) -> dict[str, list[dict[str, Any]]]:
    """Every event once more to the node it was sent to, as a gateway that lost its answers would send it."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for node in corridor.nodes:
        events = [e.as_json() for e in sent[node.node_id]]
        answers[node.node_id] = []
        for start in range(0, len(events), 500):
            answer = await api.call(node, "POST", "/v1/seal-events", role="gateway",
                                    body={"events": events[start:start + 500]})
            answers[node.node_id] += answer["results"]
    return answers


async def _play(corridor: demo.Corridor, day: demo.Day, proxies: list[FaultProxyProcess],
                timeline: demo.Timeline) -> ChaosDay:
    result = demo.DayResult(day, demo.Checks())
    async with aiohttp.ClientSession(timeout=demo.API_TIMEOUT) as session:
        api = demo.Api(session)
        await demo.open_day(api, corridor, day, timeline)
        async with ChaosGateways(corridor, day, api, timeline) as gateways:
            tally = await simulator.play(day.journeys, gateways, concurrency=1)
            await gateways.settled()
        result.arrivals = gateways.arrivals
        faults: Counter[str] = Counter()
        for proxy in proxies:
            faults.update(proxy.stats()["faults"])
            proxy.config(rate=0.0)
        timeline.say("all", f"the day is over: {tally.summary()}; {len(gateways.done)} power cuts; faults on the "
                            f"links: {dict(faults)}; the network heals")
        await _settle(corridor.base)
        timeline.say("all", "the corridor has settled; checking what every node holds")
        await demo.close_day(api, corridor, result)
        replayed = await _replay(api, corridor, gateways.sent)
        await _settle(corridor.base)
    return ChaosDay(corridor.base, result, tally, gateways.done, faults, dict(gateways.sent), replayed)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, calm_day: tuple[Path, demo.DayResult]) -> ChaosDay:
    base = tmp_path_factory.mktemp("chaos")
    out = io.StringIO()
    day = calm_day[1].day  # planned a little earlier: every event is still in the past, as a node requires
    corridor = demo.Corridor(base)
    timeline = demo.Timeline(out)
    proxies = []
    began = time.monotonic()
    try:
        for n, node in enumerate(corridor.nodes):
            proxy = FaultProxyProcess(node.url, rate=FAULT_RATE, seed=CHAOS_SEED + n, faults=FAULT_KINDS,
                                      extra_args=("--delay-min", FAULT_DELAY[0], "--delay-max", FAULT_DELAY[1]))
            proxies.append(proxy.start())
            node.front = proxy.url
        corridor.create()
        corridor.start()
        played = asyncio.run(_play(corridor, day, proxies, timeline))
    finally:
        corridor.stop()
        for proxy in proxies:
            proxy.stop()
        print(out.getvalue())
        print(f"the chaos day took {time.monotonic() - began:.0f} s; the nodes' logs are in {base}/*/node.log")
    played.held = holdings.read(base)
    return played


def test_the_day_had_its_faults_and_power_cuts_and_the_demo_checks_still_pass(chaos: ChaosDay) -> None:
    assert all(chaos.faults[kind] > 0 for kind in FAULT_KINDS), f"not every kind of fault happened: {chaos.faults}"
    cut = Counter(line.split()[0] for line in chaos.cuts)
    assert cut == {o.node_id: 1 + (o in demo.BORDERS) for o in demo.OFFICES}, chaos.cuts
    tally = chaos.tally
    assert (tally.rejected, tally.accepted + tally.duplicate) == (0, tally.sent), tally.summary()
    # Answers were lost after the node had stored the event; sent again, the event was answered as held.
    assert tally.duplicate > 0, tally.summary()
    assert chaos.result.checks.failures == [], holdings.failed(chaos.result.checks.failures)


def test_every_node_holds_every_record_addressed_to_it_once_with_its_digest(chaos: ChaosDay) -> None:
    failures = holdings.disagreements(chaos.held) + holdings.unverified(chaos.held, chaos.base)
    assert not failures, holdings.failed(failures)


def test_every_border_decides_as_in_the_calm_run(chaos: ChaosDay, calm_day: tuple[Path, demo.DayResult]) -> None:
    day = chaos.result.day
    assert not (failures := holdings.wrong_decisions(chaos.held, day)), holdings.failed(failures)
    calm_base, calm = calm_day
    calm_held = holdings.read(calm_base)
    before = {key: holdings.decided(records[-1]) for key, records in holdings.decisions(calm_held, calm.day).items()}
    now = {key: holdings.decided(records[-1]) for key, records in holdings.decisions(chaos.held, day).items()}
    containers = {j.index: j.container for j in day.journeys}
    differ = [f"calm run: {node_id} decided {_said(now.get((node_id, i)))} on container {containers[i]} "
              f"(journey {i}), in the calm run {_said(before.get((node_id, i)))}"
              for node_id, i in sorted(set(before) | set(now)) if now.get((node_id, i)) != before.get((node_id, i))]
    # Alarms: the same kinds, by the same nodes, on the same containers. How many can differ: one alarm per cause,
    # and a border that decided before a back-fill came (a delayed request) saw the broken chain in two steps.
    raised, calm_raised = holdings.alarms(chaos.held, day), holdings.alarms(calm_held, calm.day)
    differ += [f"calm run: {node_id} raised {raised[(node_id, kind, i)]} {kind} alarms on container {containers[i]} "
               f"(journey {i}), in the calm run {calm_raised[(node_id, kind, i)]}"
               for node_id, kind, i in sorted(set(raised) ^ set(calm_raised))]
    assert not differ, holdings.failed(differ)


def _said(decision: tuple[str, tuple[str, ...]] | None) -> str:
    return "nothing" if decision is None else f"{decision[0]} {list(decision[1])}"


def test_no_gateway_event_is_lost_or_doubled_and_nothing_is_issued_twice(chaos: ChaosDay) -> None:
    failures = []
    for node_id, events in chaos.sent.items():
        held: dict[str, list[holdings.Record]] = {}
        for record in chaos.held[node_id].made("SealEventNotification"):
            assert isinstance(record.body, SealEvent)
            held.setdefault(str(record.body.event_id), []).append(record)
        for event, answer in zip(events, chaos.replayed[node_id], strict=True):
            what = f"{node_id}'s gateway event {event.event_id} ({event.container}, lock {event.lock_id} #{event.seq})"
            records = held.pop(str(event.event_id), [])
            if len(records) != 1:
                failures.append(f"{'lost' if not records else 'doubled'}: {what} is held in {len(records)} records "
                                f"{[r.message_id for r in records]}")
            elif (answer["status"], answer.get("message_id")) != ("duplicate", records[0].message_id):
                failures.append(f"resent: {what} was answered {answer['status']} as record "
                                f"{answer.get('message_id')}; {node_id} holds it as {records[0].message_id}")
        failures += [f"unsent: {node_id} holds {r.describe()}, an event its gateway did not send"
                     for records in held.values() for r in records]
    failures += holdings.reissued(chaos.held, chaos.result.day)
    assert not failures, holdings.failed(failures)


def test_every_delivery_is_receipted_and_every_checkpoint_verifies_and_is_cosigned(chaos: ChaosDay) -> None:
    failures = holdings.unreceipted(chaos.held)
    failures += holdings.unwitnessed(chaos.held, chaos.result.checkpoints, chaos.base)
    assert not failures, holdings.failed(failures)
