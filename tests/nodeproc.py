"""Real mrx nodes as separate OS processes, for tests and benchmarks.

`NodeProcess` runs ``python -m mrx.node.cli serve --config ...`` with port 0,
waits for the node's "listening on" line and reads the URL from it, so there
is no race for a free port. `make_node` creates a node directory the same way
an operator would (``mrx init``) and adds credentials.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mrx.node.cli import _add_credential, init_node
from mrx.node.config import CONFIG_NAME, NodeConfig

_LISTENING = re.compile(rb"listening on (http://\S+)")


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


class NodeProcess:
    """A running node process. Use as a context manager, or start()/stop()."""

    def __init__(self, node: NodeDir, env: dict[str, str] | None = None) -> None:
        self.node = node
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._stderr: list[bytes] = []

    def start(self, timeout: float = 30.0) -> NodeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mrx.node.cli", "serve", "--config", str(self.node.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        found = threading.Event()

        def watch() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.url = match.group(1).decode()
                    found.set()

        threading.Thread(target=watch, daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise RuntimeError(f"node did not start within {timeout}s:\n{self.stderr()}")
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush — what a power cut does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
