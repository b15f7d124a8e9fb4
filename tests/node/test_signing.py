"""Signing in worker processes: the same records as inline, failures kept per record."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mrx.keys.jws import SigningKey, verify_compact
from mrx.keys.keyring import KeyStore, KeyStoreError
from mrx.node.inputs import SealEventIn
from mrx.node.records import RecordSigner, Refusal, TrustedKey, Unsigned, VerifiedRecord, verify_records
from mrx.node.signing import InlineSigning, SigningPool
from mrx.node.storage import SignedRecord
from mrx.schemas.xml import XmlError
from tests import factories


def unsigned(bodies: list) -> list[Unsigned]:
    return [Unsigned(body) for body in bodies]


NOW = datetime(2026, 11, 22, 5, 0, tzinfo=timezone.utc)


def events(n: int, lock: str = "LK-S"):
    return [SealEventIn.model_validate(factories.seal_event(seq=i, lock=lock)).to_domain("GW-1", NOW) for i in range(n)]


@pytest.fixture
async def pool(tmp_path: Path):
    store = KeyStore.create(tmp_path / "keys")
    inline = RecordSigner("CN-AKL", lambda: store.signing_key)
    # inline_below=1: every batch goes to the worker, which is what these tests are about.
    signing = SigningPool(inline, tmp_path / "keys", workers=1, max_batch=64, inline_below=1)
    await signing.start()
    yield signing
    await signing.close()


async def test_concurrent_callers_get_their_own_verified_records(pool: SigningPool, tmp_path: Path) -> None:
    keyring = KeyStore.open(tmp_path / "keys").keyring()
    batches = [events(n, lock=f"LK-S-{n}") for n in (1, 3, 100, 1, 7)]
    results = await asyncio.gather(*(pool.sign_all(unsigned(batch)) for batch in batches))
    for batch, outcomes in zip(batches, results, strict=True):
        assert len(outcomes) == len(batch)
        for body, outcome in zip(batch, outcomes, strict=True):
            assert isinstance(outcome, SignedRecord)
            payload = verify_compact(outcome.jws, keyring.get).payload
            assert f"<EventID>{body.event_id}</EventID>".encode() in payload


async def test_a_record_that_fails_the_xsd_fails_alone(pool: SigningPool) -> None:
    good = events(3)
    bad = replace(good[1], seal_id="x" * 40)  # longer than the XSD allows
    outcomes = await pool.sign_all(unsigned([good[0], bad, good[2]]))
    assert isinstance(outcomes[0], SignedRecord) and isinstance(outcomes[2], SignedRecord)
    assert isinstance(outcomes[1], XmlError) and outcomes[1].code == "xml-schema-invalid"


async def test_a_revoked_active_key_fails_closed_in_the_workers(pool: SigningPool, tmp_path: Path) -> None:
    store = KeyStore.open(tmp_path / "keys")
    store.revoke(store.signing_key.kid)
    outcomes = await pool.sign_all(unsigned(events(2)))
    assert all(isinstance(o, KeyStoreError) for o in outcomes)


async def test_a_killed_worker_fails_only_its_batch_and_the_pool_recovers(pool: SigningPool) -> None:
    assert isinstance((await pool.sign_all(unsigned(events(1))))[0], SignedRecord)
    for pid in list(pool._pool._processes):  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
    failed = await pool.sign_all(unsigned(events(2)))
    assert all(isinstance(o, Exception) for o in failed)
    recovered = await pool.sign_all(unsigned(events(2)))
    assert all(isinstance(o, SignedRecord) for o in recovered)


async def test_small_batches_are_signed_on_the_loop_and_large_ones_in_a_worker(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys")
    inline_calls: list[int] = []

    def key() -> SigningKey:
        inline_calls.append(1)
        return store.signing_key

    signing = SigningPool(RecordSigner("CN-AKL", key), tmp_path / "keys", workers=1, inline_below=8)
    await signing.start()
    try:
        small = await signing.sign_all(unsigned(events(3)))
        assert len(inline_calls) == 1  # signed here, with the inline signer's key
        large = await signing.sign_all(unsigned(events(20, lock="LK-L")))
        assert len(inline_calls) == 1  # the worker asked its own key store
        assert all(isinstance(o, SignedRecord) for o in small + large)
    finally:
        await signing.close()


async def test_inline_signing_makes_the_same_kind_of_record(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "keys")
    inline = InlineSigning(RecordSigner("CN-AKL", lambda: store.signing_key))
    (record,) = await inline.sign_all(unsigned(events(1)))
    assert isinstance(record, SignedRecord) and record.kid == store.signing_key.kid


def test_signing_workers_exit_when_their_node_is_killed(tmp_path: Path) -> None:
    """A node killed with SIGKILL leaves no signing worker behind."""
    import time as clock

    from tests.nodeproc import NodeProcess, make_node

    node = NodeProcess(make_node(tmp_path / "node")).start()
    assert node.proc is not None
    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
    workers = [int(pid) for pid in children]
    assert workers, "the node runs signing workers by default"
    node.kill()
    deadline = clock.monotonic() + 10
    while clock.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        clock.sleep(0.2)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert not alive, f"signing workers {alive} outlived their node"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_a_node_whose_worker_died_still_stops_cleanly(tmp_path: Path) -> None:
    """Stopping closes every part even when one fails: the store must not be left open."""
    from tests.nodeproc import NodeProcess, make_node

    node = NodeProcess(make_node(tmp_path / "node")).start()
    assert node.proc is not None
    for pid in Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    assert node.stop(timeout=30) == 0, node.stderr()


async def test_records_are_verified_in_the_worker_as_on_the_loop(pool: SigningPool, tmp_path: Path) -> None:
    keyring = KeyStore.open(tmp_path / "keys").keyring()
    keys = {key.kid: TrustedKey("CN-AKL", key) for key in keyring}
    tokens = [outcome.jws for outcome in await pool.sign_all(unsigned(events(5)))]
    header, _, signature = tokens[0].split(b".")
    tokens.append(b".".join([header, tokens[1].split(b".")[1], signature]))  # another record's payload
    in_worker = await pool.verify_all(tokens, keys, max_xml_bytes=262_144)
    on_loop = verify_records(tokens, keys, max_xml_bytes=262_144)
    assert [type(v) for v in in_worker] == [VerifiedRecord] * 5 + [Refusal]
    assert in_worker[5] == on_loop[5] and in_worker[5].code == "jws-bad-signature"
    for a, b in zip(in_worker[:5], on_loop[:5], strict=True):
        assert (a.message, a.record, a.key) == (b.message, b.record, b.key)
