"""The national customs system's side of the node, without HTTP: one place for each thing it may ask.

The HTTP API (`mrx.node.api`) and the national-system adapters
(`mrx.adapters`) both come here, so a control result submitted through a
file, an NCTS message or ``POST /v1/control-results`` is validated, signed,
committed and answered identically. Each method takes the JSON shape the API
documents (docs/api.md), returns the API's JSON answer, and raises `Problem`
for bad input. Authentication is the caller's business: the API checks a
``national`` credential; an adapter is trusted by configuration.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .deciding import Recognition
from .ingest import Ingest, validate
from .inputs import ArrivalIn, ItineraryIn, UnsealAuthorizationIn
from .metrics import NodeMetrics
from .readmodel import decided_json, iso
from .routing import Router
from .storage import Itinerary, Store
from .unsealing import Unsealing


class NationalSystem:
    def __init__(self, store: Store, ingest: Ingest, router: Router, recognition: Recognition,
                 unsealing: Unsealing, metrics: NodeMetrics) -> None:
        self._store = store
        self._ingest = ingest
        self._router = router
        self._recognition = recognition
        self._unsealing = unsealing
        self._metrics = metrics

    async def control_result(self, data: Any) -> dict[str, Any]:
        """An inspection's result: signed, stored, sent to the partners its itinerary names."""
        receipt = await self._ingest.control_result(data)
        return {"control_id": receipt.control_id, "status": receipt.status, "message_id": str(receipt.message_id)}

    async def itinerary(self, data: Any) -> dict[str, Any]:
        """A consignment's route: which partners get its records (`mrx.node.routing`)."""
        given: ItineraryIn = validate(ItineraryIn, data)
        itinerary = Itinerary(
            given.consignment.to_domain(), tuple(given.offices), tuple(given.containers), datetime.now(timezone.utc)
        )
        await self._store.put_itinerary(itinerary)
        self._router.learn(itinerary)
        self._metrics.itineraries.set(len(self._router))
        return {
            "consignment": {"type": itinerary.ref.type.value, "id": itinerary.ref.id},
            "offices": list(itinerary.offices),
            "containers": list(itinerary.containers),
            "recipients": list(self._router.recipients(itinerary.offices)),
            "unserved_offices": list(self._router.unserved(itinerary.offices)),
        }

    async def arrival(self, data: Any) -> dict[str, Any]:
        """Consignments arrived at this office: decide for each (docs/recognition.md)."""
        given: ArrivalIn = validate(ArrivalIn, data)
        decided = await self._recognition.arrive(
            [c.to_domain() for c in given.consignments], given.arrived_at, tuple(given.containers)
        )
        return {"decisions": [await decided_json(d, self._store) for d in decided]}

    async def unseal_request(self, data: Any) -> dict[str, Any]:
        """An officer's request to open one lock here, once, within a window: the signed authorisation."""
        given: UnsealAuthorizationIn = validate(UnsealAuthorizationIn, data)
        body, record = await self._unsealing.authorise(given)
        return {
            "authorization_id": str(body.authorization_id),
            "message_id": str(record.message_id),
            "lock_id": body.lock_id,
            "seal_id": body.seal_id,
            "container": body.container,
            "office": body.office,
            "valid_from": iso(body.valid_from),
            "valid_to": iso(body.valid_to),
            "recipients": list(record.recipients),
            "jws": record.jws.decode("ascii"),
        }
