"""The JSON edge admits exactly what the XSD admits, at the edges the two could differ.

Whatever the edge model accepts must encode and validate; whatever the XSD
would refuse must be refused at the edge with a field pointer, never as an
XSD error after signing began.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from mrx.keys.jws import SigningKey
from mrx.node.inputs import ControlResultIn, SealEventIn
from mrx.node.records import RecordSigner
from tests import factories

SIGNER = RecordSigner("CN-AKL", lambda: KEY)
KEY = SigningKey.generate()
NOW = datetime(2026, 11, 22, 5, 0, tzinfo=timezone.utc)


def _signs(model: Any) -> None:
    body = model.to_domain("GW-1", NOW) if isinstance(model, SealEventIn) else model.to_domain("CNAKL")
    assert SIGNER.sign(body).jws.count(b".") == 2


@pytest.mark.parametrize(
    "location",
    [
        {"lat": 45.123456789, "lon": 82.987654321},  # more decimals than the XSD's 7: rounded
        {"lat": 1e-9, "lon": -1e-9},  # tiny values: no exponent reaches the XML
        {"lat": -90, "lon": 180},
        {"locode": "KZDOS"},
    ],
)
def test_locations_the_edge_accepts_encode(location: dict[str, Any]) -> None:
    _signs(SealEventIn.model_validate(factories.seal_event(location=location)))


@pytest.mark.parametrize("ref_id", ["MANIFEST_2026/01", "A", "26CN000000000012A1"])
def test_consignment_ids_the_edge_accepts_encode(ref_id: str) -> None:
    refs = [{"type": "MANIFEST", "id": ref_id}]
    _signs(ControlResultIn.model_validate(factories.control_result(consignment_refs=refs)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("officer", " OFF-1"),
        ("officer", "OFF\n1"),
        ("officer", "x" * 71),
        ("remarks", "bell \x07"),
        ("controlled_at", "1899-12-31T23:59:59Z"),
        ("consignment_refs", [{"type": "MANIFEST", "id": "M-1-"}]),
        ("consignment_refs", [{"type": "CIM", "id": "10-7080-702687"}]),
    ],
)
def test_what_the_xsd_refuses_is_refused_at_the_edge(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        ControlResultIn.model_validate(factories.control_result(**{field: value}))
    assert err.value.errors()[0]["loc"][0] == field
