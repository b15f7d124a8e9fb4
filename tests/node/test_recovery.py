"""Work that a record calls for is done even when the node stops between the record's commit and the work.

A node decides on an arrival, and raises an alarm on a tamper, after the
seal event commits (`Recognition.observe`). Here the node runs in this
process with ``observe`` doing nothing, which leaves its database exactly as
a SIGKILL in that moment would: the events are stored, the work is not done.
Started again on the same files, the node must finish it, once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mrx.node.config import NodeConfig
from mrx.node.deciding import Recognition
from mrx.node.server import Node
from tests import factories
from tests.nodeproc import NodeDir, make_node

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
