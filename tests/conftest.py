"""Shared fixtures: node directories and running node processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeproc import NodeDir, NodeProcess, make_node


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> NodeDir:
    return make_node(tmp_path_factory.mktemp("node"), gateways={"GW-1": ("LK-*",), "GW-2": ("LK-KZ-*",)})


@pytest.fixture(scope="module")
def node(node_dir: NodeDir) -> Iterator[NodeProcess]:
    with NodeProcess(node_dir) as running:
        yield running


def database_snapshot(path: Path) -> dict[str, int]:
    """Row counts of every table: what a rejected input must leave unchanged."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
