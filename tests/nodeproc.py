"""Real mrx nodes as separate OS processes, for tests and benchmarks.

`NodeProcess` runs ``python -m mrx.node.cli serve --config ...`` with port 0,
waits for the node's "listening on" line and reads the URL from it, so there
is no race for a free port. `make_node` creates a node directory the same way
an operator would (``mrx init``) and adds credentials.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mrx.node.cli import _add_credential, init_node
from mrx.node.processes import ServerProcess
from mrx.node.config import CONFIG_NAME, NodeConfig



@dataclass
class NodeDir:
    path: Path
    config: NodeConfig
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def database(self) -> Path:
        return self.config.database_path


def make_node(
    path: Path,
    node_id: str = "CN-AKL",
    office: str = "CNAKL",
    gateways: dict[str, tuple[str, ...]] | None = None,
    clients: dict[str, str] | None = None,
) -> NodeDir:
    """A new node directory with the given gateways ({name: lock patterns}) and clients ({name: role}).

    Runs in a worker thread: the CLI functions it uses run their own event
    loop, and tests that call this may already be inside one.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_make_node, path, node_id, office, gateways, clients).result()


def _make_node(
    path: Path,
    node_id: str = "CN-AKL",
    office: str = "CNAKL",
    gateways: dict[str, tuple[str, ...]] | None = None,
    clients: dict[str, str] | None = None,
) -> NodeDir:
    config = init_node(path, node_id, office, 0)
    node = NodeDir(path, config)
    for name, patterns in (gateways or {"GW-1": ("LK-*",)}).items():
        node.tokens[name] = asyncio.run(_add_credential(config, name, "gateway", patterns))
    for name, role in (clients or {"NCS": "national", "AUDIT": "auditor"}).items():
        node.tokens[name] = asyncio.run(_add_credential(config, name, role, ()))
    return node


class NodeProcess(ServerProcess):
    """A running node: ``python -m mrx.node.cli serve --config ...``."""

    what = "node"

    def __init__(self, node: NodeDir, env: dict[str, str] | None = None) -> None:
        super().__init__(
            [sys.executable, "-m", "mrx.node.cli", "serve", "--config", str(node.config_path)], env=env
        )
        self.node = node
