"""The lock-gateway simulator: pure journeys, transports, the runner, and ``mrx simulate`` against real nodes."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mrx.adapters import simulator as sim
from mrx.adapters.simulator import Delivery, DeliveryError, HttpGateway, Journey, MqttGateway, Outcome
from mrx.node.cli import build_parser, main
from mrx.node.inputs import ItineraryIn, SealEventIn, UnsealAuthorizationIn
from mrx.schemas.identifiers import check_cim_note, check_container, check_locode, check_wagon
from tests.nodeproc import NodeDir, NodeProcess

START = sim.DEFAULT_START
QUICK = timedelta(hours=3)  # a report every 3 hours: whole journeys, ~130 events each


def quick(seed: int, containers: int, **options: Any) -> list[Journey]:
    return sim.journeys(seed, containers, start=START, report_every=QUICK, **options)


def as_bytes(journeys: list[Journey]) -> bytes:
    return b"\n".join(sim.encode(d.body()) for _, d in sim.schedule(journeys))


def send_order(journey: Journey) -> list[int]:
    return [e.seq for d in journey.deliveries for e in d.events]


# -- the journeys ------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs() -> None:
    first, again, other = quick(7, 5), quick(7, 5), quick(8, 5)
    assert as_bytes(first) == as_bytes(again)
    assert [j.itinerary() for j in first] == [j.itinerary() for j in again]
    assert as_bytes(first) != as_bytes(other)
    assert {e.event_id for j in first for e in j.events}.isdisjoint({e.event_id for j in other for e in j.events})
    assert {j.container for j in first}.isdisjoint({j.container for j in other})
    # The first N journeys do not depend on how many more were asked for; another start is another fleet.
    assert as_bytes(quick(7, 3)) == as_bytes(first[:3])
    later = sim.journeys(7, 5, start=START + timedelta(days=1), report_every=QUICK)
    assert {j.lock_id for j in later}.isdisjoint({j.lock_id for j in first})


def test_every_identifier_has_valid_check_digits() -> None:
    journeys = quick(11, 50, unseal_rate=0.5)
    events = [e for j in journeys for e in j.events]
    assert len({j.container for j in journeys}) == 50 and len({j.lock_id for j in journeys}) == 50
    assert all(check_container(e.container) is None for e in events)
    assert all(check_wagon(e.wagon) is None for e in events)
    assert all(check_cim_note(ident) is None for e in events for kind, ident in e.consignment_refs if kind == "CIM")
    assert all(check_locode(e.location.locode) is None for e in events if e.location.locode)
    for journey in journeys:
        assert check_cim_note(journey.consignment[1]) is None
        assert len({e.wagon for e in journey.events}) == 3  # a wagon per gauge: changed at Dostyk and Małaszewicze


def test_every_event_itinerary_and_unseal_request_is_what_the_node_accepts() -> None:
    journeys = quick(12, 30, gap_rate=1.0, tamper_rate=0.3, unseal_rate=0.3)
    types: set[str] = set()
    for journey in journeys:
        for delivery in journey.deliveries:
            body = json.loads(sim.encode(delivery.body()))  # exactly what goes on the wire
            for item in body["events"] if delivery.backfill else [body]:
                event = SealEventIn.model_validate(item)
                types.add(event.type.value)
        ItineraryIn.model_validate(journey.itinerary())
        for request in journey.unseal_requests:
            UnsealAuthorizationIn.model_validate(request.as_json())
    assert types == {"sealed", "position", "tamper", "unsealed", "battery-low"}


def test_route_order_sequence_and_device_time() -> None:
    for journey in quick(13, 20, gap_rate=1.0, tamper_rate=0.5, unseal_rate=0.5):
        events = journey.events
        first = events[0]
        assert first.type == "sealed" and first.location.locode == "CNCQI" and first.sealing_party == "CU"
        assert first.consignment_refs == (journey.consignment,)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert all(a.device_time < b.device_time for a, b in zip(events, events[1:]))
        stops = [e.location.locode for e in events if e.location.locode]
        visited = [code for i, code in enumerate(stops) if i == 0 or stops[i - 1] != code]
        assert visited == list(sim.OFFICES)  # every stop, in corridor order, never back
        assert journey.itinerary()["offices"] == list(sim.OFFICES)
        # Positions between stops lie within the corridor's box, not at 0,0.
        assert all(29 < e.location.lat < 56 and 6 < e.location.lon < 107 for e in events)
        assert all(0 <= e.battery_percent <= 100 for e in events)
        assert all(a.battery_percent >= b.battery_percent for a, b in zip(events, events[1:]))


def test_radio_gaps_are_backfilled_as_one_batch_after_the_first_live_event() -> None:
    journeys = quick(14, 10, gap_rate=1.0)
    backfills = 0
    for journey in journeys:
        delivered = send_order(journey)
        assert sorted(delivered) == [e.seq for e in journey.events]  # each event sent exactly once
        for before, delivery in zip(journey.deliveries, journey.deliveries[1:]):
            if not delivery.backfill:
                continue
            backfills += 1
            seqs = [e.seq for e in delivery.events]
            (live,) = before.events
            assert not before.backfill and delivery.send_at == live.device_time
            assert seqs == list(range(seqs[0], seqs[-1] + 1))  # the lock's log since the gap began
            assert seqs[-1] == live.seq - 1  # the live event came first, with a higher number
            assert all(e.device_time < live.device_time for e in delivery.events)
        if any(d.backfill for d in journey.deliveries):
            assert delivered != sorted(delivered)  # arrival order differs from device order
    assert backfills >= len(journeys)


def test_tamper_breaks_the_seal_for_the_rest_of_the_journey() -> None:
    for journey in quick(15, 5, tamper_rate=1.0, unseal_rate=0.0):
        (tamper,) = [e for e in journey.events if e.type == "tamper"]
        assert tamper.location.locode is None  # in transit
        after = [e.condition for e in journey.events if e.seq >= tamper.seq]
        before = [e.condition for e in journey.events if e.seq < tamper.seq]
        assert set(after) == {"4"} and set(before) == {"1"}


def test_authorised_unseal_is_a_request_the_demo_turns_into_a_citation() -> None:
    journeys = quick(16, 6, tamper_rate=0.0, unseal_rate=1.0)
    for journey in journeys:
        (request,) = journey.unseal_requests
        by_id = {e.event_id: e for e in journey.events}
        unsealed = by_id[request.event_id]
        assert unsealed.type == "unsealed" and unsealed.authorization_id == request.request_id
        assert unsealed.location.locode == request.office and request.office in sim.UNSEAL_OFFICES
        assert request.valid_from <= unsealed.device_time <= request.valid_to
        assert (request.lock_id, request.seal_id, request.container) == (
            unsealed.lock_id, unsealed.seal_id, unsealed.container,
        )
        resealed = [e for e in journey.events if e.type == "sealed" and e.seq > unsealed.seq]
        (reseal,) = resealed
        assert reseal.seal_id != unsealed.seal_id and reseal.sealing_party == "CU"
        assert reseal.location.locode == request.office
        assert all(e.seal_id == reseal.seal_id for e in journey.events if e.seq > reseal.seq)

    granted = {j.unseal_requests[0].request_id: uuid.uuid4() for j in journeys[:4]}
    cited = sim.cite_authorizations(journeys, granted)
    for before, after in zip(journeys, cited):
        request = before.unseal_requests[0]
        expected = granted.get(request.request_id, request.request_id)
        for events in (after.events, [e for d in after.deliveries for e in d.events]):
            (unsealed,) = [e for e in events if e.event_id == request.event_id]
            assert unsealed.authorization_id == expected
        changed = [(a, b) for a, b in zip(before.events, after.events) if a != b]
        assert len(changed) == (1 if request.request_id in granted else 0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        sim.journeys(1, 1, start=START.replace(tzinfo=None))
    with pytest.raises(ValueError, match="gap_rate"):
        sim.journeys(1, 1, start=START, gap_rate=1.5)


# -- the runner ------------------------------------------------------------------------


class Recorder:
    """A gateway that records what it is sent, yielding a few times as a network would."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, fail_at: int | None = None, yields: int = 4
    ) -> None:
        self.clock = clock
        self.fail_at = fail_at
        self.yields = yields
        self.sent: list[tuple[float, Delivery]] = []
        self.rng = random.Random(3)

    async def send(self, delivery: Delivery) -> Outcome:
        self.sent.append((self.clock(), delivery))
        if self.fail_at is not None and len(self.sent) >= self.fail_at:
            raise DeliveryError("the node went away")
        for _ in range(self.rng.randrange(self.yields + 1)):
            await asyncio.sleep(0)
        return Outcome(accepted=len(delivery.events))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # let the deliveries already due go first
        self.slept.append(seconds)
        self.now += seconds


