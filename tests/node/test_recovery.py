"""Work that a record calls for is done even when the node stops between the record's commit and the work.

A node decides on an arrival, and raises an alarm on a tamper, after the
seal event commits (`Recognition.observe`). Here the node runs in this
process with ``observe`` doing nothing, which leaves its database exactly as
a SIGKILL in that moment would: the events are stored, the work is not done.
Started again on the same files, the node must finish it, once. So too for
a decision that finds a seal chain broken: its alarm comes after the
decision commits, and a node stopped in between raises it at its next start.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mrx.node.config import NodeConfig, load_config
from mrx.node import deciding
from mrx.node.deciding import Recognition
from mrx.node.server import Node
from tests import factories
from tests.corridor import Db, call, make_corridor
from tests.nodeproc import NodeDir, NodeProcess, make_node

CIM = factories.cim_note(70901)
ARRIVING = factories.container(serial=409011)
TAMPERED = factories.container(serial=409012)


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        answer = await response.json()
        assert response.status in (200, 201), answer
        return answer


async def _decisions(session: aiohttp.ClientSession, url: str, node: NodeDir) -> list[dict[str, Any]]:
    view = await _call(session, "GET", f"{url}/v1/consignments/CIM/{CIM}", node.tokens["NCS"])
    return [d for d in view["decisions"] if d["sender"] == "KZ-DOS"]


async def _alarms(session: aiohttp.ClientSession, url: str, node: NodeDir) -> list[dict[str, Any]]:
    return (await _call(session, "GET", f"{url}/v1/alarms?container={TAMPERED}", node.tokens["NCS"]))["alarms"]


async def _killed_first(self: Recognition) -> None:
    """A node killed records no progress at its stop, and none after the records it stored just before."""


async def _started(config: NodeConfig) -> tuple[Node, str]:
    node = Node(config)
    await node.start()
    return node, f"http://127.0.0.1:{node.port}"


async def _until(probe: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await probe()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.1)
    return found


async def test_an_arrival_and_a_tamper_stored_just_before_the_node_stopped_are_acted_on_at_its_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dos = make_node(tmp_path / "dos", "KZ-DOS", "KZDOS")
    itinerary = {"consignment": {"type": "CIM", "id": CIM}, "offices": ["CNAKL", "KZDOS"], "containers": [ARRIVING]}
    arrival = factories.seal_event(seq=1, lock="LK-1", container=ARRIVING, location={"locode": "KZDOS"})
    tamper = factories.seal_event(seq=1, lock="LK-2", container=TAMPERED, type="tamper")

    with monkeypatch.context() as patched:
        patched.setattr(Recognition, "observe", lambda self, records: None)  # the work never starts
        patched.setattr(Recognition, "save_progress", _killed_first)  # nor is the progress recorded at the stop
        node, url = await _started(dos.config)
        try:
            async with aiohttp.ClientSession() as session:
                await _call(session, "POST", f"{url}/v1/itineraries", dos.tokens["NCS"], itinerary)
                stored = await _call(session, "POST", f"{url}/v1/seal-events", dos.tokens["GW-1"],
                                     {"events": [arrival, tamper]})
                assert stored["accepted"] == 2
                await asyncio.sleep(0.5)
                assert await _decisions(session, url, dos) == [] and await _alarms(session, url, dos) == []
        finally:
            await node.stop()

    node, url = await _started(dos.config)
    try:
        async with aiohttp.ClientSession() as session:
            decisions = await _until(lambda: _decisions(session, url, dos), "decision on the arrival")
            alarms = await _until(lambda: _alarms(session, url, dos), "alarm on the tamper")
            view = await _call(session, "GET", f"{url}/v1/consignments/CIM/{CIM}", dos.tokens["NCS"])
    finally:
        await node.stop()
    assert view["arrival"]["trigger_message_id"] == stored["results"][0]["message_id"]
    assert len(decisions) == 1 and decisions[0]["outcome"] == "NOT_RECOGNISED"  # no partner inspected it
    assert [a["type"] for a in alarms] == ["TAMPER"]

    # Once done, the work is not done again: a third start issues nothing new.
    node, url = await _started(dos.config)
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(1)
            assert await _decisions(session, url, dos) == decisions
            assert await _alarms(session, url, dos) == alarms
    finally:
        await node.stop()


async def test_a_broken_chain_decided_just_before_the_node_stopped_raises_its_alarm_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alashankou inspects and seals; the lock reports tamper; Dostyk decides on the arrival and is stopped before
    its SEAL_CHAIN_BROKEN alarm is stored (``_chain_alarm`` doing nothing leaves the database as a SIGKILL then
    would). At its next start the decision is not issued again, and the alarm is raised, once."""
    akl, dos = make_corridor(tmp_path, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")])
    with dos.node.config_path.open("a") as fh:
        fh.write('\n[[agreements]]\nid = "KZ-DOS-CN-AKL-MRA"\npartner = "CN-AKL"\ncontrol_types = ["physical"]\n'
                 'result_codes = ["A1"]\nrequire_intact_chain = true\n')
    cim, container = factories.cim_note(70902), factories.container(serial=409013)
    ref = {"type": "CIM", "id": cim}
    itinerary = {"consignment": ref, "offices": ["CNAKL", "KZDOS"], "containers": [container]}
    inspection = factories.control_result(
        "CN-AKL-409013", consignment_refs=[ref], controlled_at="2026-11-22T03:59:00Z",
        transport_equipment=[{"container": container, "seals_affixed": [{"id": "ES-0001", "type": "2"}]}],
    )
    sealed = factories.seal_event(seq=1, lock="LK-3", type="sealed", container=container, location={"locode": "CNAKL"},
                                  consignment_refs=[ref])
    tamper = factories.seal_event(seq=2, lock="LK-3", type="tamper", container=container, condition="4")
    arrival = factories.seal_event(seq=3, lock="LK-3", container=container, location={"locode": "KZDOS"})
    national, gateway = dos.node.tokens["NCS"], dos.node.tokens["GW-1"]

    async def decisions_at(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
        view = await _call(session, "GET", f"{url}/v1/consignments/CIM/{cim}", national)
        return [d for d in view["decisions"] if d["sender"] == "KZ-DOS"]

    async def alarms_at(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
        alarms = (await _call(session, "GET", f"{url}/v1/alarms?container={container}", national))["alarms"]
        return [a for a in alarms if a["raised_by"] == "KZ-DOS"]

    async def holds_alashankous_records() -> bool:
        held = dict(Db(dos).rows("SELECT message_type, COUNT(*) FROM records WHERE sender = 'CN-AKL' GROUP BY 1"))
        return held.get("SealEventNotification") == 2 and held.get("ControlResultNotification") == 1

    async def stopped_before_the_alarm(self: Recognition, *args: object) -> None:
        return None

    with NodeProcess(akl.node):
        assert call(akl.url + "/v1/itineraries", akl.node.tokens["NCS"], itinerary)[0] == 200
        assert call(akl.url + "/v1/control-results", akl.node.tokens["NCS"], inspection)[0] == 201
        status, body = call(akl.url + "/v1/seal-events", akl.node.tokens["GW-1"], {"events": [sealed, tamper]})
        assert status == 200 and body["accepted"] == 2, body
        with monkeypatch.context() as patched:
            patched.setattr(Recognition, "_chain_alarm", stopped_before_the_alarm)
            patched.setattr(Recognition, "save_progress", _killed_first)
            node, url = await _started(load_config(dos.node.config_path))
            try:
                async with aiohttp.ClientSession() as session:
                    await _call(session, "POST", f"{url}/v1/itineraries", national, itinerary)
                    await _until(holds_alashankous_records, "Alashankou's records at Dostyk")
                    await _call(session, "POST", f"{url}/v1/seal-events", gateway, arrival)
                    decisions = await _until(lambda: decisions_at(session, url), "the decision on the arrival")
                    assert [r["code"] for r in decisions[0]["reasons"]] == ["SEAL_CHAIN_BROKEN"]
                    assert await alarms_at(session, url) == []
            finally:
                await node.stop()

    node, url = await _started(load_config(dos.node.config_path))
    try:
        async with aiohttp.ClientSession() as session:
            await _until(lambda: alarms_at(session, url), "the alarm on the broken chain")
            await asyncio.sleep(1)
            after, alarms = await decisions_at(session, url), await alarms_at(session, url)
    finally:
        await node.stop()
    assert after == decisions  # the same decision, not issued again
    assert [a["type"] for a in alarms] == ["SEAL_CHAIN_BROKEN"]


async def test_after_a_clean_stop_the_next_start_has_nothing_to_look_at_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The progress recorded at a stop covers every record whose work was done, so a start after a clean stop
    reads none of them again (with no margin: the node's commits reach `observe` before its stop ends)."""
    monkeypatch.setattr(deciding, "SETTLE_MARGIN", timedelta(0))
    dos = make_node(tmp_path / "dos", "KZ-DOS", "KZDOS")
    event = factories.seal_event(seq=1, lock="LK-4", container=factories.container(serial=409014))
    node, url = await _started(dos.config)
    try:
        async with aiohttp.ClientSession() as session:
            stored = await _call(session, "POST", f"{url}/v1/seal-events", dos.tokens["GW-1"], {"events": [event]})
            assert stored["accepted"] == 1
    finally:
        await node.stop()
    caplog.set_level(logging.INFO, logger="mrx.node.deciding")
    node, url = await _started(dos.config)
    await asyncio.sleep(0.5)
    await node.stop()
    assert not [r for r in caplog.records if "looked again" in r.getMessage()]
    with closing(sqlite3.connect(f"file:{dos.database}?mode=ro", uri=True)) as db:
        (stored_at,) = db.execute("SELECT stored_at FROM records WHERE message_id = ?",
                                  (stored["results"][0]["message_id"],)).fetchone()
        (settled,) = db.execute("SELECT settled_before FROM recognition_progress").fetchone()
    assert settled > stored_at
