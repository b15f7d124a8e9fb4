"""The MQTT lock listener: gateways' seal events in through a broker, unseal authorisations out.

A lock gateway that speaks MQTT publishes to ``<prefix>/gateways/<gateway>/events``
what it would POST to ``/v1/seal-events``: one event object, or
``{"events": [...]}``. The node turns each message into signed records exactly
as the HTTP endpoint does, and the contract is the HTTP one with the broker
in between.

Delivery: at least once, acknowledged only after the commit
-----------------------------------------------------------
- The node holds one persistent session at the broker under a fixed client
  ID (``[mqtt] client_id``, default ``mrx-<node_id>``): MQTT 3.1.1 with
  ``clean_session=False``. The broker keeps the node's subscription and
  every QoS 1 message not yet acknowledged while the node is away, and sends
  them again when it reconnects (MQTT 3.1.1 §4.4).
- Subscription ``<prefix>/gateways/+/events`` at QoS 1, acknowledgements
  manual (the reader writes each PUBACK itself, below; paho's
  ``manual_ack`` is on for what paho reads). A message is acknowledged
  (PUBACK) only after ``Ingest.seal_events`` has returned, which is after
  the commit; a refused message is answered with a problem and
  acknowledged, because a message that can never be stored must not come
  back forever. A message
  that failed for a reason that may pass (the store raised, the node cannot
  sign now: ``5xx`` problems) is *not* acknowledged, and the listener drops
  the connection after a backoff (1 s, doubling to a minute) so that the
  broker sends it again: without a reconnect the broker never resends, and
  each stuck message would hold one of its in-flight slots.
- An acknowledgement belongs to the connection a message came on. A message
  processed after its connection was lost is not acknowledged on the next
  one (its packet identifier might name another message there); the broker
  has re-sent it on the new connection and that copy is acknowledged.
- Repeats are harmless: event IDs are idempotency keys, so a redelivery
  answers ``duplicate`` and stores nothing. Nothing lost, nothing doubled.
- A gateway that publishes at QoS 0 gets its events stored the same way,
  but QoS 0 has no acknowledgement and nothing keeps such a message for a
  node that is away: gateways publish at QoS 1.

Bounded memory: the node takes at most ``max_inflight`` messages that are
not yet acknowledged, and reads no further from the broker's connection
while it holds that many. The rest wait in one read's buffer (256 KB), the
socket's and at the broker (TCP pushes back), so a flood cannot grow a
queue in the node. The broker's own window for a 3.1.1 client is its
setting (Mosquitto's ``max_inflight_messages``, default 20): set it to at
least ``max_inflight`` or it, not the node, caps the rate at about that many
messages per commit (``deploy/mosquitto/mosquitto.conf``). The window
bounds the rate too: a message is acknowledged after its commit, so at most
``max_inflight`` messages are between the broker and a commit, and the
node's default, 100, is low for a busy node (docs/operations.md has the
figures). The largest message the node reads is the broker's
``max_packet_size``.

Why 3.1.1, not MQTT 5: MQTT 5 would let the node announce that window
(Receive Maximum) and a maximum packet size itself; the broker settings
above give the same bounds, and a 3.1.1 PUBLISH has no properties section
for the reader to parse (paho, which decoded every message when this was
chosen, builds a properties object for each MQTT 5 one: ~95 against
~50 µs per PUBLISH on the 2-core build machine).

Checks, in the HTTP endpoint's order
------------------------------------
1. The topic names a gateway (its ID shape): else ``mqtt-topic-invalid``.
2. The payload is at most ``[limits] max_body_bytes``: else ``body-too-large``.
3. Strict JSON (`mrx.node.body.parse_json`: UTF-8, no repeated keys, no NaN)
   and the body's shape (`mrx.node.api.seal_event_items`, with
   ``max_batch_events``).
4. The topic's gateway is a gateway credential of this node that is not
   revoked (`Access.gateway`): else ``unauthenticated``. The broker
   authenticated the publisher and its ACL let it write only its own topic
   (``deploy/mosquitto/acl``); the node cannot see who published, so the
   topic *is* the identity, and the node still checks each event's lock
   against that gateway's scope, as for HTTP (``lock-out-of-scope``).
5. ``Ingest.seal_events``: validation, scope, signing, the store's
   deduplication and ordering.

A refusal, of the whole message or of one event in it, is published at QoS 1
on ``<prefix>/gateways/<gateway>/problems``: the RFC 9457 body HTTP would
answer (``instance`` is the events topic; JSON pointers as in an HTTP batch,
``/events/3/container``), plus ``event_id`` and ``index`` when it is about
one event of the message. Accepted events get no answer: the gateway's proof
is the record, which ``GET /v1/locks/{lock_id}/events`` shows.

On the event loop, in batches
-----------------------------
paho runs on the node's event loop, not in a thread of its own (where it
would fight the loop for the GIL on every packet): the loop watches paho's
socket (paho's socket callbacks), calls ``loop_read``/``loop_write`` when it
is ready and ``loop_misc`` each second for keepalive. The loop opens the TCP
connection itself, without blocking, and hands it to paho; `_maintain`
reconnects with backoff (1 s doubling to 30 s).

The reader reads with one large ``recv`` and cuts the stream into whole
packets (`_BrokerSocket`). A PUBLISH at QoS 0 or 1 it decodes itself (a
topic, a packet identifier, a payload: MQTT 3.1.1 §3.3), and it writes the
PUBACK itself (four bytes), sent with the other acknowledgements of its
batch in one ``send``. paho's way (three or four small reads, a message
object, a topic match and locks per message, a packet queued and written per
acknowledgement) was two thirds of the listener's CPU per message
(``bench/mqtt.py --listener-only``, a scripted broker and nothing signed or
stored: about 39 against 14 µs per one-event message, JSON included, on the
2-core build machine). Every other packet
(CONNACK, SUBACK, PINGRESP, the PUBACKs of the node's own publishes, QoS 2,
anything malformed) paho reads whole from the same buffer, so paho keeps
the session's state and reports a protocol error by dropping the connection,
as before. paho does not see the message traffic, so during a stream it
sends a PINGREQ every keepalive interval; that costs nothing.

The reader takes every whole message that has arrived, checks it, and hands
each gateway's events to ``Ingest.seal_events`` in one call (at most
``max_batch_events``), so one-event messages are signed and committed
together as an HTTP batch is; results are split back per message. At most
three such calls run at once (one being validated, one signed, one
committed); what arrives meanwhile makes the next batch, so under load
batches grow by themselves and at light load a message goes alone, at once.

Unseal authorisations
---------------------
Once an authorisation is committed (`Unsealing.on_issued`), it is published
at QoS 1 to ``<prefix>/gateways/<gateway>/instructions`` as JSON: the fields
of ``GET /v1/unseal-authorizations`` and ``jws``, the compact JWS the lock
verifies with the node's public key. Which gateway: the one that most
recently reported an event of that lock to this node (latest receipt time),
provided it is still a gateway here, not revoked, and the lock is in its
scope (the same right that lets it fetch the authorisation over HTTP). A
lock with no such gateway gets no push; ``GET /v1/unseal-authorizations``
stays the authoritative source, and the push is at least once only while
the node runs (paho keeps a QoS 1 publish until the broker acknowledges it,
across reconnects, not across restarts).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from mrx.node.access import Access, Caller
from mrx.node.api import seal_event_items
from mrx.node.body import parse_json
from mrx.node.config import ConfigError, Limits, Mqtt, NodeConfig
from mrx.node.ingest import EventResult, Ingest
from mrx.node.inputs import TOKEN
from mrx.node.metrics import NodeMetrics
from mrx.node.problems import FieldError, Problem
from mrx.node.readmodel import iso
from mrx.node.storage import SignedRecord, Store, TimelineKey
from mrx.schemas.messages import UnsealAuthorization

log = logging.getLogger(__name__)

QOS = 1
_REDELIVER_MIN_SECONDS = 1.0
_REDELIVER_MAX_SECONDS = 60.0
_OUTGOING_QUEUE = 10_000  # problems and instructions paho may hold while the broker is away
_READ_BURST = 256  # packets read in one go before the messages among them are taken
_RECV_BYTES = 256 * 1024
_PUBLISH = 0x30  # MQTT 3.1.1 §2.2.1: the packet type in the first byte's high nibble
_PUBACK = struct.Struct(">BBH")  # type 4, remaining length 2, the packet identifier
_GATEWAYS_REMEMBERED = 4096  # topics whose gateway the reader remembers (a broker's ACL keeps them few)
_STORING = 3  # seal_events calls at once: one validating, one signing, one committing


def _logged(callback: Callable[..., None]) -> Callable[..., None]:
    """A paho callback whose failure is logged: paho, told to carry on, would swallow it unseen."""

    @functools.wraps(callback)
    def run(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT: %s failed", callback.__name__)

    return run


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic scheme under ``[mqtt] topic_prefix``."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}/gateways/+/events"

    def gateway_of(self, topic: str) -> str | None:
        """The gateway level of an events topic, or None if the topic is not one."""
        head, sep, rest = topic.partition(f"{self.prefix}/gateways/")
        gateway, slash, tail = rest.partition("/")
        if head or not sep or not slash or tail != "events" or not gateway:
            return None
        return gateway

    def problems(self, gateway: str) -> str:
        return f"{self.prefix}/gateways/{gateway}/problems"

    def instructions(self, gateway: str) -> str:
        return f"{self.prefix}/gateways/{gateway}/instructions"


@dataclass(slots=True)
class Incoming:
    """One message from the broker, until it is acknowledged or given up on."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    connection: int  # the broker connection it came on (acknowledgements belong to it)
    gateway: str = ""
    items: list[Any] = field(default_factory=list)
    batch: bool = False  # {"events": [...]}: problems point into /events/<i>


