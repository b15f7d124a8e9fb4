"""The lock-gateway simulator behind ``mrx simulate``: realistic corridor journeys, played to a node.

It is the load generator for the benchmarks and the data source for the
demo. Its parts, each usable on its own:

The journeys (pure: no I/O, no clock, no global random state)
    `journeys(seed, containers, start=...)` plans trains of up to
    ``train_size`` containers leaving Chongqing every ``train_interval`` and
    returns one `Journey` per container: its lock's events in the lock's own
    order (``seq`` 1, 2, 3 ...) and the `Delivery` list saying when the
    gateway sends what. Everything derives from ``random.Random`` instances
    keyed by the seed, the start and the container's index, and the event
    IDs are UUIDv5 of the same key: the same arguments give byte-identical
    event JSON (`encode`), and the first N journeys do not depend on how
    many more were asked for. A different start is a different fleet (other
    containers, locks and seals), so runs with different starts never claim
    each other's lock sequence numbers on one node.

    A journey follows the corridor of the README: sealed by
    customs at Chongqing (CNCQI) with the CIM consignment note in the lock,
    then Alashankou (CNAKL), Dostyk (KZDOS), Almaty (KZALA), Brest (BYBQT),
    Małaszewicze (PLMAA) and Duisburg (DEDUI). Between stops the lock reports
    a GPS position every ``report_every`` (with its own phase and jitter),
    interpolated along real waypoints (Lanzhou, Urumqi, Aktobe, Moscow,
    Minsk, Warsaw, Berlin ...); on arrival at a stop and while standing
    there it reports the stop's UN/LOCODE too (what makes a border node
    decide). At the gauge changes (Dostyk, Małaszewicze) the container moves
    to another wagon. Identifiers carry valid check digits: ISO 6346
    container numbers, 12-digit UIC wagon numbers, CIM notes
    (``CC-SSSS-NNNNNK``). The battery drains; crossing 15 % the lock sends
    ``battery-low`` once. Occasionally (``tamper_rate``) a lock reports
    ``tamper`` in transit, and its seal is broken (condition 4) from then on.

Radio gaps and back-fill
    Each long leg of a train may cross a dead zone (``gap_rate``): the
    train's locks keep logging, but their events within the window reach
    the gateway only when the radio is back. The gateway then sends the
    first live event (which the node files as ``gap``) and right after it
    the stored ones as one batch ``{"events": [...]}`` (filed ``late``), so
    arrival order differs from device order, as on the real corridor.

Authorised unsealing (``unseal_rate``)
    At an intermediate border (CNAKL, KZDOS, BYBQT or PLMAA) customs open
    the container: the lock reports ``unsealed`` citing an unseal
    authorisation, and a few hours later ``sealed`` with a new seal
    (``sealing_party`` CU). Only a node issues authorisations, with IDs it
    draws itself, so the simulator cannot know them: the journey carries the
    officer's *request* instead (`UnsealRequest`: the exact JSON of
    ``POST /v1/unseal-authorizations`` to the node at that office), and the
    ``unsealed`` event cites the request's own ``request_id``, a stand-in.
    Sent as generated, such an opening cites an authorisation no node holds,
    which a seal chain reports as ``UNKNOWN`` (authorisation not received),
    not ``BROKEN``. A demo that wants the opening authorised posts each
    request to the node of its ``office`` with a national credential, takes
    ``authorization_id`` from the answer and calls
    `cite_authorizations(journeys, {request_id: authorization_id})` before
    playing. A node only issues a window that ends in the future, so such a
    demo starts the journeys at about now and asks for the authorisations
    before it plays.

Itineraries
    `Journey.itinerary` is the JSON of ``POST /v1/itineraries`` for the
    container's consignment (one CIM note per container, the seven offices
    in order), for a demo to register at the national side of each node.

Transports (the only I/O besides the CLI)
    `HttpGateway` posts to ``POST {url}/v1/seal-events`` with the gateway's
    bearer credential: one event per request live, ``{"events": [...]}``
    (at most ``batch_limit``) for a back-fill. A ``429`` or ``503`` is tried
    again after its ``Retry-After`` (else exponential backoff), and so is a
    refused or dropped connection and a batch item the node answered
    ``unavailable``; event IDs are idempotency keys, so sending again is
    safe (the node answers ``duplicate``). A credential the node refuses
    stops the run: every later request would be refused too.
    `MqttGateway` publishes each event's JSON, QoS 1, on
    ``<prefix>/gateways/<gateway_id>/events`` and waits for the broker's
    PUBACK of each (paho-mqtt 2, a fixed client ID with ``clean_session``
    false, so that the broker and paho resend what was in flight across a
    reconnect). A back-fill is published event by event, in order: an MQTT
    message is the listener's unit of acknowledgement. MQTT has no answer
    from the node, so its outcomes are counted as ``published``.

The runner
    `play` merges the journeys' deliveries in send order (device time, then
    journey, then the journey's own order) and hands them to a transport,
    at most ``concurrency`` at once but one at a time per lock, so each
    lock's events reach the node in the gateway's order. ``speed`` compresses
    the *sending*: a delivery due ``d`` after ``origin`` in device time is
    sent ``d / speed`` after the run began (``speed`` 1: live; 3600: an hour
    a second; 0: as fast as the node takes them). Device times are the
    journey's own whatever the speed, and a node's seal-chain check finds
    fault with an event received before its device time (beyond its clock
    tolerance). So a demo wanting clean chains plays journeys that start now
    at ``--speed 1``, or faster journeys that started long enough ago (at
    least ``1 - 1/speed`` of a journey's 15 days or so) that no event goes
    out before its device time. `play` returns a `Tally`: sent, accepted,
    duplicate, rejected (with problem codes), published, retried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import aiohttp
from paho.mqtt.client import MQTT_ERR_NO_CONN, MQTT_ERR_SUCCESS, CallbackAPIVersion, Client, MQTTv311

from mrx.schemas.codes import SealConditionCode, SealEventType, SealingPartyCode
from mrx.schemas.identifiers import iso6346_check_digit, luhn_check_digit

NAMESPACE = uuid5(NAMESPACE_URL, "urn:mrx:simulator")
DEFAULT_START = datetime(2026, 11, 22, tzinfo=timezone.utc)  # the corridor's reference day in docs/ and tests
LOW_BATTERY = 15  # EAEU navigation-seal event 05: battery below 15 %
LONG_RUN = timedelta(hours=12)  # a run this long may cross a radio dead zone, or see a lock tampered with


# -- the corridor --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    locode: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Leg:
    """The run from one stop to the next: the waypoints between and the running time's range, in hours."""

    to: Place
    via: tuple[tuple[float, float], ...]
    hours: tuple[float, float]


