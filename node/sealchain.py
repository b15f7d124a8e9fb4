"""The seal chain: what a lock's own event log says happened to a container.

A smart lock numbers every event it reports (``lock_sequence``); device
clocks drift and radios drop, so the chain is ordered by that number, never
by time or by arrival. The chain of a container over an interval — from a
partner's inspection to the arrival at this border — gets one of three
verdicts, each with the findings that prove it:

``INTACT``
    Every event of the interval is here, in sequence, close enough in time,
    and none of them shows the container could have been opened except on a
    valid unseal authorisation followed by a customs re-seal.

``BROKEN`` (evidence that the load may have been accessed)
    - the lock reported ``tamper`` or ``housing-breach``, or a seal condition
      of damaged, missing or broken (UN/EDIFACT 4517 codes 2, 3, 4) — one
      finding per seal: the lock repeats the condition in every later report;
    - the lock was ``opened`` while sealed, or ``unsealed`` without a valid
      authorisation: one that is cited and held, names this lock and seal, covers the
      event's time, is for the office where the event happened, was issued
      by an office whose authorisations count, and has not been used by an
      earlier event (an authorisation is single use: the first event in the
      lock's sequence that cites it uses it; a later one is a replay);
    - the seal ID changed without an authorised opening and a ``sealed``
      event for the new seal;
    - a seal that customs affixed at the inspection is not the lock's seal,
      or the container is still open at the end of the interval.

``UNKNOWN`` (the chain cannot be vouched for, yet)
    - a sequence gap: numbers missing between two events (a gateway that
      uploads the lock's stored log later fills it, and the verdict is
      evaluated again from the events then stored);
    - no event for longer than the reporting period allows, including
      between the last event and the end of the interval, or no event at all;
    - clocks that disagree beyond the tolerance: a device time later than the
      time the gateway received it, or running backwards along the sequence;
    - two different records claiming one sequence number of one lock;
    - a lock that reports ``malfunction`` or a faulty electronic seal (4517
      code 5);
    - an opening citing an authorisation this node has not received (yet):
      it may be on its way from the partner that issued it.

BROKEN outranks UNKNOWN, which outranks INTACT. The evaluation is pure and
deterministic: the same set of events, in any order, gives the same verdict
with the same findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from mrx.schemas.codes import SealChainVerdict, SealConditionCode, SealEventType

_BREACHES = {SealEventType.TAMPER, SealEventType.HOUSING_BREACH}
_BROKEN_CONDITIONS = {SealConditionCode.DAMAGED, SealConditionCode.MISSING, SealConditionCode.BROKEN}
_RANK = {SealChainVerdict.INTACT: 0, SealChainVerdict.UNKNOWN: 1, SealChainVerdict.BROKEN: 2}


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One seal event as the chain sees it; ``message_id`` names its signed record."""

    message_id: UUID
    lock_id: str
    lock_sequence: int
    seal_id: str
    container: str
    event_type: SealEventType
    device_time: datetime
    receipt_time: datetime
    locode: str | None = None
    condition: SealConditionCode = SealConditionCode.IN_RIGHT_CONDITION
    authorization_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class Authorisation:
    """An unseal authorisation this node holds, its own or a partner's; ``message_id`` names its record."""

    authorization_id: UUID
    message_id: UUID
    lock_id: str
    seal_id: str
    office: str  # where the opening is allowed: the issuing node's office
    valid_from: datetime
    valid_to: datetime


class Finding(StrEnum):
    """What a finding is about; each maps to the verdict it forces."""

    TAMPER = "tamper"
    BROKEN_CONDITION = "seal-condition"
    UNAUTHORISED_OPENING = "unauthorised-opening"
    AUTHORISATION_NOT_RECEIVED = "authorisation-not-received"
    SEAL_CHANGED = "seal-changed"
    AFFIXED_SEAL_MISSING = "affixed-seal-missing"
    LEFT_OPEN = "left-open"
    SEQUENCE_GAP = "sequence-gap"
    SILENCE = "silence"
    NO_DATA = "no-data"
    CLOCK = "clock-disagreement"
    SEQUENCE_CLAIMED_TWICE = "sequence-claimed-twice"
    MALFUNCTION = "malfunction"


_VERDICT_OF = {
    Finding.TAMPER: SealChainVerdict.BROKEN,
    Finding.BROKEN_CONDITION: SealChainVerdict.BROKEN,
    Finding.UNAUTHORISED_OPENING: SealChainVerdict.BROKEN,
    Finding.SEAL_CHANGED: SealChainVerdict.BROKEN,
    Finding.AFFIXED_SEAL_MISSING: SealChainVerdict.BROKEN,
    Finding.LEFT_OPEN: SealChainVerdict.BROKEN,
}


