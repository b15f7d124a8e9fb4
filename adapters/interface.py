"""The one interface between the node and a national customs system (docs/adapters.md).

Two directions, one small contract:

**Inbound** — the national system gives the node control results, itineraries,
arrival notices and unseal requests. An adapter turns whatever its system
speaks (files, NCTS-style XML, ...) into the same JSON shapes the node's HTTP
API takes (docs/api.md) and hands them to the `NationalInbound` port it gets
at start. Each call validates, signs and commits exactly as the HTTP endpoint
does, returns the same JSON answer, or raises `mrx.node.problems.Problem` with
a stable code. Calls are idempotent where the API is (a control result by its
``control_id``), so an adapter that crashes halfway may simply do it again.

**Outbound** — the node tells the national system about partner control
results received, recognition decisions, alarms and unseal authorisations
issued. The node keeps, per adapter, a durable cursor in the records table
(`mrx.node.outbound`) and calls `Adapter.deliver` with one `Outbound` at a
time, in commit order. An adapter returns when the event is safely delivered;
raises `DeliveryFailed` to be retried later (with backoff, capped, the same
event again: order is kept), or with ``permanent=True`` when retrying cannot
help (the event is recorded as refused, shown to the operator, and delivery
goes on). An adapter that is down therefore loses nothing: the records are
the queue.

**Choosing and configuring** — a ``[[adapters]]`` table in ``mrx.toml`` names
the adapter (``name``, unique, names its cursor) and its ``kind``: a shipped
one (``webhook``, ``files``, ``ncts``), a name registered by another package
under the ``mrx.adapters`` entry-point group, or ``"package.module:Class"``.
The class's ``from_config(name, options, context)`` validates its own options
(raise `AdapterConfigError` with a sentence to fix them). A third party adds an
adapter without touching ``node/``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from mrx.schemas.messages import Message

ENTRY_POINT_GROUP = "mrx.adapters"

#: Outbound event kinds, by the message type of the record that carries them.
KINDS: Mapping[str, str] = {
    "ControlResultNotification": "control-result",  # partners' only: the node's own came from the national system
    "RecognitionDecisionNotification": "decision",
    "AlarmNotification": "alarm",
    "UnsealAuthorization": "unseal-authorization",
}


@dataclass(frozen=True, slots=True)
class Outbound:
    """One signed record for the national system, as stored: its JWS, its XML and its decoded message."""

    seq: int  # the record's position in commit order; increases along one adapter's deliveries
    kind: str  # a value of KINDS
    message: Message
    jws: bytes  # the compact JWS exactly as stored: the authority's own signature, for the record's provenance
    xml: bytes  # the JWS payload: the WCO-style XML message, valid against schemas/xsd

    @property
    def message_id(self) -> str:
        return str(self.message.header.message_id)

    @property
    def sender(self) -> str:
        return self.message.header.sender

    @property
    def prepared_at(self) -> datetime:
        return self.message.header.prepared_at


class NationalInbound(Protocol):
    """What an adapter may ask of the node: the national-system side of the HTTP API, without HTTP."""

    async def control_result(self, data: Any) -> dict[str, Any]: ...

    async def itinerary(self, data: Any) -> dict[str, Any]: ...

    async def arrival(self, data: Any) -> dict[str, Any]: ...

    async def unseal_request(self, data: Any) -> dict[str, Any]: ...


class DeliveryFailed(Exception):
    """An outbound event was not delivered: retried later, or, if ``permanent``, recorded and skipped."""

    def __init__(self, detail: str, *, permanent: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent


class AdapterConfigError(Exception):
    """An ``[[adapters]]`` table cannot be used; the message says what to change."""


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the node tells an adapter when it builds it."""

    node_id: str
    office: str
    base_dir: Path  # the config file's directory: relative paths in options resolve against it


@runtime_checkable
class Adapter(Protocol):
    """A national-system adapter. ``kinds``: the outbound kinds it wants (empty: inbound only)."""

    name: str
    kinds: frozenset[str]

    async def start(self, inbound: NationalInbound) -> None: ...

    async def deliver(self, event: Outbound) -> None: ...

    async def stop(self) -> None: ...


class AdapterFactory(Protocol):
    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any], context: AdapterContext) -> Adapter: ...


SHIPPED: Mapping[str, str] = {
    "webhook": "mrx.adapters.webhook:WebhookAdapter",
    "files": "mrx.adapters.files:FileExchange",
    "ncts": "mrx.adapters.files:NctsFileExchange",
}


def resolve(kind: str) -> AdapterFactory:
    """The adapter class ``kind`` names: shipped, registered as an entry point, or ``module:Class``."""
    target = SHIPPED.get(kind)
    if target is None:
        registered = entry_points(group=ENTRY_POINT_GROUP, name=kind)
        if registered:
            return next(iter(registered)).load()  # type: ignore[no-any-return]
        target = kind
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise AdapterConfigError(
            f"adapter kind {kind!r} is not one of {', '.join(SHIPPED)}, not registered under the "
            f"{ENTRY_POINT_GROUP!r} entry-point group, and not of the form 'package.module:Class'"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise AdapterConfigError(f"adapter kind {kind!r} cannot be loaded: {exc}") from None
    if not hasattr(factory, "from_config"):
        raise AdapterConfigError(f"adapter kind {kind!r} names {target}, which has no from_config")
    return factory  # type: ignore[no-any-return]


class Options(BaseModel):
    """Base for an adapter's options: strict, unknown keys are errors (as in the rest of mrx.toml)."""

    model_config: ClassVar[dict[str, Any]] = {"extra": "forbid", "strict": True, "frozen": True}

    @classmethod
    def read(cls, name: str, options: Mapping[str, Any]) -> Any:
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(table)"
                what = "unknown key; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
                lines.append(f"  adapters.{name}.{where}: {what}")
            raise AdapterConfigError(f"adapter {name!r} is not configured correctly:\n" + "\n".join(lines)) from None
