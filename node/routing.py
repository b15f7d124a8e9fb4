"""Routing: which partner nodes get a record, from the consignment's itinerary.

The national system tells its node each consignment's **itinerary**: the
customs offices it will pass, in order (``CNCQI CNAKL KZDOS KZALA``), and
the containers it travels in (``PUT /v1/consignments/{type}/{id}/itinerary``).
Every authority on the corridor gets the transit declaration or pre-arrival
data, so each node can be told the same itinerary by its own national system.

A record is addressed when it is made, and the addressees are signed into its
header (``Recipient``), so routing runs before signing:

- a control result goes to the partners serving the offices of the
  itineraries of its consignment references;
- a seal event goes to the partners for the itineraries of the consignment
  references the lock carries (on sealing) and of every itinerary listing the
  event's container.

``[exchange] route_to`` chooses which offices of an itinerary count:
``downstream`` (the default) — only those after this node's own office, as
mutual recognition looks forward; if this node's office is not on the
itinerary, all of them — or ``itinerary``: every office on it. An office no
partner serves is skipped, and named in the answer to the national system
(`Router.unserved`): the node cannot send to an authority it has no agreement
with.

Fail-safe by design: a record made before its itinerary was registered is
addressed to nobody and never sent later, since its recipients are part of
what was signed. The partner then lacks that record, and a recognition
decision there (which needs the seal's whole chain) refuses to recognise:
the container is inspected, never wrongly released. Register itineraries
before sealing.

Pure: itineraries in, node IDs out. The node loads the stored itineraries at
start and passes each new one to `Router.learn`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mrx.schemas.messages import ConsignmentReference, ControlResult, SealEvent

from .storage import Itinerary

_RefKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PartnerOffices:
    node_id: str
    offices: tuple[str, ...]


class Router:
    def __init__(self, office: str, partners: Sequence[PartnerOffices], *, route_to: str = "downstream") -> None:
        if route_to not in ("downstream", "itinerary"):
            raise ValueError(f"route_to is 'downstream' or 'itinerary', not {route_to!r}")
        self._office = office
        self._route_to = route_to
        self._partner_of = {office: p.node_id for p in partners for office in p.offices}
        self._itineraries: dict[_RefKey, Itinerary] = {}
        self._recipients: dict[_RefKey, tuple[str, ...]] = {}
        self._by_container: dict[str, set[_RefKey]] = {}

    def learn(self, itinerary: Itinerary) -> None:
        """Add or replace the itinerary of one consignment."""
        key = _key(itinerary.ref)
        self._drop(key)
        self._itineraries[key] = itinerary
        self._recipients[key] = self._addressees(itinerary.offices)
        for container in itinerary.containers:
            self._by_container.setdefault(container, set()).add(key)

    def forget_before(self, cutoff: datetime) -> int:
        """Drop itineraries last updated before ``cutoff`` (journeys long over); returns how many."""
        stale = [key for key, it in self._itineraries.items() if it.updated_at < cutoff]
        for key in stale:
            self._drop(key)
        return len(stale)

    def __len__(self) -> int:
        return len(self._itineraries)

    def recipients(self, itinerary_offices: Sequence[str]) -> tuple[str, ...]:
        """The partner nodes that get the records of a consignment with this itinerary."""
        return self._addressees(itinerary_offices)

    def unserved(self, itinerary_offices: Sequence[str]) -> tuple[str, ...]:
        """Offices of the itinerary, other than this node's, that no partner serves."""
        return tuple(o for o in itinerary_offices if o != self._office and o not in self._partner_of)

    def for_control_result(self, result: ControlResult) -> tuple[str, ...]:
        return self._union(_key(ref) for ref in result.consignment_refs)

    def for_seal_event(self, event: SealEvent) -> tuple[str, ...]:
        keys = [_key(ref) for ref in event.consignment_refs]
        keys.extend(sorted(self._by_container.get(event.container, ())))
        return self._union(keys)

    def for_consignments(self, refs: Iterable[ConsignmentReference], containers: Iterable[str] = ()) -> tuple[str, ...]:
        """The partners for records about these consignments and containers (decisions, alarms, authorisations)."""
        keys = [_key(ref) for ref in refs]
        for container in containers:
            keys.extend(sorted(self._by_container.get(container, ())))
        return self._union(keys)

    def itinerary(self, ref: ConsignmentReference) -> Itinerary | None:
        return self._itineraries.get(_key(ref))

    def consignments_of(self, container: str) -> list[ConsignmentReference]:
        """The consignments whose itineraries list ``container``."""
        return [self._itineraries[key].ref for key in sorted(self._by_container.get(container, ()))]

    def _union(self, keys: Iterable[_RefKey]) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for key in keys:
            for node in self._recipients.get(key, ()):
                out[node] = None
        return tuple(out)

    def _addressees(self, offices: Sequence[str]) -> tuple[str, ...]:
        if self._route_to == "downstream" and self._office in offices:
            offices = offices[offices.index(self._office) + 1 :]
        out: dict[str, None] = {}
        for office in offices:
            if office == self._office:
                continue
            node = self._partner_of.get(office)
            if node is not None:
                out[node] = None
        return tuple(out)

    def _drop(self, key: _RefKey) -> None:
        old = self._itineraries.pop(key, None)
        self._recipients.pop(key, None)
        if old is not None:
            for container in old.containers:
                keys = self._by_container.get(container)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._by_container[container]


def _key(ref: ConsignmentReference) -> _RefKey:
    return (ref.type.value, ref.id)