@dataclass(frozen=True, slots=True)
class ChainFinding:
    kind: Finding
    description: str
    evidence: tuple[UUID, ...] = ()  # message IDs of the records that prove it

    @property
    def verdict(self) -> SealChainVerdict:
        return _VERDICT_OF.get(self.kind, SealChainVerdict.UNKNOWN)


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    container: str
    verdict: SealChainVerdict
    findings: tuple[ChainFinding, ...]
    events: tuple[ChainEvent, ...]  # the interval, in sequence order, lock by lock

    @property
    def evidence(self) -> tuple[UUID, ...]:
        """The records behind the findings that decide the verdict, first seen first."""
        seen: dict[UUID, None] = {}
        for finding in self.findings:
            if finding.verdict is self.verdict:
                seen.update(dict.fromkeys(finding.evidence))
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class ChainRules:
    """The tolerances of the evaluation (``[recognition]`` in the node's config)."""

    reporting_period: timedelta  # the longest silence a lock in transit may keep
    clock_tolerance: timedelta  # how far two clocks may disagree


def worst(verdicts: Iterable[SealChainVerdict]) -> SealChainVerdict:
    return max(verdicts, key=_RANK.__getitem__, default=SealChainVerdict.UNKNOWN)


def evaluate(
    container: str,
    events: Iterable[ChainEvent],
    *,
    since: datetime,
    until: datetime,
    rules: ChainRules,
    authorisations: Mapping[UUID, Authorisation],
    office_counts: Callable[[str], bool],
    affixed_seals: frozenset[str] = frozenset(),
) -> ChainVerdict:
    """The verdict on ``container``'s chain from ``since`` (the inspection) to ``until`` (the arrival).

    ``events`` are all the stored events of the container's locks, in any
    order and with repeats; ``office_counts`` says whether an authorisation
    issued for an office is accepted (the agreement's unseal offices and this
    node's own office); ``affixed_seals`` are the seals customs affixed at
    the inspection, which must be the lock's seal.
    """
    by_lock: dict[str, dict[tuple[int, UUID], ChainEvent]] = {}
    for event in events:
        if event.container == container:
            by_lock.setdefault(event.lock_id, {})[(event.lock_sequence, event.message_id)] = event
    findings: list[ChainFinding] = []
    interval: list[ChainEvent] = []
    for lock_id in sorted(by_lock):
        chain = [by_lock[lock_id][key] for key in sorted(by_lock[lock_id])]
        lock = _LockChain(lock_id, chain, since, until, rules, authorisations, office_counts, affixed_seals)
        findings.extend(lock.findings())
        interval.extend(lock.interval)
    if not interval:
        findings.append(
            ChainFinding(
                Finding.NO_DATA,
                f"no lock reported for container {container} between {_t(since)} and {_t(until)}",
            )
        )
    verdict = worst(f.verdict for f in findings) if findings else SealChainVerdict.INTACT
    return ChainVerdict(container, verdict, tuple(findings), tuple(interval))


