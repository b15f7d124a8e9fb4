"""A fault-injecting HTTP reverse proxy for multi-node integration tests.

Tests put the proxy between two nodes: node A talks to the proxy as if it
were node B, and the proxy forwards to B, except that a fraction ``rate`` of
the requests suffer a fault. The kind of fault is drawn uniformly among the
enabled kinds from one ``random.Random(seed)``, so a run can be replayed with
the same seed (the seed in use, chosen at random when none is given, is shown
by ``GET /_faultproxy/config``):

``drop``
    The request is not forwarded; the proxy closes the client's connection
    without a response, so the client sees a connection error.
``drop-response``
    The request is forwarded and processed by the target, but the response is
    thrown away and the client's connection is closed: the work was done, yet
    the sender cannot know.
``delay``
    Sleep a random time in the delay range (0.2-1.5 s by default), then forward.
``duplicate``
    Forward the request twice, one after the other; answer with the second
    response.
``reorder``
    Hold the request until the next request arrives at the proxy (or the
    reorder window, 1.0 s by default, passes); forward that later request
    first and this one after it.
``error``
    Answer 503 with a short text body, without forwarding.

Forwarding is plain request/response: the request body is read fully (at
most 16 MiB), the method, the raw path with its query string and the headers
are kept, minus hop-by-hop headers; ``Host`` becomes the target's. The
response's status, headers (minus hop-by-hop ones) and body bytes are
returned as they are (aiohttp adds ``Content-Type: application/octet-stream``
to a non-empty body that had none): the upstream session does not decompress,
does not follow redirects and keeps no cookies. WebSocket upgrades are not supported.
An unreachable target is answered with 502.

Control endpoints live under ``/_faultproxy/`` and are never forwarded:

``GET /_faultproxy/config``
    The current settings.
``POST /_faultproxy/config``
    Change settings at runtime, e.g. ``{"rate": 0.0}``; the optional keys are
    ``faults`` (list of kinds), ``seed``, ``reorder_window`` (seconds) and
    ``delay`` (``[min, max]`` seconds). Answers with the new settings.
``GET /_faultproxy/stats``
    Counts: ``requests`` seen, ``clean`` (no fault drawn), ``forwarded`` (sent
    to the target; a duplicate counts twice), ``upstream_errors``, and
    ``faults`` (per kind, how many requests drew it).
``DELETE /_faultproxy/stats``
    Reset the counts; answers with the counts before the reset.

Run it with ``python -m tests.faultproxy --target http://127.0.0.1:PORT``
(see ``--help``); it prints ``faultproxy listening on http://HOST:PORT`` once
it is bound, and exits cleanly on SIGTERM or SIGINT. `FaultProxyProcess` does
that from a test, the way `tests.nodeproc.NodeProcess` runs a node.

Note for test authors: aiohttp's client retries an idempotent request (GET,
PUT, DELETE, ...) once when the server disconnects, so a dropped idempotent
request may reach the proxy twice and succeed on the retry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from mrx.node.processes import ServerProcess

FAULT_KINDS: tuple[str, ...] = ("drop", "drop-response", "delay", "duplicate", "reorder", "error")
CONTROL_PREFIX = "/_faultproxy/"
MAX_BODY = 16 * 1024 * 1024
LISTENING_PREFIX = "faultproxy listening on "

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus the framing headers that
# aiohttp recomputes for the bytes it actually sends.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Also not forwarded upstream: the target's Host is set by the client session,
# and the whole body is already in hand, so there is nothing to "continue".
_REQUEST_ONLY = frozenset({"host", "expect"})
# Headers aiohttp's client would add on its own; forward only what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

log = logging.getLogger("faultproxy")


@dataclass(frozen=True)
class Settings:
    """What the proxy does to traffic; replaced as a whole on every change."""

    rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    reorder_window: float = 1.0
    delay: tuple[float, float] = (0.2, 1.5)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {self.rate}")
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if self.reorder_window < 0:
            raise ValueError(f"reorder_window must be >= 0, got {self.reorder_window}")
        low, high = self.delay
        if not 0 <= low <= high:
            raise ValueError(f"delay must be [min, max] with 0 <= min <= max, got {list(self.delay)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "faults": list(self.faults),
            "reorder_window": self.reorder_window,
            "delay": list(self.delay),
        }


def parse_faults(text: str) -> tuple[str, ...]:
    """``"drop,delay"`` -> ``("drop", "delay")``; ``""`` or ``"none"`` -> no faults."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def updated_settings(current: Settings, changes: Mapping[str, Any]) -> tuple[Settings, int | None]:
    """Apply a JSON config body to `current`; returns the new settings and a new seed, if any.

    Raises ValueError or TypeError on unknown keys or bad values; `current` is left as it is.
    """
    unknown = set(changes) - {"rate", "faults", "seed", "reorder_window", "delay"}
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    updates: dict[str, Any] = {}
    if "rate" in changes:
        updates["rate"] = _number(changes["rate"], "rate")
    if "faults" in changes:
        faults = changes["faults"]
        if not isinstance(faults, list) or not all(isinstance(kind, str) for kind in faults):
            raise TypeError("faults must be a list of strings")
        updates["faults"] = tuple(dict.fromkeys(faults))
    if "reorder_window" in changes:
        updates["reorder_window"] = _number(changes["reorder_window"], "reorder_window")
    if "delay" in changes:
        delay = changes["delay"]
        if not isinstance(delay, list) or len(delay) != 2:
            raise TypeError("delay must be [min, max]")
        updates["delay"] = (_number(delay[0], "delay min"), _number(delay[1], "delay max"))
    seed = changes.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return replace(current, **updates), seed