ORIGIN = Place("CNCQI", "Chongqing", 29.563, 106.551)
CORRIDOR: tuple[Leg, ...] = (
    Leg(
        Place("CNAKL", "Alashankou", 45.171, 82.569),
        (
            (30.837, 106.110), (32.435, 105.843), (33.400, 104.922), (36.061, 103.834), (37.928, 102.638),
            (38.926, 100.450), (39.773, 98.289), (42.818, 93.515), (42.951, 89.190), (43.825, 87.617),
            (44.426, 84.903), (44.605, 82.895),
        ),  # Nanchong, Guangyuan, Longnan, Lanzhou, Wuwei, Zhangye, Jiayuguan, Hami, Turpan, Urumqi, Kuytun, Jinghe
        (70.0, 90.0),
    ),
    Leg(Place("KZDOS", "Dostyk", 45.250, 82.492), (), (1.0, 3.0)),
    Leg(Place("KZALA", "Almaty", 43.238, 76.946), ((46.948, 79.661), (45.252, 77.982)), (18.0, 26.0)),  # via Aktogay
    Leg(
        Place("BYBQT", "Brest", 52.097, 23.734),
        (
            (43.598, 73.761), (42.900, 71.378), (42.317, 69.597), (43.297, 68.252), (44.853, 65.509),
            (46.797, 61.667), (50.283, 57.167), (51.768, 55.097), (53.196, 50.100), (53.195, 45.018),
            (54.629, 39.736), (55.756, 37.617), (54.783, 32.045), (54.509, 30.426), (53.902, 27.562),
            (53.132, 26.014),
        ),  # Shu, Taraz, Shymkent, Turkestan, Kyzylorda, Aralsk, Aktobe, Orenburg, Samara, Penza, Ryazan,
        # Moscow, Smolensk, Orsha, Minsk, Baranovichi
        (120.0, 160.0),
    ),
    Leg(Place("PLMAA", "Małaszewicze", 52.037, 23.535), (), (1.0, 3.0)),
    Leg(
        Place("DEDUI", "Duisburg", 51.434, 6.762),
        (
            (52.168, 22.290), (52.230, 21.011), (52.231, 19.364), (52.406, 16.925), (52.342, 14.550),
            (52.520, 13.405), (52.120, 11.628), (52.375, 9.732), (52.021, 8.532), (51.681, 7.815),
            (51.514, 7.466),
        ),  # Siedlce, Warsaw, Kutno, Poznań, Frankfurt (Oder), Berlin, Magdeburg, Hannover, Bielefeld, Hamm, Dortmund
        (28.0, 40.0),
    ),
)
OFFICES: tuple[str, ...] = (ORIGIN.locode, *(leg.to.locode for leg in CORRIDOR))
# Hours a train stands at each stop: loading and sealing at the origin, customs and gauge changes on the way,
# and at the destination until the lock's last report.
DWELL_HOURS: dict[str, tuple[float, float]] = {
    "CNCQI": (3.0, 8.0), "CNAKL": (6.0, 14.0), "KZDOS": (14.0, 30.0), "KZALA": (6.0, 14.0),
    "BYBQT": (6.0, 14.0), "PLMAA": (14.0, 36.0), "DEDUI": (2.0, 6.0),
}
TRANSSHIPMENTS = ("KZDOS", "PLMAA")  # gauge changes: the container moves to another wagon halfway through the stop
UNSEAL_OFFICES = ("CNAKL", "KZDOS", "BYBQT", "PLMAA")  # intermediate borders where customs may open a container
# UIC owner-country codes of the wagons on each gauge: China; Kazakhstan, Russia, Belarus; Poland, Germany.
WAGON_COUNTRIES: tuple[tuple[str, ...], ...] = (("33",), ("68", "20", "21"), ("51", "80"))
CONTAINER_OWNERS = ("CSQ", "CQT", "TGH", "KZT", "UTL", "PLK", "DBR", "XIN")  # made up, in ISO 6346 shape
CIM_STATIONS = ("7080", "3521", "4417", "6205")  # station codes in the CIM notes of Chongqing departures (made up)


