"""Nothing acknowledged is lost: SIGKILL a node mid-ingest, restart it, look.

Several concurrent gateways stream batches at a node process. The test kills
the node with SIGKILL (no shutdown, no flush) while requests are in flight,
restarts it on the same data directory, and checks that every event the node
had acknowledged is there, with a record that verifies, and that re-sending
any of them is answered as a duplicate with the same record.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp

from mrx.keys.jws import verify_compact
from mrx.keys.keyring import KeyStore
from tests import factories
from tests.nodeproc import NodeProcess, make_node

GATEWAYS = 4
BATCH = 20


async def _stream(
    url: str, token: str, lock: str, acked: dict[str, tuple[str, dict]]
) -> None:
    """Post batches until the node stops answering."""
    seq = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            events = [factories.seal_event(seq=seq + i + 1, lock=lock) for i in range(BATCH)]
            try:
                async with session.post(
                    url + "/v1/seal-events",
                    json={"events": events},
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    body = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the node is gone; what it acknowledged before is what counts
            for event, result in zip(events, body["results"], strict=True):
                assert result["status"] == "accepted", result
                acked[result["event_id"]] = (result["message_id"], event)
            seq += BATCH


async def test_sigkill_during_ingest_loses_no_acknowledged_event(tmp_path: Path) -> None:
    node_dir = make_node(tmp_path / "node")
    token = node_dir.tokens["GW-1"]
    acked: dict[str, tuple[str, dict]] = {}

    node = NodeProcess(node_dir).start()
    streams = [
        asyncio.create_task(_stream(node.url, token, f"LK-KILL-{g}", acked)) for g in range(GATEWAYS)
    ]
    while len(acked) < 600:  # let a good number commit, then pull the plug mid-stream
        await asyncio.sleep(0.02)
    node.kill()
    await asyncio.gather(*streams)
    assert len(acked) >= 600

    with sqlite3.connect(node_dir.database) as db:
        stored = dict(db.execute("SELECT event_id, message_id FROM seal_events").fetchall())
        records = dict(db.execute("SELECT message_id, jws FROM records").fetchall())
        # Killed mid-stream, the audit log and the records still agree: every record is a leaf, in order.
        (count,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        log = db.execute("SELECT COUNT(*), MAX(leaf_index), COUNT(DISTINCT record_seq) FROM log_leaves").fetchone()
    assert log == (count, count - 1, count)
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert all(stored[e] == m for e, (m, _) in acked.items())

    keyring = KeyStore.open(node_dir.config.keys_path).keyring()
    for message_id, _ in acked.values():
        verified = verify_compact(bytes(records[message_id]), keyring.get)
        assert b"SealEventNotification" in verified.payload

    # The restarted node knows every acknowledged event: a repeat is a duplicate
    # answered with the record it was first given.
    sample = list(acked.items())[:: max(1, len(acked) // 50)]
    with NodeProcess(node_dir) as restarted:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                restarted.url + "/v1/seal-events",
                json={"events": [event for _, (_, event) in sample]},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                body = await resp.json()
    assert body["duplicate"] == len(sample), body
    assert [r["message_id"] for r in body["results"]] == [m for _, (m, _) in sample]
