"""The node's HTTP API: routes, their handlers, and the problem middleware.

Handlers are thin: read and bound the body (`mrx.node.body`), authenticate
(`mrx.node.access`), call ingest or the store, and render JSON. Every error
leaves as an RFC 9457 problem (`mrx.node.problems`), whether raised here,
in ingest, or by aiohttp itself (unknown route, wrong method).

``openapi.py`` describes exactly these routes; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from aiohttp import web
from pydantic import ValidationError

from mrx.keys.jws import JwsError, max_compact_bytes
from mrx.keys.keyring import KeyStore
from mrx.schemas import identifiers
from mrx.schemas.messages import ConsignmentReference
from mrx.schemas.xml import XmlError

from . import openapi
from .access import Access
from .auditlog import AuditLog
from .body import parse_json, read_body
from .config import NodeConfig
from .access import Caller
from .deciding import Recognition
from .ingest import EventResult, Ingest, validate, validation_problem
from .inputs import (
    SEAL_ID,
    TOKEN,
    AcknowledgementIn,
    ConsignmentReferenceIn,
    TargetingIn,
)
from .readmodel import alarm_json, consignment_view, container_view, decided_json, iso, ref_json
from .unsealing import Unsealing, state_of
from .witness import MAX_REQUEST_BYTES, SIZE_MEDIA_TYPE, Conflict, Witness
from .partners import Partners
from .receiving import MessageResult, Receiver
from .routing import Router
from .sending import Deliveries
from .metrics import NodeMetrics
from .national import NationalSystem
from .problems import PROBLEM_MEDIA_TYPE, Problem
from .records import RecordError, own_keys, verify_record
from .storage import sqlite_audit, sqlite_log
from .storage.sqlite_audit import AuditQuery
from .storage.sqlite_rows import ts
from .storage import (
    POSITION_DIGITS, Delivery, InvalidCursor, OutboxItem, Store, Targeting, TimelineEntry, TimelineKey,
)

log = logging.getLogger(__name__)

JWS_MEDIA_TYPE = "application/jose"
MAX_EXCHANGE_BATCH = 1000
MAX_POSITION = 10**POSITION_DIGITS - 1  # the highest catch-up position (docs/protocol.md)
API_VERSION = "1"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def problem_response(problem: Problem, instance: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(problem.body(instance), ensure_ascii=False).encode(),
        status=problem.status,
        content_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


_AIOHTTP_PROBLEMS = {
    404: ("not-found", "there is no such resource; see /openapi.json for the API"),
    405: ("method-not-allowed", "this resource does not take that method; see /openapi.json"),
    413: ("body-too-large", "the body is larger than this node accepts"),
}


def problem_middleware(metrics: NodeMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Problem as problem:
            response = problem_response(problem, request.path)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
            fallback = ("invalid-parameter", exc.reason) if exc.status < 500 else ("internal-error", exc.reason)
            code, detail = _AIOHTTP_PROBLEMS.get(exc.status, fallback)
            kept = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}  # RFC 9110 needs it on 405
            response = problem_response(Problem(code, detail), request.path, kept)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = problem_response(
                Problem("internal-error", "the node failed on this request; it has been logged, try again"),
                request.path,
            )
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.requests.labels(name, request.method, str(response.status)).observe(time.perf_counter() - started)
        return response

    return middleware


@dataclass(slots=True)
class NodeApi:
    config: NodeConfig
    store: Store
    ingest: Ingest
    access: Access
    keystore: KeyStore
    metrics: NodeMetrics
    partners: Partners
    receiver: Receiver
    deliveries: Deliveries
    router: Router
    recognition: Recognition
    unsealing: Unsealing
    national: NationalSystem
    audit: AuditLog
    witness: Witness

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/seal-events", self.post_seal_events),
            web.post("/v1/control-results", self.post_control_result),
            web.post("/v1/verify", self.post_verify_record),
            web.get("/v1/records/{message_id}", self.get_record),
            web.post("/v1/itineraries", self.post_itinerary),
            web.post("/v1/exchange/messages", self.post_exchange_messages),
            web.get("/v1/exchange/partners/{node_id}/messages", self.get_partner_messages),
            web.get("/v1/outbox", self.get_outbox),
            web.post("/v1/outbox/{partner}/retry", self.post_outbox_retry),
            web.post("/v1/arrivals", self.post_arrival),
            web.post("/v1/consignments/{ref_type}/{ref_id}/decision", self.post_decision),
            web.post("/v1/consignments/{ref_type}/{ref_id}/targeting", self.post_targeting),
            web.get("/v1/consignments/{ref_type}/{ref_id}", self.get_consignment),
            web.get("/v1/containers/{container}", self.get_container),
            web.post("/v1/unseal-authorizations", self.post_unseal_authorization),
            web.get("/v1/unseal-authorizations", self.get_unseal_authorizations),
            web.get("/v1/unseal-authorizations/{authorization_id}", self.get_unseal_authorization),
            web.get("/v1/alarms", self.get_alarms),
            web.post("/v1/alarms/{alarm_id}/acknowledgement", self.post_alarm_acknowledgement),
            web.get("/v1/containers/{container}/events", self.get_container_events),
            web.get("/v1/seals/{seal_id}/events", self.get_seal_events),
            web.get("/v1/locks/{lock_id}/events", self.get_lock_events),
            web.get("/v1/log/checkpoint", self.get_log_checkpoint),
            web.post("/v1/log/checkpoint", self.post_log_checkpoint),
            web.get("/v1/log/proofs/{message_id}", self.get_log_proof),
            web.get("/v1/log/consistency", self.get_log_consistency),
            web.post("/v1/log/witness/add-checkpoint", self.post_add_checkpoint),
            web.get("/v1/audit/records", self.get_audit_records),
            web.get("/v1/audit/evidence", self.get_audit_evidence),
            web.get("/v1/log/witness/evidence", self.get_witness_evidence),
            web.get("/.well-known/jwks.json", self.get_jwks),
            web.get("/.well-known/mrx-key-statements", self.get_key_statements),
            web.get("/.well-known/mrx", self.get_discovery),
            web.get("/healthz", self.get_healthz),
            web.get("/readyz", self.get_readyz),
            web.get("/metrics", self.get_metrics),
            web.get("/openapi.json", self.get_openapi),
        ]

    # -- writes -------------------------------------------------------------

    async def _json_body(self, request: web.Request) -> Any:
        media = request.content_type
        if media != "application/json":
            raise Problem("unsupported-media-type", f"send the body as application/json, not {media!r}")
        return parse_json(await read_body(request, self.config.limits.max_body_bytes))

    async def post_seal_events(self, request: web.Request) -> web.Response:
        gateway = await self.access.authenticate(request.headers.get("Authorization"), "gateway")
        events, batch = seal_event_items(await self._json_body(request), self.config.limits.max_batch_events)
        if batch:
            results = await self.ingest.seal_events(gateway, events, "/events")
            counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected")}
            return json_response({**counts, "results": [_event_json(r, request.path) for r in results]})
        (result,) = await self.ingest.seal_events(gateway, events)
        if result.problem is not None:
            raise result.problem
        return json_response(_event_json(result, request.path), status=201 if result.status == "accepted" else 200)

    async def post_control_result(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        answer = await self.national.control_result(await self._json_body(request))
        return json_response(
            {**answer, "record": f"/v1/records/{answer['message_id']}"},
            status=201 if answer["status"] == "accepted" else 200,
        )

    async def post_verify_record(self, request: web.Request) -> web.Response:
        """Verify a record against this node's keys: the full check a partner makes."""
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        if request.content_type != JWS_MEDIA_TYPE:
            raise Problem("unsupported-media-type", f"send the record as {JWS_MEDIA_TYPE} (the compact JWS)")
        max_xml = self.config.limits.max_xml_bytes
        token = (await read_body(request, max_compact_bytes(max_xml))).strip()
        self.keystore.reload()
        try:
            verified = verify_record(token, own_keys(self.config.node_id, self.keystore.keyring()), max_xml_bytes=max_xml)
        except (JwsError, XmlError, RecordError) as exc:
            raise Problem(str(exc.code), exc.detail) from None
        record = verified.record
        stored = await self.store.record(record.message_id)
        return json_response(
            {
                "valid": True,
                "message_id": str(record.message_id),
                "message_type": record.message_type,
                "sender": record.sender,
                "recipients": list(record.recipients),
                "prepared_at": iso(record.prepared_at),
                "kid": record.kid,
                "key_status": verified.key.key.status,
                "held_by_this_node": stored is not None and stored.jws == record.jws,
            }
        )

    async def post_itinerary(self, request: web.Request) -> web.Response:
        """A consignment's itinerary from the national system: which partners get its records (routing.py)."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        return json_response(await self.national.itinerary(await self._json_body(request)))

    # -- recognition at the border (docs/recognition.md) ------------------------

    def _consignment(self, request: web.Request) -> ConsignmentReference:
        data = {"type": request.match_info["ref_type"], "id": request.match_info["ref_id"]}
        try:
            return ConsignmentReferenceIn.model_validate(data).to_domain()
        except ValidationError as exc:
            raise Problem(
                "invalid-parameter",
                f"{data['type']}/{data['id'][:40]} is not a consignment reference: {validation_problem(exc).detail}",
            ) from None

    async def post_arrival(self, request: web.Request) -> web.Response:
        """The national system notifies an arrival at this office: decide for each consignment."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        return json_response(await self.national.arrival(await self._json_body(request)))

    async def post_decision(self, request: web.Request) -> web.Response:
        """Decide now, on demand, as of the arrival if there was one."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        decided = await self.recognition.decide(self._consignment(request))
        return json_response(await decided_json(decided, self.store))

    async def post_targeting(self, request: web.Request) -> web.Response:
        """National targeting: always wins over recognition; decided again at once if the consignment arrived."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        ref = self._consignment(request)
        data: TargetingIn = validate(TargetingIn, await self._json_body(request))
        decided = await self.recognition.target(ref, Targeting(data.reference, data.reason, datetime.now(timezone.utc)))
        return json_response(
            {
                "consignment": ref_json(ref),
                "targeting": {"reference": data.reference, "reason": data.reason},
                "decision": await decided_json(decided, self.store) if decided else None,
            }
        )

    async def get_consignment(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        ref = self._consignment(request)
        return json_response(await consignment_view(ref, self.store, self.router, self.recognition))

    async def get_container(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        container = request.match_info["container"]
        _check_param(identifiers.check_container(container))
        return json_response(await container_view(container, self.store, self.recognition))

    async def post_unseal_authorization(self, request: web.Request) -> web.Response:
        """An officer authorises opening one lock at this office, once, within a window (unsealing.py)."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        answer = await self.national.unseal_request(await self._json_body(request))
        return json_response(
            answer, status=201, headers={"Location": f"/v1/unseal-authorizations/{answer['authorization_id']}"}
        )

    async def get_unseal_authorizations(self, request: web.Request) -> web.Response:
        """A gateway fetches the authorisations for one of its locks: each a JWS its lock can verify."""
        caller = await self.access.authenticate(request.headers.get("Authorization"), "gateway", "national")
        lock_id = request.query.get("lock_id", "")
        _check_shape(lock_id, TOKEN, "lock_id")
        self._check_lock_scope(caller, lock_id)
        now = datetime.now(timezone.utc)
        entries = await self.store.authorisations([lock_id])
        return json_response(
            {
                "lock_id": lock_id,
                "authorizations": [
                    {
                        "authorization_id": str(e.authorisation.authorization_id),
                        "issuer": e.issuer,
                        "seal_id": e.authorisation.seal_id,
                        "office": e.authorisation.office,
                        "valid_from": iso(e.authorisation.valid_from),
                        "valid_to": iso(e.authorisation.valid_to),
                        "state": state_of(e, now).value,
                        "used_by": str(e.used_by) if e.used_by else None,
                        "jws": e.jws.decode("ascii"),
                    }
                    for e in entries
                ],
            }
        )

    async def get_unseal_authorization(self, request: web.Request) -> web.Response:
        caller = await self.access.authenticate(request.headers.get("Authorization"), "gateway", "national")
        try:
            authorization_id = UUID(request.match_info["authorization_id"])
        except ValueError:
            raise Problem("invalid-parameter", "the authorisation ID is a UUID") from None
        entry = await self.store.authorisation(authorization_id)
        if entry is None:
            raise Problem("not-found", f"this node holds no unseal authorisation {authorization_id}")
        self._check_lock_scope(caller, entry.authorisation.lock_id)
        return web.Response(
            body=entry.jws,
            content_type=JWS_MEDIA_TYPE,
            headers={"Mrx-Authorization-State": state_of(entry, datetime.now(timezone.utc)).value},
        )

    def _check_lock_scope(self, caller: Caller, lock_id: str) -> None:
        if caller.credential.role == "gateway" and not caller.may_use_lock(lock_id):
            raise Problem(
                "lock-out-of-scope",
                f"gateway {caller.name!r} may not act for lock {lock_id!r}; ask the node operator to add it to its scope",
            )

    async def get_alarms(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        limit = _int_param(request, "limit", self.config.limits.page_size, 1, 1000)
        after = _int_param(request, "after", 0, 0, 2**62)
        open_only = request.query.get("open", "false")
        if open_only not in ("true", "false"):
            raise Problem("invalid-parameter", "open is true or false")
        container = request.query.get("container")
        if container is not None:
            _check_param(identifiers.check_container(container))
        entries = await self.store.alarms(container=container, open_only=open_only == "true", after=after, limit=limit)
        next_link = None
        if len(entries) == limit:
            next_link = f"{request.path}?{urlencode({**request.query, 'after': entries[-1].seq})}"
        return json_response({"alarms": [alarm_json(e) for e in entries], "next": next_link})

    async def post_alarm_acknowledgement(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        try:
            alarm_id = UUID(request.match_info["alarm_id"])
        except ValueError:
            raise Problem("invalid-parameter", "the alarm ID is a UUID") from None
        data: AcknowledgementIn = validate(AcknowledgementIn, await self._json_body(request))
        entry = await self.store.acknowledge_alarm(alarm_id, data.officer, datetime.now(timezone.utc))
        if entry is None:
            raise Problem("not-found", f"this node holds no alarm {alarm_id}")
        return json_response(alarm_json(entry))

    # -- exchange with partners (docs/protocol.md) ----------------------------

    async def post_exchange_messages(self, request: web.Request) -> web.Response:
        """A partner delivers records; each is answered with a signed receipt (receiving.py)."""
        if request.content_type != "application/json":
            raise Problem("unsupported-media-type", "send the batch as application/json")
        body = await read_body(request, self.config.limits.max_body_bytes)
        partner = await self.partners.authenticate(request.headers.get("Authorization"), "POST", request.raw_path, body)
        self.deliveries.contact(partner)
        data = parse_json(body)
        messages = data.get("messages") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict) or set(data) != {"messages"} or not isinstance(messages, list) or not messages
            or not all(isinstance(m, str) for m in messages)
        ):
            raise Problem("validation-failed", 'a batch is {"messages": ["<compact JWS>", ...]} with at least one')
        if len(messages) > MAX_EXCHANGE_BATCH:
            raise Problem(
                "batch-too-large", f"the batch has {len(messages)} messages; send at most {MAX_EXCHANGE_BATCH}"
            )
        position = _int_param(request, "cursor", 0, 0, MAX_POSITION)  # the batch's last catch-up position; 0: none
        results = await self.receiver.receive(partner, [m.encode("utf-8") for m in messages])
        counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected", "deferred")}
        if position and not counts["deferred"]:  # all stored or answered: catch-up need not fetch them again
            self.deliveries.puller.pushed(partner, position)
        receipts: dict[bytes, int] = {}  # each receipt once; results name theirs by its index
        for result in results:
            if result.receipt is not None:
                receipts.setdefault(result.receipt, len(receipts))
        return json_response({
            **counts,
            "receipts": [jws.decode("ascii") for jws in receipts],
            "results": [_message_json(r, receipts, request.path) for r in results],
        })

    async def get_partner_messages(self, request: web.Request) -> web.Response:
        """Catch-up: the records addressed to the calling partner, oldest first, from a cursor."""
        partner = await self.partners.authenticate(request.headers.get("Authorization"), "GET", request.raw_path, b"")
        self.deliveries.contact(partner)
        wanted = request.match_info["node_id"]
        if wanted != partner:
            raise Problem("forbidden", f"{partner} may fetch only the records addressed to itself, not to {wanted[:40]!r}")
        limit = _int_param(request, "limit", self.config.exchange.batch_size, 1, MAX_EXCHANGE_BATCH)
        cursor = request.query.get("cursor")
        try:
            items, next_cursor = await self.store.addressed_to(partner, cursor, limit)
        except InvalidCursor as exc:
            raise Problem("invalid-parameter", f"{exc}; start again without a cursor") from None
        return json_response(
            {
                "messages": [i.jws.decode("ascii") for i in items],
                "cursor": items[-1].cursor if items else cursor,
                "more": next_cursor is not None,
            }
        )

    async def get_outbox(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        partner = request.query.get("partner")
        if partner is not None and partner not in self.partners:
            raise Problem("invalid-parameter", f"{partner[:40]!r} is not a partner of this node")
        raw_state = request.query.get("state")
        try:
            state = Delivery(raw_state) if raw_state is not None else None
        except ValueError:
            raise Problem(
                "invalid-parameter", f"state is one of {', '.join(d.value for d in Delivery)}, not {raw_state[:20]!r}"
            ) from None
        after = _int_param(request, "after", 0, 0, 2**62)
        limit = _int_param(request, "limit", self.config.limits.page_size, 1, 1000)
        items = await self.store.outbox(partner, state, after, limit)
        next_link = None
        if len(items) == limit:
            query = {k: v for k, v in (("partner", partner), ("state", raw_state)) if v is not None}
            next_link = f"{request.path}?{urlencode({**query, 'after': items[-1].outbox_id, 'limit': limit})}"
        return json_response({"items": [_outbox_json(i) for i in items], "next": next_link})

    async def post_outbox_retry(self, request: web.Request) -> web.Response:
        """Queue failed deliveries to a partner again (after the cause was fixed)."""
        await self.access.authenticate(request.headers.get("Authorization"), "national")
        partner = request.match_info["partner"]
        if partner not in self.partners:
            raise Problem("not-found", f"{partner[:40]!r} is not a partner of this node")
        requeued = await self.store.retry_outbox(partner, None)
        self.deliveries.contact(partner)
        return json_response({"partner": partner, "requeued": requeued})

    # -- reads --------------------------------------------------------------

    async def get_record(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        message_id = _message_id(request)
        record = await self.store.record(message_id)
        if record is None:
            raise Problem("not-found", f"this node holds no record {message_id}")
        return web.Response(
            body=record.jws,
            content_type=JWS_MEDIA_TYPE,
            headers={
                "Mrx-Message-Type": record.message_type,
                "Mrx-Sender": record.sender,
                "Digest": "sha-256=" + record.digest.hex(),
                "Cache-Control": "private, max-age=31536000, immutable",
            },
        )

    async def _timeline(self, request: web.Request, key: TimelineKey, value: str) -> dict[str, Any]:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        limit = _int_param(request, "limit", self.config.limits.page_size, 1, 1000)
        cursor = request.query.get("cursor")
        try:
            page = await self.store.timeline(key, value, cursor, limit)
        except InvalidCursor as exc:
            raise Problem("invalid-parameter", f"{exc}; start again without a cursor") from None
        next_link = None
        if page.next_cursor is not None:
            next_link = f"{request.path}?limit={limit}&cursor={page.next_cursor}"
        return {key.value: value, "events": [_entry_json(e) for e in page.items], "next": next_link}

    async def get_container_events(self, request: web.Request) -> web.Response:
        container = request.match_info["container"]
        _check_param(identifiers.check_container(container))
        return json_response(await self._timeline(request, TimelineKey.CONTAINER, container))

    async def get_seal_events(self, request: web.Request) -> web.Response:
        seal_id = request.match_info["seal_id"]
        _check_shape(seal_id, SEAL_ID, "seal ID")
        return json_response(await self._timeline(request, TimelineKey.SEAL, seal_id))

    async def get_lock_events(self, request: web.Request) -> web.Response:
        lock_id = request.match_info["lock_id"]
        _check_shape(lock_id, TOKEN, "lock ID")
        body = await self._timeline(request, TimelineKey.LOCK, lock_id)
        gaps = await self.store.sequence_gaps(lock_id)
        body["gaps"] = [{"first_missing": g.first_missing, "last_missing": g.last_missing} for g in gaps]
        return json_response(body)

    # -- the audit log (docs/audit.md) ---------------------------------------------

    async def get_log_checkpoint(self, request: web.Request) -> web.Response:
        """The latest signed checkpoint: public, like the JWKS (it says only how long the log is and its root)."""
        latest = await self.audit.latest()
        _, note = latest if latest is not None else await self.audit.checkpoint()
        return web.Response(text=note, content_type="text/plain", headers={"Cache-Control": "no-cache"})

    async def post_log_checkpoint(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        _, note = await self.audit.checkpoint()
        return web.Response(text=note, content_type="text/plain", headers={"Cache-Control": "no-store"})

    async def get_log_proof(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        message_id = _message_id(request)
        proof = await self.audit.proof_for(str(message_id))
        if proof is None:
            raise Problem("not-found", f"this node's log holds no record {message_id}")
        return web.Response(text=proof, content_type="text/plain", headers={"Cache-Control": "no-store"})

    async def get_log_consistency(self, request: web.Request) -> web.Response:
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        if not {"from", "to"} <= set(request.query):
            raise Problem("invalid-parameter", "give ?from=M&to=N, two tree sizes with M <= N")
        old, new = (_int_param(request, name, 0, 0, 2**62) for name in ("from", "to"))
        latest = await self.audit.latest()
        signed = latest[0] if latest is not None else 0
        if old > new or new > signed:
            raise Problem(
                "invalid-parameter",
                f"a consistency proof goes from a smaller size to a larger one no larger than the latest "
                f"checkpoint ({signed}); asked from {old} to {new}",
            )
        proof = await self.audit.consistency(old, new)
        return json_response({"from": old, "to": new, "proof": [base64.b64encode(h).decode() for h in proof]})

    def _audit_query(self, request: web.Request, limit: int) -> AuditQuery:
        q = request.query
        unknown = set(q) - {"message_id", "container", "seal", "consignment", "office", "since", "until", "after",
                            "limit", "record", "since_size"}
        if unknown:
            raise Problem("invalid-parameter", f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        consignment = None
        if "consignment" in q:
            ref_type, _, ref_id = q["consignment"].partition(":")
            if not ref_type or not ref_id:
                raise Problem("invalid-parameter", "write consignment=TYPE:ID, e.g. consignment=MRN:26CN000000000012A1")
            consignment = (ref_type, ref_id)
        times = {}
        for name in ("since", "until"):
            if name in q:
                try:
                    when = datetime.fromisoformat(q[name])
                except ValueError:
                    when = None
                if when is None or when.tzinfo is None:
                    raise Problem("invalid-parameter", f"{name} is an ISO 8601 time with its offset, "
                                                       f"e.g. 2026-11-22T04:00:00Z, not {q[name][:40]!r}")
                times[name] = ts(when)
        message_id = q.get("message_id", q.get("record"))
        if message_id is not None:
            try:
                message_id = str(UUID(message_id))
            except ValueError:
                raise Problem("invalid-parameter", f"{message_id[:64]!r} is not a message ID (a UUID)") from None
        return AuditQuery(message_id=message_id, container=q.get("container"), seal=q.get("seal"),
                          consignment=consignment, office=q.get("office"), since=times.get("since"),
                          until=times.get("until"), after_leaf=_int_param(request, "after", -1, -1, 2**62),
                          limit=_int_param(request, "limit", limit, 1, 1000))

    async def get_audit_records(self, request: web.Request) -> web.Response:
        """Search the log by what records speak of: container, seal, consignment, message ID, office, time."""
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        query = self._audit_query(request, self.config.limits.page_size)
        found = await self.store.log_read(lambda db: sqlite_audit.search(db, query))
        body: dict[str, Any] = {
            "records": [
                {"leaf_index": f.leaf_index, "message_id": f.message_id, "message_type": f.message_type,
                 "sender": f.sender, "prepared_at": f.prepared_at, "record": f"/v1/records/{f.message_id}",
                 "proof": f"/v1/log/proofs/{f.message_id}"}
                for f in found
            ]
        }
        if len(found) == query.limit:
            body["next"] = f"{request.path}?{urlencode({**request.query, 'after': found[-1].leaf_index})}"
        return json_response(body)

    async def get_audit_evidence(self, request: web.Request) -> web.Response:
        """An evidence bundle (docs/audit.md) for ?record=ID or ?container=NUMBER; ?since_size=N adds consistency."""
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        if ("record" in request.query) == ("container" in request.query):
            raise Problem("invalid-parameter", "ask for one of ?record=MESSAGE_ID or ?container=NUMBER")
        query = self._audit_query(request, 1)
        since = _int_param(request, "since_size", -1, 0, 2**62)
        self.keystore.reload()
        try:
            bundle = await self.audit.evidence(query, self.keystore.statements(), since if since >= 0 else None)
        except ValueError as exc:
            raise Problem("invalid-parameter", str(exc)) from None
        if bundle is None:
            raise Problem("not-found", "this node's log holds no record for that")
        return json_response(bundle, headers={"Content-Disposition": 'attachment; filename="evidence.json"'})

    async def post_add_checkpoint(self, request: web.Request) -> web.Response:
        """C2SP tlog-witness: a partner's log asks this node to cosign its checkpoint (mrx.node.witness)."""
        body = await read_body(request, MAX_REQUEST_BYTES)
        try:
            cosignature = await self.witness.add_checkpoint(body)
        except Conflict as conflict:
            return web.Response(status=409, text=f"{conflict.held_size}\n", content_type=SIZE_MEDIA_TYPE)
        return web.Response(text=cosignature, content_type="text/plain")

    async def get_witness_evidence(self, request: web.Request) -> web.Response:
        """Checkpoints partner logs signed that contradict ones this node cosigned: proof of a rewritten history."""
        await self.access.authenticate(request.headers.get("Authorization"), "national", "auditor")
        return json_response({"evidence": await self.store.log_read(sqlite_log.evidence)})

    async def get_jwks(self, request: web.Request) -> web.Response:
        self.keystore.reload()  # a rotation or revocation made with `mrx keys` while the node runs
        return json_response(self.keystore.jwks(), headers={"Cache-Control": "public, max-age=60"})

    async def get_key_statements(self, request: web.Request) -> web.Response:
        """The signed chain of key-set statements partners follow from their trust anchors (docs/keys.md)."""
        self.keystore.reload()
        statements = [token.decode("ascii") for token in self.keystore.statements()]
        return json_response({"statements": statements}, headers={"Cache-Control": "public, max-age=60"})

    async def get_discovery(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "node_id": self.config.node_id,
                "office": self.config.office,
                "api_version": API_VERSION,
                "jwks_uri": "/.well-known/jwks.json",
                "key_statements_uri": "/.well-known/mrx-key-statements",
                "openapi_uri": "/openapi.json",
                "message_namespace": "urn:mrx:datamodel:MRX:1",
                "log": {
                    "origin": self.audit.origin,
                    "verifier_key": str(self.audit.verifier),
                    "checkpoint_uri": "/v1/log/checkpoint",
                },
            }
        )

    async def get_healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def get_readyz(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
        except Exception as exc:
            raise Problem("unavailable", f"the database is not ready ({exc}); see the node's log") from None
        return json_response({"status": "ready", "node_id": self.config.node_id})

    async def get_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def get_openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi.document())


def _message_id(request: web.Request) -> UUID:
    raw = request.match_info["message_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise Problem("invalid-parameter", f"{raw[:64]!r} is not a message ID (a UUID)") from None


def seal_event_items(data: Any, max_batch: int) -> tuple[list[Any], bool]:
    """The events of a seal-event body (HTTP or MQTT): one event object, or a batch ``{"events": [...]}`` (True)."""
    if isinstance(data, dict) and "events" in data:
        events = data["events"]
        if set(data) != {"events"} or not isinstance(events, list) or not events:
            raise Problem(
                "validation-failed", 'a batch is {"events": [event, ...]} with at least one event and nothing else'
            )
        if len(events) > max_batch:
            raise Problem("batch-too-large", f"the batch has {len(events)} events; send at most {max_batch} per request")
        return events, True
    if not isinstance(data, dict):
        raise Problem("validation-failed", 'send one event as a JSON object, or a batch as {"events": [...]}')
    return [data], False


def _event_json(result: EventResult, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": result.index,
        "event_id": str(result.event_id) if result.event_id else None,
        "status": result.status,
    }
    if result.message_id is not None:
        out["message_id"] = str(result.message_id)
        out["record"] = f"/v1/records/{result.message_id}"
        out["order"] = result.order.value if result.order else None
    if result.problem is not None:
        out["problem"] = result.problem.body(path)
    return out


def _message_json(result: MessageResult, receipts: dict[bytes, int], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": result.index,
        "message_id": str(result.message_id) if result.message_id else None,
        "digest": result.digest.hex(),
        "status": result.status,
        "receipt": receipts[result.receipt] if result.receipt is not None else None,
    }
    if result.problem is not None:
        out["problem"] = result.problem.body(path)
    return out


def _outbox_json(item: OutboxItem) -> dict[str, Any]:
    return {
        "outbox_id": item.outbox_id,
        "partner": item.partner,
        "message_id": str(item.message_id),
        "message_type": item.message_type,
        "state": item.state.value,
        "attempts": item.attempts,
        "last_attempt_at": iso(item.last_attempt_at) if item.last_attempt_at else None,
        "last_error": item.last_error,
        "receipt": f"/v1/records/{item.receipt_message_id}" if item.receipt_message_id else None,
        "delivered_at": iso(item.delivered_at) if item.delivered_at else None,
    }


def _entry_json(e: TimelineEntry) -> dict[str, Any]:
    location: dict[str, Any] | None = None
    if e.locode or e.latitude:
        location = {"locode": e.locode, "lat": e.latitude, "lon": e.longitude}
    return {
        "event_id": str(e.event_id),
        "message_id": str(e.message_id),
        "type": e.event_type,
        "lock_id": e.lock_id,
        "seal_id": e.seal_id,
        "container": e.container,
        "seq": e.lock_sequence,
        "order": e.order.value,
        "device_time": iso(e.device_time),
        "receipt_time": iso(e.receipt_time),
        "location": location,
        "condition": e.condition,
        "gateway_id": e.gateway_id,
    }


_WHOLE = re.compile(r"-?[0-9]{1,19}")


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not _WHOLE.fullmatch(raw) or not low <= int(raw) <= high:
        raise Problem("invalid-parameter", f"{name} must be a whole number from {low} to {high}, not {raw[:20]!r}")
    return int(raw)


def _check_param(problem: str | None) -> None:
    if problem is not None:
        raise Problem("invalid-parameter", problem)


def _check_shape(value: str, shape: re.Pattern[str], what: str) -> None:
    if not shape.fullmatch(value):
        raise Problem("invalid-parameter", f"{value[:40]!r} is not a {what} ({shape.pattern})")