class _BrokerSocket:
    """The broker connection, cut into whole packets: PUBLISHes for the listener, the rest for paho.

    The listener reads with one large ``recv`` (`fill`) and looks at the
    whole packet at the head of the buffer (`packet`). A PUBLISH it decodes
    itself (`take_publish`): paho's way costs several small reads, a message object,
    a topic match and a lock per message, most of the listener's CPU at
    thousands of messages a second. Any other packet (CONNACK, SUBACK,
    PUBACK of the node's own publishes, PINGRESP, a malformed PUBLISH) it
    lets paho read (`admit`, then ``loop_read``): paho's ``recv`` is served
    from the buffer up to the end of that packet and then told "nothing yet",
    so paho only ever sees whole packets and stays in step with the stream.
    The end of the stream or a read error is handed to paho the same way,
    and paho reports the disconnect.

    Writes are collected (paho's packets and the listener's acknowledgements)
    and go out when the writer flushes (`LockListener._writable`), or at
    ``close``, in as few ``send`` calls as the kernel takes.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()  # grows in place while a large packet arrives: linear, not quadratic
        self._at = 0  # the next unread byte of the buffer
        self._paho_end = 0  # paho may read the buffer up to here
        self._end: OSError | EOFError | None = None  # how the stream ended: a read error, or its end
        self._out = bytearray()

    # -- reading: the listener --

    def fill(self) -> bool:
        """Read what the kernel has into the buffer; False if there was nothing (or the stream ended)."""
        if self._end is not None:
            return False
        try:
            chunk = self.sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._end = exc
            return False
        if not chunk:
            self._end = EOFError()
            return False
        if self._at:  # what was read goes; the start of a packet not yet whole moves to the front
            del self._buffer[: self._at]
            self._paho_end = max(0, self._paho_end - self._at)
            self._at = 0
        self._buffer += chunk
        return True

    @property
    def ended(self) -> bool:
        return self._end is not None

    def packet(self) -> tuple[int, int, int] | None:
        """The whole packet at the head of the buffer: (its first byte, where its body starts, its end), or None.

        A remaining length longer than MQTT's four bytes (§2.2.3) is returned,
        once a fifth length byte is there, as a packet with no body that ends
        after it: paho reads those six bytes and reports the protocol error.
        """
        buffer, at = self._buffer, self._at
        length, shift = 0, 0
        for position in range(at + 1, min(at + 5, len(buffer))):
            byte = buffer[position]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                end = position + 1 + length
                return (buffer[at], position + 1, end) if end <= len(buffer) else None
            shift += 7
        if len(buffer) - at >= 6:
            return buffer[at], at + 6, at + 6
        return None

    def take_publish(self, first: int, start: int, end: int) -> tuple[int, int, bytes, bytes] | None:
        """The PUBLISH at the head at QoS 0 or 1 (MQTT 3.1.1 §3.3), read: (packet identifier, QoS, topic, payload).

        None, and nothing read, for anything else: QoS 2 (which a broker
        does not send on a QoS 1 subscription) and malformed packets (an
        empty topic, one longer than the packet) are paho's to read and to
        answer, as a protocol error.
        """
        qos = (first >> 1) & 0x03
        if first & 0xF0 != _PUBLISH or qos > 1 or end - start < 2:
            return None
        buffer = self._buffer
        topic_end = start + 2 + (buffer[start] << 8 | buffer[start + 1])
        payload_start = topic_end + 2 * qos
        if topic_end == start + 2 or payload_start > end:
            return None
        mid = buffer[topic_end] << 8 | buffer[topic_end + 1] if qos else 0
        self._at = end
        return mid, qos, bytes(buffer[start + 2 : topic_end]), bytes(buffer[payload_start:end])

    def admit(self, end: int) -> None:
        """Let paho read the buffer up to ``end`` (the end of the packet at its head)."""
        self._paho_end = end

    def admit_end(self) -> None:
        """Let paho read the rest of the buffer and then the end of the stream."""
        self._paho_end = len(self._buffer)

    @property
    def whole_packet_buffered(self) -> bool:
        return self.packet() is not None

    # -- reading: paho --

    def recv(self, size: int) -> bytes:
        if self._at >= self._paho_end:
            if self._end is None or self._at < len(self._buffer):
                raise BlockingIOError  # the next packet is the listener's, or not whole yet
            if isinstance(self._end, EOFError):
                return b""
            raise self._end
        piece = bytes(self._buffer[self._at : min(self._at + size, self._paho_end)])
        self._at += len(piece)
        return piece

    # -- writing --

    def send(self, data: bytes) -> int:
        self._out += data
        return len(data)

    def acknowledge(self, mid: int) -> None:
        """Queue a PUBACK (MQTT 3.1.1 §3.4: two fixed bytes and the packet identifier)."""
        self._out += _PUBACK.pack(0x40, 2, mid)

    @property
    def unsent(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:  # the connection is gone: the reader sees it and paho reports it
                self._out.clear()
                return
            del self._out[:sent]

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        if self._out:  # paho closes right after "writing" a DISCONNECT: send it, and what came before
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(self._out)
            except OSError:
                pass
        self.sock.close()


class _Client(paho.Client):
    """paho's client, handed a socket the event loop connected (paho's own connect would block the loop)."""

    connected_socket: _BrokerSocket | None = None

    def _create_socket_connection(self) -> Any:
        sock, self.connected_socket = self.connected_socket, None
        if sock is None:
            raise OSError("no connected socket to hand to paho")
        return sock


class LockListener:
    """Seal events from gateways over MQTT into `Ingest`; unseal authorisations out to them."""

    def __init__(
        self,
        settings: Mqtt,
        *,
        client_id: str,
        password: str | None,
        ingest: Ingest,
        access: Access,
        store: Store,
        metrics: NodeMetrics,
        limits: Limits,
    ) -> None:
        if settings.password_file is not None and settings.username is None:
            raise ConfigError("[mqtt] password_file needs a username")
        self._settings = settings
        self._client_id = client_id
        self._topics = Topics(settings.topic_prefix)
        self._ingest = ingest
        self._access = access
        self._store = store
        self._metrics = metrics
        self._max_payload = limits.max_body_bytes
        self._max_batch = limits.max_batch_events
        self._stored, self._refused, self._retried = (metrics.mqtt_messages.labels(o) for o in ("stored", "refused", "retry"))

        self._client = _Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311,
            manual_ack=True,
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, password)
        # No paho logger: it would be asked about every packet. What matters is logged here.
        self._client.suppress_exceptions = True  # a failing callback must not leave paho mid-packet (see _logged)
        self._client.max_queued_messages_set(_OUTGOING_QUEUE)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_socket_register_write
        self._client.on_socket_unregister_write = self._on_socket_unregister_write

        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection = 0  # bumped at every connect and disconnect: an acknowledgement belongs to one
        self._connected = False
        self._connected_since: float | None = None
        self._down = asyncio.Event()
        self._sock: _BrokerSocket | None = None  # the socket the loop watches
        self._reading = False
        self._arrived: list[Incoming] = []
        self._take_scheduled = False
        self._storing = 0  # Ingest.seal_events calls in progress
        self._held = 0  # messages in the node, not yet acknowledged or given up on
        self._gateways: dict[str, tuple[str, bool]] = {}  # topic → `_gateway_level`
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._redeliver: asyncio.TimerHandle | None = None
        self._redeliver_after = _REDELIVER_MIN_SECONDS

    @classmethod
    def of(
        cls, config: NodeConfig, *, ingest: Ingest, access: Access, store: Store, metrics: NodeMetrics
    ) -> LockListener:
        """The listener a node's ``[mqtt]`` section asks for, with its password read from its file."""
        settings = config.mqtt
        if settings is None:
            raise ConfigError("no [mqtt] section: the node has no MQTT listener")
        password = None
        if settings.password_file is not None:
            path = config.base_dir / settings.password_file
            try:
                password = path.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, UnicodeDecodeError, IndexError) as exc:
                raise ConfigError(f"[mqtt] password_file {path}: cannot read a password from it ({exc})") from None
        return cls(
            settings, client_id=config.mqtt_client_id, password=password, ingest=ingest, access=access,
            store=store, metrics=metrics, limits=config.limits,
        )

    # -- lifetime ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background: the node serves HTTP whether or not the broker is there."""
        self._loop = asyncio.get_running_loop()
        self._metrics.mqtt_connected.set(0)
        # Records where and how to connect; `_maintain` makes the connections.
        self._client.connect_async(self._settings.host, self._settings.port, keepalive=self._settings.keepalive_seconds)
        self._maintainer = self._loop.create_task(self._maintain())
        self._misc = self._loop.call_later(1.0, self._housekeeping)
        log.info(
            "MQTT: connecting to %s:%d as %s, subscribing to %s",
            self._settings.host, self._settings.port, self._client_id, self._topics.events,
        )

    async def stop(self) -> None:
        """Take no new message, let those being stored commit and be acknowledged, then disconnect.

        Messages that arrived but were not started are not acknowledged: the
        broker keeps them in the node's session for its next start.
        """
        self._stopping = True
        for handle in (self._redeliver, self._misc):
            if handle is not None:
                handle.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)
        if self._connected:
            self._client.disconnect()  # written by the writer callback; the session stays at the broker
            try:
                await asyncio.wait_for(self._down.wait(), timeout=5)
            except TimeoutError:
                log.warning("MQTT: the broker did not see the disconnect through; closing")
        if self._maintainer is not None:
            self._maintainer.cancel()
            await asyncio.gather(self._maintainer, return_exceptions=True)
        if (sock := self._client.socket()) is not None:  # the broker never answered the disconnect
            self._on_socket_close(self._client, None, sock)
            sock.close()
        self._metrics.mqtt_connected.set(0)

    async def _maintain(self) -> None:
        """Connect, and connect again whenever the connection ends, with backoff (1 s doubling to 30 s)."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while not self._stopping:
            self._down.clear()
            try:
                sock = await self._open_socket(loop)
                self._client.connected_socket = _BrokerSocket(sock)
                self._client.reconnect()  # on the loop: the socket is connected already, paho sends CONNECT
            except (OSError, TimeoutError) as exc:
                log.warning("MQTT: cannot reach the broker at %s:%d (%s); trying again in %.0f s",
                            self._settings.host, self._settings.port, exc, backoff)  # fmt: skip
                self._down.set()
            await self._down.wait()
            if self._stopping:
                return
            backoff = 1.0 if self._connection_lasted() else min(backoff * 2, 30.0)
            await asyncio.sleep(backoff)

    def _connection_lasted(self) -> bool:
        lasted = self._connected_since is not None and time.monotonic() - self._connected_since > 30
        self._connected_since = None
        return lasted

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        host, port = self._settings.host, self._settings.port
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), timeout=10)
            except (OSError, TimeoutError) as exc:
                sock.close()
                error = exc if isinstance(exc, OSError) else OSError(f"connecting to {address} timed out")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acknowledgements go out at once
            return sock
        raise error

    def _housekeeping(self) -> None:
        """paho's keepalive (PINGREQ, and a broker that stopped answering), every second."""
        if self._client.socket() is not None:
            self._client.loop_misc()
        if not self._stopping and self._loop is not None:
            self._misc = self._loop.call_later(1.0, self._housekeeping)

    # -- paho's socket, watched by the event loop ---------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        if self._held < self._settings.max_inflight:
            self._resume_reading()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if sock is self._sock:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            self._sock, self._reading = None, False

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if sock is self._sock:
            self._loop.add_writer(sock, self._writable)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if sock is self._sock and not sock.unsent:
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        """Read whole packets while they keep coming (up to a burst); the messages among them are taken at once."""
        sock = self._sock
        for _ in range(_READ_BURST):
            if not self._reading or sock is None or sock is not self._sock:
                return  # paused at max_inflight, or the connection is gone
            head = sock.packet()
            if head is None:
                if sock.fill():
                    continue
                if sock.ended:  # paho reads the end of the stream (or the error) and reports the disconnect
                    sock.admit_end()
                    self._client.loop_read()
                return
            first, start, end = head
            if (publish := sock.take_publish(first, start, end)) is not None:
                mid, qos, topic, payload = publish
                try:
                    name = topic.decode("utf-8")
                except UnicodeDecodeError:  # MQTT topics are UTF-8; a broker should not deliver this
                    name = ""
                self._arrive(mid, qos, name, payload)
            else:
                sock.admit(end)
                self._client.loop_read()
        self._more_buffered()

    def _more_buffered(self) -> None:
        """Come back for packets already read into the buffer: the socket will not say they are there."""
        if self._reading and self._sock is not None and self._sock.whole_packet_buffered and self._loop is not None:
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._client.loop_write()  # into the socket's buffer, packet by packet
        sock = self._sock
        if sock is not None and self._loop is not None:
            sock.flush()  # out in as few system calls as the kernel takes
            if sock.unsent:
                self._loop.add_writer(sock, self._writable)
            elif not self._client.want_write():
                self._loop.remove_writer(sock)

    def _pause_reading(self) -> None:
        if self._reading and self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._reading = False

    def _resume_reading(self) -> None:
        if not self._reading and self._loop is not None and self._sock is not None:
            self._loop.add_reader(self._sock, self._readable)
            self._reading = True
            self._more_buffered()

    def _write_soon(self) -> None:
        """Have what the listener queued on the socket (acknowledgements) sent by the writer at the loop's next turn."""
        if self._loop is not None and self._sock is not None and self._sock.unsent:
            self._loop.add_writer(self._sock, self._writable)

    # -- paho's callbacks (on the event loop) -------------------------------------

    @_logged
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            # Bad credentials, a refused client ID: tried again with backoff; the operator must act.
            log.error("MQTT: the broker refused the connection: %s", reason)
            return
        self._connection += 1
        self._connected = True
        self._connected_since = time.monotonic()
        log.info("MQTT: connected (session %s)", "resumed" if flags.session_present else "new")
        client.subscribe(self._topics.events, qos=QOS)

    @_logged
    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        granted = reasons[0] if reasons else None
        if granted is None or granted.is_failure:
            log.error("MQTT: the broker refused the subscription to %s: %s (check its ACL)", self._topics.events, granted)
            return
        if granted.value != QOS:
            log.error("MQTT: the broker granted QoS %d, not 1, for %s: events may be lost", granted.value, self._topics.events)
        self._metrics.mqtt_connected.set(1)

    @_logged
    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._connection += 1
        self._connected = False
        self._down.set()
        self._metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("MQTT: disconnected (%s); reconnecting", reason)

    @_logged
    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Only what paho reads comes here: a QoS 2 message (the reader takes QoS 0 and 1 itself).
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""
        self._arrive(message.mid, message.qos, topic, message.payload)

    # -- the messages -------------------------------------------------------------

    def _arrive(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next start
        self._arrived.append(Incoming(mid, qos, topic, payload, self._connection))
        self._schedule_take()
        self._held += 1
        if self._held >= self._settings.max_inflight:
            # Read no more until messages settle: the rest wait in the socket and at the broker.
            self._pause_reading()

    def _schedule_take(self) -> None:
        # While _STORING calls are signing and committing, arrivals wait and make the next batch bigger.
        if not self._take_scheduled and self._arrived and self._storing < _STORING:
            self._take_scheduled = True
            asyncio.get_running_loop().call_soon(self._take_arrived)

    def _take_arrived(self) -> None:
        self._take_scheduled = False
        taken, self._arrived = self._arrived, []
        if self._stopping:
            self._held -= len(taken)
            return
        by_gateway: dict[str, list[Incoming]] = {}
        for incoming in taken:
            try:
                self._check(incoming)
            except Problem as problem:
                self._refuse(incoming, problem)
                continue
            by_gateway.setdefault(incoming.gateway, []).append(incoming)
        self._write_soon()  # the refusals' acknowledgements
        for gateway, messages in by_gateway.items():
            for chunk in self._chunks(messages):
                self._spawn(self._store_events(gateway, chunk))

    def _check(self, incoming: Incoming) -> None:
        """Steps 1–3: topic, size, JSON and shape; fills in the gateway and the events."""
        incoming.gateway, named = self._gateway_level(incoming.topic)
        if not named:
            raise Problem(
                "mqtt-topic-invalid",
                f"{incoming.topic[:120]!r} does not name a gateway; publish to "
                f"{self._topics.prefix}/gateways/<gateway ID>/events with the ID the node operator gave you",
            )
        if len(incoming.payload) > self._max_payload:
            raise Problem(
                "body-too-large", f"the message is {len(incoming.payload)} bytes; the limit is {self._max_payload}"
            )
        incoming.items, incoming.batch = seal_event_items(parse_json(incoming.payload), self._max_batch)

    def _gateway_level(self, topic: str) -> tuple[str, bool]:
        """The topic's gateway level ("" if it has none) and whether that is a gateway ID; remembered per topic."""
        known = self._gateways.get(topic)
        if known is None:
            level = self._topics.gateway_of(topic)
            known = (level or "", level is not None and TOKEN.fullmatch(level) is not None)
            if len(self._gateways) >= _GATEWAYS_REMEMBERED:
                self._gateways.clear()
            self._gateways[topic] = known
        return known

    def _chunks(self, messages: list[Incoming]) -> list[list[Incoming]]:
        """Consecutive runs of messages with at most ``max_batch_events`` events together."""
        chunks: list[list[Incoming]] = []
        size = self._max_batch
        for incoming in messages:
            if size + len(incoming.items) > self._max_batch:
                chunks.append([])
                size = 0
            chunks[-1].append(incoming)
            size += len(incoming.items)
        return chunks

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_events(self, gateway_id: str, messages: list[Incoming]) -> None:
        """Steps 4–5 for one gateway's messages; each acknowledged after the commit, or left to come again."""
        self._storing += 1
        try:
            await self._store_and_answer(gateway_id, messages)
        finally:
            self._storing -= 1
            self._write_soon()
            self._schedule_take()

    async def _store_and_answer(self, gateway_id: str, messages: list[Incoming]) -> None:
        try:
            gateway = await self._access.gateway(gateway_id)
            if gateway is None:
                problem = Problem(
                    "unauthenticated",
                    f"the topic names gateway {gateway_id!r}, which this node does not know or has revoked; "
                    "ask the node operator",
                )
                for incoming in messages:
                    self._refuse(incoming, problem)
                return
            items = [item for incoming in messages for item in incoming.items]
            results = await self._ingest.seal_events(gateway, items)
        except Exception:
            log.exception("MQTT: storing %d message(s) from %s failed; the broker will send them again", len(messages), gateway_id)
            for incoming in messages:
                self._retry(incoming)
            return
        offset = 0
        for incoming in messages:
            mine = results[offset : offset + len(incoming.items)]
            offset += len(incoming.items)
            self._answer(incoming, mine)

    def _answer(self, incoming: Incoming, results: Sequence[EventResult]) -> None:
        refused = [r.problem for r in results if r.problem is not None]
        if not refused:  # the common case, kept short: thousands a second
            if self._settle(incoming, ()):
                self._redeliver_after = _REDELIVER_MIN_SECONDS
                self._stored.inc()
            return
        if any(problem.status >= 500 for problem in refused):
            # The node could not sign or store it now (a revoked key, a failing disk): come again.
            # Its other events may be stored already; the redelivery answers them as duplicates.
            self._retry(incoming)
            return
        problems = []
        for position, result in enumerate(results):
            if result.problem is None:
                continue
            pointer = f"/events/{position}" if incoming.batch else ""
            body = _relocated(result.problem, pointer).body(incoming.topic)
            body["event_id"] = str(result.event_id) if result.event_id else None
            body["index"] = position
            problems.append(body)
        if self._settle(incoming, problems):
            self._redeliver_after = _REDELIVER_MIN_SECONDS
            self._refused.inc()

    def _refuse(self, incoming: Incoming, problem: Problem) -> None:
        if self._settle(incoming, [problem.body(incoming.topic)]):
            self._refused.inc()

    def _settle(self, incoming: Incoming, problems: Sequence[dict[str, Any]]) -> bool:
        """Publish the message's problems, then acknowledge it; False if its connection is gone."""
        self._release()
        if incoming.connection != self._connection or not self._connected:
            # The broker has sent it again on the new connection; that copy is answered.
            self._retried.inc()
            return False
        if incoming.gateway:  # a topic level from the subscription's "+": a valid topic to answer on
            for body in problems:
                self._publish(self._topics.problems(incoming.gateway), body)
        if incoming.qos == 1 and self._sock is not None:
            self._sock.acknowledge(incoming.mid)  # sent by `_write_soon`'s writer, with the others of this batch
        elif incoming.qos == 2:
            self._client.ack(incoming.mid, incoming.qos)
        return True

    def _release(self) -> None:
        self._held -= 1
        if self._held < self._settings.max_inflight:
            self._resume_reading()

    def _retry(self, incoming: Incoming) -> None:
        """Leave a message unacknowledged and have the broker send it again after a backoff."""
        self._release()
        self._retried.inc()
        if self._redeliver is None and not self._stopping:
            delay, self._redeliver_after = self._redeliver_after, min(self._redeliver_after * 2, _REDELIVER_MAX_SECONDS)
            connection = incoming.connection
            self._redeliver = asyncio.get_running_loop().call_later(delay, self._reconnect_for_redelivery, connection)

    def _reconnect_for_redelivery(self, connection: int) -> None:
        """End the connection the unacknowledged messages came on: the broker re-sends them on the next."""
        self._redeliver = None
        if connection != self._connection or not self._connected:
            return  # it has been replaced already, and the broker re-sent them on the new one
        sock = self._client.socket()
        if sock is not None:
            log.warning("MQTT: reconnecting so that the broker sends the unacknowledged messages again")
            try:
                # The reader sees the end of the stream, paho reports the disconnect, `_maintain` reconnects.
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            except OSError:
                pass

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        info = self._client.publish(topic, payload, qos=QOS)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN: kept, sent once the connection is back. Anything else: dropped.
            log.error("MQTT: could not queue a message for %s: %s", topic, paho.error_string(info.rc))

    # -- unseal authorisations ------------------------------------------------------

    def authorised(self, authorisation: UnsealAuthorization, record: SignedRecord) -> None:
        """`Unsealing.on_issued`: push a committed authorisation to its lock's gateway, in the background."""
        if self._stopping or self._loop is None:
            return
        self._spawn(self._instruct(authorisation, record))

    async def _instruct(self, authorisation: UnsealAuthorization, record: SignedRecord) -> None:
        try:
            gateway = await self.lock_gateway(authorisation.lock_id)
        except Exception:
            log.exception("MQTT: cannot find the gateway of lock %s", authorisation.lock_id)
            gateway = None
        if gateway is None:
            log.info(
                "MQTT: no gateway of this node has reported lock %s; authorisation %s is not pushed "
                "(the gateway fetches it with GET /v1/unseal-authorizations)",
                authorisation.lock_id, authorisation.authorization_id,
            )
            self._metrics.mqtt_instructions.labels("no-gateway").inc()
            return
        self.publish_instruction(gateway.name, authorisation, record)

    async def lock_gateway(self, lock_id: str) -> Caller | None:
        """The gateway to tell about a lock: the latest to report it here that may still act for it."""
        latest: dict[str, tuple[datetime, int]] = {}
        cursor: str | None = None
        while True:
            page = await self._store.timeline(TimelineKey.LOCK, lock_id, cursor, 1000)
            for entry in page.items:
                seen = (entry.receipt_time, entry.lock_sequence)
                if entry.gateway_id not in latest or seen > latest[entry.gateway_id]:
                    latest[entry.gateway_id] = seen
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        for name in sorted(latest, key=latest.__getitem__, reverse=True):
            gateway = await self._access.gateway(name)
            if gateway is not None and gateway.may_use_lock(lock_id):
                return gateway
        return None

    def publish_instruction(self, gateway_id: str, authorisation: UnsealAuthorization, record: SignedRecord) -> None:
        """Publish an unseal authorisation on the gateway's instructions topic (QoS 1)."""
        body = {
            "kind": "unseal-authorization",
            "authorization_id": str(authorisation.authorization_id),
            "message_id": str(record.message_id),
            "lock_id": authorisation.lock_id,
            "seal_id": authorisation.seal_id,
            "container": authorisation.container,
            "office": authorisation.office,
            "valid_from": iso(authorisation.valid_from),
            "valid_to": iso(authorisation.valid_to),
            "jws": record.jws.decode("ascii"),
        }
        self._publish(self._topics.instructions(gateway_id), body)
        self._metrics.mqtt_instructions.labels("published").inc()


def _relocated(problem: Problem, pointer: str) -> Problem:
    """The problem of one event of a batch message, its JSON pointers made to point into the message."""
    if not pointer or not problem.errors:
        return problem
    first = problem.errors[0].pointer
    detail = problem.detail
    if detail.startswith((first or "/") + ":"):
        detail = pointer + first + detail[len(first or "/") :]
    errors = tuple(FieldError(pointer + e.pointer, e.detail) for e in problem.errors)
    return Problem(problem.code, detail, errors)