# -- what the journeys are made of ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    locode: str | None
    lat: float
    lon: float

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"locode": self.locode} if self.locode else {}
        return out | {"lat": self.lat, "lon": self.lon}


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """One lock event exactly as the gateway sends it (``SealEventIn`` in node/inputs.py)."""

    event_id: UUID
    lock_id: str
    seal_id: str
    container: str
    seq: int
    type: SealEventType
    device_time: datetime
    location: Location
    wagon: str
    condition: SealConditionCode
    battery_percent: int
    sealing_party: SealingPartyCode | None = None
    authorization_id: UUID | None = None
    consignment_refs: tuple[tuple[str, str], ...] = ()  # (type, id)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": str(self.event_id),
            "lock_id": self.lock_id,
            "seal_id": self.seal_id,
            "container": self.container,
            "seq": self.seq,
            "type": self.type.value,
            "device_time": rfc3339(self.device_time),
            "location": self.location.as_json(),
            "wagon": self.wagon,
            "condition": self.condition.value,
            "seal_type": "2",  # electronic: the smart lock itself
        }
        if self.sealing_party is not None:
            out["sealing_party"] = self.sealing_party.value
        if self.authorization_id is not None:
            out["authorization_id"] = str(self.authorization_id)
        if self.consignment_refs:
            out["consignment_refs"] = [{"type": t, "id": i} for t, i in self.consignment_refs]
        out["battery_percent"] = self.battery_percent
        return out


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the gateway sends at ``send_at`` (device time): one live event, or a lock's stored events."""

    send_at: datetime
    events: tuple[GatewayEvent, ...]
    backfill: bool = False

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/seal-events``: the event, or ``{"events": [...]}`` for a back-fill."""
        if self.backfill:
            return {"events": [e.as_json() for e in self.events]}
        (event,) = self.events
        return event.as_json()


@dataclass(frozen=True, slots=True)
class UnsealRequest:
    """An officer's request to open a lock at ``office``, as ``POST /v1/unseal-authorizations`` takes it.

    ``request_id`` is what the generated ``unsealed`` event (``event_id``)
    cites until `cite_authorizations` puts the node's authorisation ID there.
    """

    request_id: UUID
    event_id: UUID
    office: str
    lock_id: str
    seal_id: str
    container: str
    valid_from: datetime
    valid_to: datetime
    officer: str
    remarks: str

    def as_json(self) -> dict[str, Any]:
        return {
            "lock_id": self.lock_id,
            "seal_id": self.seal_id,
            "container": self.container,
            "valid_from": rfc3339(self.valid_from),
            "valid_to": rfc3339(self.valid_to),
            "officer": self.officer,
            "remarks": self.remarks,
        }


@dataclass(frozen=True, slots=True)
class Journey:
    """One container's trip: its lock's events in sequence order and the gateway's deliveries in send order."""

    index: int
    train: str
    container: str
    lock_id: str
    consignment: tuple[str, str]  # (type, id) of its CIM consignment note
    events: tuple[GatewayEvent, ...]
    deliveries: tuple[Delivery, ...]
    unseal_requests: tuple[UnsealRequest, ...] = ()

    def itinerary(self) -> dict[str, Any]:
        """The JSON of ``POST /v1/itineraries`` for this container's consignment."""
        kind, ident = self.consignment
        return {"consignment": {"type": kind, "id": ident}, "offices": list(OFFICES), "containers": [self.container]}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(body: Any) -> bytes:
    """The one JSON encoding of what the simulator sends: compact, in the models' field order."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# -- the journey generator --------------------------------------------------------


def journeys(
    seed: int,
    containers: int,
    *,
    start: datetime,
    report_every: timedelta = timedelta(minutes=30),
    train_size: int = 41,
    train_interval: timedelta = timedelta(hours=3),
    gap_rate: float = 0.5,
    tamper_rate: float = 0.02,
    unseal_rate: float = 0.05,
    lock_prefix: str = "LK-CQ-",
    time_scale: float = 1.0,
    tampered: Mapping[int, str] | None = None,
    unsealed: Mapping[int, str] | None = None,
) -> list[Journey]:
    """``containers`` journeys of trains leaving Chongqing from ``start`` on; the same arguments, the same bytes.

    ``gap_rate`` is the chance that a train crosses a radio dead zone on each
    long leg; ``tamper_rate`` and ``unseal_rate`` the chance per container
    of a tamper report and of an authorised opening at an intermediate border.

    ``time_scale`` compresses the timetable (running and dwell times, the
    interval between trains) for a time-lapse: ``1/15`` plays the fortnight
    from Chongqing to Duisburg in about a day. The locks keep their
    ``report_every``. ``tampered`` (container index → the stop the train is
    running to when the lock is tampered with, e.g. ``"CNAKL"``) and
    ``unsealed`` (container index → office in `UNSEAL_OFFICES`) script what a
    demo or a test wants to happen, on top of the random rates; a
    container's identifiers do not depend on either.
    """
    if start.tzinfo is None:
        raise ValueError("start needs a time zone, e.g. 2026-11-22T00:00:00Z")
    if containers < 0 or train_size < 1:
        raise ValueError("containers must be 0 or more and train_size at least 1")
    if report_every < timedelta(seconds=10):
        raise ValueError("report_every must be at least 10 seconds")
    for name, rate in (("gap_rate", gap_rate), ("tamper_rate", tamper_rate), ("unseal_rate", unseal_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    if not 0.0 < time_scale <= 1.0:
        raise ValueError("time_scale must be above 0 and at most 1 (1: the real timetable)")
    unsealed, tampered = dict(unsealed or {}), dict(tampered or {})
    for stop in tampered.values():
        if stop not in OFFICES[1:]:
            raise ValueError(f"a lock is tampered with on the run to a stop ({', '.join(OFFICES[1:])}), not {stop!r}")
    for office in unsealed.values():
        if office not in UNSEAL_OFFICES:
            raise ValueError(f"a container is opened only at an intermediate border ({', '.join(UNSEAL_OFFICES)}), "
                             f"not {office!r}")
    start = start.astimezone(timezone.utc).replace(microsecond=0)
    key = f"{seed}/{rfc3339(start)}"
    trains: dict[int, _Train] = {}
    out = []
    for index in range(containers):
        number = index // train_size
        if number not in trains:
            departs = start + train_interval * time_scale * number
            trains[number] = _Train.plan(key, number, departs, report_every, gap_rate, time_scale)
        script = _Script(tampered.get(index), unsealed.get(index))
        plan = _ContainerPlan(key, index, trains[number], report_every, tamper_rate, unseal_rate, lock_prefix, script)
        out.append(plan.journey())
    return out


def cite_authorizations(journeys: Iterable[Journey], authorizations: Mapping[UUID, UUID]) -> list[Journey]:
    """The journeys with each ``unsealed`` event citing the node's authorisation for its request.

    ``authorizations`` maps `UnsealRequest.request_id` to the
    ``authorization_id`` the node answered; requests not in it stay as they are.
    """
    out = []
    for journey in journeys:
        granted = [r for r in journey.unseal_requests if r.request_id in authorizations]
        swap = {r.event_id: authorizations[r.request_id] for r in granted}
        if not swap:
            out.append(journey)
            continue
        events = tuple(_cited(e, swap) for e in journey.events)
        deliveries = tuple(replace(d, events=tuple(_cited(e, swap) for e in d.events)) for d in journey.deliveries)
        out.append(replace(journey, events=events, deliveries=deliveries))
    return out


def _cited(event: GatewayEvent, swap: Mapping[UUID, UUID]) -> GatewayEvent:
    if event.event_id in swap:
        return replace(event, authorization_id=swap[event.event_id])
    return event


@dataclass(frozen=True, slots=True)
class _Stop:
    place: Place
    arrive: datetime
    depart: datetime


@dataclass(frozen=True, slots=True)
class _Run:
    """A train on its way between two stops, along a polyline of waypoints."""

    start: datetime
    end: datetime
    points: tuple[tuple[float, float], ...]
    lengths: tuple[float, ...]  # cumulative, in rough kilometres

    @classmethod
    def of(cls, start: datetime, end: datetime, points: Sequence[tuple[float, float]]) -> _Run:
        lengths = [0.0]
        for (la1, lo1), (la2, lo2) in zip(points, points[1:]):
            dx = (lo2 - lo1) * math.cos(math.radians((la1 + la2) / 2))
            lengths.append(lengths[-1] + 111.2 * math.hypot(la2 - la1, dx))
        return cls(start, end, tuple(points), tuple(lengths))

    def position(self, moment: datetime) -> tuple[float, float]:
        fraction = (moment - self.start) / (self.end - self.start)
        target = min(max(fraction, 0.0), 1.0) * self.lengths[-1]
        for i in range(1, len(self.points)):
            if target <= self.lengths[i] or i == len(self.points) - 1:
                span = self.lengths[i] - self.lengths[i - 1]
                part = (target - self.lengths[i - 1]) / span if span else 0.0
                (la1, lo1), (la2, lo2) = self.points[i - 1], self.points[i]
                return la1 + (la2 - la1) * part, lo1 + (lo2 - lo1) * part
        return self.points[-1]


@dataclass(frozen=True, slots=True)
class _Train:
    """One train's timetable, shared by its containers: stops, runs, radio gaps, wagon countries."""

    name: str
    stops: tuple[_Stop, ...]  # the origin first; its arrival is when loading begins
    runs: tuple[_Run, ...]
    gaps: tuple[tuple[datetime, datetime], ...]
    transships: tuple[datetime, ...]  # when the container changes wagon, in order
    wagon_countries: tuple[str, ...]
    scale: float = 1.0  # the time-lapse of `journeys`

    @classmethod
    def plan(
        cls, key: str, number: int, departs: datetime, report_every: timedelta, gap_rate: float, scale: float = 1.0
    ) -> _Train:
        rng = random.Random(f"{key}/train/{number}")
        loading = timedelta(hours=rng.uniform(*DWELL_HOURS[ORIGIN.locode]) * scale)
        stops = [_Stop(ORIGIN, departs - loading, departs)]
        runs: list[_Run] = []
        gaps: list[tuple[datetime, datetime]] = []
        here, now = ORIGIN, departs
        for leg in CORRIDOR:
            arrive = now + timedelta(hours=rng.uniform(*leg.hours) * scale)
            run = _Run.of(now, arrive, [(here.lat, here.lon), *leg.via, (leg.to.lat, leg.to.lon)])
            runs.append(run)
            margin = timedelta(hours=scale)
            if rng.random() < gap_rate and arrive - now >= LONG_RUN * scale:
                length = report_every * rng.uniform(2.5, 10.0)
                room = (arrive - now) - length - 2 * margin
                if room > timedelta(0):
                    begin = now + margin + room * rng.random()
                    gaps.append((_second(begin), _second(begin + length)))
            dwell = timedelta(hours=rng.uniform(*DWELL_HOURS[leg.to.locode]) * scale)
            stops.append(_Stop(leg.to, arrive, arrive + dwell))
            here, now = leg.to, arrive + dwell
        transships = tuple(s.arrive + (s.depart - s.arrive) / 2 for s in stops if s.place.locode in TRANSSHIPMENTS)
        countries = tuple(rng.choice(options) for options in WAGON_COUNTRIES)
        return cls(f"X{8001 + number}", tuple(stops), tuple(runs), tuple(gaps), transships, countries, scale)

    def where(self, moment: datetime) -> tuple[str | None, float, float]:
        """(UN/LOCODE if standing at a stop, latitude, longitude) of the train at ``moment``."""
        # Stops and runs alternate, each starting where the one before ends: stop, run, stop, ... stop.
        i = bisect_right(self.stops, moment, key=lambda s: s.arrive) - 1
        stop = self.stops[max(i, 0)]
        if moment <= stop.depart or i == len(self.runs) or i < 0:
            return stop.place.locode, stop.place.lat, stop.place.lon
        return None, *self.runs[i].position(moment)

    def segment(self, moment: datetime) -> int:
        return sum(1 for t in self.transships if moment >= t)

    def in_gap(self, moment: datetime) -> bool:
        return any(begin <= moment <= end for begin, end in self.gaps)


