"""Exactly once in effect, whatever the network and the processes do.

Two node processes, Alashankou (CN-AKL) sending to Dostyk (KZ-DOS):

- Dostyk is down while 1,000 records are made; when it comes back they all
  arrive (catch-up pulls them at once; the outbox's receipts follow), none twice;
- a fault proxy between them drops, delays, duplicates, reorders and fails
  30 % of requests; once it is removed, both sides converge;
- Alashankou is SIGKILLed mid-delivery and restarted; the same holds.

"Converged" is checked from both databases, read-only: Dostyk holds exactly
the records Alashankou addressed to it, byte for byte, each once, in the
order they were made (so per consignment too), and every outbox row at
Alashankou is delivered with a receipt.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from mrx.keys.keyring import KeyStore
from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until, write_partners
from tests.faultproxy import FaultProxyProcess
from tests.nodeproc import NodeProcess

SPECS = [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")]
CONTAINERS = [factories.container(serial=n) for n in range(100001, 100011)]


def _itinerary(n: int) -> dict:
    return {
        "consignment": {"type": "MRN", "id": f"26CN0000000000{n:02d}A1"},
        "offices": ["CNAKL", "KZDOS"],
        "containers": [CONTAINERS[n]],
    }


def _corridor(tmp_path: Path, **exchange: object) -> tuple[Member, Member]:
    akl, dos = make_corridor(tmp_path, SPECS, exchange=exchange)
    return akl, dos


def _register(member: Member) -> None:
    for n in range(len(CONTAINERS)):
        status, body = call(member.url + "/v1/itineraries", member.node.tokens["NCS"], _itinerary(n))
        assert status == 200, body


async def _post_events(url: str, token: str, count: int, batch: int = 50, first_seq: int = 1) -> int:
    """Seal events for the containers in turn (one lock per container); returns how many were accepted."""
    accepted = 0
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, batch):
            events = []
            for i in range(start, min(start + batch, count)):
                n = i % len(CONTAINERS)
                seq = first_seq + i // len(CONTAINERS)
                events.append(factories.seal_event(seq=seq, lock=f"LK-{n}", container=CONTAINERS[n]))
            async with session.post(
                url + "/v1/seal-events", json={"events": events}, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.json()
                assert response.status == 200, body
                accepted += body["accepted"]
    return accepted


def _assert_converged(akl: Member, dos: Member) -> None:
    sent = Db(akl).records_from("CN-AKL", "SealEventNotification")
    held = Db(dos).records_from("CN-AKL", "SealEventNotification")
    assert len(held) == len({m for m, _ in held}), "a record is stored twice"
    assert held == sent, "the partner's records differ from the sender's, or their order does"
    states = Db(akl).outbox_states()
    assert states == {"delivered": len(sent)}, states
    assert Db(akl).value("SELECT COUNT(*) FROM outbox WHERE receipt_message_id IS NULL") == 0
    assert Db(dos).value("SELECT COUNT(*) FROM received") == len(sent)


def _all_delivered(akl: Member, total: int) -> bool:
    return Db(akl).outbox_states() == {"delivered": total}


def test_a_partner_down_while_records_are_made_gets_them_all_when_back(tmp_path: Path) -> None:
    akl, dos = _corridor(tmp_path)
    with NodeProcess(akl.node):
        _register(akl)
        assert asyncio.run(_post_events(akl.url, akl.node.tokens["GW-1"], 1000, batch=100)) == 1000
        time.sleep(1.0)  # the sender has tried, failed and backed off
        assert Db(akl).outbox_states().get("delivered", 0) == 0
        with NodeProcess(dos.node):
            took = wait_until(lambda: _all_delivered(akl, 1000), 60, "1,000 deliveries after the partner returned")
            print(f"\n1,000 records delivered {took:.2f} s after the partner came back")
            _assert_converged(akl, dos)


def test_a_faulty_network_loses_and_doubles_nothing(tmp_path: Path) -> None:
    akl, dos = _corridor(tmp_path, batch_size=10)  # many small requests cross the proxy
    with NodeProcess(dos.node) as dos_proc:
        with FaultProxyProcess(target=dos_proc.url, rate=0.3, seed=9) as proxy:
            write_partners(akl, [dos], urls={"KZ-DOS": proxy.url}, exchange={"batch_size": 10})
            with NodeProcess(akl.node):
                _register(akl)
                asyncio.run(_post_events(akl.url, akl.node.tokens["GW-1"], 600, batch=10))
                wait_until(
                    lambda: Db(akl).outbox_states().get("delivered", 0) >= 300, 90, "half delivered through faults"
                )
                proxy.config(rate=0.0)  # the network heals
                wait_until(lambda: _all_delivered(akl, 600), 60, "every delivery after the network healed")
                stats = proxy.stats()
                _assert_converged(akl, dos)
    print(f"\nfaults injected: {stats['faults']} in {stats['requests']} requests")
    assert all(n > 0 for n in stats["faults"].values()), stats  # seed 9 draws every kind early


def test_a_sender_killed_mid_batch_resends_and_nothing_doubles(tmp_path: Path) -> None:
    akl, dos = _corridor(tmp_path)
    with NodeProcess(dos.node):
        sender = NodeProcess(akl.node).start()
        _register(akl)
        asyncio.run(_post_events(akl.url, akl.node.tokens["GW-1"], 600, batch=100))
        wait_until(lambda: Db(dos).value("SELECT COUNT(*) FROM received") > 0, 30, "the first deliveries")
        sender.kill()
        delivered_before = Db(akl).outbox_states().get("delivered", 0)
        sender = NodeProcess(akl.node).start()
        try:
            asyncio.run(_post_events(akl.url, akl.node.tokens["GW-1"], 200, batch=100, first_seq=61))
            wait_until(lambda: _all_delivered(akl, 800), 60, "every delivery after the restart")
            _assert_converged(akl, dos)
        finally:
            sender.stop()
    print(f"\n{delivered_before} of 600 were delivered when the sender was killed")


@pytest.mark.parametrize("route_to, expected", [("downstream", []), ("itinerary", ["CN-AKL"])])
def test_route_to_chooses_the_offices_of_the_itinerary(tmp_path: Path, route_to: str, expected: list[str]) -> None:
    akl, dos = make_corridor(tmp_path, SPECS, exchange={"route_to": route_to})
    with NodeProcess(dos.node):
        status, body = call(dos.url + "/v1/itineraries", dos.node.tokens["NCS"], _itinerary(0))
        assert status == 200 and body["recipients"] == expected, body


def test_a_permanent_rejection_is_surfaced_not_retried_forever(tmp_path: Path) -> None:
    """Records signed with a key later revoked as compromised: the partner refuses them for good."""
    akl, dos = _corridor(tmp_path)
    with NodeProcess(akl.node):
        _register(akl)
        asyncio.run(_post_events(akl.url, akl.node.tokens["GW-1"], 5, batch=5))
        keys = KeyStore.open(akl.node.config.keys_path)
        compromised = keys.signing_key.kid
        keys.rotate()
        keys.revoke(compromised, at=datetime.now(timezone.utc) - timedelta(hours=1))
        with NodeProcess(dos.node):
            wait_until(lambda: Db(akl).outbox_states() == {"failed": 5}, 30, "the partner's negative receipts")
            attempts = Db(akl).value("SELECT MAX(attempts) FROM outbox")
            time.sleep(2.0)  # several backoff periods: nothing is retried by itself
            assert Db(akl).value("SELECT MAX(attempts) FROM outbox") == attempts
            assert Db(dos).value("SELECT COUNT(*) FROM received") == 0

            listed = _mrx(akl, "outbox", "list", "--state", "failed")
            assert len(listed.splitlines()) == 5 and "record-key-not-valid" in listed
            assert _mrx(akl, "outbox", "retry", "KZ-DOS").startswith("5 failed deliveries to KZ-DOS queued again")
            wait_until(
                lambda: Db(akl).value("SELECT MIN(attempts) FROM outbox") > attempts, 30, "the operator's retry"
            )
            wait_until(lambda: Db(akl).outbox_states() == {"failed": 5}, 30, "the same refusal again")


def _mrx(member: Member, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mrx.node.cli", *args, "--config", str(member.node.config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
