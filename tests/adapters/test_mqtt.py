"""The MQTT lock listener against a real Mosquitto broker and real node processes.

Most tests use the broker on 127.0.0.1:1883 (anonymous), each node under its
own topic prefix and client ID so that runs never see each other's sessions.
The ACL, password and restart cases start their own broker from the
``mosquitto`` binary, on a free port, with its own config, the password file
made by ``mosquitto_passwd`` and the ACL from ``deploy/mosquitto/acl``.

Nothing here waits a fixed time for something to happen: every wait polls
for the outcome, with a generous limit that only a broken listener reaches.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mrx.adapters.mqtt import LockListener, Topics
from mrx.node.access import Caller
from mrx.node.config import Limits, Mqtt
from mrx.node.ingest import EventResult
from mrx.node.metrics import NodeMetrics
from mrx.node.storage import Credential
from tests import factories
from tests.conftest import database_snapshot
from tests.nodeproc import NodeDir, NodeProcess, make_node

ROOT = Path(__file__).resolve().parents[2]
ACL = ROOT / "deploy" / "mosquitto" / "acl"
SHARED = ("127.0.0.1", 1883)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT = 60.0  # seconds: the limit of every poll; reached only when something is broken
NODE_USER = "mrx-node"  # the node's broker user in deploy/mosquitto/acl


# -- brokers --------------------------------------------------------------------------


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _unavailable(reason: str) -> None:
    """Skip, except in CI, where a missing broker is a broken build, not a reason to test less."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the MQTT tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shared_broker() -> tuple[str, int]:
    if not _reachable(*SHARED):
        _unavailable(f"no MQTT broker on {SHARED[0]}:{SHARED[1]}; start mosquitto to run these tests")
    return SHARED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A Mosquitto of the test's own: password file, the deploy ACL, persistence, on a free port."""

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        if not Path(MOSQUITTO).exists() or shutil.which("mosquitto_passwd") is None:
            _unavailable("the mosquitto and mosquitto_passwd binaries are needed for the ACL and restart tests")
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True)
        passwords = directory / "passwords"
        passwords.touch(mode=0o600)
        for user, password in users.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
        (directory / "data").mkdir()
        # What deploy/mosquitto/mosquitto.conf asks of a production broker, on a test port.
        (directory / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"user {getpass.getuser()}\n"  # run as root, Mosquitto would drop to a user that cannot read these files
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            f"acl_file {ACL}\n"
            "use_username_as_clientid true\n"
            "persistence true\n"
            f"persistence_location {directory / 'data'}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n"
            "retain_available false\n"
            "max_packet_size 1200000\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.directory / "mosquitto.conf")], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _poll(lambda: _reachable("127.0.0.1", self.port), "the test broker to listen", self._died)
        return self

    def _died(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            assert self.proc.stderr is not None
            return self.proc.stderr.read().decode(errors="replace")
        return ""

    def stop(self) -> None:
        """SIGTERM, as an operator's restart does: Mosquitto writes its persistence file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker", {NODE_USER: "node-secret", "GW-1": "gw1-secret", "GW-2": "gw2-secret"})
    try:
        yield broker.start()
    finally:
        broker.stop()


# -- gateways (MQTT clients of the test) ---------------------------------------------


class Gateway:
    """A gateway's MQTT client: publishes events, collects what the node answers on its topics."""

    def __init__(
        self, host: str, port: int, prefix: str, name: str, *, username: str | None = None,
        password: str | None = None, listen: tuple[str, ...] = ("problems", "instructions"),
    ) -> None:
        self.name = name
        self.topics = Topics(prefix)
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.refused: list[int] = []  # mids the broker answered with a failure reason code (MQTT 5)
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{name}-{secrets.token_hex(4)}", protocol=paho.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_publish = self._on_publish
        self._listen = [f"{prefix}/gateways/{name}/{kind}" for kind in listen]
        self.client.max_inflight_messages_set(100)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._connected.wait(WAIT), f"gateway {name} could not connect"
        if self._listen:
            assert self._subscribed.wait(WAIT), f"gateway {name} could not subscribe"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            if self._listen:
                client.subscribe([(t, 1) for t in self._listen])
            self._connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.received.put((message.topic, json.loads(message.payload)))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.refused.append(mid)

    def publish(self, body: Any, *, gateway: str | None = None, raw: bytes | None = None) -> paho.MQTTMessageInfo:
        """Publish at QoS 1 on a gateway's events topic (this one's unless said) and wait for the broker's PUBACK."""
        topic = f"{self.topics.prefix}/gateways/{gateway or self.name}/events"
        info = self.client.publish(topic, raw if raw is not None else json.dumps(body).encode(), qos=1)
        info.wait_for_publish(WAIT)
        return info

    def next(self, kind: str) -> dict[str, Any]:
        """The next message the node published on this gateway's ``kind`` topic."""
        topic, body = self.received.get(timeout=WAIT)
        assert topic == f"{self.topics.prefix}/gateways/{self.name}/{kind}", (topic, body)
        return body

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- nodes -------------------------------------------------------------------------------


@dataclass
class MqttNode:
    node: NodeProcess
    dir: NodeDir
    prefix: str
    host: str
    port: int

    def gateway(self, name: str, **kwargs: Any) -> Gateway:
        return Gateway(self.host, self.port, self.prefix, name, **kwargs)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dir.tokens[name]}"}


def with_mqtt(node_dir: NodeDir, host: str, port: int, prefix: str, **extra: Any) -> None:
    """Give the node an ``[mqtt]`` section (its client ID unique to this run, like its prefix)."""
    lines = [f'host = "{host}"', f"port = {port}", f'topic_prefix = "{prefix}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    if "client_id" not in extra:
        lines.append(f'client_id = "mrx-test-{secrets.token_hex(6)}"')
    with node_dir.config_path.open("a") as fh:
        fh.write("\n[mqtt]\n" + "\n".join(lines) + "\n")


def _poll(check: Callable[[], Any], what: str, explain: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what} {explain()}")


def http_get(node: NodeProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async def fetch() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(node.url + path, headers=headers or {}) as resp:
                body = await resp.read()
                return resp.status, json.loads(body) if resp.content_type.endswith("json") else body

    return asyncio.run(fetch())


def http_post(node: NodeProcess, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    async def send() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                node.url + path, json=body, headers={"Content-Type": "application/json", **headers}
            ) as resp:
                return resp.status, await resp.json(content_type=None)

    return asyncio.run(send())


def metric(node: NodeProcess, name: str, labels: str = "") -> float:
    _, text = http_get(node, "/metrics")
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_subscribed(node: NodeProcess) -> None:
    _poll(lambda: metric(node, "mrx_mqtt_connected") == 1.0, "the node's MQTT listener to subscribe", node.stderr)


def lock_events(mn: MqttNode, lock: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    path: str | None = f"/v1/locks/{lock}/events?limit=1000"
    while path:
        status, page = http_get(mn.node, path, mn.auth("NCS"))
        assert status == 200, page
        events += page["events"]
        path = page["next"]
    return events


def messages(node: NodeProcess, outcome: str) -> float:
    return metric(node, "mrx_mqtt_messages_total", f'{{outcome="{outcome}"}}')


@pytest.fixture(scope="module")
def mqtt_node(tmp_path_factory: pytest.TempPathFactory, shared_broker: tuple[str, int]) -> Iterator[MqttNode]:
    prefix = f"mrxtest/{secrets.token_hex(6)}"
    node_dir = make_node(tmp_path_factory.mktemp("node"), gateways={"GW-1": ("LK-CN-*",), "GW-2": ("LK-KZ-*",)})
    with_mqtt(node_dir, *shared_broker, prefix)
    with NodeProcess(node_dir) as node:
        wait_subscribed(node)
        yield MqttNode(node, node_dir, prefix, *shared_broker)
    _forget_session(shared_broker, node_dir)


def _forget_session(broker: tuple[str, int], node_dir: NodeDir) -> None:
    client_id = re.search(r'client_id = "([^"]+)"', node_dir.config_path.read_text())
    assert client_id is not None
    _forget(broker, client_id.group(1))


def _forget(broker: tuple[str, int], client_id: str) -> None:
    """End a persistent session on the shared broker, so that test runs leave nothing behind."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(*broker, clean_start=True, properties=properties)
    client.disconnect()


@pytest.fixture
def gw1(mqtt_node: MqttNode) -> Iterator[Gateway]:
    gateway = mqtt_node.gateway("GW-1")
    yield gateway
    gateway.close()


@pytest.fixture
def gw2(mqtt_node: MqttNode) -> Iterator[Gateway]:
    gateway = mqtt_node.gateway("GW-2")
    yield gateway
    gateway.close()


# -- the happy path ------------------------------------------------------------------------


def test_events_published_become_signed_records(mqtt_node: MqttNode, gw1: Gateway) -> None:
    lock = "LK-CN-1000"
    gw1.publish(factories.seal_event(seq=1, lock=lock, type="sealed"))
    gw1.publish({"events": [factories.seal_event(seq=s, lock=lock) for s in (2, 3, 4)]})
    events = _poll(lambda: (found := lock_events(mqtt_node, lock)) and len(found) == 4 and found, "4 events")
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["order"] for e in events] == ["first", "next", "next", "next"]
    status, jws = http_get(mqtt_node.node, f"/v1/records/{events[0]['message_id']}", mqtt_node.auth("NCS"))
    assert status == 200 and jws.count(b".") == 2
    assert gw1.received.empty()  # accepted events are not answered


def test_duplicate_publish_is_stored_once(mqtt_node: MqttNode, gw1: Gateway) -> None:
    lock = "LK-CN-1001"
    event = factories.seal_event(seq=1, lock=lock, type="sealed")
    stored = messages(mqtt_node.node, "stored")
    duplicates = metric(mqtt_node.node, "mrx_seal_events_duplicate_total")
    for body in (event, event, {"events": [event]}):
        gw1.publish(body)
    _poll(lambda: messages(mqtt_node.node, "stored") == stored + 3, "three messages answered")
    assert [e["event_id"] for e in lock_events(mqtt_node, lock)] == [event["event_id"]]
    assert metric(mqtt_node.node, "mrx_seal_events_duplicate_total") == duplicates + 2


# -- bad input: a problem on the gateway's problems topic, nothing stored ------------------------


def test_payload_that_is_not_json_is_answered_with_a_problem(mqtt_node: MqttNode, gw1: Gateway) -> None:
    before = database_snapshot(mqtt_node.dir.database)
    gw1.publish(None, raw=b"LK-CN-0001;seq=1;sealed")
    problem = gw1.next("problems")
    assert problem["code"] == "invalid-json" and problem["status"] == 400
    assert problem["type"] == "urn:mrx:problem:invalid-json"
    assert problem["instance"] == f"{mqtt_node.prefix}/gateways/GW-1/events"
    assert "not valid JSON" in problem["detail"]
    assert database_snapshot(mqtt_node.dir.database) == before


def test_repeated_json_key_is_refused_as_over_http(mqtt_node: MqttNode, gw1: Gateway) -> None:
    gw1.publish(None, raw=b'{"seq": 1, "seq": 2}')
    assert gw1.next("problems")["code"] == "duplicate-json-key"


def test_event_on_another_gateways_topic_for_a_lock_outside_its_scope(
    mqtt_node: MqttNode, gw1: Gateway, gw2: Gateway
) -> None:
    """GW-2 (scope LK-KZ-*) publishes, on its own topic, an event for GW-1's lock: refused, nothing stored."""
    before = database_snapshot(mqtt_node.dir.database)
    event = factories.seal_event(seq=1, lock="LK-CN-1002", type="sealed")
    gw2.publish(event)
    problem = gw2.next("problems")
    assert problem["code"] == "lock-out-of-scope" and problem["status"] == 403
    assert problem["event_id"] == event["event_id"] and problem["index"] == 0
    assert "GW-2" in problem["detail"] and "LK-CN-1002" in problem["detail"]
    assert database_snapshot(mqtt_node.dir.database) == before
    assert lock_events(mqtt_node, "LK-CN-1002") == []
    assert gw1.received.empty()


def test_a_bad_event_in_a_batch_gets_its_own_problem(mqtt_node: MqttNode, gw1: Gateway) -> None:
    lock = "LK-CN-1003"
    events = [factories.seal_event(seq=s, lock=lock) for s in (1, 2, 3)]
    events[1]["container"] = "CSQU3054384"  # bad check digit
    gw1.publish({"events": events})
    problem = gw1.next("problems")
    assert problem["code"] == "validation-failed"
    assert problem["index"] == 1 and problem["event_id"] == events[1]["event_id"]
    assert problem["errors"][0]["pointer"] == "/events/1/container"  # as the HTTP batch answer points
    assert problem["detail"].startswith("/events/1/container: ")
    assert [e["seq"] for e in _poll(lambda: lock_events(mqtt_node, lock), "the good events")] == [1, 3]


def test_topic_of_an_unknown_gateway_or_no_gateway_at_all(mqtt_node: MqttNode) -> None:
    stranger = mqtt_node.gateway("GW-9")
    lowercase = mqtt_node.gateway("gw-1")
    try:
        before = database_snapshot(mqtt_node.dir.database)
        stranger.publish(factories.seal_event(seq=1, lock="LK-CN-1004"))
        assert stranger.next("problems")["code"] == "unauthenticated"
        lowercase.publish(factories.seal_event(seq=1, lock="LK-CN-1004"))
        assert lowercase.next("problems")["code"] == "mqtt-topic-invalid"
        assert database_snapshot(mqtt_node.dir.database) == before
    finally:
        stranger.close()
        lowercase.close()


def test_oversized_and_malformed_batches(mqtt_node: MqttNode, gw1: Gateway) -> None:
    gw1.publish({"events": [factories.seal_event(seq=s, lock="LK-CN-1005") for s in range(1, 502)]})
    assert gw1.next("problems")["code"] == "batch-too-large"
    gw1.publish(None, raw=b" " * (1_048_576 + 1))
    assert gw1.next("problems")["code"] == "body-too-large"
    gw1.publish({"events": []})
    assert gw1.next("problems")["code"] == "validation-failed"
    gw1.publish([factories.seal_event(seq=1, lock="LK-CN-1005")])
    assert gw1.next("problems")["code"] == "validation-failed"
    assert lock_events(mqtt_node, "LK-CN-1005") == []


# -- unseal authorisations out ------------------------------------------------------------------


def test_unseal_authorisation_is_pushed_to_the_locks_gateway(mqtt_node: MqttNode, gw1: Gateway) -> None:
    lock, box = "LK-CN-1006", factories.container("MRX", 200006)
    gw1.publish(factories.seal_event(seq=1, lock=lock, type="sealed", container=box))
    _poll(lambda: lock_events(mqtt_node, lock), "the lock's event")
    now = datetime.now(timezone.utc)
    request = {
        "lock_id": lock, "seal_id": "ES-0001", "container": box, "officer": "Officer Li",
        "valid_from": now.isoformat(), "valid_to": (now + timedelta(hours=2)).isoformat(),
    }
    status, issued = http_post(mqtt_node.node, "/v1/unseal-authorizations", request, mqtt_node.auth("NCS"))
    assert status == 201, issued
    instruction = gw1.next("instructions")
    assert instruction["kind"] == "unseal-authorization"
    assert instruction["jws"] == issued["jws"]  # the compact JWS the lock verifies with the node's key
    assert instruction["authorization_id"] == issued["authorization_id"]
    assert (instruction["lock_id"], instruction["seal_id"], instruction["container"]) == (lock, "ES-0001", box)
    assert metric(mqtt_node.node, "mrx_mqtt_instructions_total", '{outcome="published"}') >= 1


def test_authorisation_for_a_lock_no_gateway_reported_is_not_pushed(mqtt_node: MqttNode, gw1: Gateway) -> None:
    now = datetime.now(timezone.utc)
    request = {
        "lock_id": "LK-CN-1007", "seal_id": "ES-0001", "container": factories.container(), "officer": "Officer Li",
        "valid_from": now.isoformat(), "valid_to": (now + timedelta(hours=2)).isoformat(),
    }
    before = metric(mqtt_node.node, "mrx_mqtt_instructions_total", '{outcome="no-gateway"}')
    status, issued = http_post(mqtt_node.node, "/v1/unseal-authorizations", request, mqtt_node.auth("NCS"))
    assert status == 201, issued
    _poll(
        lambda: metric(mqtt_node.node, "mrx_mqtt_instructions_total", '{outcome="no-gateway"}') == before + 1,
        "the listener to decide",
    )
    assert gw1.received.empty()


# -- the test's own broker: passwords, the deploy ACL, a restart ------------------------------


@pytest.fixture
def acl_node(tmp_path: Path, own_broker: Broker) -> Iterator[MqttNode]:
    node_dir = make_node(tmp_path / "node", gateways={"GW-1": ("LK-CN-*",), "GW-2": ("LK-KZ-*",)})
    (node_dir.path / "mqtt-password").write_text("node-secret\n")
    (node_dir.path / "mqtt-password").chmod(0o600)
    # The broker names the session after the user (use_username_as_clientid): the client ID is moot.
    with_mqtt(
        node_dir, "127.0.0.1", own_broker.port, "mrx", username=NODE_USER, password_file="mqtt-password",
        max_inflight=20,
    )
    running = MqttNode(NodeProcess(node_dir).start(), node_dir, "mrx", "127.0.0.1", own_broker.port)
    try:
        wait_subscribed(running.node)
        yield running
    finally:
        running.node.stop()  # the one running now: a test may have killed and restarted it


def test_broker_acl_stops_a_gateway_publishing_on_another_gateways_topic(acl_node: MqttNode) -> None:
    gw1 = acl_node.gateway("GW-1", username="GW-1", password="gw1-secret")
    try:
        forged = factories.seal_event(seq=1, lock="LK-KZ-2000", type="sealed")  # GW-2's lock, on GW-2's topic
        info = gw1.publish(forged, gateway="GW-2")
        assert info.mid in gw1.refused  # MQTT 5: the broker answers "not authorised" and drops it
        marker = factories.seal_event(seq=1, lock="LK-CN-2000", type="sealed")
        gw1.publish(marker)  # after the forged one, on the same connection: once it is stored, the other is settled
        _poll(lambda: lock_events(acl_node, "LK-CN-2000"), "GW-1's own event")
        assert lock_events(acl_node, "LK-KZ-2000") == []
        assert messages(acl_node.node, "stored") == 1 and messages(acl_node.node, "refused") == 0
    finally:
        gw1.close()


def test_broker_acl_keeps_anonymous_and_wrong_passwords_out(own_broker: Broker) -> None:
    for username, password in ((None, None), ("GW-1", "wrong")):
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if username:
            client.username_pw_set(username, password)
        refused = threading.Event()
        client.on_connect = lambda c, u, f, reason, p, refused=refused: reason.is_failure and refused.set()
        client.connect("127.0.0.1", own_broker.port)
        client.loop_start()
        try:
            assert refused.wait(WAIT)
        finally:
            client.loop_stop()


def test_broker_restart_during_a_stream_loses_and_doubles_nothing(acl_node: MqttNode, own_broker: Broker) -> None:
    lock, count = "LK-CN-3000", 500
    events = [factories.seal_event(seq=s, lock=lock, type="sealed" if s == 1 else "position") for s in range(1, count + 1)]
    # A gateway with a persistent session of its own: paho re-sends what the broker did not acknowledge.
    gw1 = Gateway("127.0.0.1", own_broker.port, "mrx", "GW-1", username="GW-1", password="gw1-secret", listen=())

    def stream() -> None:
        for event in events:
            # While the broker is away this returns "no connection", and paho keeps the message to send later.
            gw1.client.publish("mrx/gateways/GW-1/events", json.dumps(event).encode(), qos=1)
            time.sleep(0.002)  # a stream, not a burst: the restart falls in the middle of it

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        _poll(lambda: len(lock_events(acl_node, lock)) >= 50, "the stream to be under way")
        own_broker.stop()
        own_broker.start()
        streaming.join()
        stored = _poll(
            lambda: (found := lock_events(acl_node, lock)) and len(found) >= count and found, f"{count} events",
            lambda: f"({len(lock_events(acl_node, lock))} stored)\n{acl_node.node.stderr()[-3000:]}",
        )
        assert sorted(e["event_id"] for e in stored) == sorted(e["event_id"] for e in events)
        assert [e["seq"] for e in stored] == list(range(1, count + 1))  # each exactly once
        assert messages(acl_node.node, "refused") == 0
    finally:
        streaming.join()
        gw1.close()


def test_node_killed_during_a_stream_stores_everything_once_when_it_returns(
    acl_node: MqttNode, own_broker: Broker
) -> None:
    """SIGKILL the node mid-stream: what it had not acknowledged the broker keeps in its session, and sends again."""
    lock, count = "LK-CN-3001", 300
    events = [factories.seal_event(seq=s, lock=lock, type="sealed" if s == 1 else "position") for s in range(1, count + 1)]
    gw1 = Gateway("127.0.0.1", own_broker.port, "mrx", "GW-1", username="GW-1", password="gw1-secret", listen=())
    try:
        for event in events[:150]:
            gw1.client.publish("mrx/gateways/GW-1/events", json.dumps(event).encode(), qos=1)
        _poll(lambda: len(lock_events(acl_node, lock)) >= 20, "the stream to be under way")
        acl_node.node.kill()  # no shutdown: messages taken but not acknowledged stay with the broker
        for event in events[150:]:  # published while the node is down: queued in its session
            gw1.publish(event)
        acl_node.node = NodeProcess(acl_node.dir).start()
        stored = _poll(
            lambda: (found := lock_events(acl_node, lock)) and len(found) >= count and found, f"{count} events",
            lambda: f"({len(lock_events(acl_node, lock))} stored)\n{acl_node.node.stderr()[-3000:]}",
        )
        assert [e["seq"] for e in stored] == list(range(1, count + 1))  # each exactly once
        assert sorted(e["event_id"] for e in stored) == sorted(e["event_id"] for e in events)
    finally:
        gw1.close()


# -- the listener in this process: acknowledgement after the commit, bounded memory ----------------


class RecordingIngest:
    """Stands in for `Ingest`: fails or blocks on demand, and records what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None

    async def seal_events(self, gateway: Caller, items: list[Any], pointer_prefix: str = "") -> list[EventResult]:
        self.calls.append(items)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk I/O error")
        if self.gate is not None:
            await self.gate.wait()
        return [EventResult(i, uuid.UUID(item["event_id"]), "accepted") for i, item in enumerate(items)]

    @property
    def seen(self) -> list[str]:
        return [item["event_id"] for items in self.calls for item in items]


class OneGateway:
    async def gateway(self, name: str) -> Caller | None:
        credential = Credential(name, "gateway", ("LK-*",), b"", datetime.now(timezone.utc))
        return Caller(credential, re.compile(r"LK-.*"))


@dataclass
class Listening:
    listener: LockListener
    metrics: NodeMetrics
    prefix: str
    client_id: str

    def count(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value("mrx_mqtt_messages_total", {"outcome": outcome}) or 0.0

    async def close(self, broker: tuple[str, int]) -> None:
        await self.listener.stop()
        await asyncio.to_thread(_forget, broker, self.client_id)


async def _listening(ingest: RecordingIngest, broker: tuple[str, int], **settings: Any) -> Listening:
    prefix, client_id = f"mrxtest/{secrets.token_hex(6)}", f"mrx-test-{secrets.token_hex(6)}"
    metrics = NodeMetrics()
    config = Mqtt(host=broker[0], port=broker[1], topic_prefix=prefix, **settings)
    listener = LockListener(
        config, client_id=client_id, password=None, ingest=ingest,  # type: ignore[arg-type]
        access=OneGateway(), store=None, metrics=metrics, limits=Limits(),  # type: ignore[arg-type]
    )
    await listener.start()
    connected = lambda: metrics.registry.get_sample_value("mrx_mqtt_connected") == 1
    await _async_poll(connected, "the listener to subscribe")
    return Listening(listener, metrics, prefix, client_id)


async def _async_poll(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def test_a_message_whose_store_fails_is_not_acknowledged_and_comes_again(shared_broker: tuple[str, int]) -> None:
    ingest = RecordingIngest()
    ingest.fail_next = 1
    listening = await _listening(ingest, shared_broker)
    gateway = await asyncio.to_thread(Gateway, *shared_broker, listening.prefix, "GW-1", listen=())
    try:
        event = factories.seal_event(seq=1, lock="LK-CN-4000")
        await asyncio.to_thread(gateway.publish, event)
        # Failed once, not acknowledged; the listener reconnects and the broker sends it again.
        await _async_poll(lambda: listening.count("stored") == 1, "the message to be stored on redelivery")
        assert ingest.seen == [event["event_id"], event["event_id"]]
        assert listening.count("retry") == 1
    finally:
        await asyncio.to_thread(gateway.close)
        await listening.close(shared_broker)


async def test_messages_in_the_node_are_bounded_by_max_inflight(shared_broker: tuple[str, int]) -> None:
    ingest = RecordingIngest()
    ingest.gate = asyncio.Event()
    listening = await _listening(ingest, shared_broker, max_inflight=5)
    gateway = await asyncio.to_thread(Gateway, *shared_broker, listening.prefix, "GW-1", listen=())
    try:
        events = [factories.seal_event(seq=s, lock="LK-CN-4001") for s in range(1, 51)]
        for event in events:
            await asyncio.to_thread(gateway.publish, event)  # all 50 at the broker
        await _async_poll(lambda: len(ingest.seen) == 5, "five messages in the node")
        await asyncio.sleep(0.5)  # room for a sixth to arrive, were the bound not kept
        assert len(ingest.seen) == 5
        ingest.gate.set()
        await _async_poll(lambda: listening.count("stored") == 50, "all 50 stored")
        assert sorted(ingest.seen) == sorted(e["event_id"] for e in events)
    finally:
        await asyncio.to_thread(gateway.close)
        await listening.close(shared_broker)


# -- the listener's own reading of the stream, against a broker the test scripts ----------------
#
# The listener decodes PUBLISH packets itself and writes their PUBACKs itself; every
# other packet goes through paho. A real broker sends whole packets in large
# reads, so these tests use a broker of their own that cuts the stream where it
# likes, sends what no broker would, and shows what the node wrote back.


def _fixed(first: int, body: bytes) -> bytes:
    """An MQTT packet: its first byte, the remaining length (MQTT 3.1.1 §2.2.3), the body."""
    length, remaining = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        remaining.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first]) + bytes(remaining) + body


def _publish(topic: str, payload: bytes, qos: int, mid: int = 0) -> bytes:
    head = len(topic.encode()).to_bytes(2, "big") + topic.encode() + (mid.to_bytes(2, "big") if qos else b"")
    return _fixed(0x30 | qos << 1, head + payload)


class BrokerSide:
    """One connection from the listener, as the scripted broker sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def packet(self) -> tuple[int, bytes]:
        """The next packet the node sent: (its type, its body)."""
        first = (await asyncio.wait_for(self.reader.readexactly(1), WAIT))[0]
        length, shift = 0, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return first >> 4, await self.reader.readexactly(length)

    async def send(self, data: bytes, piece: int | None = None) -> None:
        """Send ``data``, in pieces of ``piece`` bytes that the node reads one by one, or at once."""
        for at in range(0, len(data), piece or len(data)):
            self.writer.write(data[at : at + (piece or len(data))])
            await self.writer.drain()
            if piece:
                await asyncio.sleep(0.002)  # time for the node to read this piece on its own

    async def ended(self) -> bool:
        """True once the node has closed the connection (what it wrote before is skipped)."""
        while await asyncio.wait_for(self.reader.read(65536), WAIT):
            pass
        return True


class ScriptedBroker:
    """A listening socket that answers CONNECT with CONNACK and SUBSCRIBE with SUBACK (QoS 1), then does as told."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[BrokerSide] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handshake, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        side = BrokerSide(reader, writer)
        kind, _ = await side.packet()
        assert kind == 1, kind  # CONNECT
        await side.send(b"\x20\x02\x00\x00")
        kind, body = await side.packet()
        assert kind == 8, kind  # SUBSCRIBE
        await side.send(b"\x90\x03" + body[:2] + b"\x01")
        await self.connections.put(side)

    async def next_connection(self) -> BrokerSide:
        return await asyncio.wait_for(self.connections.get(), WAIT)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _scripted(ingest: RecordingIngest) -> tuple[ScriptedBroker, Listening]:
    broker = ScriptedBroker()
    port = await broker.start()
    return broker, await _listening(ingest, ("127.0.0.1", port))


async def test_packets_cut_anywhere_are_read_whole_and_each_qos_answered_its_way() -> None:
    ingest = RecordingIngest()
    broker, listening = await _scripted(ingest)
    try:
        side = await broker.next_connection()
        events = [factories.seal_event(seq=s, lock="LK-CN-5000") for s in range(1, 6)]
        topic = f"{listening.prefix}/gateways/GW-1/events"
        # One QoS 1 message cut at every byte: header, length, topic, packet identifier, payload.
        await side.send(_publish(topic, json.dumps(events[0]).encode(), 1, mid=1), piece=1)
        # Then in one read: a PINGRESP (paho's), a QoS 0 message, a refused one, a batch.
        await side.send(
            b"\xd0\x00"
            + _publish(topic, json.dumps(events[1]).encode(), 0)
            + _publish(topic, b"not json", 1, mid=2)
            + _publish(topic, json.dumps({"events": events[2:4]}).encode(), 1, mid=3)
        )
        acknowledged, problems = [], []
        while len(acknowledged) < 3 or not problems:
            kind, body = await side.packet()
            if kind == 4:  # PUBACK
                acknowledged.append(int.from_bytes(body, "big"))
            elif kind == 3:  # PUBLISH: the node's problem, at QoS 1 (paho's own packet)
                topic_length = int.from_bytes(body[:2], "big")
                problems.append((body[2 : 2 + topic_length].decode(), json.loads(body[4 + topic_length :])))
                await side.send(b"\x40\x02" + body[2 + topic_length : 4 + topic_length])  # its PUBACK, for paho
        assert sorted(acknowledged) == [1, 2, 3]  # the QoS 0 message is not acknowledged
        assert [(t, p["code"]) for t, p in problems] == [(f"{listening.prefix}/gateways/GW-1/problems", "invalid-json")]
        # QoS 2, which a broker does not send on a QoS 1 subscription: paho's handshake, stored once.
        await side.send(_publish(topic, json.dumps(events[4]).encode(), 2, mid=4))
        assert await side.packet() == (5, b"\x00\x04")  # PUBREC
        await side.send(b"\x62\x02\x00\x04")  # PUBREL
        assert await side.packet() == (7, b"\x00\x04")  # PUBCOMP, after the store
        assert ingest.seen == [e["event_id"] for e in events]
        assert (listening.count("stored"), listening.count("refused"), listening.count("retry")) == (4, 1, 0)
    finally:
        await listening.listener.stop()
        await broker.close()


@pytest.mark.parametrize(
    "malformed",
    [
        _fixed(0x32, b"\x00\x40" + b"GW" + b"\x00\x01"),  # a topic longer than the packet
        _fixed(0x32, b"\x00\x00" + b"\x00\x01" + b"{}"),  # an empty topic
        b"\x32\xff\xff\xff\xff\x01",  # a remaining length of five bytes
    ],
)
async def test_a_malformed_packet_ends_the_connection_and_the_listener_comes_back(malformed: bytes) -> None:
    ingest = RecordingIngest()
    broker, listening = await _scripted(ingest)
    try:
        side = await broker.next_connection()
        await side.send(malformed)
        assert await side.ended()
        side = await broker.next_connection()  # the listener reconnected
        event = factories.seal_event(seq=1, lock="LK-CN-5001")
        await side.send(_publish(f"{listening.prefix}/gateways/GW-1/events", json.dumps(event).encode(), 1, mid=9))
        assert await side.packet() == (4, b"\x00\x09")
        assert ingest.seen == [event["event_id"]]
    finally:
        await listening.listener.stop()
        await broker.close()