@dataclass(frozen=True, slots=True)
class _Script:
    """What a caller of `journeys` wants to happen to one container, whatever the dice say."""

    tamper_before: str | None = None  # the stop the train runs to when the lock is tampered with
    unseal_at: str | None = None  # an office in UNSEAL_OFFICES


@dataclass(slots=True)
class _Happening:
    """An event planned in device time, before sequence numbers are given."""

    at: datetime
    type: SealEventType
    order: int = 0  # ties: sealed before the reports of the same second


class _ContainerPlan:
    """One container on its train: identifiers, the lock's happenings, then events and deliveries."""

    def __init__(
        self, key: str, index: int, train: _Train, report_every: timedelta, tamper_rate: float, unseal_rate: float,
        lock_prefix: str, script: _Script = _Script(),
    ) -> None:
        self.key = f"{key}/{index}"
        self.index = index
        self.train = train
        self.report_every = report_every
        rng = random.Random(self.key)
        self.rng = rng
        owner = rng.choice(CONTAINER_OWNERS)
        body = f"{owner}U{rng.randrange(1_000_000):06d}"
        self.container = body + str(iso6346_check_digit(body))
        self.lock_id = f"{lock_prefix}{rng.randrange(10**10):010d}"
        self.seal_ids = (f"ES-{rng.randrange(10**10):010d}", f"ES-{rng.randrange(10**10):010d}")
        number = f"{rng.randrange(100_000):05d}"
        self.cim = f"33-{rng.choice(CIM_STATIONS)}-{number}{luhn_check_digit(number)}"
        self.wagons = tuple(self._wagon(country) for country in train.wagon_countries)
        self.battery = rng.uniform(55.0, 100.0)
        self.drain = rng.uniform(0.05, 0.2) / train.scale  # percent per hour (of the time-lapse)
        origin = train.stops[0]
        self.sealed_at = _second(origin.arrive + (origin.depart - origin.arrive) * rng.uniform(0.05, 0.6))
        self.end = _second(train.stops[-1].depart)
        self.tamper = rng.random() < tamper_rate or script.tamper_before is not None
        self.unseal = rng.random() < unseal_rate or script.unseal_at is not None
        self.tamper_at = self._tamper_time(script.tamper_before) if self.tamper else None
        self.unseal_stop = self._unseal_stop(script.unseal_at) if self.unseal else None

    def _wagon(self, country: str) -> str:
        body = f"31{country}{self.rng.randrange(10**7):07d}"
        return body + str(luhn_check_digit(body))

    def _tamper_time(self, scripted: str | None) -> datetime:
        run = self.rng.choice([r for r in self.train.runs if r.end - r.start >= LONG_RUN * self.train.scale])
        if scripted is not None:  # the runs follow CORRIDOR's legs
            run = self.train.runs[next(i for i, leg in enumerate(CORRIDOR) if leg.to.locode == scripted)]
        return _second(run.start + (run.end - run.start) * self.rng.uniform(0.1, 0.9))

    def _unseal_stop(self, scripted: str | None) -> tuple[_Stop, datetime, datetime]:
        office = self.rng.choice(UNSEAL_OFFICES)
        office = scripted or office  # the die is cast either way: the rest of the plan does not depend on a script
        stop = next(s for s in self.train.stops if s.place.locode == office)
        dwell = stop.depart - stop.arrive
        opened = _second(stop.arrive + dwell * self.rng.uniform(0.2, 0.4))
        resealed = _second(stop.arrive + dwell * self.rng.uniform(0.5, 0.8))
        return stop, opened, resealed

    def _happenings(self) -> list[_Happening]:
        plan = [_Happening(self.sealed_at, SealEventType.SEALED, -1)]
        jitter = self.report_every.total_seconds() * 0.05
        moment = self.sealed_at + self.report_every * self.rng.uniform(0.2, 1.0)
        while moment <= self.end:
            shaken = moment + timedelta(seconds=self.rng.uniform(-jitter, jitter))
            plan.append(_Happening(_second(min(shaken, self.end)), SealEventType.POSITION))
            moment += self.report_every
        for stop in self.train.stops[1:]:  # the lock's geofence: a report on arriving at each stop
            arrive = stop.arrive + (stop.depart - stop.arrive) * self.rng.uniform(0.001, 0.02)
            plan.append(_Happening(_second(arrive), SealEventType.POSITION))
        if self.tamper_at is not None:
            plan.append(_Happening(self.tamper_at, SealEventType.TAMPER))
        if self.unseal_stop is not None:
            _, opened, resealed = self.unseal_stop
            plan.append(_Happening(opened, SealEventType.UNSEALED))
            plan.append(_Happening(resealed, SealEventType.SEALED))
        low_hours = (self.battery - LOW_BATTERY) / self.drain
        low_at = self.sealed_at + timedelta(hours=low_hours)
        if self.battery > LOW_BATTERY and low_at < self.end:
            plan.append(_Happening(_second(low_at) + timedelta(seconds=1), SealEventType.BATTERY_LOW))
        plan.sort(key=lambda h: (h.at, h.order))
        for before, after in zip(plan, plan[1:]):  # a lock stamps its events apart, in the order it logs them
            if after.at <= before.at:
                after.at = before.at + timedelta(seconds=1)
        return plan

    def journey(self) -> Journey:
        events: list[GatewayEvent] = []
        requests: list[UnsealRequest] = []
        seal, condition = self.seal_ids[0], SealConditionCode.IN_RIGHT_CONDITION
        refs = (("CIM", self.cim),)
        for seq, happening in enumerate(self._happenings(), start=1):
            at = happening.at
            event_id = uuid5(NAMESPACE, f"{self.key}/{seq}")
            locode, lat, lon = self.train.where(at)
            if locode is None:  # a GPS fix wanders a little around the track
                lat += self.rng.uniform(-0.002, 0.002)
                lon += self.rng.uniform(-0.002, 0.002)
            hours = (at - self.sealed_at).total_seconds() / 3600
            battery = max(0, min(100, math.floor(self.battery - self.drain * hours)))
            party: SealingPartyCode | None = None
            authorization: UUID | None = None
            carried: tuple[tuple[str, str], ...] = ()
            if happening.type is SealEventType.TAMPER:
                condition = SealConditionCode.BROKEN
            elif happening.type is SealEventType.UNSEALED:
                assert self.unseal_stop is not None
                stop, _, _ = self.unseal_stop
                authorization = uuid5(NAMESPACE, f"{self.key}/unseal/{seq}")
                requests.append(
                    UnsealRequest(
                        request_id=authorization,
                        event_id=event_id,
                        office=stop.place.locode,
                        lock_id=self.lock_id,
                        seal_id=seal,
                        container=self.container,
                        valid_from=at - timedelta(hours=2),
                        valid_to=at + timedelta(hours=4),
                        officer=f"OFF-{stop.place.locode}-{self.rng.randrange(1, 100):02d}",
                        remarks=f"Physical inspection at {stop.place.name}; customs re-seal after",
                    )
                )
            elif happening.type is SealEventType.SEALED:
                if seq > 1:  # the customs re-seal after an authorised opening: a new seal, a sound one
                    seal, condition = self.seal_ids[1], SealConditionCode.IN_RIGHT_CONDITION
                party, carried = SealingPartyCode.CUSTOMS, refs
            events.append(
                GatewayEvent(
                    event_id=event_id,
                    lock_id=self.lock_id,
                    seal_id=seal,
                    container=self.container,
                    seq=seq,
                    type=happening.type,
                    device_time=at,
                    location=Location(locode, round(lat, 5), round(lon, 5)),
                    wagon=self.wagons[self.train.segment(at)],
                    condition=condition,
                    battery_percent=battery,
                    sealing_party=party,
                    authorization_id=authorization,
                    consignment_refs=carried,
                )
            )
        return Journey(
            index=self.index,
            train=self.train.name,
            container=self.container,
            lock_id=self.lock_id,
            consignment=refs[0],
            events=tuple(events),
            deliveries=self._deliveries(events),
            unseal_requests=tuple(requests),
        )

    def _deliveries(self, events: Sequence[GatewayEvent]) -> tuple[Delivery, ...]:
        out: list[Delivery] = []
        stored: list[GatewayEvent] = []
        for event in events:
            if self.train.in_gap(event.device_time):
                stored.append(event)
                continue
            out.append(Delivery(event.device_time, (event,)))
            if stored:  # the radio is back: the live event first, then the lock's log since the gap began
                out.append(Delivery(event.device_time, tuple(stored), backfill=True))
                stored = []
        if stored:  # not reached: gaps end an hour before the next stop; kept so nothing is ever dropped
            out.append(Delivery(stored[-1].device_time, tuple(stored), backfill=True))
        return tuple(out)


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


