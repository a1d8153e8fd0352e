"""Cost of BearerAuthMiddleware on sequential aiohttp GETs over loopback.

Sessions send the same sequential GETs to a small aiohttp server in a child process: one
with ``BearerAuthMiddleware`` (the token comes from a TokenProvider's cache), one with the
same ``Authorization`` header fixed in the session's default headers, and, for reference,
one with that fixed header and a middleware that does nothing (aiohttp's own cost of having
a middleware), and the cheapest possible token middleware: one that sets a precomputed
``Authorization`` header on every request (the floor any bearer middleware can reach). Rounds
rotate the order (benchmarks/sidebyside.py) so drift on a busy machine hits all alike; each
figure is the median and the range of the per-round ratios to the static-header session of
the same round, in requests/s and in this thread's CPU per request (client CPU: other
processes' load does not count). Within a round the variants take turns request by
request. Goal: the middleware session reaches >= 0.99 of the static-header session in
client CPU (median of rounds), as the cheapest middleware does.

A second row of the cheapest kind is the same middleware written as a class with an async
``__call__``, as ``BearerAuthMiddleware`` and aiohttp's own ``DigestAuthMiddleware`` are:
aiohttp calls an instance through ``type.__call__``, which costs more than calling a function.

On a shared machine the rounds spread by several per cent, so ``--instructions`` also counts,
under valgrind's callgrind (deterministic, unmoved by other processes' load), the instructions
one GET costs with each variant: every variant runs alone in its own process, once with
``--requests`` GETs and once with a tenth of them, and the difference is divided out, so
start-up cancels.

Run: .venv/bin/python benchmarks/bench_middleware.py [--rounds 30] [--requests 300]
     .venv/bin/python benchmarks/bench_middleware.py --instructions [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import sidebyside
from aiohttp import hdrs, web
from yarl import URL

from plainid_async import MemoryTokenCache, TokenProvider
from plainid_async._middleware import BearerAuthMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from multiprocessing.connection import Connection

    from aiohttp import ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

TOKEN_BODY = {"access_token": "bench-token", "token_type": "Bearer", "expires_in": 86400}


async def _serve(conn: Connection) -> None:
    async def token(_: web.Request) -> web.Response:
        return web.json_response(TOKEN_BODY)

    async def resource(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/1.0/api-key/token", token)
    app.router.add_get("/{tail:.*}", resource)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    conn.send(runner.addresses[0][1])
    try:
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
    finally:
        await runner.cleanup()


def _server_process(conn: Connection) -> None:
    asyncio.run(_serve(conn))


@contextlib.contextmanager
def serving() -> Iterator[int]:
    """The loopback server in a child process (its own CPU time); yields its port."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_process, args=(child,), daemon=True)
    server.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        server.join(10)


async def _run(session: aiohttp.ClientSession, url: URL, n: int) -> None:
    """Send ``n`` sequential GETs (a warm-up)."""
    for _ in range(n):
        await _one(session, url)


async def _one(session: aiohttp.ClientSession, url: URL) -> tuple[float, float]:
    """One GET: (wall-clock seconds, this thread's CPU seconds), the client's own work."""
    start, cpu = time.perf_counter(), time.thread_time()
    async with session.get(url) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"unexpected status {response.status}")
    return time.perf_counter() - start, time.thread_time() - cpu


async def _noop(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    return await handler(request)


class _Answer:
    status = 200


async def _answer(_: aiohttp.ClientRequest) -> ClientResponse:
    return cast("ClientResponse", _Answer())


async def _call_cost(middleware: ClientMiddlewareType, url: URL, calls: int) -> float:
    """Best of five: thread CPU seconds per ``await middleware(request, stub_handler)``."""
    request = aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop())
    headers = request.headers
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(calls):
            headers.popall(hdrs.AUTHORIZATION, None)
            await middleware(request, _answer)
        best = min(best, (time.thread_time() - start) / calls)
    return best


