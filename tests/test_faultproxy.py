"""The fault proxy, as a separate process between a test client and a small target server.

The target runs in its own thread and event loop (so that blocking control
calls to the proxy never stall it) and records every request it receives.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.faultproxy import FAULT_KINDS, FaultProxyProcess


class Target:
    """An aiohttp server on a free port that records (method, path with query) per request."""

    def __init__(self) -> None:
        self.url = ""
        self._seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Target:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/gzip", self._gzip)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def seen(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._seen)

    def count(self, path: str) -> int:
        return sum(1 for _, seen_path in self.seen() if seen_path.split("?")[0] == path)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def _record(self, request: web.Request) -> None:
        with self._lock:
            self._seen.append((request.method, request.path_qs))

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request)
        return web.Response(
            status=201,
            body=b"%s %s\n%s" % (request.method.encode(), request.path_qs.encode(), body),
            headers={"X-Seen-Custom": request.headers.get("X-Custom", ""), "X-Target": "yes"},
        )

    async def _gzip(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(
            body=gzip.compress(b"compressed payload"),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    server = Target().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(target: Target) -> Iterator[FaultProxyProcess]:
    with FaultProxyProcess(target.url, rate=0.0, seed=1) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_slate(target: Target, proxy: FaultProxyProcess) -> None:
    proxy.config(rate=0.0, faults=FAULT_KINDS, reorder_window=1.0, delay=(0.2, 1.5))
    proxy.reset_stats()
    target.clear()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request, and POSTs where a connection is cut:
    # aiohttp's client retries idempotent methods once after a disconnect.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
        auto_decompress=False,
    ) as session:
        yield session


async def test_rate_zero_forwards_unchanged(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    async with client.post(
        proxy.url + "/echo/path?x=1&y=a%20b", data=b"payload", headers={"X-Custom": "hello"}
    ) as resp:
        assert resp.status == 201
        assert await resp.read() == b"POST /echo/path?x=1&y=a%20b\npayload"
        assert resp.headers["X-Seen-Custom"] == "hello"
        assert resp.headers["X-Target"] == "yes"
    async with client.get(proxy.url + "/gzip") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await resp.read()) == b"compressed payload"
    assert target.seen() == [("POST", "/echo/path?x=1&y=a%20b"), ("GET", "/gzip")]
    stats = proxy.stats()
    assert (stats["requests"], stats["clean"], stats["forwarded"]) == (2, 2, 2)
    assert not any(stats["faults"].values())


async def test_drop_closes_connection_without_forwarding(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["drop"])
    with pytest.raises(aiohttp.ClientError):
        async with client.post(proxy.url + "/drop", data=b"x") as resp:
            await resp.read()
    assert target.seen() == []
    stats = proxy.stats()
    assert (stats["requests"], stats["forwarded"], stats["faults"]["drop"]) == (1, 0, 1)


async def test_drop_response_processes_but_closes_connection(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["drop-response"])
    with pytest.raises(aiohttp.ClientError):
        async with client.post(proxy.url + "/work", data=b"x") as resp:
            await resp.read()
    assert target.count("/work") == 1


async def test_duplicate_forwards_twice(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["duplicate"])
    async with client.post(proxy.url + "/twice", data=b"x") as resp:
        assert resp.status == 201
        assert await resp.read() == b"POST /twice\nx"
    assert target.count("/twice") == 2


async def test_error_answers_503_without_forwarding(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["error"])
    async with client.get(proxy.url + "/fail") as resp:
        assert resp.status == 503
        assert b"faultproxy" in await resp.read()
    assert target.seen() == []


async def test_delay_still_forwards(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["delay"], delay=(0.0, 0.05))
    async with client.get(proxy.url + "/slow") as resp:
        assert resp.status == 201
    assert target.count("/slow") == 1


async def _wait_for_requests(proxy: FaultProxyProcess, count: int) -> None:
    """Until the proxy has seen `count` requests (a held request has been counted)."""
    for _ in range(500):
        if (await asyncio.to_thread(proxy.stats))["requests"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the proxy did not see {count} requests")


async def test_reorder_forwards_the_later_request_first(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    # A long window: the first request is held until the second arrives, however slow the machine.
    proxy.config(rate=1.0, faults=["reorder"], reorder_window=10.0)

    async def post(path: str) -> int:
        async with client.post(proxy.url + path, data=b"x") as resp:
            await resp.read()
            return resp.status

    first = asyncio.create_task(post("/first"))
    await _wait_for_requests(proxy, 1)
    second = asyncio.create_task(post("/second"))
    assert [await first, await second] == [201, 201]
    assert target.seen() == [("POST", "/second"), ("POST", "/first")]


async def test_reorder_without_successor_forwards_after_window(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["reorder"], reorder_window=0.1)
    async with client.post(proxy.url + "/alone", data=b"x") as resp:
        assert resp.status == 201
    assert target.seen() == [("POST", "/alone")]


async def test_stats_count_requests_forwards_and_faults(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=1.0, faults=["error"])
    for _ in range(3):
        async with client.get(proxy.url + "/s") as resp:
            assert resp.status == 503
    proxy.config(faults=["duplicate"])
    for _ in range(2):
        async with client.get(proxy.url + "/s") as resp:
            assert resp.status == 201
    proxy.config(rate=0.0)
    async with client.get(proxy.url + "/s") as resp:
        assert resp.status == 201

    stats = proxy.stats()
    assert stats["requests"] == 6
    assert stats["clean"] == 1
    assert stats["forwarded"] == 5 == target.count("/s")
    assert stats["upstream_errors"] == 0
    assert stats["faults"] == {kind: 0 for kind in FAULT_KINDS} | {"error": 3, "duplicate": 2}
    assert proxy.reset_stats() == stats
    assert proxy.stats()["requests"] == 0


async def test_mixed_faults_are_all_accounted_for(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    proxy.config(rate=0.5, faults=["error", "duplicate", "drop"], seed=7)
    for _ in range(30):
        try:
            async with client.post(proxy.url + "/m", data=b"x") as resp:
                await resp.read()
        except aiohttp.ClientError:
            pass
    stats = proxy.stats()
    faults = stats["faults"]
    assert stats["requests"] == 30 == stats["clean"] + sum(faults.values())
    assert 0 < stats["clean"] < 30
    assert stats["forwarded"] == stats["clean"] + 2 * faults["duplicate"] == target.count("/m")


async def test_config_switches_rate_at_runtime(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    settings = proxy.config(rate=1.0, faults=["error"])
    assert (settings["rate"], settings["faults"]) == (1.0, ["error"])
    async with client.get(proxy.url + "/c") as resp:
        assert resp.status == 503
    assert proxy.config(rate=0.0)["faults"] == ["error"]
    async with client.get(proxy.url + "/c") as resp:
        assert resp.status == 201
    assert target.count("/c") == 1


async def test_bad_config_is_rejected_and_control_paths_are_not_forwarded(
    proxy: FaultProxyProcess, target: Target, client: aiohttp.ClientSession
) -> None:
    for body in ({"rate": 2}, {"faults": ["teleport"]}, {"rate": "high"}, {"colour": "red"}, [1]):
        async with client.post(proxy.url + "/_faultproxy/config", json=body) as resp:
            assert resp.status == 400, body
    assert proxy.config()["rate"] == 0.0
    async with client.get(proxy.url + "/_faultproxy/nothing") as resp:
        assert resp.status == 404
    assert target.seen() == []


def test_cli_process_exits_cleanly_on_sigterm(target: Target) -> None:
    proxy = FaultProxyProcess(target.url, rate=0.3, faults=["delay", "error"]).start()
    assert proxy.url.startswith("http://127.0.0.1:")
    assert proxy.config()["faults"] == ["delay", "error"]
    assert proxy.stop() == 0, proxy.stderr()
