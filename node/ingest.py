"""Ingest: outside input in, signed durable records out.

The pipeline for a seal event (the hot path) and for a control result:

1. validate the JSON against the strict edge model (`mrx.node.inputs`);
2. check the caller's scope (a gateway posts only for its own locks);
3. turn it into the domain value, stamp the receipt time, address it to the
   partners its consignment's itinerary names (`mrx.node.routing`), encode it as XML
   (validated against the XSD), sign it (`mrx.node.signing`: in worker
   processes, batched across concurrent requests);
4. hand the batch to the store, which deduplicates, orders and commits it;
5. report one `EventResult` per input event, after the commit.

A batch is all-or-nothing per *event*, not per request: a bad event is
rejected with its own problem and the good ones around it are kept, because a
gateway that uploads a lock's stored log after a radio outage must not lose
a hundred good events to one corrupt one. Steps 1–3 are CPU work on the event
loop, except the signing; step 4 is the only I/O.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError

from mrx.keys.keyring import KeyStoreError
from mrx.schemas.messages import Body, SealEvent
from mrx.schemas.xml import XmlError

from .access import Caller
from .inputs import ControlResultIn, SealEventIn
from .metrics import NodeMetrics
from .problems import FieldError, Problem
from .records import Unsigned
from .routing import Router
from .signing import Signing
from .storage import ControlResultWrite, Order, SealEventOutcome, SealEventWrite, Store, WriteStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventResult:
    """What happened to one submitted event."""

    index: int
    event_id: UUID | None
    status: str  # "accepted" | "duplicate" | "rejected"
    message_id: UUID | None = None
    order: Order | None = None
    problem: Problem | None = None


@dataclass(frozen=True, slots=True)
class ControlResultReceipt:
    control_id: str
    status: str  # "accepted" | "duplicate"
    message_id: UUID


def validate(model: type[BaseModel], data: Any, pointer_prefix: str = "") -> Any:
    """Validate ``data`` into ``model`` or raise a ``validation-failed`` `Problem`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, pointer_prefix) from None


def validation_problem(exc: ValidationError, pointer_prefix: str = "") -> Problem:
    errors = tuple(_field_error(err, pointer_prefix) for err in exc.errors(include_url=False))
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem("validation-failed", f"{first.pointer or '/'}: {first.detail}{more}", errors)


def _field_error(err: Any, prefix: str) -> FieldError:
    pointer = prefix + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in err["loc"])
    kind, message = err["type"], err["msg"]
    if kind == "extra_forbidden":
        detail = "unknown field; remove it (field names are case-sensitive)"
    elif kind == "missing":
        detail = "required field is missing"
    elif kind.endswith("_type") and "strict" not in message:
        detail = f"{message} (JSON types are strict: 1 is not \"1\")"
    else:
        detail = message.removeprefix("Value error, ")
    return FieldError(pointer, detail)


def content_hash(model: BaseModel) -> bytes:
    """A hash of what the sender said, to tell an honest repeat from a conflict."""
    return hashlib.sha256(model.model_dump_json().encode()).digest()


