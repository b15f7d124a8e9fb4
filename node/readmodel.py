"""The officer's screen: a consignment or a container, as JSON, from what the node holds now.

``GET /v1/consignments/{type}/{id}`` answers with everything a border
officer needs on one screen: the itinerary, the arrival, national targeting,
the partners' control results (with whether their signatures still hold),
each container's seal chain with its verdict as evaluated *now* (so a gap
filled since the last decision shows), the decisions taken — this node's and
its partners' — and the alarms. ``GET /v1/containers/{container}`` shows
the consignments a container travels for, its lock events and its alarms.

Rendering only: the verdicts come from the recognition rules
(`Recognition.case` and `Recognition.evaluate`), the rest from the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from mrx.schemas.messages import Alarm, ConsignmentReference, ControlResult, RecognitionDecision

from .deciding import Decided, Recognition, stored_body
from .routing import Router
from .sealchain import ChainEvent, ChainVerdict
from .storage import AlarmEntry, SignedRecord, Store


def iso(value: datetime) -> str:
    """A time as the API writes it: RFC 3339, UTC as ``Z``."""
    return value.isoformat().replace("+00:00", "Z")


def _ids(ids: tuple[UUID, ...]) -> list[str]:
    return [str(i) for i in ids]


def ref_json(ref: ConsignmentReference) -> dict[str, str]:
    return {"type": ref.type.value, "id": ref.id}


def decision_json(body: RecognitionDecision, record: SignedRecord, *, issued: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "message_id": str(record.message_id),
        "sender": record.sender,
        "decision_id": str(body.decision_id),
        "office": body.office,
        "consignments": [ref_json(r) for r in body.consignment_refs],
        "outcome": body.outcome.value,
        "decided_at": iso(body.decided_at),
        "containers": list(body.containers),
        "control_result_message_id": str(body.control_result_message_id) if body.control_result_message_id else None,
        "seal_chain_verdict": body.seal_chain_verdict.value if body.seal_chain_verdict else None,
        "agreement_id": body.agreement_id,
        "reasons": [
            {"code": r.code.value, "description": r.description, "evidence": _ids(r.evidence)} for r in body.reasons
        ],
    }
    if issued is not None:
        out["issued"] = issued  # false: the same as the latest decision, so no new one was issued
    return out


async def decided_json(decided: Decided, store: Store) -> dict[str, Any]:
    """A decision just taken, as the API answers it: the new record, or, when none was issued (the same as the
    latest), the standing decision, this node's latest stored for the consignment, with its own IDs and time."""
    if decided.issued:
        return decision_json(decided.body, decided.record, issued=True)
    for entry in reversed(await store.decisions(decided.body.consignment_refs[0])):
        if entry.sender != decided.record.sender:
            continue  # a partner's decision
        body, record = stored_body(entry.jws), await store.record(entry.message_id)
        if isinstance(body, RecognitionDecision) and record is not None:
            return decision_json(body, record, issued=False)
    raise LookupError(f"no stored decision of {decided.record.sender} is the same as {decided.body.decision_id}")


def alarm_json(entry: AlarmEntry) -> dict[str, Any]:
    body = stored_body(entry.jws)
    assert isinstance(body, Alarm)
    return {
        "position": entry.seq,
        "alarm_id": str(entry.alarm_id),
        "message_id": str(entry.message_id),
        "raised_by": entry.sender,
        "type": entry.alarm_type,
        "office": body.office,
        "lock_id": entry.lock_id,
        "seal_id": body.seal_id,
        "container": entry.container,
        "raised_at": iso(entry.raised_at),
        "description": body.description,
        "consignments": [ref_json(r) for r in body.consignment_refs],
        "evidence": _ids(body.evidence),
        "acknowledged_at": iso(entry.acknowledged_at) if entry.acknowledged_at else None,
        "acknowledged_by": entry.acknowledged_by,
    }


def _event_json(e: ChainEvent) -> dict[str, Any]:
    return {
        "message_id": str(e.message_id),
        "lock_id": e.lock_id,
        "seq": e.lock_sequence,
        "seal_id": e.seal_id,
        "type": e.event_type.value,
        "device_time": iso(e.device_time),
        "receipt_time": iso(e.receipt_time),
        "locode": e.locode,
        "condition": e.condition.value,
        "authorization_id": str(e.authorization_id) if e.authorization_id else None,
    }


