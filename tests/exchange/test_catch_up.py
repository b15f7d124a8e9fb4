"""Catch-up (docs/protocol.md §4): what came by push is not pulled again; a key not known yet is fetched at once.

Two node processes, Alashankou (CN-AKL) pushing to Dostyk (KZ-DOS): every
push moves Dostyk's catch-up cursor past what it stored, so the pull at
Dostyk's restart fetches only what was made while it was down.

Then in process, a `Puller` against a scripted partner that has just rotated
its key: the page deferred for the unknown key is taken again at once after
one key fetch, not at the next ``pull_seconds``; and a key the partner never
announces costs one fetch and one retry per pull, no more.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mrx.keys.keyring import KeyStore
from mrx.node import partners as partners_module
from mrx.node.config import Exchange, Partner
from mrx.node.inputs import SealEventIn
from mrx.node.metrics import NodeMetrics
from mrx.node.partners import Partners
from mrx.node.receiving import Receiver
from mrx.node.records import RecordSigner
from mrx.node.sending import Puller
from mrx.node.signing import InlineSigning
from mrx.node.storage.sqlite import SqliteStore
from tests import factories
from tests.corridor import Db, Member, call, make_corridor, wait_until
from tests.nodeproc import NodeProcess

CONTAINER = factories.container(serial=310001)
PUSHED, MADE_WHILE_DOWN = 30, 12


def _itinerary() -> dict:
    return {"consignment": {"type": "MRN", "id": "26CN0000000000CU01"}, "offices": ["CNAKL", "KZDOS"],
            "containers": [CONTAINER]}


def _seal_events(member: Member, seqs: range) -> None:
    events = [factories.seal_event(seq=s, lock="LK-CU-1", container=CONTAINER, type="sealed" if s == 1 else "position")
              for s in seqs]
    status, body = call(member.url + "/v1/seal-events", member.node.tokens["GW-1"], {"events": events})
    assert status == 200 and body["accepted"] == len(events), body


def _metric(member: Member, sample: str) -> float:
    """A sample of the node's /metrics, 0 when it is not there (a counter never incremented)."""
    with urllib.request.urlopen(member.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _last_position(akl: Member) -> str:
    return str(Db(akl).value("SELECT MAX(id) FROM outbox WHERE partner = 'KZ-DOS'"))


def test_a_pull_fetches_nothing_that_came_by_push(tmp_path: Path) -> None:
    akl, dos = make_corridor(tmp_path, [("CN-AKL", "CNAKL"), ("KZ-DOS", "KZDOS")])
    with NodeProcess(akl.node):
        assert call(akl.url + "/v1/itineraries", akl.node.tokens["NCS"], _itinerary())[0] == 200
        with NodeProcess(dos.node):
            _seal_events(akl, range(1, PUSHED + 1))
            wait_until(lambda: Db(akl).outbox_states() == {"delivered": PUSHED}, 30, "the records pushed to KZ-DOS")
        # Every push moved the cursor (in memory; saved as Dostyk stops): it holds all up to Alashankou's last position.
        assert Db(dos).value("SELECT pull_cursor FROM partner_state WHERE partner = 'CN-AKL'") == _last_position(akl)
        _seal_events(akl, range(PUSHED + 1, PUSHED + MADE_WHILE_DOWN + 1))  # queued while Dostyk is down
        with NodeProcess(dos.node):
            wait_until(lambda: _metric(dos, 'mrx_job_runs_total{job="catch-up",outcome="ok"}') >= 1, 30,
                       "KZ-DOS's catch-up at start")
            wait_until(lambda: Db(akl).outbox_states() == {"delivered": PUSHED + MADE_WHILE_DOWN}, 30, "all delivered")
            pulled = _metric(dos, 'mrx_exchange_pulled_total{partner="CN-AKL"}')
            assert pulled <= MADE_WHILE_DOWN, f"the pull at start fetched {pulled:.0f} records, some came by push"
            assert len(Db(dos).records_from("CN-AKL", "SealEventNotification")) == PUSHED + MADE_WHILE_DOWN
            assert Db(dos).value("SELECT pull_cursor FROM partner_state WHERE partner = 'CN-AKL'") == _last_position(akl)


# -- a key not known yet, in process ------------------------------------------------------------------------------


@dataclass
class ScriptedPartner:
    """CN-AKL as KZ-DOS's catch-up sees it: its key-set statements and one page of records for KZ-DOS."""

    keys: KeyStore
    records: list[bytes] = field(default_factory=list)
    pages: int = 0  # page requests served
    statements: int = 0  # key-set fetches served
    url: str = ""

    async def page(self, request: web.Request) -> web.Response:
        self.pages += 1
        if request.query.get("cursor") == str(len(self.records)):
            return web.json_response({"messages": [], "cursor": request.query["cursor"], "more": False})
        return web.json_response(
            {"messages": [r.decode() for r in self.records], "cursor": str(len(self.records)), "more": False}
        )

    async def key_statements(self, request: web.Request) -> web.Response:
        self.statements += 1
        return web.json_response({"statements": [s.decode() for s in self.keys.statements()]})

    def sign(self, signer_keys: KeyStore, count: int) -> None:
        """``count`` seal events for KZ-DOS, signed with ``signer_keys``' active key."""
        signer = RecordSigner("CN-AKL", lambda: signer_keys.signing_key)
        now = datetime.now(timezone.utc)
        self.records = [
            signer.sign(SealEventIn.model_validate(factories.seal_event(seq=s)).to_domain("GW-1", now),
                        recipients=("KZ-DOS",)).jws
            for s in range(1, count + 1)
        ]


@dataclass
class Dostyk:
    puller: Puller
    store: SqliteStore
    partner: Partner


@pytest.fixture
async def akl(tmp_path: Path) -> AsyncIterator[ScriptedPartner]:
    partner = ScriptedPartner(KeyStore.create(tmp_path / "akl-keys"))
    app = web.Application()
    app.router.add_get("/v1/exchange/partners/KZ-DOS/messages", partner.page)
    app.router.add_get("/.well-known/mrx-key-statements", partner.key_statements)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    partner.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield partner
    await runner.cleanup()


@pytest.fixture
async def dos(tmp_path: Path, akl: ScriptedPartner, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Dostyk]:
    """KZ-DOS's catch-up, trusting CN-AKL's keys as fetched just now (so an on-demand fetch is not due yet)."""
    monkeypatch.setattr(partners_module, "ON_DEMAND_INTERVAL", 3600.0)
    keys = KeyStore.create(tmp_path / "dos-keys")
    store = await SqliteStore.open(tmp_path / "dos.sqlite3")
    metrics = NodeMetrics()
    partner = Partner(node_id="CN-AKL", url=akl.url, anchors=[akl.keys.signing_key.kid], offices=["CNAKL"])
    async with aiohttp.ClientSession() as session:
        partners = Partners("KZ-DOS", [partner], store, metrics)
        await partners.load(session)
        assert await partners.refresh("CN-AKL")
        receiver = Receiver("KZ-DOS", partners, store, InlineSigning(RecordSigner("KZ-DOS", lambda: keys.signing_key)),
                            metrics, max_xml_bytes=48_000)
        yield Dostyk(Puller("KZ-DOS", partners, store, receiver, lambda: keys.signing_key, session, Exchange(), metrics),
                     store, partner)
    await store.close()


async def test_a_page_deferred_for_a_key_just_rotated_is_taken_again_at_once(akl: ScriptedPartner, dos: Dostyk) -> None:
    akl.keys.rotate()  # after KZ-DOS fetched its keys: the records name a key KZ-DOS has not seen
    akl.sign(akl.keys, 3)
    fetched = akl.statements
    assert await dos.puller.pull(dos.partner) == 3
    assert (akl.pages, akl.statements - fetched) == (2, 1)  # the page, one key fetch, the page again
    assert await dos.store.pull_cursor("CN-AKL") == "3"


async def test_a_key_never_announced_costs_one_fetch_and_one_retry_per_pull(
    akl: ScriptedPartner, dos: Dostyk, tmp_path: Path
) -> None:
    akl.sign(KeyStore.create(tmp_path / "stranger-keys"), 2)  # a kid no statement of CN-AKL's names
    fetched = akl.statements
    for pulls in (1, 2):
        assert await dos.puller.pull(dos.partner) == 0
        assert (akl.pages, akl.statements - fetched) == (2 * pulls, pulls)
    assert await dos.store.pull_cursor("CN-AKL") is None  # deferred: they come again


async def test_pushes_and_pages_only_move_the_cursor_forward(dos: Dostyk) -> None:
    for position, held in ((40, "40"), (12, "40"), (41, "41")):
        await dos.puller.advance("CN-AKL", position)
        assert await dos.store.pull_cursor("CN-AKL") == held
    await asyncio.gather(*(dos.puller.advance("CN-AKL", p) for p in (90, 60, 75)))
    assert await dos.store.pull_cursor("CN-AKL") == "90"
    # A push's position costs the push no write: it is saved by the next pull's first step, or at stop.
    dos.puller.pushed("CN-AKL", 120)
    dos.puller.pushed("CN-AKL", 100)
    assert await dos.store.pull_cursor("CN-AKL") == "90"
    await dos.puller.save()
    assert await dos.store.pull_cursor("CN-AKL") == "120"