async def test_speed_compresses_device_time_into_send_time() -> None:
    journeys = quick(21, 3, gap_rate=1.0)
    clock = FakeClock()
    gateway = Recorder(clock, yields=0)  # each send done at once: the fake clock reads its dispatch time
    tally = await sim.play(journeys, gateway, speed=3600, origin=START, concurrency=4, clock=clock, sleep=clock.sleep)
    assert tally.sent == tally.accepted == sum(len(j.events) for j in journeys)
    assert [d for _, d in gateway.sent] == [d for _, d in sim.schedule(journeys)]
    for sent_at, delivery in gateway.sent:
        due = max(0.0, (delivery.send_at - START).total_seconds() / 3600)
        assert sent_at == pytest.approx(due, abs=1e-6)  # an hour of the journey per second of the run

    fast = FakeClock()
    await sim.play(journeys, Recorder(fast), speed=0, clock=fast, sleep=fast.sleep)
    assert fast.slept == []


async def test_concurrent_play_keeps_each_locks_order() -> None:
    journeys = quick(22, 12, gap_rate=1.0)
    gateway = Recorder()
    tally = await sim.play(journeys, gateway, concurrency=8)
    per_lock: dict[str, list[Delivery]] = defaultdict(list)
    for _, delivery in gateway.sent:
        per_lock[delivery.events[0].lock_id].append(delivery)
    for journey in journeys:
        assert per_lock[journey.lock_id] == list(journey.deliveries)
    assert tally.backfills == sum(d.backfill for j in journeys for d in j.deliveries) > 0


