"""Deciding at the border: when to decide, on what evidence, and what becomes of a decision.

The rules are pure (`mrx.node.recognition`, `mrx.node.sealchain`,
`mrx.node.agreements`); this module is their I/O edge.

When
    - **Arrival.** A seal event located at this node's office (its
      ``LocationID`` is the office's UN/LOCODE), from a gateway or a partner,
      is the arrival of its container's consignments: those whose itinerary
      lists the container, and those its lock named on sealing. A ``sealed``
      event is not (sealing at the office is a departure), nor is an event
      of a consignment whose itinerary starts at this office. The national
      system can also notify an arrival (``POST /v1/arrivals``). The first
      arrival of a consignment is stored and stands; decisions are taken as
      of that time.
    - **New evidence after an arrival.** A partner's control result, a seal
      event of an arrived container dated up to the arrival (a back-filled
      gap; what happens after the arrival is not what was decided on), an unseal authorisation, or national targeting: the decision is
      taken again, and a new decision is issued only if what was decided
      changed (its fingerprint: outcome, reasons, evidence, verdict).
    - **On demand** (``POST /v1/consignments/{type}/{id}/decision``).
    - **At start**, for the records stored since the progress recorded
      before the node stopped (`Recognition._recover`): the work a kill
      left undone between a record's commit and its decision or alarm.

    Decisions about one consignment are taken one at a time (a lock per
    consignment), so the latest decision is always the one taken last.

Evidence
    The partners' control results for the consignment are verified again,
    now, in the signing workers (`mrx.node.signing`), against the partners'
    keys as known now: so a revocation that predates the signing voids the
    result, one that postdates it does not. The seal events of every
    container of the consignment (its itinerary, the arrival and the
    inspection), and the unseal authorisations of their locks, are read by
    container and lock — indexed look-ups whose cost does not grow with the
    number of containers in transit.

What becomes of a decision
    A signed ``RecognitionDecisionNotification``, stored and sent to the
    inspecting partner and to the partners of the next offices on the
    itinerary (`mrx.node.routing`), listed for the national system. A BROKEN
    seal chain also raises an alarm (`Alarms`).

Alarms
    A ``tamper`` or ``housing-breach`` event from this node's gateways, and
    an ``opened`` or ``unsealed`` event that the chain finds unauthorised,
    raise a signed ``AlarmNotification``, as does a decision that finds a
    chain BROKEN. Each is sent to the partners of the next offices, listed
    by ``GET /v1/alarms`` and acknowledged by an officer. One alarm per cause:
    the same evidence does not raise a second one. Partners raise alarms
    about their own gateways' events; this node lists theirs as received.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

from mrx.keys.jws import JwsError, parse_compact
from mrx.schemas import codec
from mrx.schemas.codes import AlarmType, SealChainVerdict, SealEventType
from mrx.schemas.messages import (
    MESSAGE_TYPES,
    Alarm,
    Body,
    ConsignmentReference,
    ControlResult,
    DecisionReasonEntry,
    RecognitionDecision,
    SealEvent,
    UnsealAuthorization,
)
from mrx.schemas.xml import XmlError

from .agreements import Agreement, Inspection, agreement
from .config import NodeConfig
from .metrics import NodeMetrics
from .partners import Partners
from .problems import Problem
from .recognition import Case, Decision, decide
from .records import Refusal, Unsigned, xml_text
from .routing import Router
from .sealchain import ChainFinding, ChainRules, ChainVerdict, Finding, evaluate
from .signing import Signing
from .storage import Arrival, SignedRecord, Store, Targeting

log = logging.getLogger(__name__)

_BREACHES = {SealEventType.TAMPER, SealEventType.HOUSING_BREACH}
_OPENINGS = {SealEventType.OPENED, SealEventType.UNSEALED}
_RefKey = tuple[str, str]
# Records that can call for work (`Recognition.observe`), and what is done again at start (`Recognition._recover`).
_TRIGGERS = tuple(MESSAGE_TYPES[t] for t in (SealEvent, ControlResult, UnsealAuthorization))
SETTLE_MARGIN = timedelta(seconds=10)  # more than a commit takes to reach `observe`
RECOVERY_WINDOW = timedelta(minutes=10)  # a database without recorded progress (mrx before 0006)


def agreements_of(config: NodeConfig) -> dict[str, Agreement]:
    """The configured agreements as policies, by partner."""
    return {
        terms.partner: agreement(
            terms.id,
            terms.partner,
            control_types=terms.control_types,
            result_codes=terms.result_codes,
            excluded_hs_prefixes=terms.excluded_hs_prefixes,
            max_age=timedelta(hours=terms.max_age_hours) if terms.max_age_hours is not None else None,
            require_intact_chain=terms.require_intact_chain,
            unseal_offices=terms.unseal_offices,
        )
        for terms in config.agreements
    }


def rules_of(config: NodeConfig) -> ChainRules:
    settings = config.recognition
    return ChainRules(
        reporting_period=timedelta(minutes=settings.reporting_period_minutes),
        clock_tolerance=timedelta(seconds=settings.clock_tolerance_seconds),
    )


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision taken: the rules' result, the signed record, and whether it was new."""

    decision: Decision
    body: RecognitionDecision
    record: SignedRecord
    issued: bool  # False: the same as the latest decision, so none was issued


