"""New message IDs are UUIDs of version 7: valid for the XSD, and in the order they were made."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from uuid import UUID

from mrx.keys.jws import SigningKey, parse_compact
from mrx.node.inputs import SealEventIn
from mrx.node.records import RecordSigner, new_message_id
from mrx.schemas import codec

from tests import factories


def test_a_new_id_is_a_version_7_uuid_whose_first_48_bits_are_its_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = new_message_id()
    after = time.time_ns() // 1_000_000
    assert (made.version, made.variant) == (7, "specified in RFC 4122")
    assert before <= made.int >> 80 <= after
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", str(made))


def test_ids_made_in_later_milliseconds_sort_later_and_none_repeat() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_message_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    many = {new_message_id() for _ in range(100_000)}  # 74 random bits: a repeat would be a broken generator
    assert len(many) == 100_000


def test_records_are_signed_under_new_ids_the_codec_accepts() -> None:
    event = SealEventIn.model_validate(factories.seal_event()).to_domain("GW-1", datetime.now(timezone.utc))
    key = SigningKey.generate()
    record = RecordSigner("CN-AKL", lambda: key).sign(event)
    assert isinstance(record.message_id, UUID) and record.message_id.version == 7
    message = codec.decode(parse_compact(record.jws, max_bytes=len(record.jws) + 1).payload)  # and the XSD
    assert message.header.message_id == record.message_id
