"""Several real mrx nodes that are each other's partners, for exchange tests and benchmarks.

`make_corridor` creates node directories the way operators would (``mrx
init``), gives each a fixed free port, and writes every other node into its
``[[partners]]`` with the anchor an operator would have been given out of
band: the partner's current key thumbprint. Partner URLs can be overridden,
to put a fault proxy between two nodes. `Db` reads a node's SQLite file
read-only, as an auditor would, to compare what the nodes hold.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mrx.keys.keyring import KeyStore
from mrx.keys.notes import NoteSigner
from tests.nodeproc import NodeDir, make_node

# Quick retries for tests: the defaults (60 s cap) are for real networks.
TEST_EXCHANGE = {
    "retry_min_seconds": 0.2,
    "retry_max_seconds": 2.0,
    "sweep_seconds": 0.5,
    "request_timeout_seconds": 5.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Member:
    node: NodeDir
    node_id: str
    office: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def anchor(self) -> str:
        return KeyStore.open(self.node.config.keys_path).signing_key.kid

    @property
    def log_key(self) -> str:
        """The node's audit-log verifier key, as its operator would hand it over (``mrx log key``)."""
        key = KeyStore.open(self.node.config.keys_path).note_key()
        return str(NoteSigner(self.node.config.log_origin, key).verifier)


def make_corridor(
    base: Path, specs: list[tuple[str, str]], *, exchange: dict[str, Any] | None = None,
    gateways: dict[str, tuple[str, ...]] | None = None, witnessing: dict[str, Any] | None = None,
) -> list[Member]:
    """Nodes that are each other's partners; with ``witnessing`` ([log] settings), also each other's witnesses."""
    members = []
    for node_id, office in specs:
        node = make_node(base / node_id, node_id, office, gateways=gateways)
        members.append(Member(node, node_id, office, free_port()))
    for member in members:
        write_partners(member, [m for m in members if m is not member], exchange=exchange, log=witnessing)
    return members


class PartnerSpec(Protocol):
    """What a node's config says about a partner (a `Member`, or a test's fake partner)."""

    node_id: str
    office: str

    @property
    def url(self) -> str: ...

    @property
    def anchor(self) -> str: ...


def write_partners(
    member: Member, partners: Sequence[PartnerSpec], *, urls: dict[str, str] | None = None,
    exchange: dict[str, Any] | None = None, log: dict[str, Any] | None = None,
) -> None:
    """Rewrite the node's mrx.toml: its port, [exchange] settings and [[partners]].

    With ``log`` ([log] settings), each partner's ``log_key`` too: the nodes witness each other."""
    path = member.node.config_path
    text = path.read_text()
    text = text.split("\n# Partner nodes", 1)[0].split("\n[[partners]]", 1)[0]
    lines = []
    for line in text.splitlines():
        if line.startswith("port = "):
            line = f"port = {member.port}"
        lines.append(line)
        if line == "[exchange]":
            lines.extend(f"{k} = {_toml(v)}" for k, v in {**TEST_EXCHANGE, **(exchange or {})}.items())
        if line == "[log]" and log:
            lines.extend(f"{k} = {_toml(v)}" for k, v in log.items())
    lines = _drop_repeated_keys(lines)
    for p in partners:
        url = (urls or {}).get(p.node_id, p.url)
        lines += ["", "[[partners]]", f'node_id = "{p.node_id}"', f'url = "{url}"', f'anchors = ["{p.anchor}"]',
                  f'offices = ["{p.office}"]']
        if log is not None:
            lines.append(f'log_key = "{p.log_key}"')
    path.write_text("\n".join(lines) + "\n")


def _toml(value: Any) -> str:
    return json.dumps(value)


def _drop_repeated_keys(lines: list[str]) -> list[str]:
    """Keep the first of two lines setting one key in a table (ours come first)."""
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            seen = set()
        elif "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if key in seen:
                continue
            seen.add(key)
        out.append(line)
    return out


def call(url: str, token: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method or ("POST" if data is not None else "GET"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Db:
    """A node's database, read-only."""

    def __init__(self, member: Member) -> None:
        self.path = member.node.database

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.rows(sql, params)[0][0]

    def records_from(self, sender: str, message_type: str | None = None) -> list[tuple[str, bytes]]:
        """(message ID, JWS) of the records ``sender`` made that this node holds, in the order stored."""
        sql = "SELECT message_id, jws FROM records WHERE sender = ?"
        params: tuple[Any, ...] = (sender,)
        if message_type is not None:
            sql += " AND message_type = ?"
            params += (message_type,)
        return [(m, bytes(j)) for m, j in self.rows(sql + " ORDER BY seq", params)]

    def outbox_states(self) -> dict[str, int]:
        return dict(self.rows("SELECT state, COUNT(*) FROM outbox GROUP BY state"))


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll until ``condition`` holds; return the seconds it took. Fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
