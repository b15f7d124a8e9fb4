"""What gateways and the national system send over HTTP, validated strictly.

These pydantic models are the JSON edge of the node. They are strict (no
``"1"`` for 1, no ``1`` for ``true``, no unknown fields) except where JSON
cannot carry a type and a string must stand in for it: UUIDs, codes and
date-times. Date-times must be RFC 3339 with a time zone; a naive time is an
error, not "probably UTC". Identifiers are checked with their check digits by
`mrx.schemas.identifiers`, the same functions the XML codec uses.

Each model converts itself into the frozen domain value of
`mrx.schemas.messages` (``to_domain``); nothing past this module sees pydantic.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from mrx.schemas import identifiers
from mrx.schemas.codes import (
    ConsignmentReferenceType,
    ControlResultCode,
    ControlType,
    SealConditionCode,
    SealEventType,
    SealingPartyCode,
    SealTypeCode,
)
from mrx.schemas.messages import (
    ConsignmentReference,
    ControlResult,
    GeoPosition,
    Location,
    Seal,
    SealActionCode,
    SealEvent,
    TransportEquipment,
)

STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
MAX_UNSEAL_WINDOW = timedelta(days=7)  # an authorisation is for one opening, soon


def _rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-11-22T04:05:07Z")
    if len(value) > 40 or "T" not in value.upper():
        raise ValueError("must be an RFC 3339 date-time with a 'T', e.g. 2026-11-22T04:05:07Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time, e.g. 2026-11-22T04:05:07Z") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add 'Z' for UTC or an offset such as +06:00")
    utc = parsed.astimezone(timezone.utc)
    if not 1900 <= utc.year <= 2999:
        raise ValueError(f"{value!r} is outside the years 1900-2999 that mrx messages carry; check the clock")
    return utc


# XML 1.0 cannot carry C0 controls other than tab, LF and CR, nor lone surrogates.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str) -> str:
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise ValueError(f"contains the character U+{ord(bad.group()):04X} at {bad.start()}, which XML cannot carry")
    return value


def _checked(check: Any, shape: str, description: str) -> Any:
    """An identifier checked by ``check`` (shape and check digit, with a sentence);
    the published JSON schema shows its shape, which is all JSON Schema can say."""

    def validate(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return (AfterValidator(validate), WithJsonSchema({"type": "string", "pattern": shape, "description": description}))


TOKEN = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,34}")
SEAL_ID = re.compile(r"[A-Z0-9][A-Z0-9._/-]{0,19}")

DateTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 with a time zone"}),
]
Container = Annotated[
    str, *_checked(identifiers.check_container, r"^[A-Z]{3}[UJZ][0-9]{7}$", "ISO 6346, check digit verified")
]
Wagon = Annotated[str, *_checked(identifiers.check_wagon, r"^[0-9]{12}$", "UIC wagon number, check digit verified")]
Locode = Annotated[str, *_checked(identifiers.check_locode, r"^[A-Z]{2}[A-Z2-9]{3}$", "UN/LOCODE")]
Token = Annotated[str, Field(pattern=f"^{TOKEN.pattern}$")]
SealId = Annotated[str, Field(pattern=f"^{SEAL_ID.pattern}$")]
HsCode = Annotated[str, Field(pattern=r"^[0-9]{4,10}$")]
Text = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_xml_text)]
Name = Annotated[
    str, Field(max_length=70, pattern=r"^[^ \t\n\r]([^\n\r]*[^ \t\n\r])?$"), AfterValidator(_xml_text)
]
Uuid = Annotated[UUID, Field(strict=False)]


def _code(enum: type) -> Any:
    return Annotated[enum, Field(strict=False)]


class ConsignmentReferenceIn(BaseModel):
    model_config = STRICT

    type: _code(ConsignmentReferenceType)
    id: Annotated[str, Field(max_length=35, pattern=r"^[A-Za-z0-9]([A-Za-z0-9 ./_-]{0,33}[A-Za-z0-9])?$")]

    @model_validator(mode="after")
    def _cim_check_digit(self) -> ConsignmentReferenceIn:
        if self.type is ConsignmentReferenceType.CIM:
            problem = identifiers.check_cim_note(self.id)
            if problem is not None:
                raise ValueError(problem)
        return self

    def to_domain(self) -> ConsignmentReference:
        return ConsignmentReference(type=self.type, id=self.id)


def _degrees(value: float) -> Decimal:
    """WGS84 degrees as the XSD carries them: at most 7 decimals (about 1 cm), shortest form."""
    return Decimal(repr(round(value, 7)))


class LocationIn(BaseModel):
    model_config = STRICT

    locode: Locode | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None

    @model_validator(mode="after")
    def _complete(self) -> LocationIn:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        if self.locode is None and self.lat is None:
            raise ValueError("a location needs a locode, a lat/lon position, or both")
        return self

    def to_domain(self) -> Location:
        position = None
        if self.lat is not None and self.lon is not None:
            position = GeoPosition(latitude=_degrees(self.lat), longitude=_degrees(self.lon))
        return Location(locode=self.locode, position=position)


class SealEventIn(BaseModel):
    """One event from a lock, as its gateway posts it."""

    model_config = STRICT

    event_id: Uuid
    lock_id: Token
    seal_id: SealId
    container: Container
    seq: Annotated[int, Field(ge=0, le=2**53)]
    type: _code(SealEventType)
    device_time: DateTime
    location: LocationIn | None = None
    wagon: Wagon | None = None
    condition: _code(SealConditionCode) = SealConditionCode.IN_RIGHT_CONDITION
    seal_type: _code(SealTypeCode) = SealTypeCode.ELECTRONIC
    sealing_party: _code(SealingPartyCode) | None = None
    authorization_id: Uuid | None = None
    consignment_refs: Annotated[list[ConsignmentReferenceIn], Field(max_length=20)] = []
    battery_percent: Annotated[int, Field(ge=0, le=100)] | None = None

    def to_domain(self, gateway_id: str, receipt_time: datetime) -> SealEvent:
        return SealEvent(
            event_id=self.event_id,
            gateway_id=gateway_id,
            lock_id=self.lock_id,
            seal_id=self.seal_id,
            container=self.container,
            lock_sequence=self.seq,
            event_type=self.type,
            device_time=self.device_time,
            receipt_time=receipt_time,
            location=self.location.to_domain() if self.location else None,
            wagon=self.wagon,
            condition=self.condition,
            seal_type=self.seal_type,
            sealing_party=self.sealing_party,
            authorization_id=self.authorization_id,
            consignment_refs=tuple(ref.to_domain() for ref in self.consignment_refs),
            battery_percent=self.battery_percent,
        )


class SealIn(BaseModel):
    model_config = STRICT

    id: SealId
    condition: _code(SealConditionCode) = SealConditionCode.IN_RIGHT_CONDITION
    type: _code(SealTypeCode) | None = None
    sealing_party: _code(SealingPartyCode) | None = None

    def to_domain(self, action: SealActionCode) -> Seal:
        return Seal(
            id=self.id, action=action, condition=self.condition, type=self.type, sealing_party=self.sealing_party
        )


class TransportEquipmentIn(BaseModel):
    model_config = STRICT

    container: Container
    seals_found: Annotated[list[SealIn], Field(max_length=20)] = []
    seals_affixed: Annotated[list[SealIn], Field(max_length=20)] = []

    def to_domain(self) -> TransportEquipment:
        seals = [s.to_domain(SealActionCode.FOUND) for s in self.seals_found]
        seals += [s.to_domain(SealActionCode.AFFIXED) for s in self.seals_affixed]
        return TransportEquipment(container=self.container, seals=tuple(seals))


class ControlResultIn(BaseModel):
    """An inspection result, as the national system (or an officer's tool) posts it."""

    model_config = STRICT

    control_id: Token
    consignment_refs: Annotated[list[ConsignmentReferenceIn], Field(min_length=1, max_length=20)]
    office: Locode | None = None  # defaults to the node's office
    control_type: _code(ControlType)
    result: _code(ControlResultCode)
    controlled_at: DateTime
    officer: Name
    transport_equipment: Annotated[list[TransportEquipmentIn], Field(max_length=100)] = []
    hs_codes: Annotated[list[HsCode], Field(max_length=999)] = []
    remarks: Text | None = None

    def to_domain(self, default_office: str) -> ControlResult:
        return ControlResult(
            control_id=self.control_id,
            consignment_refs=tuple(ref.to_domain() for ref in self.consignment_refs),
            office=self.office or default_office,
            control_type=self.control_type,
            result=self.result,
            controlled_at=self.controlled_at,
            officer=self.officer,
            transport_equipment=tuple(te.to_domain() for te in self.transport_equipment),
            hs_codes=tuple(self.hs_codes),
            remarks=self.remarks,
        )


class ItineraryIn(BaseModel):
    """A consignment's route, from the national system: offices in order, and its containers."""

    model_config = STRICT

    consignment: ConsignmentReferenceIn
    offices: Annotated[list[Locode], Field(min_length=1, max_length=50)]
    containers: Annotated[list[Container], Field(max_length=200)] = []

    @model_validator(mode="after")
    def _no_repeats(self) -> ItineraryIn:
        if len(set(self.containers)) != len(self.containers):
            raise ValueError("a container is listed twice")
        return self


class ArrivalIn(BaseModel):
    """The national system's arrival notice: consignments at this node's office, and when."""

    model_config = STRICT

    consignments: Annotated[list[ConsignmentReferenceIn], Field(min_length=1, max_length=50)]
    arrived_at: DateTime
    containers: Annotated[list[Container], Field(max_length=200)] = []


class TargetingIn(BaseModel):
    """The national system marks a consignment for inspection from its own risk analysis."""

    model_config = STRICT

    reference: Token  # the national system's reference for the instruction
    reason: Text


class UnsealAuthorizationIn(BaseModel):
    """An officer's request to authorise opening one lock at this node's office within a window."""

    model_config = STRICT

    lock_id: Token
    seal_id: SealId
    container: Container
    valid_from: DateTime
    valid_to: DateTime
    officer: Name
    remarks: Text | None = None

    @model_validator(mode="after")
    def _window(self) -> UnsealAuthorizationIn:
        if self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be later than valid_from")
        if self.valid_to - self.valid_from > MAX_UNSEAL_WINDOW:
            raise ValueError(f"the window may last at most {MAX_UNSEAL_WINDOW.days} days; authorise a shorter one")
        return self


class AcknowledgementIn(BaseModel):
    """An officer acknowledges an alarm."""

    model_config = STRICT

    officer: Name
