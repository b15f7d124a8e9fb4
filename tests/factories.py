"""Valid inputs for tests: seal events and control results with real check digits."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from mrx.schemas.identifiers import iso6346_check_digit, luhn_check_digit


def container(owner: str = "CSQ", serial: int = 305438) -> str:
    body = f"{owner}U{serial:06d}"
    return body + str(iso6346_check_digit(body))


def wagon(body: str = "21812471217") -> str:
    return body + str(luhn_check_digit(body))


def cim_note(number: int = 70268) -> str:
    digits = f"{number:05d}"
    return f"10-7080-{digits}{luhn_check_digit(digits)}"


T0 = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


def seal_event(
    seq: int = 1,
    lock: str = "LK-CN-0001",
    seal: str = "ES-0001",
    type: str = "position",
    **overrides: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "lock_id": lock,
        "seal_id": seal,
        "container": container(),
        "seq": seq,
        "type": type,
        "device_time": (T0 + timedelta(minutes=seq)).isoformat().replace("+00:00", "Z"),
        "location": {"locode": "CNURC", "lat": 43.83, "lon": 87.62},  # in transit: not at the node's office
        "wagon": wagon(),
    }
    if type == "sealed":
        event |= {
            "sealing_party": "CU",
            "consignment_refs": [{"type": "CIM", "id": cim_note()}, {"type": "MRN", "id": "26CN000000000012A1"}],
        }
    event.update(overrides)
    return event


def control_result(control_id: str = "CN-AKL-2026-000001", **overrides: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "control_id": control_id,
        "consignment_refs": [{"type": "CIM", "id": cim_note()}],
        "control_type": "physical",
        "result": "A1",
        "controlled_at": "2026-11-22T03:30:00+06:00",
        "officer": "OFF-4711",
        "transport_equipment": [
            {
                "container": container(),
                "seals_found": [{"id": "ES-0001", "condition": "1", "type": "2"}],
                "seals_affixed": [{"id": "CU-0001", "type": "1", "sealing_party": "CU"}],
            }
        ],
        "hs_codes": ["850440", "8471"],
        "remarks": "Seals intact; goods as declared.",
    }
    result.update(overrides)
    return result
