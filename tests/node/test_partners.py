"""Partner keys survive restarts and outages; the replay cache stays bounded.

In process, with a real SQLite store: `Partners` rebuilds a partner's keys
from the chain it stored, keeps them when the partner cannot be reached, and
refuses a served chain that does not follow from what it trusts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mrx.keys.keyring import KeyStore
from mrx.keys.keyset import sign_statement
from mrx.node.config import Partner
from mrx.node.metrics import NodeMetrics
from mrx.node.partners import Partners, ReplayCache
from mrx.node.problems import Problem
from mrx.node.storage.sqlite import SqliteStore


async def _serve(statements: list[bytes]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"statements": [t.decode() for t in statements]})

    app = web.Application()
    app.router.add_get("/.well-known/mrx-key-statements", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _partners(keys: KeyStore, url: str, store: SqliteStore, session: aiohttp.ClientSession) -> Partners:
    """A node's view of one partner, KZ-DOS, anchored at its current key, loaded from the store."""
    partner = Partner(node_id="KZ-DOS", url=url, anchors=[keys.signing_key.kid], offices=["KZDOS"])
    partners = Partners("CN-AKL", [partner], store, NodeMetrics())
    await partners.load(session)
    return partners


async def test_keys_are_kept_across_a_restart_while_the_partner_is_unreachable(tmp_path: Path) -> None:
    keys = KeyStore.create(tmp_path / "dos-keys")
    served = list(keys.statements())
    runner, url = await _serve(served)
    store = await SqliteStore.open(tmp_path / "node.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            partners = await _partners(keys, url, store, session)
            assert partners.lookup(keys.signing_key.kid) is None  # nothing trusted before the first fetch
            assert await partners.refresh("KZ-DOS") is True
            assert partners.lookup(keys.signing_key.kid).owner == "KZ-DOS"  # type: ignore[union-attr]
            await runner.cleanup()  # the partner goes away

            restarted = await _partners(keys, url, store, session)
            assert await restarted.refresh("KZ-DOS") is False  # unreachable
            found = restarted.lookup(keys.signing_key.kid)
            assert found is not None and found.owner == "KZ-DOS"  # the last known good keys
    finally:
        await store.close()


async def test_a_swapped_key_set_is_refused_and_the_trusted_keys_stay(tmp_path: Path) -> None:
    keys = KeyStore.create(tmp_path / "dos-keys")
    thieves = KeyStore.create(tmp_path / "thief-keys")
    genuine = list(keys.statements())
    served = list(genuine)
    runner, url = await _serve(served)
    store = await SqliteStore.open(tmp_path / "node.sqlite3")
    try:
        async with aiohttp.ClientSession() as session:
            partners = await _partners(keys, url, store, session)
            await partners.refresh("KZ-DOS")
            served.append(sign_statement(thieves.signing_key, 2, datetime.now(timezone.utc), thieves.keyring()))
            assert await partners.refresh("KZ-DOS") is False
            assert partners.lookup(thieves.signing_key.kid) is None
            assert partners.lookup(keys.signing_key.kid) is not None
            assert await store.key_statements("KZ-DOS") == genuine
    finally:
        await runner.cleanup()
        await store.close()


def test_the_replay_cache_forgets_expired_entries_and_refuses_when_full_of_live_ones() -> None:
    cache = ReplayCache(window=10.0, limit=3)
    assert cache.add("a", now=0.0) and not cache.add("a", now=1.0)
    assert cache.add("b", now=1.0) and cache.add("c", now=2.0)
    with pytest.raises(Problem) as refused:
        cache.add("d", now=3.0)
    assert refused.value.code == "unavailable"
    assert cache.add("d", now=10.5)  # "a" expired at 10.0
    assert len(cache) == 3
