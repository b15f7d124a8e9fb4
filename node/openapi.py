"""The OpenAPI 3.1 description of the node's HTTP API, served at ``/openapi.json``.

Request schemas come from the same pydantic models that validate the input,
so the document cannot drift from what the server accepts; response schemas
are written here beside the paths. ``tests/node/test_openapi.py`` checks that
every route the server has is described and every described route exists.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from mrx.schemas.codes import AlarmType, ConsignmentReferenceType, DecisionOutcome, DecisionReason, SealChainVerdict

from .inputs import (
    SEAL_ID,
    TOKEN,
    AcknowledgementIn,
    ArrivalIn,
    ControlResultIn,
    ItineraryIn,
    SealEventIn,
    TargetingIn,
    UnsealAuthorizationIn,
)
from .problems import CATALOGUE
from .storage import POSITION_PATTERN

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        codes = sorted(code for code, kind in CATALOGUE.items() if kind.status == status)
        out[str(status)] = {
            "description": "Problem (RFC 9457); code one of: " + ", ".join(codes),
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
    return out


_BEARER = [{"bearer": []}]
_PARTNER = [{"partnerSignature": []}]


def _timeline_path(param: str, pattern: str, description: str, with_gaps: bool = False) -> dict[str, Any]:
    schema = _ref("LockTimeline") if with_gaps else _ref("Timeline")
    return {
        "get": {
            "summary": description,
            "security": _BEARER,
            "parameters": [
                {"name": param, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "opaque: pass the 'next' link of the previous page",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,512}$"},
                },
            ],
            "responses": {"200": _json(schema, "A page of the timeline"), **_problems(400, 401, 403)},
        }
    }


@cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (
        SealEventIn, ControlResultIn, ItineraryIn, ArrivalIn, TargetingIn, UnsealAuthorizationIn, AcknowledgementIn,
    ):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["SealEventBatch"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "description": (
                    "Each item should be a SealEventIn. Items are validated one by one: a bad item is answered "
                    "with its own problem in `results` and does not stop the good ones, so the envelope "
                    "accepts any item."
                ),
                "items": {},
            }
        },
    }
    schemas["Problem"] = {
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string", "enum": sorted(CATALOGUE)},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["pointer", "detail"],
                    "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    }
    schemas["EventResult"] = {
        "type": "object",
        "required": ["index", "event_id", "status"],
        "properties": {
            "index": {"type": "integer"},
            "event_id": {"type": ["string", "null"], "format": "uuid"},
            "status": {"type": "string", "enum": ["accepted", "duplicate", "rejected"]},
            "message_id": {"type": "string", "format": "uuid"},
            "record": {"type": "string"},
            "order": {"type": ["string", "null"], "enum": ["first", "next", "gap", "late", None]},
            "problem": _ref("Problem"),
        },
    }
    schemas["BatchResult"] = {
        "type": "object",
        "required": ["accepted", "duplicate", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "duplicate": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {"type": "array", "items": _ref("EventResult")},
        },
    }
    schemas["ControlResultAccepted"] = {
        "type": "object",
        "required": ["control_id", "status", "message_id", "record"],
        "properties": {
            "control_id": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "duplicate"]},
            "message_id": {"type": "string", "format": "uuid"},
            "record": {"type": "string"},
        },
    }
    schemas["Verification"] = {
        "type": "object",
        "required": ["valid", "message_id", "message_type", "sender", "recipients", "prepared_at", "kid",
                     "key_status", "held_by_this_node"],
        "properties": {
            "valid": {"const": True},
            "message_id": {"type": "string", "format": "uuid"},
            "message_type": {"type": "string"},
            "sender": {"type": "string"},
            "recipients": {"type": "array", "items": {"type": "string"}},
            "prepared_at": {"type": "string", "format": "date-time"},
            "kid": {"type": "string"},
            "key_status": {"type": "string", "enum": ["active", "retired", "revoked"]},
            "held_by_this_node": {"type": "boolean"},
        },
    }
    entry = {
        "type": "object",
        "required": ["event_id", "message_id", "type", "lock_id", "seal_id", "container", "seq", "order",
                     "device_time", "receipt_time", "location", "condition", "gateway_id"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "message_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string"},
            "lock_id": {"type": "string"},
            "seal_id": {"type": "string"},
            "container": {"type": "string"},
            "seq": {"type": "integer"},
            "order": {"type": "string", "enum": ["first", "next", "gap", "late"]},
            "device_time": {"type": "string", "format": "date-time"},
            "receipt_time": {"type": "string", "format": "date-time"},
            "location": {
                "type": ["object", "null"],
                "properties": {
                    "locode": {"type": ["string", "null"]},
                    "lat": {"type": ["string", "null"]},
                    "lon": {"type": ["string", "null"]},
                },
            },
            "condition": {"type": "string"},
            "gateway_id": {"type": "string"},
        },
    }
    schemas["TimelineEntry"] = entry
    timeline_props = {
        "events": {"type": "array", "items": _ref("TimelineEntry")},
        "next": {"type": ["string", "null"]},
    }
    schemas["Timeline"] = {"type": "object", "required": ["events", "next"], "properties": timeline_props}
    schemas["LockTimeline"] = {
        "type": "object",
        "required": ["events", "next", "gaps"],
        "properties": {
            **timeline_props,
            "gaps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["first_missing", "last_missing"],
                    "properties": {"first_missing": {"type": "integer"}, "last_missing": {"type": "integer"}},
                },
            },
        },
    }

    schemas["ItineraryAccepted"] = {
        "type": "object",
        "required": ["consignment", "offices", "containers", "recipients", "unserved_offices"],
        "properties": {
            "consignment": {"type": "object"},
            "offices": {"type": "array", "items": {"type": "string"}},
            "containers": {"type": "array", "items": {"type": "string"}},
            "recipients": {
                "type": "array", "items": {"type": "string"},
                "description": "the partner nodes that will get this consignment's records",
            },
            "unserved_offices": {
                "type": "array", "items": {"type": "string"},
                "description": "offices on the itinerary that no partner of this node serves: they get nothing",
            },
        },
    }
    uuid = {"type": "string", "format": "uuid"}
    ref = {
        "type": "object", "required": ["type", "id"],
        "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
    }
    reason = {
        "type": "object",
        "required": ["code", "description", "evidence"],
        "properties": {
            "code": {"type": "string", "enum": [c.value for c in DecisionReason]},
            "description": {"type": "string"},
            "evidence": {"type": "array", "items": uuid, "description": "message IDs of the records that prove it"},
        },
    }
    schemas["Decision"] = {
        "type": "object",
        "required": ["message_id", "decision_id", "office", "consignments", "outcome", "decided_at", "reasons"],
        "properties": {
            "message_id": uuid,
            "sender": {"type": "string"},
            "decision_id": uuid,
            "office": {"type": "string"},
            "consignments": {"type": "array", "items": ref},
            "outcome": {"type": "string", "enum": [o.value for o in DecisionOutcome]},
            "decided_at": {"type": "string", "format": "date-time"},
            "containers": {"type": "array", "items": {"type": "string"}},
            "control_result_message_id": {"type": ["string", "null"]},
            "seal_chain_verdict": {"type": ["string", "null"], "enum": [v.value for v in SealChainVerdict] + [None]},
            "agreement_id": {"type": ["string", "null"]},
            "reasons": {"type": "array", "items": reason},
            "issued": {
                "type": "boolean",
                "description": "false: the same as this node's latest decision, so none was issued; the answer"
                " is then that standing decision, with its own message ID, decision ID and time",
            },
        },
    }
    schemas["DecisionList"] = {
        "type": "object", "required": ["decisions"],
        "properties": {"decisions": {"type": "array", "items": _ref("Decision")}},
    }
    schemas["TargetingAccepted"] = {
        "type": "object",
        "required": ["consignment", "targeting", "decision"],
        "properties": {
            "consignment": ref,
            "targeting": {"type": "object"},
            "decision": {"oneOf": [_ref("Decision"), {"type": "null"}]},
        },
    }
    schemas["ConsignmentView"] = {
        "type": "object",
        "description": "Everything an officer needs on one screen (docs/recognition.md)",
        "required": [
            "consignment", "office", "itinerary", "arrival", "targeting", "control_results", "seal_chains",
            "evaluation_now", "decisions", "alarms",
        ],
        "properties": {
            "consignment": ref,
            "office": {"type": "string"},
            "itinerary": {"type": ["object", "null"]},
            "arrival": {"type": ["object", "null"]},
            "targeting": {"type": "array", "items": {"type": "object"}},
            "control_results": {"type": "array", "items": {"type": "object"}},
            "seal_chains": {"type": "array", "items": {"type": "object"}},
            "evaluation_now": {"type": "object"},
            "decisions": {"type": "array", "items": _ref("Decision")},
            "alarms": {"type": "array", "items": _ref("Alarm")},
        },
    }
    schemas["ContainerView"] = {
        "type": "object",
        "required": ["container", "consignments", "events", "alarms"],
        "properties": {
            "container": {"type": "string"},
            "consignments": {"type": "array", "items": {"type": "object"}},
            "events": {"type": "array", "items": {"type": "object"}},
            "alarms": {"type": "array", "items": _ref("Alarm")},
        },
    }
    schemas["Alarm"] = {
        "type": "object",
        "required": ["position", "alarm_id", "message_id", "raised_by", "type", "container", "raised_at", "description"],
        "properties": {
            "position": {"type": "integer"},
            "alarm_id": uuid,
            "message_id": uuid,
            "raised_by": {"type": "string"},
            "type": {"type": "string", "enum": [t.value for t in AlarmType]},
            "office": {"type": "string"},
            "lock_id": {"type": "string"},
            "seal_id": {"type": "string"},
            "container": {"type": "string"},
            "raised_at": {"type": "string", "format": "date-time"},
            "description": {"type": "string"},
            "consignments": {"type": "array", "items": ref},
            "evidence": {"type": "array", "items": uuid},
            "acknowledged_at": {"type": ["string", "null"]},
            "acknowledged_by": {"type": ["string", "null"]},
        },
    }
    schemas["AlarmList"] = {
        "type": "object", "required": ["alarms", "next"],
        "properties": {"alarms": {"type": "array", "items": _ref("Alarm")}, "next": {"type": ["string", "null"]}},
    }
    schemas["UnsealAuthorizationIssued"] = {
        "type": "object",
        "required": ["authorization_id", "message_id", "lock_id", "seal_id", "office", "valid_from", "valid_to", "jws"],
        "properties": {
            "authorization_id": uuid,
            "message_id": uuid,
            "lock_id": {"type": "string"},
            "seal_id": {"type": "string"},
            "container": {"type": "string"},
            "office": {"type": "string"},
            "valid_from": {"type": "string", "format": "date-time"},
            "valid_to": {"type": "string", "format": "date-time"},
            "recipients": {"type": "array", "items": {"type": "string"}},
            "jws": {"type": "string", "description": "the signed UnsealAuthorization, compact JWS"},
        },
    }
    schemas["UnsealAuthorizationList"] = {
        "type": "object",
        "required": ["lock_id", "authorizations"],
        "properties": {
            "lock_id": {"type": "string"},
            "authorizations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["authorization_id", "state", "jws"],
                    "properties": {
                        "authorization_id": uuid,
                        "state": {"type": "string", "enum": ["pending", "valid", "used", "expired"]},
                        "jws": {"type": "string"},
                    },
                },
            },
        },
    }
    schemas["MessageBatch"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string"}},
        },
    }
    schemas["MessageResult"] = {
        "type": "object",
        "required": ["index", "message_id", "digest", "status", "receipt"],
        "properties": {
            "index": {"type": "integer"},
            "message_id": {"type": ["string", "null"], "format": "uuid"},
            "digest": {"type": "string", "description": "hex SHA-256 of the JWS received"},
            "status": {"type": "string", "enum": ["accepted", "duplicate", "rejected", "deferred"]},
            "receipt": {
                "type": ["integer", "null"], "minimum": 0,
                "description": "the index in `receipts` of the signed Receipt acknowledging this message"
                " (none when deferred)",
            },
            "problem": _ref("Problem"),
        },
    }
    schemas["MessageBatchResult"] = {
        "type": "object",
        "required": ["accepted", "duplicate", "rejected", "deferred", "receipts", "results"],
        "properties": {
            **{k: {"type": "integer"} for k in ("accepted", "duplicate", "rejected", "deferred")},
            "receipts": {
                "type": "array", "items": {"type": "string"},
                "description": "the signed Receipts (compact JWS) answering the batch, each once: one per run of"
                " messages answered now, and a repeat's original",
            },
            "results": {"type": "array", "items": _ref("MessageResult")},
        },
    }
    schemas["MessagePage"] = {
        "type": "object",
        "required": ["messages", "cursor", "more"],
        "properties": {
            "messages": {"type": "array", "items": {"type": "string"}},
            "cursor": {
                "type": ["string", "null"], "pattern": f"^{POSITION_PATTERN}$",
                "description": "the position of the page's last record, in decimal: pass as ?cursor= for the next page",
            },
            "more": {"type": "boolean"},
        },
    }
    schemas["OutboxPage"] = {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["outbox_id", "partner", "message_id", "message_type", "state", "attempts"],
                    "properties": {
                        "outbox_id": {"type": "integer"},
                        "partner": {"type": "string"},
                        "message_id": {"type": "string", "format": "uuid"},
                        "message_type": {"type": "string"},
                        "state": {"type": "string", "enum": ["queued", "in-flight", "delivered", "failed"]},
                        "attempts": {"type": "integer"},
                        "last_attempt_at": {"type": ["string", "null"]},
                        "last_error": {"type": ["string", "null"]},
                        "receipt": {"type": ["string", "null"]},
                        "delivered_at": {"type": ["string", "null"]},
                    },
                },
            },
            "next": {"type": ["string", "null"]},
        },
    }
    node_param = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ref_params = [
        {
            "name": "ref_type", "in": "path", "required": True,
            "schema": {"type": "string", "enum": [t.value for t in ConsignmentReferenceType]},
        },
        {"name": "ref_id", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    paths: dict[str, Any] = {
        "/v1/seal-events": {
            "post": {
                "summary": "Submit one seal event, or a batch, from a lock gateway",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"oneOf": [_ref("SealEventIn"), _ref("SealEventBatch")]}}
                    },
                },
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("EventResult"), _ref("BatchResult")]},
                        "A batch was processed (per-event results), or a single event was a repeat",
                    ),
                    "201": _json(_ref("EventResult"), "The event is stored as a signed record"),
                    **_problems(400, 401, 403, 409, 413, 415, 422),
                },
            }
        },
        "/v1/control-results": {
            "post": {
                "summary": "Submit an inspection (control) result from the national customs system",
                "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ControlResultIn")}}},
                "responses": {
                    "200": _json(_ref("ControlResultAccepted"), "A repeat of a stored result"),
                    "201": _json(_ref("ControlResultAccepted"), "The result is stored as a signed record"),
                    **_problems(400, 401, 403, 409, 413, 415, 422),
                },
            }
        },
        "/v1/verify": {
            "post": {
                "summary": "Verify a record (compact JWS) against this node's keys: signature, XSD, key validity",
                "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/jose": {"schema": {"type": "string"}}}},
                "responses": {
                    "200": _json(_ref("Verification"), "The record is valid"),
                    **_problems(400, 401, 403, 413, 415, 422),
                },
            }
        },
        "/v1/records/{message_id}": {
            "get": {
                "summary": "A signed record, as the compact JWS that was stored",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The compact JWS; its payload is the XML message",
                        "content": {"application/jose": {"schema": {"type": "string"}}},
                    },
                    **_problems(400, 401, 403, 404),
                },
            }
        },
        "/v1/itineraries": {
            "post": {
                "summary": "Register or replace a consignment's itinerary (routing: which partners get its records)",
                "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ItineraryIn")}}},
                "responses": {
                    "200": _json(_ref("ItineraryAccepted"), "The itinerary is stored"),
                    **_problems(400, 401, 403, 413, 415, 422),
                },
            }
        },
        "/v1/arrivals": {
            "post": {
                "summary": "The national system notifies an arrival at this office; a decision is taken for each consignment",
                "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ArrivalIn")}}},
                "responses": {
                    "200": _json(_ref("DecisionList"), "The signed decisions"),
                    **_problems(400, 401, 403, 413, 415, 422, 503),
                },
            }
        },
        "/v1/consignments/{ref_type}/{ref_id}": {
            "get": {
                "summary": "The officer's screen: itinerary, control results, seal chains, decisions, alarms",
                "security": _BEARER,
                "parameters": ref_params,
                "responses": {"200": _json(_ref("ConsignmentView"), "The consignment"), **_problems(400, 401, 403)},
            }
        },
        "/v1/consignments/{ref_type}/{ref_id}/decision": {
            "post": {
                "summary": "Take a recognition decision now (as of the arrival, if the consignment has arrived)",
                "security": _BEARER,
                "parameters": ref_params,
                "responses": {"200": _json(_ref("Decision"), "The signed decision"), **_problems(400, 401, 403, 503)},
            }
        },
        "/v1/consignments/{ref_type}/{ref_id}/targeting": {
            "post": {
                "summary": "National targeting: inspect this consignment whatever recognition says",
                "security": _BEARER,
                "parameters": ref_params,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TargetingIn")}}},
                "responses": {
                    "200": _json(_ref("TargetingAccepted"), "Stored; decided again if the consignment has arrived"),
                    **_problems(400, 401, 403, 413, 415, 422, 503),
                },
            }
        },
        "/v1/containers/{container}": {
            "get": {
                "summary": "A container: the consignments it travels for, its lock events, its alarms",
                "security": _BEARER,
                "parameters": [{"name": "container", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("ContainerView"), "The container"), **_problems(400, 401, 403)},
            }
        },
        "/v1/unseal-authorizations": {
            "post": {
                "summary": "Authorise opening one lock at this office, once, within a window",
                "security": _BEARER,
                "requestBody": {
                    "required": True, "content": {"application/json": {"schema": _ref("UnsealAuthorizationIn")}}
                },
                "responses": {
                    "201": _json(_ref("UnsealAuthorizationIssued"), "The signed authorisation"),
                    **_problems(400, 401, 403, 413, 415, 422, 503),
                },
            },
            "get": {
                "summary": "A lock's unseal authorisations, each a JWS the lock can verify with the node's key",
                "security": _BEARER,
                "parameters": [
                    {"name": "lock_id", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("UnsealAuthorizationList"), "The authorisations and their states"),
                    **_problems(400, 401, 403),
                },
            },
        },
        "/v1/unseal-authorizations/{authorization_id}": {
            "get": {
                "summary": "One unseal authorisation as its compact JWS",
                "security": _BEARER,
                "parameters": [
                    {"name": "authorization_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The compact JWS; Mrx-Authorization-State says pending, valid, used or expired",
                        "content": {"application/jose": {"schema": {"type": "string"}}},
                    },
                    **_problems(400, 401, 403, 404),
                },
            }
        },
        "/v1/alarms": {
            "get": {
                "summary": "Alarms, this node's and its partners', oldest first",
                "security": _BEARER,
                "parameters": [
                    {"name": "open", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},
                    {"name": "container", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": _json(_ref("AlarmList"), "A page of alarms"), **_problems(400, 401, 403)},
            }
        },
        "/v1/alarms/{alarm_id}/acknowledgement": {
            "post": {
                "summary": "An officer acknowledges an alarm (the first acknowledgement stands)",
                "security": _BEARER,
                "parameters": [{"name": "alarm_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {
                    "required": True, "content": {"application/json": {"schema": _ref("AcknowledgementIn")}}
                },
                "responses": {
                    "200": _json(_ref("Alarm"), "The alarm, acknowledged"),
                    **_problems(400, 401, 403, 404, 413, 415, 422),
                },
            }
        },
        "/v1/exchange/messages": {
            "post": {
                "summary": "A partner node delivers records; each is answered with a signed Receipt (docs/protocol.md)",
                "security": _PARTNER,
                "parameters": [
                    {
                        "name": "cursor", "in": "query",
                        "schema": {"type": "string", "pattern": f"^{POSITION_PATTERN}$"},
                        "description": "the catch-up position of the batch's last record: when none is deferred,"
                        " the receiver's catch-up starts after it",
                    },
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MessageBatch")}}},
                "responses": {
                    "200": _json(_ref("MessageBatchResult"), "Per-message results with receipts"),
                    **_problems(400, 401, 403, 409, 413, 415, 422, 503),
                },
            }
        },
        "/v1/exchange/partners/{node_id}/messages": {
            "get": {
                "summary": "Catch-up: records addressed to the calling partner, oldest first, from a cursor",
                "security": _PARTNER,
                "parameters": [
                    node_param,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": f"^{POSITION_PATTERN}$"}},
                ],
                "responses": {"200": _json(_ref("MessagePage"), "A page of records"), **_problems(400, 401, 403, 409)},
            }
        },
        "/v1/outbox": {
            "get": {
                "summary": "Deliveries to partners and their states",
                "security": _BEARER,
                "parameters": [
                    {"name": "partner", "in": "query", "schema": {"type": "string"}},
                    {"name": "state", "in": "query",
                     "schema": {"type": "string", "enum": ["queued", "in-flight", "delivered", "failed"]}},
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": _json(_ref("OutboxPage"), "A page of the outbox"), **_problems(400, 401, 403)},
            }
        },
        "/v1/outbox/{partner}/retry": {
            "post": {
                "summary": "Queue a partner's failed deliveries again",
                "security": _BEARER,
                "parameters": [{"name": "partner", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json({"type": "object"}, "How many deliveries were queued again"),
                    **_problems(401, 403, 404),
                },
            }
        },
        "/v1/containers/{container}/events": _timeline_path(
            "container", r"^[A-Z]{3}[UJZ][0-9]{7}$", "Seal events of a container (ISO 6346), by device time"
        ),
        "/v1/seals/{seal_id}/events": _timeline_path(
            "seal_id", f"^{SEAL_ID.pattern}$", "Events of a seal, by lock sequence number"
        ),
        "/v1/locks/{lock_id}/events": _timeline_path(
            "lock_id", f"^{TOKEN.pattern}$", "Events of a lock, by sequence number, with the gaps in its sequence",
            with_gaps=True,
        ),
        "/.well-known/jwks.json": {
            "get": {
                "summary": "The node's public signing keys with their validity windows (RFC 7517)",
                "responses": {"200": _json({"type": "object"}, "JWKS")},
            }
        },
        "/v1/log/checkpoint": {
            "get": {
                "summary": "The audit log's latest signed checkpoint (C2SP tlog-checkpoint note); public",
                "responses": {
                    "200": {"description": "The signed note", "content": {"text/plain": {"schema": {"type": "string"}}}},
                },
            },
            "post": {
                "summary": "Sign a checkpoint now if the log grew since the latest; the latest checkpoint",
                "security": _BEARER,
                "responses": {
                    "200": {"description": "The signed note", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_problems(401, 403),
                },
            },
        },
        "/v1/log/proofs/{message_id}": {
            "get": {
                "summary": "A record's inclusion proof against a signed checkpoint, as a C2SP tlog-proof",
                "security": _BEARER,
                "parameters": [
                    {"name": "message_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
                ],
                "responses": {
                    "200": {"description": "The tlog-proof", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_problems(400, 401, 403, 404),
                },
            }
        },
        "/v1/log/consistency": {
            "get": {
                "summary": "An RFC 9162 consistency proof between two tree sizes, up to the latest checkpoint's",
                "security": _BEARER,
                "parameters": [
                    {"name": name, "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0}}
                    for name in ("from", "to")
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["from", "to", "proof"],
                            "properties": {
                                "from": {"type": "integer"},
                                "to": {"type": "integer"},
                                "proof": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                            },
                        },
                        "Base64 SHA-256 hashes, RFC 9162 §2.1.4 order",
                    ),
                    **_problems(400, 401, 403),
                },
            }
        },
        "/v1/log/witness/add-checkpoint": {
            "post": {
                "summary": "C2SP tlog-witness add-checkpoint: cosign a partner log's checkpoint if consistent",
                "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": {
                    "200": {"description": "Cosignature lines", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "409": {
                        "description": "The witness holds another size; the body is that size",
                        "content": {"text/x.tlog.size": {"schema": {"type": "string"}}},
                    },
                    **_problems(400, 403, 404, 413, 415, 422),
                },
            }
        },
        "/v1/audit/records": {
            "get": {
                "summary": "Search the audit log by container, seal, consignment (TYPE:ID), message ID, office, time",
                "security": _BEARER,
                "parameters": [
                    {"name": name, "in": "query", "required": False, "schema": schema}
                    for name, schema in (
                        ("message_id", {"type": "string", "format": "uuid"}), ("container", {"type": "string"}),
                        ("seal", {"type": "string"}), ("consignment", {"type": "string"}),
                        ("office", {"type": "string"}), ("since", {"type": "string", "format": "date-time"}),
                        ("until", {"type": "string", "format": "date-time"}),
                        ("after", {"type": "integer", "minimum": -1}),
                        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    )
                ],
                "responses": {"200": _json({"type": "object"}, "Logged records in log order"), **_problems(400, 401, 403)},
            }
        },
        "/v1/audit/evidence": {
            "get": {
                "summary": "An evidence bundle (mrx-evidence/1) for ?record=MESSAGE_ID or ?container=NUMBER",
                "security": _BEARER,
                "parameters": [
                    {"name": "record", "in": "query", "required": False, "schema": {"type": "string", "format": "uuid"}},
                    {"name": "container", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "since_size", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {"200": _json({"type": "object"}, "The bundle"), **_problems(400, 401, 403, 404)},
            }
        },
        "/v1/log/witness/evidence": {
            "get": {
                "summary": "Checkpoints partner logs signed that contradict ones this node cosigned",
                "security": _BEARER,
                "responses": {"200": _json({"type": "object"}, "The evidence, oldest first"), **_problems(401, 403)},
            }
        },
        "/.well-known/mrx-key-statements": {
            "get": {
                "summary": "The chain of signed key-set statements (compact JWS, oldest first) for partners",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["statements"],
                            "properties": {"statements": {"type": "array", "items": {"type": "string"}}},
                        },
                        "Key-set statements",
                    )
                },
            }
        },
        "/.well-known/mrx": {
            "get": {
                "summary": "Discovery: node ID, office, where the keys and this document are; the log's origin and key",
                "responses": {"200": _json({"type": "object"}, "Discovery document")},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "Alive")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: the database answers and the writer runs",
                "responses": {"200": _json({"type": "object"}, "Ready"), **_problems(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mrx node API",
            "version": "1",
            "description": "Seal events and control results in; signed records out. Errors are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "partnerSignature": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "MRX-JWS <signed request>: see docs/protocol.md",
                },
            },
        },
    }