class _LockChain:
    """One lock's events (sorted by sequence, then record) and what they show over the interval."""

    def __init__(
        self,
        lock_id: str,
        chain: list[ChainEvent],
        since: datetime,
        until: datetime,
        rules: ChainRules,
        authorisations: Mapping[UUID, Authorisation],
        office_counts: Callable[[str], bool],
        affixed_seals: frozenset[str],
    ) -> None:
        self.lock_id = lock_id
        self.chain = chain
        self.since = since
        self.until = until
        self.rules = rules
        self.authorisations = authorisations
        self.office_counts = office_counts
        self.affixed = affixed_seals
        # The interval: the events after the inspection, up to the arrival.
        # The last event at or before the inspection (the anchor) is what
        # the inspection saw: it is checked for continuity with the interval
        # (sequence, clocks), but what it reports is covered by the inspection.
        before = [e for e in chain if e.device_time <= since]
        self.anchor = before[-1] if before else None
        self.interval = [e for e in chain if since < e.device_time <= until]
        self.span = ([self.anchor] if self.anchor else []) + self.interval

    def findings(self) -> list[ChainFinding]:
        if not self.interval:
            return []
        out: list[ChainFinding] = []
        out += self._coverage()
        out += self._sequence()
        out += self._clocks()
        out += self._integrity()
        return out

    def _coverage(self) -> list[ChainFinding]:
        """Silence: after the inspection, between events, and up to the arrival."""
        period = self.rules.reporting_period
        first, last = self.interval[0], self.interval[-1]
        out = []
        if first.device_time > self.since + period:
            out.append(
                ChainFinding(
                    Finding.SILENCE,
                    f"lock {self.lock_id} reported nothing from the inspection at {_t(self.since)} until "
                    f"{_t(first.device_time)}, longer than the reporting period of {_span(period)}",
                    (first.message_id,),
                )
            )
        for a, b in zip(self.interval, self.interval[1:]):
            # Between consecutive numbers only: across a gap the missing events may hold the reports.
            if b.device_time - a.device_time > period and b.lock_sequence == a.lock_sequence + 1:
                out.append(
                    ChainFinding(
                        Finding.SILENCE,
                        f"lock {self.lock_id} reported nothing between sequence {a.lock_sequence} at "
                        f"{_t(a.device_time)} and {b.lock_sequence} at {_t(b.device_time)}, longer than the "
                        f"reporting period of {_span(period)}",
                        (a.message_id, b.message_id),
                    )
                )
        if self.until - last.device_time > period:
            out.append(
                ChainFinding(
                    Finding.SILENCE,
                    f"lock {self.lock_id} has reported nothing since sequence {last.lock_sequence} at "
                    f"{_t(last.device_time)}, longer than the reporting period of {_span(period)} before "
                    f"{_t(self.until)}",
                    (last.message_id,),
                )
            )
        return out

    def _sequence(self) -> list[ChainFinding]:
        out = []
        for a, b in zip(self.span, self.span[1:]):
            if b.lock_sequence == a.lock_sequence:
                out.append(
                    ChainFinding(
                        Finding.SEQUENCE_CLAIMED_TWICE,
                        f"two different records claim sequence {a.lock_sequence} of lock {self.lock_id}",
                        (a.message_id, b.message_id),
                    )
                )
            elif b.lock_sequence > a.lock_sequence + 1:
                first, last_missing = a.lock_sequence + 1, b.lock_sequence - 1
                missing = (
                    f"event {first} of lock {self.lock_id} has"
                    if first == last_missing
                    else f"events {first} to {last_missing} of lock {self.lock_id} have"
                )
                out.append(
                    ChainFinding(
                        Finding.SEQUENCE_GAP,
                        f"{missing} not been received; a gateway that uploads the lock's stored log fills the gap",
                        (a.message_id, b.message_id),
                    )
                )
        return out

    def _clocks(self) -> list[ChainFinding]:
        tolerance = self.rules.clock_tolerance
        out = []
        for e in self.span:
            if e.device_time > e.receipt_time + tolerance:
                out.append(
                    ChainFinding(
                        Finding.CLOCK,
                        f"event {e.lock_sequence} of lock {self.lock_id} is dated {_t(e.device_time)} by the lock "
                        f"but was received at {_t(e.receipt_time)}: the clocks disagree by more than {_span(tolerance)}",
                        (e.message_id,),
                    )
                )
        for a, b in zip(self.span, self.span[1:]):
            if a.device_time - b.device_time > tolerance:
                out.append(
                    ChainFinding(
                        Finding.CLOCK,
                        f"the clock of lock {self.lock_id} ran backwards from {_t(a.device_time)} at sequence "
                        f"{a.lock_sequence} to {_t(b.device_time)} at {b.lock_sequence}, by more than {_span(tolerance)}",
                        (a.message_id, b.message_id),
                    )
                )
        return out

    def _integrity(self) -> list[ChainFinding]:
        """Walk the interval as a state machine: sealed with seal S, or open on authorisation A."""
        out: list[ChainFinding] = []
        used = self._first_uses()
        first = self.interval[0]
        # The seal the inspection left: the anchor's, or the first one reported after.
        seal: str | None = self.anchor.seal_id if self.anchor else first.seal_id  # None while open
        if self.affixed:
            carried = first.seal_id if first.event_type is SealEventType.SEALED else seal
            if carried not in self.affixed:
                out.append(
                    ChainFinding(
                        Finding.AFFIXED_SEAL_MISSING,
                        f"customs affixed seal {', '.join(sorted(self.affixed))} at the inspection, but lock "
                        f"{self.lock_id} carried seal {carried}",
                        (first.message_id,),
                    )
                )
            seal = carried
        opened_by: ChainEvent | None = None
        broken: set[str] = set()  # seals already found broken: a lock repeats the condition in every later report
        for e in self.interval:
            if e.event_type in _BREACHES:
                broken.add(e.seal_id)
                out.append(
                    ChainFinding(
                        Finding.TAMPER,
                        f"lock {self.lock_id} reported {e.event_type.value} at {_t(e.device_time)} "
                        f"({_where(e)}, sequence {e.lock_sequence})",
                        (e.message_id,),
                    )
                )
            elif e.condition in _BROKEN_CONDITIONS and e.seal_id not in broken:  # a breach reports it too: one finding
                broken.add(e.seal_id)
                out.append(
                    ChainFinding(
                        Finding.BROKEN_CONDITION,
                        f"lock {self.lock_id} reported seal {e.seal_id} in condition {e.condition.value} "
                        f"({e.condition.name.lower().replace('_', ' ')}) at {_t(e.device_time)}",
                        (e.message_id,),
                    )
                )
            elif e.condition is SealConditionCode.FAULTY_ELECTRONIC_SEAL or e.event_type is SealEventType.MALFUNCTION:
                out.append(
                    ChainFinding(
                        Finding.MALFUNCTION,
                        f"lock {self.lock_id} reported a malfunction at {_t(e.device_time)}; what it reported "
                        "after cannot be relied on",
                        (e.message_id,),
                    )
                )
            if e.event_type is SealEventType.UNSEALED:
                if e.authorization_id is not None and e.authorization_id not in self.authorisations:
                    out.append(
                        ChainFinding(
                            Finding.AUTHORISATION_NOT_RECEIVED,
                            f"lock {self.lock_id} was unsealed at {_t(e.device_time)} ({_where(e)}) citing "
                            f"authorisation {e.authorization_id}, which this node has not received (yet)",
                            (e.message_id,),
                        )
                    )
                elif (problem := self._authorisation_problem(e, used)) is not None:
                    out.append(ChainFinding(Finding.UNAUTHORISED_OPENING, problem, self._cited(e)))
                seal, opened_by = None, e
                continue
            if e.event_type is SealEventType.OPENED:
                if seal is not None:  # an opening while sealed; while open on an authorisation it is expected
                    out.append(
                        ChainFinding(
                            Finding.UNAUTHORISED_OPENING,
                            f"lock {self.lock_id} was opened at {_t(e.device_time)} ({_where(e)}) while sealed, "
                            "with no unseal authorisation",
                            (e.message_id,),
                        )
                    )
                    seal, opened_by = None, e
                continue
            if seal is not None and e.seal_id != seal:
                out.append(
                    ChainFinding(
                        Finding.SEAL_CHANGED,
                        f"the seal of lock {self.lock_id} changed from {seal} to {e.seal_id} at sequence "
                        f"{e.lock_sequence} without an authorised opening and re-sealing",
                        (e.message_id,),
                    )
                )
                seal = e.seal_id
            if e.event_type is SealEventType.SEALED:
                seal, opened_by = e.seal_id, None
        if seal is None and opened_by is not None:
            out.append(
                ChainFinding(
                    Finding.LEFT_OPEN,
                    f"lock {self.lock_id} was opened at {_t(opened_by.device_time)} ({_where(opened_by)}) and not "
                    f"sealed again by {_t(self.until)}",
                    (opened_by.message_id,),
                )
            )
        return out

    def _first_uses(self) -> dict[UUID, ChainEvent]:
        """Each authorisation's first use in the lock's whole chain (not only the interval)."""
        uses: dict[UUID, ChainEvent] = {}
        for e in self.chain:
            if e.event_type is SealEventType.UNSEALED and e.authorization_id is not None:
                uses.setdefault(e.authorization_id, e)
        return uses

    def _cited(self, e: ChainEvent) -> tuple[UUID, ...]:
        auth = self.authorisations.get(e.authorization_id) if e.authorization_id else None
        return (e.message_id,) if auth is None else (e.message_id, auth.message_id)

    def _authorisation_problem(self, e: ChainEvent, used: Mapping[UUID, ChainEvent]) -> str | None:
        opening = f"lock {self.lock_id} was unsealed at {_t(e.device_time)} ({_where(e)})"
        if e.authorization_id is None:
            return f"{opening} citing no unseal authorisation"
        auth = self.authorisations[e.authorization_id]
        first = used[auth.authorization_id]
        if first.message_id != e.message_id:
            return (
                f"{opening} citing authorisation {auth.authorization_id}, already used at sequence "
                f"{first.lock_sequence}: an authorisation opens a lock once"
            )
        if auth.lock_id != self.lock_id or auth.seal_id != e.seal_id:
            return (
                f"{opening} citing authorisation {auth.authorization_id}, which is for lock {auth.lock_id} "
                f"seal {auth.seal_id}, not lock {self.lock_id} seal {e.seal_id}"
            )
        if not auth.valid_from <= e.device_time <= auth.valid_to:
            return (
                f"{opening} citing authorisation {auth.authorization_id}, valid only from {_t(auth.valid_from)} "
                f"to {_t(auth.valid_to)}"
            )
        if e.locode != auth.office:
            return f"{opening} citing authorisation {auth.authorization_id}, which is for an opening at {auth.office}"
        if not self.office_counts(auth.office):
            return (
                f"{opening} citing authorisation {auth.authorization_id} of {auth.office}, an office whose "
                "authorisations the agreement does not accept"
            )
        return None


def _t(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _where(e: ChainEvent) -> str:
    return f"at {e.locode}" if e.locode else "in transit"