class Recognition:
    def __init__(
        self,
        *,
        node_id: str,
        office: str,
        store: Store,
        signing: Signing,
        router: Router,
        partners: Partners,
        agreements: Mapping[str, Agreement],
        rules: ChainRules,
        metrics: NodeMetrics,
        max_xml_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.node_id = node_id
        self.office = office
        self._store = store
        self._signing = signing
        self._router = router
        self._partners = partners
        self._agreements = agreements
        self._rules = rules
        self._metrics = metrics
        self._max_xml_bytes = max_xml_bytes
        self._clock = clock
        self._locks: dict[_RefKey, tuple[asyncio.Lock, int]] = {}  # one decision at a time; with its users
        self._tasks: dict[asyncio.Task[None], datetime] = {}  # work in flight -> when its records were observed
        self._pending: set[_RefKey] = set()  # re-decisions queued, not started: coalesced
        self._arrived: dict[str, datetime] = {}  # container -> its latest arrival here
        # Offices whose unseal authorisations count when this node judges its own gateways' openings.
        self._unseal_offices = frozenset({office}).union(*(a.unseal_offices for a in agreements.values()))

    # -- triggers ---------------------------------------------------------------------------------------------

    async def start(self, since: datetime) -> None:
        """Load the containers that arrived since ``since``: evidence about them triggers a re-decision.
        Then, in the background, finish what the node may have left undone when it last stopped."""
        self._arrived.update(await self._store.arrived_containers(since))
        settled = await self._store.settled_before()
        if settled is None:
            latest = await self._store.latest_stored_at()
            settled = latest - RECOVERY_WINDOW if latest is not None else self._clock()
        self._spawn(self._recover(settled), observed=settled)

    def settled_before(self) -> datetime:
        """Every record stored before this time has had its work done: the work in flight holds it back."""
        return min(self._tasks.values(), default=self._clock()) - SETTLE_MARGIN

    async def save_progress(self) -> None:
        """Record `settled_before` (a job, every few seconds, and at stop)."""
        await self._store.save_settled_before(self.settled_before())

    def forget_before(self, cutoff: datetime) -> None:
        for container in [c for c, at in self._arrived.items() if at < cutoff]:
            del self._arrived[container]

    def observe(self, records: Iterable[tuple[UUID, str, Body]]) -> None:
        """New records were committed: (message ID, sender, body). Called by ingest (this node's gateways
        and national system) and by the receiver (partners), so it only looks, in memory, and spawns work
        when some is due: an arrival, an alarm, or evidence about a container that has arrived."""
        for work in self._due(records):
            self._spawn(work)

    def _due(self, records: Iterable[tuple[UUID, str, Body]]) -> list[Coroutine[Any, Any, None]]:
        """The work that these committed records call for, not started."""
        arrivals: list[tuple[UUID, SealEvent]] = []
        alarms: list[tuple[UUID, SealEvent]] = []
        touched: set[str] = set()
        refs: list[ConsignmentReference] = []
        for message_id, sender, body in records:
            if isinstance(body, SealEvent):
                at_office = body.location is not None and body.location.locode == self.office
                if at_office and body.event_type is not SealEventType.SEALED:  # sealing here is a departure
                    arrivals.append((message_id, body))
                if sender == self.node_id and (body.event_type in _BREACHES or body.event_type in _OPENINGS):
                    alarms.append((message_id, body))
                arrived = self._arrived.get(body.container)
                if arrived is not None and body.device_time <= arrived:  # within what was decided on
                    touched.add(body.container)
            elif isinstance(body, ControlResult) and sender != self.node_id:
                refs.extend(body.consignment_refs)
            elif isinstance(body, UnsealAuthorization) and body.container in self._arrived:
                touched.add(body.container)
        due: list[Coroutine[Any, Any, None]] = []
        if arrivals:
            due.append(self._arrive_events(arrivals))
        if alarms:
            due.append(self._alarm_events(alarms))
        if touched or refs:
            due.append(self._evidence_changed(sorted(touched), refs))
        return due

    async def _recover(self, since: datetime) -> None:
        """Do again the work of the records stored since ``since``, the progress recorded before the node stopped.

        That work runs after its records commit (`observe`), in memory: a node
        killed in between would otherwise never decide on an arrival whose
        seal event it holds, nor raise the alarm a tamper called for. The
        progress (`settled_before`: the oldest work in flight, less
        `SETTLE_MARGIN`) is recorded every few seconds and at a clean stop, so
        this is the last seconds before a kill, and next to nothing after a
        stop. All of it is idempotent (the first arrival stands, a decision or
        an alarm the same as the latest is not issued again); it runs one
        batch at a time, beside the node's new work, and holds the progress
        back until it is done.
        """
        seq = await self._store.first_stored_since(since) - 1
        looked = 0
        while page := await self._store.records_after(seq, _TRIGGERS, 500):
            seq = page[-1][0]
            bodies = [(mid, sender, body) for _, mid, sender, jws in page if (body := stored_body(jws)) is not None]
            looked += len(bodies)
            for work in self._due(bodies):
                await self._guarded(work)  # one that fails is logged and counted; the rest is still done
        if looked:
            log.info("looked again at the %d records stored since %s, before the node last stopped", looked,
                     since.isoformat())

    async def arrive(
        self, refs: list[ConsignmentReference], at: datetime, containers: tuple[str, ...] = ()
    ) -> list[Decided]:
        """An arrival notified by the national system: record it (the first stands) and decide."""
        out = []
        for ref in refs:
            await self._put_arrival(Arrival(ref, at, self._containers(ref, containers)))
            out.append(await self.decide(ref))
        return out

    async def target(self, ref: ConsignmentReference, targeting: Targeting) -> Decided | None:
        """National targeting: stored; if the consignment has arrived, decided again at once."""
        await self._store.put_targeting(ref, targeting)
        if await self._store.arrival(ref) is None:
            return None
        return await self.decide(ref)

    async def close(self) -> None:
        """Let the work in flight finish (a few seconds at most), record the progress, cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.save_progress()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- deciding ---------------------------------------------------------------------------------------------

    async def decide(self, ref: ConsignmentReference) -> Decided:
        """Decide now for ``ref``: as of its arrival if it has arrived, else as of now."""
        key = (ref.type.value, ref.id)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                self._pending.discard(key)
                started = time.perf_counter()
                decided = await self._decide(ref)
                self._metrics.decisions.labels(decided.decision.outcome.value, str(decided.issued).lower()).inc()
                self._metrics.decision_seconds.observe(time.perf_counter() - started)
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
        return decided

    async def case(self, ref: ConsignmentReference) -> Case:
        """The evidence for ``ref`` as stored now: what a decision would be taken from."""
        arrival = await self._store.arrival(ref)
        containers = set(self._containers(ref, arrival.containers if arrival else ()))
        inspections, invalid = await self._inspections(ref)
        for inspection in inspections:
            containers.update(eq.container for eq in inspection.result.transport_equipment)
        events = await self._store.chain_events(sorted(containers))
        authorisations = await self._store.authorisations(sorted({e.lock_id for e in events}))
        return Case(
            office=self.office,
            consignment_refs=(ref,),
            at=arrival.arrived_at if arrival else self._clock(),
            trigger=arrival.trigger if arrival else None,
            containers=tuple(sorted(containers)),
            inspections=tuple(inspections),
            invalid_signatures=invalid,
            events=tuple(events),
            authorisations={a.authorisation.authorization_id: a.authorisation for a in authorisations},
            targeting=tuple(await self._store.targeting(ref)),
        )

    def evaluate(self, case: Case) -> Decision:
        """The rules applied to a case, without signing or storing anything (the read model shows this)."""
        return decide(case, self._agreements, self._rules)

    async def _decide(self, ref: ConsignmentReference) -> Decided:
        case = await self.case(ref)
        decision = decide(case, self._agreements, self._rules)
        body = RecognitionDecision(
            decision_id=uuid4(),
            office=self.office,
            consignment_refs=(ref,),
            outcome=decision.outcome,
            decided_at=self._clock(),
            containers=decision.containers,
            control_result_message_id=decision.inspection.message_id if decision.inspection else None,
            seal_chain_verdict=decision.seal_chain_verdict,
            agreement_id=decision.agreement_id,
            reasons=tuple(
                DecisionReasonEntry(r.code, xml_text(r.description), _unique(r.evidence)) for r in decision.reasons
            ),
        )
        recipients = dict.fromkeys(self._router.for_consignments([ref]))
        if decision.inspection is not None and decision.inspection.sender in self._partners:
            recipients = {decision.inspection.sender: None, **recipients}
        record = await self._sign(
            Unsigned(body, tuple(recipients), body.control_result_message_id)
        )
        issued = await self._store.store_made(record, body, fingerprint=_fingerprint(body))
        if issued:
            log.info("decision on %s %s at %s: %s", ref.type.value, ref.id, self.office, decision.outcome.value)
        # Also when the decision was the same as the latest: a node stopped after the decision committed and
        # before its alarm did raises the alarm now. One alarm per cause, so it is never raised twice.
        for chain in decision.chains:
            if chain.verdict is SealChainVerdict.BROKEN:
                await self._chain_alarm(chain, (ref,))
        return Decided(decision, body, record, issued)

    async def _inspections(self, ref: ConsignmentReference) -> tuple[list[Inspection], dict[UUID, str]]:
        """Partners' control results for ``ref``, verified again now; those that fail keep their reason."""
        records = [r for r in await self._store.control_results_for(ref) if r.sender != self.node_id]
        verdicts = await self._signing.verify_all(
            [r.jws for r in records], self._partners.keys(), max_xml_bytes=self._max_xml_bytes
        )
        inspections, invalid = [], {}
        for record, verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, Refusal):
                invalid[record.message_id] = f"{verdict.code}: {verdict.detail}"
                body = stored_body(record.jws)
            else:
                body = verdict.message.body
            if isinstance(body, ControlResult):
                inspections.append(Inspection(record.message_id, record.sender, body))
        return inspections, invalid

    async def consignments_of(self, container: str) -> list[ConsignmentReference]:
        """The consignments a container travels for now: those whose itinerary lists it, and those its lock
        named at its latest sealing."""
        found = {(r.type.value, r.id): r for r in self._router.consignments_of(container)}
        found.update({(r.type.value, r.id): r for r in await self._store.consignments_of(container)})
        return [found[key] for key in sorted(found)]

    async def _put_arrival(self, arrival: Arrival) -> Arrival:
        stood = await self._store.put_arrival(arrival)
        for container in stood.containers:  # a container makes many journeys: keep its latest arrival
            self._arrived[container] = max(self._arrived.get(container, stood.arrived_at), stood.arrived_at)
        return stood

    def _containers(self, ref: ConsignmentReference, given: Iterable[str]) -> tuple[str, ...]:
        itinerary = self._router.itinerary(ref)
        return tuple(sorted(set(given) | set(itinerary.containers if itinerary else ())))

    async def _sign(self, unsigned: Unsigned) -> SignedRecord:
        return await sign_one(self._signing, unsigned)

    # -- background work --------------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], *, observed: datetime | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks[task] = observed if observed is not None else self._clock()
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # a background decision must not take the node down; it is logged and counted
            log.exception("recognition work failed")
            self._metrics.recognition_errors.inc()

    async def _arrive_events(self, arrivals: list[tuple[UUID, SealEvent]]) -> None:
        for message_id, event in arrivals:
            refs = {(r.type.value, r.id): r for r in await self.consignments_of(event.container)}
            if not refs:
                log.warning(
                    "container %s arrived at %s, but no consignment is known for it; register its itinerary",
                    event.container, self.office,
                )
                continue
            for ref in refs.values():
                itinerary = self._router.itinerary(ref)
                if itinerary is not None and itinerary.offices[:1] == (self.office,):
                    continue  # its journey starts here: nothing to recognise
                arrival = Arrival(ref, event.device_time, self._containers(ref, (event.container,)), message_id)
                stood = await self._put_arrival(arrival)
                if stood.trigger == message_id:  # the first arrival: decide; later reports at the office are not
                    await self.decide(ref)

    async def _evidence_changed(self, containers: list[str], refs: list[ConsignmentReference]) -> None:
        due = {(r.type.value, r.id): r for r in refs}
        for arrival in await self._store.arrivals_of(containers):
            due[(arrival.ref.type.value, arrival.ref.id)] = arrival.ref
        for key, ref in sorted(due.items()):
            if key in self._pending:
                continue  # a re-decision is queued already and will see this evidence too
            if await self._store.arrival(ref) is None:
                continue  # not arrived: nothing to decide again yet
            self._pending.add(key)
            await self.decide(ref)

    async def _alarm_events(self, events: list[tuple[UUID, SealEvent]]) -> None:
        for message_id, event in events:
            if event.event_type in _BREACHES:
                where = event.location.locode if event.location and event.location.locode else "in transit"
                description = (
                    f"lock {event.lock_id} reported {event.event_type.value} at {event.device_time.isoformat()} ({where})"
                )
                cause: tuple[AlarmType, tuple[UUID, ...]] | None = (AlarmType.TAMPER, (message_id,))
            else:
                finding = await self._unauthorised(message_id, event)
                if finding is None:
                    continue
                description, cause = finding.description, (AlarmType.UNAUTHORISED_OPENING, finding.evidence)
            refs = await self._store.consignments_of(event.container)
            await self._raise(cause[0], event.container, (event.lock_id, event.seal_id), refs, description, cause[1])

    async def _unauthorised(self, message_id: UUID, event: SealEvent) -> ChainFinding | None:
        """The chain's finding that this opening was not authorised, if it was not."""
        events = [e for e in await self._store.chain_events([event.container]) if e.lock_id == event.lock_id]
        authorisations = await self._store.authorisations([event.lock_id])
        verdict = evaluate(
            event.container,
            events,
            since=event.device_time - timedelta(microseconds=1),
            until=event.device_time,
            rules=self._rules,
            authorisations={a.authorisation.authorization_id: a.authorisation for a in authorisations},
            office_counts=self._unseal_offices.__contains__,
        )
        return next(
            (f for f in verdict.findings if f.kind is Finding.UNAUTHORISED_OPENING and message_id in f.evidence), None
        )

    async def _chain_alarm(self, chain: ChainVerdict, refs: tuple[ConsignmentReference, ...]) -> None:
        broken = [f for f in chain.findings if f.verdict is SealChainVerdict.BROKEN]
        cited = [e for e in chain.events if e.message_id in chain.evidence] or list(chain.events)
        lock = (cited[0].lock_id, cited[0].seal_id)
        description = "; ".join(f.description for f in broken)
        await self._raise(AlarmType.SEAL_CHAIN_BROKEN, chain.container, lock, refs, description, chain.evidence)

    async def _raise(
        self,
        alarm_type: AlarmType,
        container: str,
        lock: tuple[str, str],
        refs: Iterable[ConsignmentReference],
        description: str,
        evidence: tuple[UUID, ...],
    ) -> None:
        refs = tuple(refs)
        body = Alarm(
            alarm_id=uuid4(),
            alarm_type=alarm_type,
            raised_at=self._clock(),
            office=self.office,
            lock_id=lock[0],
            seal_id=lock[1],
            container=container,
            description=xml_text(description),
            consignment_refs=refs,
            evidence=_unique(evidence),
        )
        record = await self._sign(Unsigned(body, self._router.for_consignments(refs, [container])))
        cause = hashlib.sha256("\n".join([alarm_type.value, container, *sorted(map(str, evidence))]).encode()).digest()
        if await self._store.store_made(record, body, fingerprint=cause):
            self._metrics.alarms.labels(alarm_type.value).inc()
            log.warning("alarm %s on container %s: %s", alarm_type.value, container, description)


