"""The log in the store: appended with each commit, continued after reopening, never split by a second writer."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mrx.keys.jws import SigningKey
from mrx.node import auditlog, merkle
from mrx.node.config import ConfigError, load_config
from mrx.node.inputs import SealEventIn
from mrx.node.records import RecordSigner
from mrx.node.storage import sqlite_log
from mrx.node.storage.sqlite import SqliteStore
from mrx.node.storage.sqlite_rows import insert_records
from tests import factories


def _records(signer: RecordSigner, first_seq: int, count: int) -> list:
    now = datetime.now(timezone.utc)
    return [
        signer.sign(SealEventIn.model_validate(factories.seal_event(seq=s)).to_domain("GW-1", now))
        for s in range(first_seq, first_seq + count)
    ]


async def _store(store: SqliteStore, records: list) -> None:
    await store.log_write(lambda db: insert_records(db, records, "2026-11-22T00:00:00Z", deliver=False))


async def _head(store: SqliteStore) -> tuple[int, bytes]:
    head = await store.log_read(auditlog.tree_head)
    return head.size, head.root


async def test_the_log_continues_across_reopening_and_a_second_writer(tmp_path: Path) -> None:
    key = SigningKey.generate()
    signer = RecordSigner("CN-AKL", lambda: key)
    path = tmp_path / "mrx.sqlite3"
    batches = [_records(signer, 1 + 100 * i, n) for i, n in enumerate([100, 60, 97, 3])]
    jws = [r.jws for batch in batches for r in batch]

    node = await SqliteStore.open(path)
    await _store(node, batches[0])
    beside = await SqliteStore.open(path)  # e.g. a command run beside the node: its own writer, its own frontier
    await _store(beside, batches[1])
    await _store(node, batches[2])  # the node's frontier is stale now: it must notice and reload
    await beside.close()
    await node.close()
    reopened = await SqliteStore.open(path)
    await _store(reopened, batches[3])
    size, root = await _head(reopened)
    leaves = await reopened.log_read(lambda db: sqlite_log.entries(db, 0, size))
    await reopened.close()

    expected, _ = merkle.Frontier().append(merkle.leaf_hash(j) for j in jws)
    assert (size, root) == (len(jws), expected.root())
    assert leaves == jws


def test_max_xml_bytes_is_capped_so_that_a_record_fits_a_log_entry(tmp_path: Path) -> None:
    config = tmp_path / "mrx.toml"
    config.write_text('node_id = "CN-AKL"\noffice = "CNAKL"\n[limits]\nmax_xml_bytes = 262144\n')
    with pytest.raises(ConfigError, match="max_xml_bytes"):
        load_config(config)


async def test_records_stored_before_the_log_existed_are_logged_at_the_next_open(tmp_path: Path) -> None:
    """An upgraded node: its records predate the log; opening the store logs them all, in order, in chunks."""
    key = SigningKey.generate()
    records = _records(RecordSigner("CN-AKL", lambda: key), 1, 4500)  # more than two chunks
    path = tmp_path / "mrx.sqlite3"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:  # past the store, as an older version stored them: no leaves
        insert_records(db, records, "2026-11-22T00:00:00Z", deliver=False)
    store = await SqliteStore.open(path)
    size, root = await _head(store)
    await store.close()
    expected, _ = merkle.Frontier().append(merkle.leaf_hash(r.jws) for r in records)
    assert (size, root) == (4500, expected.root())