class Ingest:
    def __init__(self, store: Store, signing: Signing, router: Router, office: str, metrics: NodeMetrics) -> None:
        self._store = store
        self._router = router
        self._signing = signing
        self._office = office
        self._metrics = metrics
        # Told of every new record after its commit: (message ID, sender, body); recognition listens.
        self.on_stored: Callable[[list[tuple[UUID, str, Body]]], None] | None = None

    async def seal_events(self, gateway: Caller, items: list[Any], pointer_prefix: str = "") -> list[EventResult]:
        receipt_time = datetime.now(timezone.utc)
        results: list[EventResult | None] = [None] * len(items)
        accepted: list[tuple[int, SealEvent, bytes]] = []
        for index, item in enumerate(items):
            prefix = f"{pointer_prefix}/{index}" if pointer_prefix else ""
            try:
                event_in: SealEventIn = validate(SealEventIn, item, prefix)
                if not gateway.may_use_lock(event_in.lock_id):
                    raise Problem(
                        "lock-out-of-scope",
                        f"gateway {gateway.name!r} may not report for lock {event_in.lock_id!r}; "
                        "ask the node operator to add the lock to the gateway's scope",
                    )
            except Problem as problem:
                results[index] = EventResult(index, _event_id_of(item), "rejected", problem=problem)
                continue
            accepted.append((index, event_in.to_domain(gateway.name, receipt_time), content_hash(event_in)))

        route = self._router.for_seal_event
        signed = await self._signing.sign_all([Unsigned(event, route(event)) for _, event, _ in accepted])
        writes: list[SealEventWrite] = []
        stored: list[int] = []
        for (index, event, digest), outcome in zip(accepted, signed, strict=True):
            if isinstance(outcome, Exception):
                results[index] = EventResult(index, event.event_id, "rejected", problem=_signing_problem(outcome))
            else:
                writes.append(SealEventWrite(outcome, event, digest))
                stored.append(index)
        fresh: list[tuple[UUID, str, Body]] = []
        for index, write, outcome in zip(stored, writes, await self._store.store_seal_events(writes), strict=True):
            results[index] = _event_result(index, outcome)
            if outcome.status is WriteStatus.ACCEPTED:
                fresh.append((write.record.message_id, write.record.sender, write.event))
        if fresh and self.on_stored is not None:
            self.on_stored(fresh)
        done = [r for r in results if r is not None]
        self._count(done)
        return done

    def _count(self, results: list[EventResult]) -> None:
        """Metrics per request, not per event: a batch of 100 is three increments, not 100."""
        accepted = Counter(r.order.value for r in results if r.status == "accepted" and r.order is not None)
        rejected = Counter(r.problem.code for r in results if r.problem is not None)
        for order, n in accepted.items():
            self._metrics.events_accepted.labels(order).inc(n)
        for code, n in rejected.items():
            self._metrics.events_rejected.labels(code).inc(n)
        if duplicates := sum(1 for r in results if r.status == "duplicate"):
            self._metrics.events_duplicate.inc(duplicates)

    async def control_result(self, data: Any) -> ControlResultReceipt:
        result_in: ControlResultIn = validate(ControlResultIn, data)
        result = result_in.to_domain(self._office)
        (signed,) = await self._signing.sign_all([Unsigned(result, self._router.for_control_result(result))])
        if isinstance(signed, Exception):
            raise _signing_problem(signed)
        write = ControlResultWrite(signed, result, content_hash(result_in))
        outcome = await self._store.store_control_result(write)
        self._metrics.control_results.labels(outcome.status.value).inc()
        if outcome.status is WriteStatus.ACCEPTED and self.on_stored is not None:
            self.on_stored([(signed.message_id, signed.sender, result)])
        if outcome.status is WriteStatus.KEY_CONFLICT or outcome.message_id is None:
            raise Problem(
                "control-id-conflict",
                f"control {result.control_id!r} was already received with different content; "
                "send a correction under a new control ID",
            )
        return ControlResultReceipt(result.control_id, outcome.status.value, outcome.message_id)


def _event_result(index: int, outcome: SealEventOutcome) -> EventResult:
    if outcome.status is WriteStatus.ACCEPTED:
        return EventResult(index, outcome.event_id, "accepted", outcome.message_id, outcome.order)
    if outcome.status is WriteStatus.DUPLICATE:
        return EventResult(index, outcome.event_id, "duplicate", outcome.message_id, outcome.order)
    if outcome.status is WriteStatus.KEY_CONFLICT:
        problem = Problem(
            "event-id-conflict",
            f"event {outcome.event_id} was already received with different content; "
            "an event ID names one event: give a new event a new ID",
        )
    else:
        problem = Problem(
            "sequence-conflict",
            f"the lock's sequence number is already used by event {outcome.conflicting_event_id}; "
            "a lock numbers each event once, so check the gateway's event log",
        )
    return EventResult(index, outcome.event_id, "rejected", problem=problem)


def _signing_problem(error: Exception) -> Problem:
    """The problem to answer for a record that could not be signed."""
    if isinstance(error, KeyStoreError):  # e.g. the active key was revoked: fail closed
        return Problem(
            "unavailable", f"this node cannot sign records now ({error}); the operator must make a new key (`mrx keys rotate`)"
        )
    if isinstance(error, XmlError):
        # The edge models are meant to admit only what the XSD admits; should
        # they ever differ, the sender still gets the XSD's reason, not a 500.
        log.warning("input passed the JSON model but not the XSD: %s", error)
        return Problem(str(error.code), error.detail)
    log.error("could not sign a record: %r", error)
    return Problem("unavailable", "the node could not sign this record just now; send it again")


def _event_id_of(item: Any) -> UUID | None:
    """The event ID of a rejected item, if it has a readable one, for the gateway's bookkeeping."""
    if isinstance(item, dict) and isinstance(item.get("event_id"), str):
        try:
            return UUID(item["event_id"])
        except ValueError:
            return None
    return None