def chain_json(chain: ChainVerdict) -> dict[str, Any]:
    return {
        "container": chain.container,
        "verdict": chain.verdict.value,
        "findings": [
            {"kind": f.kind.value, "verdict": f.verdict.value, "description": f.description, "evidence": _ids(f.evidence)}
            for f in chain.findings
        ],
        "events": [_event_json(e) for e in chain.events],
    }


def _control_result_json(message_id: UUID, sender: str, result: ControlResult, invalid: str | None) -> dict[str, Any]:
    return {
        "message_id": str(message_id),
        "sender": sender,
        "control_id": result.control_id,
        "office": result.office,
        "control_type": result.control_type.value,
        "result": result.result.value,
        "controlled_at": iso(result.controlled_at),
        "officer": result.officer,
        "hs_codes": list(result.hs_codes),
        "transport_equipment": [
            {
                "container": eq.container,
                "seals": [{"id": s.id, "action": s.action.value, "condition": s.condition.value} for s in eq.seals],
            }
            for eq in result.transport_equipment
        ],
        "remarks": result.remarks,
        "signature": "valid" if invalid is None else f"invalid: {invalid}",
    }


async def consignment_view(
    ref: ConsignmentReference, store: Store, router: Router, recognition: Recognition
) -> dict[str, Any]:
    case = await recognition.case(ref)
    now = recognition.evaluate(case)
    arrival = await store.arrival(ref)
    itinerary = router.itinerary(ref)
    decisions = []
    for entry in await store.decisions(ref):
        body = stored_body(entry.jws)
        record = await store.record(entry.message_id)
        if isinstance(body, RecognitionDecision) and record is not None:
            decisions.append(decision_json(body, record))
    alarms: list[dict[str, Any]] = []
    for container in case.containers:
        alarms += [alarm_json(a) for a in await store.alarms(container=container, open_only=False, after=0, limit=100)]
    return {
        "consignment": ref_json(ref),
        "office": recognition.office,
        "itinerary": {"offices": list(itinerary.offices), "containers": list(itinerary.containers)} if itinerary else None,
        "arrival": {
            "arrived_at": iso(arrival.arrived_at),
            "containers": list(arrival.containers),
            "trigger_message_id": str(arrival.trigger) if arrival.trigger else None,
        }
        if arrival
        else None,
        "targeting": [
            {"reference": t.reference, "reason": t.reason, "marked_at": iso(t.marked_at)} for t in case.targeting
        ],
        "control_results": [
            _control_result_json(i.message_id, i.sender, i.result, case.invalid_signatures.get(i.message_id))
            for i in case.inspections
        ],
        "seal_chains": [chain_json(c) for c in now.chains],
        "evaluation_now": {
            "outcome": now.outcome.value,
            "reasons": [
                {"code": r.code.value, "description": r.description, "evidence": _ids(r.evidence)} for r in now.reasons
            ],
            "as_of": iso(case.at),
        },
        "decisions": decisions,
        "alarms": sorted(alarms, key=lambda a: a["position"]),
    }


async def container_view(container: str, store: Store, recognition: Recognition) -> dict[str, Any]:
    refs = {(r.type.value, r.id): r for r in await recognition.consignments_of(container)}
    refs.update({(a.ref.type.value, a.ref.id): a.ref for a in await store.arrivals_of([container])})
    events = sorted(await store.chain_events([container]), key=lambda e: (e.lock_id, e.lock_sequence, str(e.message_id)))
    alarms = await store.alarms(container=container, open_only=False, after=0, limit=100)
    consignments = []
    for key in sorted(refs):
        decisions = await store.decisions(refs[key])
        latest = decisions[-1] if decisions else None
        consignments.append(
            {
                **ref_json(refs[key]),
                "latest_decision": {"outcome": latest.outcome, "decided_at": iso(latest.decided_at), "by": latest.sender}
                if latest
                else None,
            }
        )
    return {
        "container": container,
        "consignments": consignments,
        "events": [_event_json(e) for e in events[-500:]],
        "alarms": [alarm_json(a) for a in alarms],
    }
