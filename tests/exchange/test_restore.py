"""What restoring a node's database from a backup does to its partners (docs/operations.md, "What a restore does").

Alashankou (CN-AKL) inspects and seals a container and reports it to Dostyk
(KZ-DOS); its database is backed up; two more events are stored and delivered; the backup
is restored and the gateway sends those two events again, by the same event
IDs. They are not duplicates to the restored node: it signs them as new
records with new message IDs and delivers them, and Dostyk, which holds the
originals, sees each of those lock sequence numbers claimed twice.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from contextlib import closing
from pathlib import Path
from typing import Any

from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until
from tests.nodeproc import NodeProcess

CONTAINER = factories.container(serial=320001)
MRN = "26CN0000000000RS01"


def _events(seqs: range) -> list[dict[str, Any]]:
    return [factories.seal_event(seq=s, lock="LK-RS-1", container=CONTAINER, type="sealed" if s == 1 else "position")
            for s in seqs]


def _report(akl: Member, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status, body = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"], {"events": events})
    assert status == 200, body
    return body["results"]


def _backup(source: Path, target: Path) -> None:
    """SQLite's online backup of a stopped node's database: what docs/operations.md has an operator do."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _delivered(akl: Member, count: int) -> None:
    wait_until(lambda: Db(akl).outbox_states() == {"delivered": count}, 30, f"{count} records delivered to KZ-DOS")


def test_events_sent_again_after_a_restore_are_new_records_that_the_partner_sees_claimed_twice(tmp_path: Path) -> None:
    akl, dos = make_corridor(tmp_path, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")])
    itinerary = {"consignment": {"type": "MRN", "id": MRN}, "offices": ["CNAKL", "KZDOS"], "containers": [CONTAINER]}
    backup = tmp_path / "backup.sqlite3"
    after_backup = _events(range(3, 5))
    with NodeProcess(dos.node):
        assert call(dos.url + "/v1/itineraries", dos.node.tokens["NCS"], itinerary)[0] == 200
        with NodeProcess(akl.node):
            assert call(akl.url + "/v1/itineraries", akl.node.tokens["NCS"], itinerary)[0] == 200
            inspection = factories.control_result(
                "CN-AKL-RS-1", consignment_refs=[itinerary["consignment"]], controlled_at="2026-11-22T03:59:00Z",
                transport_equipment=[{"container": CONTAINER, "seals_affixed": [{"id": "ES-0001", "type": "2"}]}],
            )
            assert call(akl.url + "/v1/control-results", akl.node.tokens["NCS"], inspection)[0] == 201
            _report(akl, _events(range(1, 3)))
            _delivered(akl, 3)
        _backup(akl.node.database, backup)
        with NodeProcess(akl.node):
            first = _report(akl, after_backup)
            _delivered(akl, 5)
        _backup(backup, akl.node.database)  # the operator restores the backup
        with NodeProcess(akl.node):
            again = _report(akl, after_backup)  # the gateway sends the same events again
            assert [r["status"] for r in again] == ["accepted", "accepted"]  # not duplicates: the backup lacks them
            assert {r["message_id"] for r in again}.isdisjoint(r["message_id"] for r in first)
            _delivered(akl, 5)
        assert len(Db(dos).records_from("CN-AKL", "SealEventNotification")) == 6
        path = f"{dos.url}/v1/consignments/MRN/{urllib.parse.quote(MRN)}"
        status, view = call(path, dos.node.tokens["NCS"])
        assert status == 200, view
        (chain,) = view["seal_chains"]
        assert chain["verdict"] == "UNKNOWN"
        assert "sequence-claimed-twice" in [f["kind"] for f in chain["findings"]], chain["findings"]