async def test_a_delivery_error_stops_the_run_with_the_tally_so_far() -> None:
    journeys = quick(23, 2)
    gateway = Recorder(fail_at=5)
    with pytest.raises(DeliveryError) as caught:
        await sim.play(journeys, gateway, concurrency=1)
    assert caught.value.tally is not None and caught.value.tally.deliveries == 4
    assert len(gateway.sent) == 5


# -- the HTTP transport against a scripted server ---------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def scripted_server(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/seal-events", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def problem(status: int, code: str, **headers: str) -> web.Response:
    body = {"type": f"urn:mrx:problem:{code}", "status": status, "code": code, "detail": code}
    return web.json_response(body, status=status, content_type="application/problem+json", headers=headers)


async def test_http_retries_transient_failures_respecting_retry_after() -> None:
    seen: list[tuple[bytes, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((await request.read(), request.headers["Authorization"]))
        if len(seen) == 1:
            return problem(429, "too-many-requests", **{"Retry-After": "2"})
        if len(seen) == 2:
            return problem(503, "unavailable")
        if len(seen) == 3:
            assert request.transport is not None
            request.transport.close()  # a dropped connection
            return web.Response()
        return web.json_response({"status": "accepted", "order": "first"}, status=201)

    runner, url = await scripted_server(handler)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    event = quick(31, 1)[0].events[0]
    try:
        async with HttpGateway(url, "GW-1.secret", sleep=sleep) as gateway:
            outcome = await gateway.send(Delivery(event.device_time, (event,)))
    finally:
        await runner.cleanup()
    assert (outcome.accepted, outcome.retried, outcome.rejected) == (1, 3, 0)
    assert slept[0] == 2.0 and len(slept) == 3  # Retry-After first, then backoff
    assert {body for body, _ in seen} == {sim.encode(event.as_json())}  # the same event, so the node dedupes
    assert {auth for _, auth in seen} == {"Bearer GW-1.secret"}


async def test_http_backfill_resends_only_the_items_the_node_could_not_sign() -> None:
    batches: list[list[str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ids = [e["event_id"] for e in (await request.json())["events"]]
        batches.append(ids)
        results: list[dict[str, Any]] = []
        for index, ident in enumerate(ids):
            if len(batches) == 1 and index == 1:
                results.append({"index": index, "event_id": ident, "status": "rejected",
                                "problem": {"code": "unavailable"}})
            elif len(batches) == 1 and index == 2:
                results.append({"index": index, "event_id": ident, "status": "rejected",
                                "problem": {"code": "sequence-conflict"}})
            else:
                results.append({"index": index, "event_id": ident, "status": "duplicate" if index else "accepted"})
        return web.json_response({"results": results})

    runner, url = await scripted_server(handler)
    events = quick(32, 1)[0].events[1:5]

    async def sleep(seconds: float) -> None:
        pass

    try:
        async with HttpGateway(url, "GW-1.secret", sleep=sleep, batch_limit=3) as gateway:
            outcome = await gateway.send(Delivery(events[-1].device_time, events, backfill=True))
    finally:
        await runner.cleanup()
    ids = [str(e.event_id) for e in events]
    assert batches == [ids[:3], [ids[1]], ids[3:]]  # split at the batch limit; the unsigned item sent again
    assert (outcome.accepted, outcome.duplicate, outcome.rejected, outcome.retried) == (3, 0, 1, 1)
    assert outcome.problems == ("sequence-conflict",)


async def test_http_refused_credential_stops_the_run() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return problem(401, "unauthenticated")

    runner, url = await scripted_server(handler)
    event = quick(33, 1)[0].events[0]
    try:
        async with HttpGateway(url, "GW-X.wrong") as gateway:
            with pytest.raises(DeliveryError, match="refused the gateway credential"):
                await gateway.send(Delivery(event.device_time, (event,)))
    finally:
        await runner.cleanup()


async def test_http_unreachable_node_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes

    async def sleep(seconds: float) -> None:
        pass

    event = quick(34, 1)[0].events[0]
    async with HttpGateway(f"http://127.0.0.1:{port}", "GW-1.s", sleep=sleep, max_attempts=3) as gateway:
        with pytest.raises(DeliveryError, match="after 3 attempts"):
            await gateway.send(Delivery(event.device_time, (event,)))


# -- end to end, against a real node ---------------------------------------------------------


async def get_json(node: NodeProcess, path: str, token: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + path, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def test_http_run_is_accepted_by_a_node_and_a_rerun_is_all_duplicates(
    node: NodeProcess, node_dir: NodeDir
) -> None:
    journeys = quick(41, 3, gap_rate=1.0, tamper_rate=0.5, unseal_rate=0.5)
    total = sum(len(j.events) for j in journeys)
    async with HttpGateway(node.url, node_dir.tokens["GW-1"]) as gateway:
        first = await sim.play(journeys, gateway, concurrency=4)
        again = await sim.play(journeys, gateway, concurrency=4)
    assert first.backfills > 0
    assert (first.sent, first.accepted, first.duplicate, first.rejected) == (total, total, 0, 0), first.summary()
    assert (again.sent, again.accepted, again.duplicate, again.rejected) == (total, 0, total, 0), again.summary()
    for journey in journeys:  # the back-fills closed every gap the live events opened
        timeline = await get_json(node, f"/v1/locks/{journey.lock_id}/events?limit=1", node_dir.tokens["NCS"])
        assert timeline["gaps"] == []


def mrx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", *args], capture_output=True, text=True, timeout=300, env=os.environ
    )


def test_cli_plays_to_a_node(node: NodeProcess, node_dir: NodeDir, tmp_path: Path) -> None:
    token = tmp_path / "gw.token"
    token.write_text(node_dir.tokens["GW-1"] + "\n")
    done = mrx("simulate", "--url", node.url, "--token-file", str(token), "--containers", "1", "--seed", "42")
    assert done.returncode == 0, done.stderr
    assert " 0 duplicate, 0 rejected" in done.stdout and "seed 42" in done.stderr
    expected = sum(len(j.events) for j in sim.journeys(42, 1, start=START))
    assert done.stdout.startswith(f"sent {expected} events") and f"{expected} accepted" in done.stdout


def test_cli_out_writes_the_same_lines_for_the_same_seed(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        done = mrx("simulate", "--out", str(tmp_path / name), "--containers", "2", "--seed", "5",
                   "--start", "2026-12-01T06:00:00+06:00")
        assert done.returncode == 0, done.stderr
        runs.append((tmp_path / name).read_bytes())
    assert runs[0] == runs[1]
    lines = runs[0].splitlines()
    journeys = sim.journeys(5, 2, start=START.replace(day=1, month=12))
    assert len(lines) == sum(len(j.events) for j in journeys)
    assert lines[0] == sim.encode(sim.schedule(journeys)[0][1].body())
    assert all(SealEventIn.model_validate_json(line) for line in lines[:50])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:9"], "--url needs --token-file"),
        (["--url", "127.0.0.1:8470"], "is not an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:9", "--token-file", "/nonexistent/token"], "cannot read the gateway credential"),
        (["--out", "x", "--start", "yesterday"], "--start 'yesterday' is not an RFC 3339 time"),
        (["--out", "x", "--start", "2026-11-22T00:00:00"], "has no time zone"),
        (["--out", "x", "--speed", "-1"], "--speed must be 0"),
        (["--out", "x", "--containers", "0"], "--containers must be at least 1"),
        (["--mqtt", "localhost"], "--mqtt needs --gateway"),
        (["--mqtt", "localhost", "--gateway", "GW-1"], "write HOST:PORT"),
        (["--url", "http://127.0.0.1:9", "--mqtt", "h:1"], "not allowed with argument"),
        ([], "one of the arguments --url --mqtt --out is required"),
    ],
)
def test_cli_errors_are_one_sentence_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["simulate", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.strip().splitlines()[-1].startswith(("mrx simulate: ", "mrx simulate: error: "))
    assert not (tmp_path / "x").exists()


def test_cli_unreachable_node_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "gw.token"
    token.write_text("GW-1.secret\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = build_parser().parse_args(
        ["simulate", "--url", f"http://127.0.0.1:{port}", "--token-file", str(token), "--containers", "1"]
    )
    with pytest.MonkeyPatch.context() as patch:  # give up after two quick tries, not the default eight
        patch.setattr(sim, "HttpGateway", functools.partial(HttpGateway, max_attempts=2, backoff=0.01))
        assert args.func(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mrx simulate: the node at ") and "after 2 attempts" in err[-1]


# -- MQTT, against the broker on 127.0.0.1:1883 ---------------------------------------------------

BROKER = ("127.0.0.1", 1883)


@pytest.fixture
def broker() -> tuple[str, int]:
    try:
        socket.create_connection(BROKER, timeout=2).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no MQTT broker listens on {BROKER[0]}:{BROKER[1]}")
        pytest.skip(f"no MQTT broker on {BROKER[0]}:{BROKER[1]} (start mosquitto); with CI=true this test fails")
    return BROKER


class Subscriber:
    """A plain paho client that keeps every message on one topic."""

    def __init__(self, topic: str) -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client

        self.messages: list[bytes] = []
        self.qos: set[int] = set()
        self.ready = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=f"mrx-test-sub-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = lambda c, u, m: (self.qos.add(m.qos), self.messages.append(m.payload))

    def __enter__(self) -> Subscriber:
        self.client.connect(*BROKER)
        self.client.loop_start()
        assert self.ready.wait(10), "the broker did not acknowledge the subscription"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


@pytest.fixture
def client_id() -> Iterator[str]:
    """A fixed client ID for the gateway's persistent session, which the broker forgets afterwards."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    name = f"mrx-test-sim-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        cleaner = Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
        cleaner.connect(*BROKER)
        cleaner.disconnect()
    except OSError:
        pass


async def test_mqtt_publishes_every_event_qos1_on_the_gateways_topic(broker: tuple[str, int], client_id: str) -> None:
    prefix = f"mrx-test-{uuid.uuid4().hex[:8]}"  # not the prefix a node's listener may be subscribed to
    journeys = quick(51, 3, gap_rate=1.0)
    expected = [(j.lock_id, sim.encode(e.as_json())) for j in journeys for d in j.deliveries for e in d.events]
    topic = sim.events_topic(prefix, "GW-SIM")
    assert topic == f"{prefix}/gateways/GW-SIM/events"
    with Subscriber(topic) as subscriber:
        async with MqttGateway(*broker, "GW-SIM", topic_prefix=prefix, client_id=client_id) as gateway:
            tally = await sim.play(journeys, gateway, concurrency=4)
        received = await asyncio.to_thread(subscriber.wait_for, len(expected))
    assert tally.published == tally.sent == len(expected) and tally.accepted == tally.rejected == 0
    assert sorted(received) == sorted(payload for _, payload in expected)
    assert subscriber.qos == {1}  # the subscription asked for 1: what it got was published with QoS 1
    by_lock: dict[str, list[bytes]] = defaultdict(list)
    for payload in received:
        by_lock[json.loads(payload)["lock_id"]].append(payload)
    for journey in journeys:  # per lock, the broker passed them on in the gateway's order, back-fills included
        assert by_lock[journey.lock_id] == [p for lock, p in expected if lock == journey.lock_id]


async def test_mqtt_unreachable_broker_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def sleep(seconds: float) -> None:
        pass

    with pytest.raises(DeliveryError, match="cannot connect to the MQTT broker"):
        async with MqttGateway("127.0.0.1", port, "GW-SIM", connect_attempts=2, sleep=sleep):
            pass


def test_cli_publishes_over_mqtt(broker: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    from paho.mqtt.client import CallbackAPIVersion, Client

    gateway, prefix = f"GW-T{uuid.uuid4().hex[:6].upper()}", f"mrx-test-{uuid.uuid4().hex[:8]}"
    expected = sum(len(j.events) for j in sim.journeys(3, 1, start=START))
    with Subscriber(sim.events_topic(prefix, gateway)) as subscriber:
        code = main(["simulate", "--mqtt", f"{broker[0]}:{broker[1]}", "--gateway", gateway, "--topic-prefix", prefix,
                     "--containers", "1", "--seed", "3"])
        received = subscriber.wait_for(expected)
    cleaner = Client(CallbackAPIVersion.VERSION2, client_id=f"mrx-simulate-{gateway}", clean_session=True)
    cleaner.connect(*broker)  # forget the gateway's persistent session
    cleaner.disconnect()
    out = capsys.readouterr().out
    assert code == 0 and f"{expected} published" in out and " 0 rejected" in out, out
    assert len(received) == expected


def test_a_script_says_where_a_lock_is_tampered_with_and_opened_and_a_time_lapse_shortens_the_timetable() -> None:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    real = sim.journeys(5, 4, start=start)
    lapse = sim.journeys(5, 4, start=start, time_scale=1 / 15, tamper_rate=0.0, unseal_rate=0.0,
                               tampered={1: "CNAKL"}, unsealed={2: "KZDOS"})
    # The same containers and locks, whatever the script and the time-lapse.
    assert [(j.container, j.lock_id, j.consignment) for j in real] == [(j.container, j.lock_id, j.consignment)
                                                                      for j in lapse]
    span = [(j.events[-1].device_time - j.events[0].device_time).total_seconds() for j in (real[0], lapse[0])]
    assert 12 < span[0] / span[1] < 18

    tampered = lapse[1]
    tamper = next(e for e in tampered.events if e.type.value == "tamper")
    at = {e.location.locode: e.device_time for e in reversed(tampered.events) if e.location.locode}
    assert at["CNCQI"] < tamper.device_time < at["CNAKL"]  # on the run from Chongqing to Alashankou
    assert all(e.condition.value == "4" for e in tampered.events if e.seq > tamper.seq)

    (request,) = lapse[2].unseal_requests
    assert request.office == "KZDOS"
    opened = next(e for e in lapse[2].events if e.event_id == request.event_id)
    assert opened.type.value == "unsealed" and opened.location.locode == "KZDOS"
    assert not lapse[0].unseal_requests and all(e.type.value != "tamper" for e in lapse[0].events)

    with pytest.raises(ValueError, match="run to a stop"):
        sim.journeys(5, 1, start=start, tampered={0: "CNCQI"})
    with pytest.raises(ValueError, match="intermediate border"):
        sim.journeys(5, 1, start=start, unsealed={0: "DEDUI"})
    with pytest.raises(ValueError, match="time_scale"):
        sim.journeys(5, 1, start=start, time_scale=2.0)
