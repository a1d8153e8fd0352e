"""Cost of BearerAuthMiddleware on sequential aiohttp GETs over loopback.

Sessions send the same sequential GETs to a small aiohttp server in a child process: one
with ``BearerAuthMiddleware`` (the token comes from a TokenProvider's cache), one with the
same ``Authorization`` header fixed in the session's default headers, and, for reference,
one with that fixed header and a middleware that does nothing (aiohttp's own cost of having
a middleware). Rounds rotate the order so drift on a busy machine hits all alike; the median
of the per-round ratios resists bursts of load from other processes. Goal: the middleware
session reaches >= 0.98 of the static-header session's requests/s.

Run: .venv/bin/python benchmarks/bench_middleware.py [--rounds 30] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import time
from typing import TYPE_CHECKING, cast

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from plainid_async import MemoryTokenCache, TokenProvider
from plainid_async._middleware import BearerAuthMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterator
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


async def _run(session: aiohttp.ClientSession, url: URL, n: int) -> tuple[float, float]:
    """Send ``n`` sequential GETs; return (wall-clock seconds, this process's CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"unexpected status {response.status}")
    return time.perf_counter() - start, time.process_time() - cpu


async def _noop(request: aiohttp.ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    return await handler(request)


class _Answer:
    status = 200


async def _answer(_: aiohttp.ClientRequest) -> ClientResponse:
    return cast("ClientResponse", _Answer())


async def _call_cost(middleware: ClientMiddlewareType, url: URL, calls: int) -> float:
    """Best of five: seconds per ``await middleware(request, handler)``, handler a stub."""
    request = aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop())
    headers = request.headers
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            headers.popall(hdrs.AUTHORIZATION, None)
            await middleware(request, _answer)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


async def bench(port: int, rounds: int, requests: int) -> float:
    base = URL.build(scheme="http", host="127.0.0.1", port=port)
    url = base / "api/1.0/policies"
    async with TokenProvider(
        client_id="bench",
        client_secret="bench",  # noqa: S106 (the bench server accepts anything)
        base_url=base,
        cache=MemoryTokenCache(),
    ) as provider:
        token = await provider.get_token()
        static_headers = {"Authorization": token.authorization}
        middleware = BearerAuthMiddleware(provider)
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as bearer,
            aiohttp.ClientSession(headers=static_headers) as static,
            aiohttp.ClientSession(headers=static_headers, middlewares=(_noop,)) as noop,
        ):
            variants = {"middleware": bearer, "static header": static, "no-op middleware": noop}
            names = list(variants)
            for session in variants.values():  # warm up connections and code paths
                await _run(session, url, requests // 5 or 1)
            # The middleware alone, called directly: steady even on a busy machine.
            direct = await _call_cost(middleware, url, 20_000)
            baseline = await _call_cost(_noop, url, 20_000)
            totals = dict.fromkeys(names, 0.0)
            cpu_totals = dict.fromkeys(names, 0.0)
            ratios: dict[str, list[float]] = {name: [] for name in names}
            for i in range(rounds):
                # Rotate the order each round so drift on a shared machine hits all alike.
                order = names[i % len(names) :] + names[: i % len(names)]
                took = {name: await _run(variants[name], url, requests) for name in order}
                for name, (seconds, cpu) in took.items():
                    totals[name] += seconds
                    cpu_totals[name] += cpu
                    ratios[name].append(took["static header"][0] / seconds)
    count = rounds * requests
    print(f"{rounds} rounds x {requests} sequential GETs per variant, order rotated each round")
    print(f"{'variant':>17}  {'requests/s':>10}  {'us/request':>10}  ratio to static header")
    for name in names:
        rate = count / totals[name]
        ratio = totals["static header"] / totals[name]
        print(
            f"{name:>17}  {rate:10.0f}  {1e6 / rate:10.1f}  "
            f"{ratio:.4f} overall, {statistics.median(ratios[name]):.4f} median of rounds"
        )
    print("client CPU per request (this process only, so immune to other processes' load):")
    for name in names:
        cpu_ratio = cpu_totals["static header"] / cpu_totals[name]
        print(f"{name:>17}  {cpu_totals[name] / count * 1e6:6.1f} us CPU   ratio {cpu_ratio:.4f}")
    static_time = totals["static header"] / count
    overhead = direct - baseline
    print(
        f"middleware called directly: {direct * 1e9:.0f} ns per call, a no-op middleware "
        f"{baseline * 1e9:.0f} ns: {overhead * 1e9:.0f} ns more, so an implied ratio of "
        f"{static_time / (static_time + overhead):.4f} on a {static_time * 1e6:.1f} us request"
    )
    return statistics.median(ratios["middleware"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--goal", type=float, default=0.98)
    args = parser.parse_args()
    with serving() as port:
        ratio = asyncio.run(bench(port, args.rounds, args.requests))
    verdict = "met" if ratio >= args.goal else "NOT met"
    print(f"goal: middleware / static header >= {args.goal} (median of rounds): {verdict}")
    return 0 if ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