# -- transports ---------------------------------------------------------------------


class DeliveryError(Exception):
    """The run cannot go on (the node or broker is unreachable, or refuses the gateway); one sentence.

    `play` sets ``tally`` to what was counted before it stopped.
    """

    tally: Tally | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of one delivery: events by status, problem codes of the rejected, events sent again."""

    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    published: int = 0  # MQTT: the broker has it; what the node made of it is not known here
    retried: int = 0
    problems: tuple[str, ...] = ()


class Gateway(Protocol):
    """A transport: sends one delivery and says what came of it; raises `DeliveryError` to stop the run."""

    async def send(self, delivery: Delivery) -> Outcome: ...


Sleep = Callable[[float], Awaitable[None]]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), if it has one."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class HttpGateway:
    """A gateway posting to ``POST {url}/v1/seal-events`` with its bearer credential.

    Use as ``async with HttpGateway(url, credential) as gateway``. Transient
    failures (429, 503 and other 5xx, refused or dropped connections, batch
    items answered ``unavailable``) are tried again, after ``Retry-After``
    when the node gives one (at most ``max_wait`` seconds) and with
    exponential backoff otherwise, up to ``max_attempts`` sends per event.
    """

    def __init__(
        self,
        url: str,
        credential: str,
        *,
        batch_limit: int = 500,
        max_attempts: int = 8,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        timeout: float = 60.0,
        connections: int = 16,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/seal-events"
        self._headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
        self._batch_limit = batch_limit
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_wait = max_wait
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._connections)
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery: Delivery) -> Outcome:
        if not delivery.backfill:
            return await self._send_one(delivery.events[0])
        outcomes = []
        for i in range(0, len(delivery.events), self._batch_limit):
            outcomes.append(await self._send_batch(delivery.events[i : i + self._batch_limit]))
        return _sum(outcomes)

    async def _send_one(self, event: GatewayEvent) -> Outcome:
        status, answer, retries = await self._post(encode(event.as_json()))
        if status in (200, 201) and isinstance(answer, dict):
            return _count([answer.get("status", "accepted" if status == 201 else "duplicate")], [], retries)
        return _count(["rejected"], [self._refused(status, answer)], retries)

    async def _send_batch(self, events: Sequence[GatewayEvent]) -> Outcome:
        statuses: list[str] = []
        problems: list[str] = []
        retried = 0
        pending = list(events)
        for attempt in range(1, self._max_attempts + 1):
            status, answer, retries = await self._post(encode({"events": [e.as_json() for e in pending]}))
            retried += retries * len(pending)
            if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
                code = self._refused(status, answer)
                return _count([*statuses, *["rejected"] * len(pending)], [*problems, *[code] * len(pending)], retried)
            again = []
            for event, result in zip(pending, answer["results"], strict=True):
                problem = result.get("problem") or {}
                if result.get("status") == "rejected" and problem.get("code") == "unavailable":
                    again.append(event)  # the node could not sign it just now: send it again
                    continue
                statuses.append(result.get("status", "rejected"))
                if result.get("status") == "rejected":
                    problems.append(problem.get("code", "unknown"))
            if not again:
                return _count(statuses, problems, retried)
            if attempt == self._max_attempts:
                raise DeliveryError(
                    f"the node at {self.endpoint} kept answering 'unavailable' for {len(again)} events "
                    f"after {attempt} attempts; is its signing key usable (mrx keys list)?"
                )
            pending = again
            retried += len(again)
            await self._sleep(self._delay(attempt, None))
        raise AssertionError("unreachable")

    def _refused(self, status: int, answer: Any) -> str:
        """The problem code of a refused request; raises if every request would be refused too."""
        code = answer.get("code") if isinstance(answer, dict) else None
        detail = answer.get("detail", "") if isinstance(answer, dict) else ""
        if status == 401 or code in ("unauthenticated", "forbidden"):
            raise DeliveryError(
                f"the node at {self.endpoint} refused the gateway credential ({code or status}): {detail}"
            )
        return code or f"http-{status}"

    async def _post(self, body: bytes) -> tuple[int, Any, int]:
        """POST until the answer is not a transient failure: (status, JSON answer, sends beyond the first)."""
        assert self._session is not None, "use the gateway as an async context manager"
        for attempt in range(1, self._max_attempts + 1):
            hint: float | None = None
            try:
                async with self._session.post(self.endpoint, data=body, headers=self._headers) as response:
                    raw = await response.read()
                    if response.status < 500 and response.status != 429:
                        return response.status, _json(raw), attempt - 1
                    reason = f"HTTP {response.status}"
                    hint = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt == self._max_attempts:
                raise DeliveryError(
                    f"the node at {self.endpoint} did not take the events after {attempt} attempts ({reason}); "
                    "is it running and reachable?"
                )
            await self._sleep(self._delay(attempt, hint))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self._max_wait)
        return min(self._backoff * 2 ** (attempt - 1), self._max_wait) * random.uniform(0.8, 1.2)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _count(statuses: Iterable[str], problems: Iterable[str], retried: int) -> Outcome:
    by = Counter(statuses)
    return Outcome(
        accepted=by["accepted"], duplicate=by["duplicate"], rejected=by["rejected"], published=by["published"],
        retried=retried, problems=tuple(problems),
    )


def _sum(outcomes: Iterable[Outcome]) -> Outcome:
    total = Outcome()
    for o in outcomes:
        total = Outcome(
            total.accepted + o.accepted, total.duplicate + o.duplicate, total.rejected + o.rejected,
            total.published + o.published, total.retried + o.retried, total.problems + o.problems,
        )
    return total


def events_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}/gateways/{gateway_id}/events"


class MqttGateway:
    """A gateway publishing each event, QoS 1, on ``<prefix>/gateways/<gateway_id>/events``.

    Use as ``async with MqttGateway(host, port, gateway_id) as gateway``.
    ``send`` returns once the broker has acknowledged (PUBACK) every event
    of the delivery. The client ID is fixed (default
    ``mrx-simulate-<gateway_id>``) and the session persistent, so across a
    reconnect paho and the broker resend what was not acknowledged; events
    published while disconnected are queued and counted as retried.
    """

    def __init__(
        self,
        host: str,
        port: int,
        gateway_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        topic_prefix: str = "mrx",
        client_id: str | None = None,
        keepalive: int = 30,
        ack_timeout: float = 60.0,
        connect_attempts: int = 5,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.topic = events_topic(topic_prefix, gateway_id)
        self._host, self._port, self._keepalive = host, port, keepalive
        self._ack_timeout = ack_timeout
        self._connect_attempts = connect_attempts
        self._sleep = sleep
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"mrx-simulate-{gateway_id}",
            clean_session=False,
            protocol=MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._acked_early: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Future[Any] | None = None

    # paho calls these on its network thread.
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        future, loop = self._connected, self._loop
        if future is not None and loop is not None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(reason))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            future = self._waiting.pop(mid, None)
            if future is None:
                self._acked_early.add(mid)
        if future is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._connected = self._loop.create_future()
        where = f"{self._host}:{self._port}"
        for attempt in range(1, self._connect_attempts + 1):
            try:
                await asyncio.to_thread(self._client.connect, self._host, self._port, self._keepalive)
                break
            except OSError as exc:
                if attempt == self._connect_attempts:
                    raise DeliveryError(
                        f"cannot connect to the MQTT broker at {where} ({exc.strerror or exc}); is it running?"
                    ) from None
                await self._sleep(min(0.5 * 2 ** (attempt - 1), 10.0))
        self._client.loop_start()
        try:
            reason = await asyncio.wait_for(self._connected, self._ack_timeout)
        except asyncio.TimeoutError:
            await self._stop()
            raise DeliveryError(f"the MQTT broker at {where} did not answer the connection") from None
        if reason.is_failure:
            await self._stop()
            raise DeliveryError(f"the MQTT broker at {where} refused the connection: {reason}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def send(self, delivery: Delivery) -> Outcome:
        assert self._loop is not None, "use the gateway as an async context manager"
        published = retried = 0
        for event in delivery.events:
            future: asyncio.Future[None] = self._loop.create_future()
            info = self._client.publish(self.topic, encode(event.as_json()), qos=1)
            if info.rc == MQTT_ERR_NO_CONN:
                retried += 1  # queued by paho; sent when the connection is back
            elif info.rc != MQTT_ERR_SUCCESS:
                raise DeliveryError(f"could not publish to {self.topic}: paho error {info.rc}")
            with self._lock:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                    future.set_result(None)
                else:
                    self._waiting[info.mid] = future
            try:
                await asyncio.wait_for(future, self._ack_timeout)
            except asyncio.TimeoutError:
                raise DeliveryError(
                    f"the MQTT broker at {self._host}:{self._port} did not acknowledge an event on {self.topic} "
                    f"within {self._ack_timeout:g} s"
                ) from None
            published += 1
        return Outcome(published=published, retried=retried)


# -- the runner -------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """The running count of a play: events handed to the transport and what came of them."""

    sent: int = 0
    deliveries: int = 0
    backfills: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    published: int = 0
    retried: int = 0
    problems: Counter[str] = field(default_factory=Counter)

    def add(self, delivery: Delivery, outcome: Outcome) -> None:
        self.sent += len(delivery.events)
        self.deliveries += 1
        self.backfills += delivery.backfill
        self.accepted += outcome.accepted
        self.duplicate += outcome.duplicate
        self.rejected += outcome.rejected
        self.published += outcome.published
        self.retried += outcome.retried
        self.problems.update(outcome.problems)

    def summary(self) -> str:
        line = (
            f"sent {self.sent} events in {self.deliveries} deliveries ({self.backfills} back-fill batches): "
            f"{self.accepted} accepted, {self.duplicate} duplicate, {self.rejected} rejected, "
        )
        if self.published:
            line += f"{self.published} published, "
        line += f"{self.retried} retried"
        if self.problems:
            line += "; rejected as: " + ", ".join(f"{code} {n}" for code, n in sorted(self.problems.items()))
        return line


def schedule(journeys: Iterable[Journey]) -> list[tuple[Journey, Delivery]]:
    """Every delivery of every journey in the order a gateway fleet sends them."""
    keyed = [
        ((delivery.send_at, journey.index, n), journey, delivery)
        for journey in journeys
        for n, delivery in enumerate(journey.deliveries)
    ]
    keyed.sort(key=lambda item: item[0])
    return [(journey, delivery) for _, journey, delivery in keyed]


async def play(
    journeys: Sequence[Journey],
    gateway: Gateway,
    *,
    speed: float = 0.0,
    origin: datetime | None = None,
    concurrency: int = 8,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Tally:
    """Send the journeys' deliveries in order through ``gateway``; the tally of what came of them.

    With ``speed`` > 0 a delivery due ``d`` after ``origin`` (default: the
    first delivery) in device time goes out ``d / speed`` seconds after the
    start; with 0, as soon as a slot is free. At most ``concurrency``
    deliveries are in flight, one per lock. A `DeliveryError` stops the run
    after the deliveries in flight and is raised, with the tally so far on
    its ``tally`` attribute.
    """
    if speed < 0 or not math.isfinite(speed):
        raise ValueError("speed must be 0 (as fast as possible) or a positive factor")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    order = schedule(journeys)
    tally = Tally()
    if not order:
        return tally
    origin = origin or order[0][1].send_at
    slots = asyncio.Semaphore(concurrency)
    locks: dict[str, asyncio.Lock] = {}
    failures: list[DeliveryError] = []
    tasks: set[asyncio.Task[None]] = set()

    async def deliver(lock: asyncio.Lock, delivery: Delivery) -> None:
        try:
            async with lock:  # FIFO: a lock's deliveries go out in the order they were dispatched
                if failures:
                    return
                tally.add(delivery, await gateway.send(delivery))
        except DeliveryError as exc:
            failures.append(exc)
        finally:
            slots.release()

    began = clock()
    for journey, delivery in order:
        if speed > 0:
            wait = began + (delivery.send_at - origin).total_seconds() / speed - clock()
            if wait > 0:
                await sleep(wait)
        await slots.acquire()
        if failures:
            slots.release()
            break
        task = asyncio.create_task(deliver(locks.setdefault(journey.lock_id, asyncio.Lock()), delivery))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    if failures:
        failures[0].tally = tally
        raise failures[0]
    return tally


# -- ``mrx simulate`` -------------------------------------------------------------------------


class _UsageError(Exception):
    """A command-line value that cannot work; one sentence."""


def _parse_start(value: str | None) -> datetime:
    if value is None:
        return DEFAULT_START
    if value == "now":
        return datetime.now(timezone.utc).replace(second=0, microsecond=0)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _UsageError(f"--start {value!r} is not an RFC 3339 time (e.g. 2026-11-22T00:00:00Z) or 'now'") from None
    if moment.tzinfo is None:
        raise _UsageError(f"--start {value!r} has no time zone; add 'Z' for UTC")
    return moment


def _read_secret(path: str, what: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise _UsageError(f"cannot read the {what} from {path}: {exc.strerror or exc}") from None
    if not text or "\n" in text:
        raise _UsageError(f"{path} must hold the {what} on one line")
    return text


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _UsageError(f"--mqtt {value!r}: write HOST:PORT, e.g. 127.0.0.1:1883")
    return host.strip("[]"), int(port)


def command(args: argparse.Namespace) -> int:
    """``mrx simulate``: generate the journeys, then write them (``--out``) or play them over HTTP or MQTT."""
    try:
        return _command(args)
    except _UsageError as exc:
        print(f"mrx simulate: {exc}", file=sys.stderr)
        return 2
    except DeliveryError as exc:
        if exc.tally is not None and exc.tally.deliveries:
            print(exc.tally.summary())
        print(f"mrx simulate: {exc}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.containers < 1:
        raise _UsageError("--containers must be at least 1")
    if args.speed < 0 or not math.isfinite(args.speed):
        raise _UsageError("--speed must be 0 (as fast as possible) or a positive factor, e.g. 1 for real time")
    if args.concurrency < 1:
        raise _UsageError("--concurrency must be at least 1")
    start = _parse_start(args.start)
    gateway_id = args.gateway
    credential = _read_secret(args.token_file, "gateway credential") if args.token_file else None
    if gateway_id is None and credential is not None:
        gateway_id = credential.partition(".")[0]  # a credential is "<gateway ID>.<secret>"
    if args.url and not args.url.startswith(("http://", "https://")):
        raise _UsageError(f"--url {args.url!r} is not an http:// or https:// URL, e.g. http://127.0.0.1:8470")
    if args.url and credential is None:
        raise _UsageError("--url needs --token-file: the gateway credential `mrx gateway add` printed")
    if args.mqtt and not gateway_id:
        raise _UsageError("--mqtt needs --gateway ID (or --token-file): it names the topic the events go to")
    mqtt = _host_port(args.mqtt) if args.mqtt else None
    password = _read_secret(args.mqtt_password_file, "MQTT password") if args.mqtt_password_file else None
    if password is not None and args.mqtt_username is None:
        raise _UsageError("--mqtt-password-file needs --mqtt-username")
    planned = journeys(args.seed, args.containers, start=start)
    print(f"mrx simulate: {len(planned)} containers, seed {args.seed}, start {rfc3339(start)}", file=sys.stderr)
    if args.out:
        return _write(planned, Path(args.out))
    gateway: Any
    if args.url:
        assert credential is not None
        gateway = HttpGateway(args.url, credential, connections=args.concurrency)
    else:
        assert mqtt is not None and gateway_id is not None
        gateway = MqttGateway(
            *mqtt, gateway_id, username=args.mqtt_username, password=password, topic_prefix=args.topic_prefix
        )

    async def run() -> Tally:
        async with gateway:
            return await play(planned, gateway, speed=args.speed, origin=start, concurrency=args.concurrency)

    print(asyncio.run(run()).summary())
    return 0


def _write(planned: Sequence[Journey], out: Path) -> int:
    lines = 0
    try:
        with out.open("wb") as f:
            for _, delivery in schedule(planned):
                for event in delivery.events:
                    f.write(encode(event.as_json()) + b"\n")
                    lines += 1
    except OSError as exc:
        raise _UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    batches = sum(d.backfill for j in planned for d in j.deliveries)
    print(f"wrote {lines} events ({batches} back-fill batches) in send order to {out}", file=sys.stderr)
    return 0