async def sign_one(signing: Signing, unsigned: Unsigned) -> SignedRecord:
    """Sign one record this node makes, or answer ``unavailable`` (no active key, workers gone)."""
    (signed,) = await signing.sign_all([unsigned])
    if isinstance(signed, Exception):
        raise Problem("unavailable", f"this node cannot sign records just now ({signed}); try again")
    return signed


def _unique(ids: Iterable[UUID]) -> tuple[UUID, ...]:
    return tuple(dict.fromkeys(ids))


def _fingerprint(body: RecognitionDecision) -> bytes:
    """What was decided, without when or under which ID: a re-evaluation that changes none of it issues nothing."""
    parts = [
        body.outcome.value,
        str(body.control_result_message_id),
        str(body.seal_chain_verdict),
        str(body.agreement_id),
        " ".join(body.containers),
    ]
    for reason in body.reasons:
        parts += [reason.code.value, reason.description, " ".join(str(m) for m in reason.evidence)]
    return hashlib.sha256("\n".join(parts).encode()).digest()


def stored_body(jws: bytes) -> Body | None:
    """The body of a record this node stored (verified when it was made or received), read back."""
    try:
        return codec.decode(parse_compact(jws, max_bytes=len(jws) + 1).payload).body
    except (JwsError, XmlError):
        return None