@dataclass
class Stats:
    requests: int = 0
    clean: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "clean": self.clean,
            "forwarded": self.forwarded,
            "upstream_errors": self.upstream_errors,
            "faults": {kind: self.faults[kind] for kind in FAULT_KINDS},
        }


@dataclass
class _Held:
    """A request held back by a ``reorder`` fault, waiting for its successor."""

    claimed: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Upstream:
    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes


class _UpstreamFailure(Exception):
    pass


def _end_to_end(headers: MultiMapping[str], extra: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """The headers minus hop-by-hop ones, including those the Connection header names."""
    named = {
        token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")
    }
    drop = _HOP_BY_HOP | extra | named
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            kept.add(name, value)
    return kept


class FaultProxy:
    """The proxy's state and handlers; `make_app` gives the aiohttp application."""

    def __init__(
        self,
        target: str,
        settings: Settings | None = None,
        seed: int | None = None,
        upstream_timeout: float = 60.0,
    ) -> None:
        self.target = URL(target.rstrip("/"))
        if self.target.scheme not in ("http", "https") or not self.target.host:
            raise ValueError(f"target must be an http(s) URL, got {target!r}")
        self.settings = settings or Settings()
        self.stats = Stats()
        self.seed = 0
        self._rng = random.Random()
        self.reseed(seed)
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._held: _Held | None = None

    def reseed(self, seed: int | None) -> None:
        """Restart the fault sequence; a random seed if None (shown in the config)."""
        self.seed = random.SystemRandom().randrange(2**32) if seed is None else seed
        self._rng.seed(self.seed)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.cleanup_ctx.append(self._session_ctx)
        app.router.add_get(CONTROL_PREFIX + "config", self._get_config)
        app.router.add_post(CONTROL_PREFIX + "config", self._post_config)
        app.router.add_get(CONTROL_PREFIX + "stats", self._get_stats)
        app.router.add_delete(CONTROL_PREFIX + "stats", self._reset_stats)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        return app

    async def _session_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0),
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    # -- control endpoints -------------------------------------------------

    def _config_body(self) -> dict[str, Any]:
        return {**self.settings.as_dict(), "seed": self.seed, "target": str(self.target)}

    async def _get_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self._config_body())

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("config must be a JSON object")
            settings, seed = updated_settings(self.settings, changes)
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        self.settings = settings
        if seed is not None:
            self.reseed(seed)
        log.info("config: %s", self._config_body())
        return web.json_response(self._config_body())

    async def _get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def _reset_stats(self, _request: web.Request) -> web.Response:
        before, self.stats = self.stats, Stats()
        return web.json_response(before.as_dict())

    # -- proxying ----------------------------------------------------------

    def _draw_fault(self) -> str | None:
        settings = self.settings
        roll = self._rng.random()
        if not settings.faults or roll >= settings.rate:
            return None
        return self._rng.choice(settings.faults)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            raise web.HTTPNotFound(text="faultproxy: unknown control endpoint\n")
        body = await request.read()
        self.stats.requests += 1
        kind = self._draw_fault()
        if kind is None:
            self.stats.clean += 1
        else:
            self.stats.faults[kind] += 1
            log.info("%s %s %s", kind, request.method, request.raw_path)

        if kind == "reorder" and self._held is None:
            await self._wait_for_successor()
            return await self._forward(request, body)

        # Whatever this request is, if another one is held for it, it goes first.
        predecessor, self._held = self._held, None
        if predecessor is not None:
            predecessor.claimed.set()
        try:
            return await self._apply(kind, request, body)
        finally:
            if predecessor is not None:
                predecessor.released.set()

    async def _wait_for_successor(self) -> None:
        held = _Held()
        self._held = held
        try:
            async with asyncio.timeout(self.settings.reorder_window):
                await held.claimed.wait()
        except TimeoutError:
            pass
        finally:
            if self._held is held:
                self._held = None
        if held.claimed.is_set():
            await held.released.wait()

    async def _apply(self, kind: str | None, request: web.Request, body: bytes) -> web.StreamResponse:
        if kind == "drop":
            return _close_without_response(request)
        if kind == "error":
            return web.Response(status=503, text="faultproxy: injected error\n")
        if kind == "drop-response":
            with contextlib.suppress(_UpstreamFailure):
                await self._send(request, body)
            return _close_without_response(request)
        if kind == "delay":
            await asyncio.sleep(self._rng.uniform(*self.settings.delay))
        elif kind == "duplicate":
            with contextlib.suppress(_UpstreamFailure):
                await self._send(request, body)
        # None, "delay", "duplicate", and a "reorder" that found a request to overtake
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        try:
            upstream = await self._send(request, body)
        except _UpstreamFailure as exc:
            return web.Response(status=502, text=f"faultproxy: upstream failed: {exc}\n")
        return web.Response(
            status=upstream.status,
            reason=upstream.reason or None,
            headers=upstream.headers,
            body=upstream.body,
        )

    async def _send(self, request: web.Request, body: bytes) -> _Upstream:
        assert self._session is not None, "the application is not running"
        url = URL(str(self.target) + request.raw_path, encoded=True)
        self.stats.forwarded += 1
        try:
            async with self._session.request(
                request.method,
                url,
                headers=_end_to_end(request.headers, _REQUEST_ONLY),
                data=body or None,
                allow_redirects=False,
            ) as resp:
                headers = _end_to_end(resp.headers)
                if request.method == "HEAD" and "Content-Length" in resp.headers:
                    # No body to measure: the length is the one a GET would have.
                    headers["Content-Length"] = resp.headers["Content-Length"]
                return _Upstream(resp.status, resp.reason, headers, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.upstream_errors += 1
            log.warning("upstream %s %s failed: %r", request.method, url, exc)
            raise _UpstreamFailure(repr(exc)) from exc


def _close_without_response(request: web.Request) -> web.Response:
    """Close the client's connection; the returned response is never written.

    aiohttp finds the transport closing when it writes the response and drops
    it as a premature disconnection, without logging an error.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


# -- running the proxy ------------------------------------------------------


async def serve(proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start `proxy` on host:port (0 = a free port); returns the runner and the proxy's URL."""
    runner = web.AppRunner(proxy.make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faultproxy", description="Fault-injecting HTTP reverse proxy for tests."
    )
    parser.add_argument("--target", required=True, help="base URL to forward to, e.g. http://127.0.0.1:8080")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--rate", type=float, default=0.0, help="fraction of requests to fault (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a random one)")
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default=FAULT_KINDS,
        help=f"comma-separated fault kinds among {','.join(FAULT_KINDS)} (default: all)",
    )
    parser.add_argument("--reorder-window", type=float, default=Settings.reorder_window, help="seconds")
    parser.add_argument("--delay-min", type=float, default=Settings.delay[0], help="seconds")
    parser.add_argument("--delay-max", type=float, default=Settings.delay[1], help="seconds")
    parser.add_argument("--upstream-timeout", type=float, default=60.0, help="seconds per forwarded request")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every fault to stderr")
    args = parser.parse_args(argv)
    try:
        args.settings = Settings(
            rate=args.rate,
            faults=args.faults,
            reorder_window=args.reorder_window,
            delay=(args.delay_min, args.delay_max),
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args


async def _run(args: argparse.Namespace) -> None:
    proxy = FaultProxy(args.target, args.settings, seed=args.seed, upstream_timeout=args.upstream_timeout)
    runner, url = await serve(proxy, args.listen_host, args.listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"{LISTENING_PREFIX}{url}", flush=True)
        log.info("forwarding to %s, seed %d, %s", proxy.target, proxy.seed, proxy.settings.as_dict())
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="faultproxy %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_run(args))
    return 0


# -- as a separate process, for tests -----------------------------------------

_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(re.escape(LISTENING_PREFIX.encode()) + rb"(http://\S+)")


class FaultProxyProcess(ServerProcess):
    """A proxy in its own OS process. Use as a context manager, or start()/stop()."""

    what = "faultproxy"

    def __init__(
        self,
        target: str,
        *,
        rate: float = 0.0,
        seed: int | None = 1,
        faults: Iterable[str] = FAULT_KINDS,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        args = [
            "--target", target,
            "--listen-host", listen_host,
            "--listen-port", str(listen_port),
            "--rate", str(rate),
            "--faults", ",".join(faults) or "none",
            *(["--seed", str(seed)] if seed is not None else []),
            *extra_args,
        ]  # fmt: skip
        env = {**os.environ, **(env or {})}
        pythonpath = env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), pythonpath] if pythonpath else [str(_ROOT)])
        super().__init__(
            [sys.executable, "-m", "tests.faultproxy", *args], listening=_LISTENING, env=env, cwd=_ROOT
        )

    def _control(
        self, method: str, endpoint: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + CONTROL_PREFIX + endpoint,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def config(
        self,
        rate: float | None = None,
        faults: Iterable[str] | None = None,
        *,
        seed: int | None = None,
        reorder_window: float | None = None,
        delay: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """Change the settings given (None = leave as is); returns the settings now in force."""
        changes: dict[str, Any] = {}
        if rate is not None:
            changes["rate"] = rate
        if faults is not None:
            changes["faults"] = list(faults)
        if seed is not None:
            changes["seed"] = seed
        if reorder_window is not None:
            changes["reorder_window"] = reorder_window
        if delay is not None:
            changes["delay"] = list(delay)
        return self._control("POST" if changes else "GET", "config", changes or None)

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "stats")

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counts; returns the counts before."""
        return self._control("DELETE", "stats")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
