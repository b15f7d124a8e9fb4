"""Problems: every rejected input as an RFC 9457 problem with a stable code.

A rejection has three audiences: the program that sent it (a stable ``code``
and the HTTP status), the person who must fix it (``detail``, a sentence they
can act on) and the auditor (nothing stored changed). The type of a problem is
separate from its diagnosis, as in sigstore's error hierarchy: `Problem`
carries a code from `CATALOGUE`, which fixes its status and title, and a detail
written where the error is found.

Codes are part of the API: partners and gateways branch on them, so a code is
never renamed or reused. ``docs/api.md`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:mrx:problem:"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    status: int
    title: str


CATALOGUE: dict[str, ProblemKind] = {
    # Transport and body
    "invalid-json": ProblemKind(400, "Body is not valid JSON"),
    "duplicate-json-key": ProblemKind(400, "JSON object has a repeated key"),
    "validation-failed": ProblemKind(422, "Input does not match the schema"),
    "body-too-large": ProblemKind(413, "Body too large"),
    "batch-too-large": ProblemKind(413, "Batch has too many items"),
    "bad-compression": ProblemKind(400, "Compressed body is corrupt"),
    "unsupported-encoding": ProblemKind(415, "Content-Encoding not supported"),
    "unsupported-media-type": ProblemKind(415, "Content-Type not supported"),
    "invalid-parameter": ProblemKind(400, "Query or path parameter is invalid"),
    # Identity and access
    "unauthenticated": ProblemKind(401, "Credential missing or not recognised"),
    "forbidden": ProblemKind(403, "Credential does not allow this"),
    "lock-out-of-scope": ProblemKind(403, "Lock is outside the gateway's scope"),
    "mqtt-topic-invalid": ProblemKind(400, "MQTT topic does not name a gateway"),
    # Idempotency and ordering
    "event-id-conflict": ProblemKind(409, "Event ID already used for a different event"),
    "sequence-conflict": ProblemKind(409, "Lock sequence number already used by another event"),
    "control-id-conflict": ProblemKind(409, "Control ID already used for a different result"),
    # Resources
    "not-found": ProblemKind(404, "Not found"),
    "method-not-allowed": ProblemKind(405, "Method not allowed"),
    # XML and signatures (codes shared with schemas.xml and keys.jws)
    "xml-too-large": ProblemKind(413, "XML document too large"),
    "xml-not-utf8": ProblemKind(400, "XML document is not UTF-8"),
    "xml-doctype-forbidden": ProblemKind(400, "XML document has a DOCTYPE"),
    "xml-malformed": ProblemKind(400, "XML document is not well formed"),
    "xml-unknown-message-type": ProblemKind(400, "XML document is not an mrx message"),
    "xml-schema-invalid": ProblemKind(422, "XML document does not match its XSD"),
    "xml-xinclude-forbidden": ProblemKind(400, "XML document uses XInclude"),
    "identifier-invalid": ProblemKind(422, "Identifier check digit or format is wrong"),
    "sequence-invalid": ProblemKind(422, "SequenceNumeric values are not 1, 2, 3, ..."),
    "jws-too-large": ProblemKind(413, "JWS too large"),
    "jws-not-compact": ProblemKind(400, "JWS is not in compact serialization"),
    "jws-malformed": ProblemKind(400, "JWS is malformed"),
    "jws-alg-not-allowed": ProblemKind(400, "JWS algorithm not allowed"),
    "jws-forbidden-header": ProblemKind(400, "JWS header has a forbidden member"),
    "jws-missing-kid": ProblemKind(400, "JWS header has no kid"),
    "jws-unknown-kid": ProblemKind(401, "JWS signed with an unknown key"),
    "jws-alg-mismatch": ProblemKind(400, "JWS algorithm does not match the key"),
    "jws-bad-signature": ProblemKind(401, "JWS signature does not verify"),
    "record-type-mismatch": ProblemKind(400, "JWS typ does not name the message's type"),
    "record-sender-mismatch": ProblemKind(403, "Message sender does not own the signing key"),
    "record-key-not-valid": ProblemKind(401, "Signing key was not valid when the record was prepared"),
    "record-from-future": ProblemKind(400, "Record is dated in the future"),
    # Partners and exchange (docs/protocol.md)
    "partner-unknown": ProblemKind(401, "Caller is not a partner node"),
    "partner-impersonation": ProblemKind(403, "Request signed with another partner's key"),
    "request-signature-invalid": ProblemKind(401, "Request signature is invalid"),
    "request-wrong-audience": ProblemKind(403, "Request is addressed to another node"),
    "request-expired": ProblemKind(401, "Request was signed too long ago or in the future"),
    "request-replayed": ProblemKind(409, "Request was received before"),
    "exchange-sender-mismatch": ProblemKind(403, "Record was made by another node than the caller"),
    "exchange-not-addressed": ProblemKind(403, "Record is not addressed to this node"),
    "exchange-message-id-conflict": ProblemKind(409, "Message ID already used for a different message"),
    # Server side
    "witness-request-malformed": ProblemKind(400, "Witness request is malformed"),
    "witness-unknown-log": ProblemKind(404, "This node does not witness that log"),
    "witness-signature-invalid": ProblemKind(403, "Checkpoint is not signed by the log's key"),
    "witness-proof-invalid": ProblemKind(422, "Checkpoint is not consistent with the one cosigned before"),

    "unavailable": ProblemKind(503, "Node is not ready"),
    "internal-error": ProblemKind(500, "Internal error"),
}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One failed field, located by an RFC 6901 JSON pointer into the input."""

    pointer: str
    detail: str


@dataclass(slots=True)
class Problem(Exception):
    """A rejection of outside input. Raise it anywhere; the edge renders it."""

    code: str
    detail: str
    errors: tuple[FieldError, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown problem code {self.code!r}")
        Exception.__init__(self, f"{self.code}: {self.detail}")

    @property
    def status(self) -> int:
        return CATALOGUE[self.code].status

    def body(self, instance: str | None = None) -> dict[str, Any]:
        kind = CATALOGUE[self.code]
        body: dict[str, Any] = {
            "type": TYPE_PREFIX + self.code,
            "title": kind.title,
            "status": kind.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [{"pointer": e.pointer, "detail": e.detail} for e in self.errors]
        return body
