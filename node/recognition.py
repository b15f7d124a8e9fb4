"""The recognition decision: does a partner's inspection stand at this border?

`decide` is a pure function of a `Case` — the consignment, when and where
it is decided, the partners' inspections of it, its containers' seal events
and the unseal authorisations this node holds, and any national targeting —
and of the agreements. The same case gives the same decision, whatever order
its records arrived in. The steps, each adding reasons (docs/recognition.md):

1. **National targeting.** If the national system marked the consignment
   for inspection, that is a reason (``NATIONAL_TARGETING``) and the outcome
   is NOT_RECOGNISED whatever else holds: mutual recognition never overrides
   national risk analysis. The other steps still run, so the officer sees
   the whole picture.
2. **The inspection.** The latest of the partners' control results for the
   consignment (by control time, then message ID). None: ``NO_CONTROL_RESULT``
   — the decision is taken again when one arrives.
3. **Signature.** The record carrying it is verified again now, against the
   partner's keys as known now: a key revoked *before* the record was
   prepared makes it ``SIGNATURE_INVALID``; one revoked after does not (the
   record was made while the key was good; see docs/recognition.md).
4. **Agreement.** No agreement with the inspecting partner:
   ``OUTSIDE_AGREEMENT_SCOPE``. Otherwise its policy
   (`mrx.node.agreements`) adds its reasons, among them the seal chain of
   every container from the inspection to now (`mrx.node.sealchain`).

No reason: RECOGNISED — release without re-inspection. Any reason:
NOT_RECOGNISED — inspect. Reasons come in a fixed order (by code, then text),
each naming the records that prove it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from mrx.schemas.codes import DecisionOutcome, DecisionReason, SealActionCode, SealChainVerdict, SealTypeCode
from mrx.schemas.messages import ConsignmentReference, DecisionReasonEntry

from .agreements import Agreement, Inspected, Inspection
from .sealchain import Authorisation, ChainEvent, ChainRules, ChainVerdict, evaluate, worst
from .storage import Targeting

_REASON_ORDER = {code: n for n, code in enumerate(DecisionReason)}


@dataclass(frozen=True, slots=True)
class Case:
    """Everything a decision is taken from."""

    office: str  # this node's office
    consignment_refs: tuple[ConsignmentReference, ...]
    at: datetime  # the arrival (or the request) the decision answers
    trigger: UUID | None = None  # the arrival's record, where the arrival was a seal event
    containers: tuple[str, ...] = ()  # from the itinerary and the arrival, besides the inspection's
    inspections: tuple[Inspection, ...] = ()  # partners' control results for the consignment
    invalid_signatures: Mapping[UUID, str] = field(default_factory=dict)  # message ID -> why
    events: tuple[ChainEvent, ...] = ()  # the seal events of the containers' locks
    authorisations: Mapping[UUID, Authorisation] = field(default_factory=dict)
    targeting: tuple[Targeting, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome with its reasons; the node signs it as a `RecognitionDecision`."""

    outcome: DecisionOutcome
    reasons: tuple[DecisionReasonEntry, ...]
    containers: tuple[str, ...]
    inspection: Inspection | None
    agreement_id: str | None
    chains: tuple[ChainVerdict, ...]

    @property
    def seal_chain_verdict(self) -> SealChainVerdict | None:
        return worst(c.verdict for c in self.chains) if self.chains else None


def decide(case: Case, agreements: Mapping[str, Agreement], rules: ChainRules) -> Decision:
    reasons: list[DecisionReasonEntry] = [
        DecisionReasonEntry(
            DecisionReason.NATIONAL_TARGETING,
            f"the national system marked the consignment for inspection ({t.reference}: {t.reason})",
        )
        for t in case.targeting
    ]
    inspection = latest(case.inspections)
    containers = _containers(case, inspection)
    if inspection is None:
        reasons.append(
            DecisionReasonEntry(
                DecisionReason.NO_CONTROL_RESULT,
                "no partner's control result for this consignment has been received; the decision is taken "
                "again when one arrives",
                () if case.trigger is None else (case.trigger,),
            )
        )
        return _decision(reasons, containers, None, None, ())

    if (why := case.invalid_signatures.get(inspection.message_id)) is not None:
        reasons.append(
            DecisionReasonEntry(
                DecisionReason.SIGNATURE_INVALID,
                f"the control result's signature does not hold: {why}",
                (inspection.message_id,),
            )
        )
    terms = agreements.get(inspection.sender)
    unseal_offices = terms.unseal_offices if terms else frozenset()
    chains = tuple(
        evaluate(
            container,
            case.events,
            since=inspection.result.controlled_at,
            until=case.at,
            rules=rules,
            authorisations=case.authorisations,
            office_counts=lambda office: office == case.office or office in unseal_offices,
            affixed_seals=_affixed(inspection, container),
        )
        for container in containers
    )
    if terms is None:
        reasons.append(
            DecisionReasonEntry(
                DecisionReason.OUTSIDE_AGREEMENT_SCOPE,
                f"this node has no mutual-recognition agreement with {inspection.sender}, which inspected",
                (inspection.message_id,),
            )
        )
    else:
        reasons.extend(terms.policy.check(Inspected(inspection, case.at, chains)))
    return _decision(reasons, containers, inspection, terms.agreement_id if terms else None, chains)


def latest(inspections: tuple[Inspection, ...]) -> Inspection | None:
    """The inspection that counts: the latest by control time, ties broken by message ID."""
    return max(inspections, key=lambda i: (i.result.controlled_at, str(i.message_id)), default=None)


def _containers(case: Case, inspection: Inspection | None) -> tuple[str, ...]:
    found = set(case.containers)
    if inspection is not None:
        found.update(eq.container for eq in inspection.result.transport_equipment)
    return tuple(sorted(found))


def _affixed(inspection: Inspection, container: str) -> frozenset[str]:
    """Electronic seals customs affixed to ``container`` at the inspection: the lock must carry one of them."""
    return frozenset(
        seal.id
        for eq in inspection.result.transport_equipment
        if eq.container == container
        for seal in eq.seals
        if seal.action is SealActionCode.AFFIXED and seal.type is not SealTypeCode.MECHANICAL
    )


def _decision(
    reasons: list[DecisionReasonEntry],
    containers: tuple[str, ...],
    inspection: Inspection | None,
    agreement_id: str | None,
    chains: tuple[ChainVerdict, ...],
) -> Decision:
    ordered = tuple(sorted(reasons, key=lambda r: (_REASON_ORDER[r.code], r.description)))
    outcome = DecisionOutcome.NOT_RECOGNISED if ordered else DecisionOutcome.RECOGNISED
    return Decision(outcome, ordered, containers, inspection, agreement_id, chains)