def _cheapest(value: str) -> ClientMiddlewareType:
    """The least a token middleware can do: set a precomputed header."""

    async def cheapest(
        request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        request.headers[hdrs.AUTHORIZATION] = value
        return await handler(request)

    return cheapest


class _CheapestClass:
    """The cheapest middleware as a class with an async ``__call__``, as ours is."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        request.headers[hdrs.AUTHORIZATION] = self._value
        return await handler(request)


STATIC = "static header"
OURS = "BearerAuthMiddleware"
CHEAPEST = "precomputed-header middleware"
CHEAPEST_CLASS = "the same, as a class"
NOOP = "no-op middleware + static header"
VARIANTS = (STATIC, OURS, CHEAPEST, CHEAPEST_CLASS, NOOP)


def _session_options(middleware: BearerAuthMiddleware, value: str) -> dict[str, dict[str, Any]]:
    """Each variant's ``aiohttp.ClientSession`` options; ``value`` is the header's value."""
    static = {"Authorization": value}
    return {
        STATIC: {"headers": static},
        OURS: {"middlewares": (middleware,)},
        CHEAPEST: {"middlewares": (_cheapest(value),)},
        CHEAPEST_CLASS: {"middlewares": (_CheapestClass(value),)},
        NOOP: {"headers": static, "middlewares": (_noop,)},
    }


@contextlib.asynccontextmanager
async def _provider(port: int) -> AsyncIterator[tuple[TokenProvider, URL]]:
    """A provider of the bench server's token, and the URL the GETs go to."""
    base = URL.build(scheme="http", host="127.0.0.1", port=port)
    async with TokenProvider(
        client_id="bench",
        client_secret="bench",  # noqa: S106 (the bench server accepts anything)
        base_url=base,
        cache=MemoryTokenCache(),
    ) as provider:
        yield provider, base / "api/1.0/policies"


async def bench(port: int, rounds: int, requests: int) -> float:
    """The variants side by side; returns our median client-CPU ratio to the static header."""
    async with _provider(port) as (provider, url), contextlib.AsyncExitStack() as stack:
        token = await provider.get_token()
        middleware = BearerAuthMiddleware(provider)
        cheapest = _cheapest(token.authorization)
        variants = {
            name: await stack.enter_async_context(aiohttp.ClientSession(**options))
            for name, options in _session_options(middleware, token.authorization).items()
        }
        for session in variants.values():  # warm up connections and code paths
            await _run(session, url, requests // 5 or 1)
        # The middlewares alone, called directly: steady even on a busy machine.
        direct = await _call_cost(middleware, url, 20_000)
        floor = await _call_cost(cheapest, url, 20_000)
        floor_class = await _call_cost(_CheapestClass(token.authorization), url, 20_000)
        baseline = await _call_cost(_noop, url, 20_000)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for order in sidebyside.orders(list(variants), rounds):
            # Request by request, the variants take turns (in this round's order), so a
            # burst of load from other processes lands on all of them alike.
            wall, used = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0.0)
            for _ in range(requests):
                for name in order:
                    seconds, spent = await _one(variants[name], url)
                    wall[name] += seconds
                    used[name] += spent
            for name in order:
                rates[name].append(requests / wall[name])
                cpu[name].append(requests / used[name])  # requests per client CPU second
    rate_ratios = sidebyside.ratios(rates, STATIC)
    cpu_ratios = sidebyside.ratios(cpu, STATIC)
    print(
        f"{rounds} rounds x {requests} sequential GETs per variant, the variants taking turns "
        "request by request, their order rotated each round"
    )
    print("ratio to the static-header session of the same round: median (range over rounds)")
    print(f"{'variant':>32}  {'requests/s':>10}  {'wall-clock ratio':>22}  client CPU ratio")
    for name in variants:
        rate = sidebyside.spread(rates[name]).median
        print(
            f"{name:>32}  {rate:10.0f}  {rate_ratios[name].text(4):>22}  {cpu_ratios[name].text(4)}"
        )
    static_cpu = 1 / sidebyside.spread(cpu[STATIC]).median
    print(f"client CPU per request, static header: {static_cpu * 1e6:.1f} us")
    print(
        f"called directly: BearerAuthMiddleware {direct * 1e9:.0f} ns, the precomputed-header "
        f"middleware {floor * 1e9:.0f} ns ({floor_class * 1e9:.0f} ns as a class), a no-op "
        f"middleware {baseline * 1e9:.0f} ns: ours "
        f"costs {(direct - floor) * 1e9:.0f} ns more than the cheapest, an implied CPU ratio "
        f"of {static_cpu / (static_cpu + direct - floor):.4f} of the cheapest"
    )
    return cpu_ratios[OURS].median


async def _send_only(port: int, name: str, requests: int) -> None:
    """Send ``requests`` GETs with the variant ``name`` alone (a process under callgrind)."""
    async with _provider(port) as (provider, url):
        token = await provider.get_token()
        options = _session_options(BearerAuthMiddleware(provider), token.authorization)[name]
        async with aiohttp.ClientSession(**options) as session:
            await _run(session, url, requests)


def _instructions(valgrind: str, port: int, name: str, requests: int) -> int:
    """Instructions the variant ``name``'s process executes for ``requests`` GETs and all."""
    command = [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--send-only",
        name,
        "--port",
        str(port),
        "--requests",
        str(requests),
    ]
    # The same hash seed in every process: dict and set layouts, and so their costs, alike.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)  # noqa: S603
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr}")
    return int(match.group(1))


def count_instructions(valgrind: str, port: int, requests: int) -> dict[str, float]:
    """Instructions per GET of each variant: a run of ``requests`` less one of a tenth."""
    few = max(requests // 10, 1)
    per_request = {}
    for name in VARIANTS:
        many = _instructions(valgrind, port, name, requests)
        start = _instructions(valgrind, port, name, few)
        per_request[name] = (many - start) / (requests - few)
    print(
        f"instructions per GET under callgrind ({requests} GETs less {few}, each variant alone "
        "in its own process, PYTHONHASHSEED=0), and the static-header session's count divided "
        "by each (the CPU ratio they would give if every instruction cost the same)"
    )
    print(f"{'variant':>32}  {'instructions':>12}  {'more than static':>16}  ratio")
    for name, count in per_request.items():
        extra = count - per_request[STATIC]
        print(f"{name:>32}  {count:12.0f}  {extra:16.0f}  {per_request[STATIC] / count:.4f}")
    return per_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--requests", type=int, default=None, help="300, or 3000 with --instructions"
    )
    parser.add_argument("--goal", type=float, default=0.99)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind instead"
    )
    parser.add_argument("--send-only", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send_only is not None:
        asyncio.run(_send_only(args.port, args.send_only, args.requests))
        return 0
    if args.instructions:
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            parser.error("--instructions needs valgrind on PATH")
        with serving() as port:
            counts = count_instructions(valgrind, port, args.requests or 3000)
        ratio = counts[STATIC] / counts[OURS]
    else:
        with serving() as port:
            ratio = asyncio.run(bench(port, args.rounds, args.requests or 300))
    verdict = "met" if ratio >= args.goal else "NOT met"
    measure = "in instructions" if args.instructions else "in client CPU (median of rounds)"
    print(f"goal: BearerAuthMiddleware / static header >= {args.goal} {measure}: {verdict}")
    return 0 if ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
