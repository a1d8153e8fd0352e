"""Refreshes under load: the main loop's lag and the CPU each refresh costs, over HTTPS.

A service with many tenants refreshes tokens all the time. Here ``--tenants`` providers
(distinct client ids) are refreshed round-robin at 20 and at 100 refreshes/s
(``get_token(force_refresh=True)`` fired at that rate, never awaited in line) against a
token endpoint on 127.0.0.1 over HTTPS (a trustme CA), served by a child process so its CPU
is not ours. Meanwhile a ticker on the main loop sleeps 1 ms at a time and records how late
it wakes: the loop's lag, as every request handler of the service would feel it.

Variants, each run for ``--seconds`` in every round, in an order that rotates from round to
round (benchmarks/sidebyside.py):

* ``no refresh``: the ticker alone (the reference for the lag, and for the CPU);
* ``refresher``: providers as configured by default; fetches run on the refresher's thread;
* ``kept-alive, caller's loop``: providers given one ``session=`` (an aiohttp session that
  keeps its TLS connections alive); fetches run on the main loop.

Figures, each the median and range over the rounds: the ticker's p99 lag as a ratio to the
``no refresh`` run of the same round, and the CPU per refresh (this process's CPU, both
threads, minus the ``no refresh`` run's, divided by the refreshes done). Goals: CPU per
refresh on the refresher within 1.5x of the kept-alive fetch on the caller's loop; p99 lag
at 100 refreshes/s at most 4x the no-refresh run.

Run: .venv/bin/python benchmarks/bench_refresh_load.py [--rounds 3] [--seconds 3] [--tenants 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import sidebyside
import trustme
from aiohttp import web

import plainid_async as pa

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from multiprocessing.connection import Connection

IDLE = "no refresh"
REFRESHER = "refresher"
KEPT_ALIVE = "kept-alive, caller's loop"
TICK = 0.001


async def _serve(conn: Connection, chain: str) -> None:
    issued = itertools.count()

    async def token(_: web.Request) -> web.Response:
        body = {"access_token": f"t{next(issued)}", "token_type": "Bearer", "expires_in": 3600}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/api/1.0/api-key/token", token)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    conn.send(runner.addresses[0][1])
    try:
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
    finally:
        await runner.cleanup()


def _server_process(conn: Connection, chain: str) -> None:
    asyncio.run(_serve(conn, chain))


@contextlib.contextmanager
def serving_https() -> Iterator[tuple[int, ssl.SSLContext]]:
    """The HTTPS token endpoint in a child process; yields its port and a client context."""
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as folder:
        chain = Path(folder) / "server.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain))
        client = ssl.create_default_context()
        ca.configure_trust(client)
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        server = ctx.Process(target=_server_process, args=(child, str(chain)), daemon=True)
        server.start()
        try:
            yield parent.recv(), client
        finally:
            parent.send("stop")
            server.join(10)


@dataclass(frozen=True)
class Run:
    """What one run measured."""

    p99_lag: float
    cpu: float
    refreshes: int


async def _tick(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - start - TICK)


async def run(providers: list[pa.TokenProvider], rate: float, seconds: float) -> Run:
    """Fire ``rate`` forced refreshes a second, round-robin, for ``seconds``; tick meanwhile."""
    stop, lags = asyncio.Event(), list[float]()
    ticker = asyncio.create_task(_tick(stop, lags))
    cpu = time.process_time()
    pending: set[asyncio.Task[pa.Token]] = set()
    if rate:
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            provider = providers[index % len(providers)]
            pending.add(asyncio.create_task(provider.get_token(force_refresh=True)))
    else:
        await asyncio.sleep(seconds)
    results = await asyncio.gather(*pending, return_exceptions=True)
    used = time.process_time() - cpu
    stop.set()
    await ticker
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} refreshes failed, e.g. {failed[0]!r}")
    lags.sort()
    return Run(lags[int(0.99 * (len(lags) - 1))], used, len(results))


@contextlib.asynccontextmanager
async def _providers(
    port: int, context: ssl.SSLContext, tenants: int, session: aiohttp.ClientSession | None
) -> AsyncIterator[list[pa.TokenProvider]]:
    base_url = f"https://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        providers = [
            await stack.enter_async_context(
                pa.TokenProvider(
                    f"tenant-{index}",
                    "bench-secret",
                    base_url=base_url,
                    ssl=context,
                    session=session,
                    cache=pa.MemoryTokenCache(),
                )
            )
            for index in range(tenants)
        ]
        for provider in providers:
            await provider.get_token()
        yield providers


async def bench(
    port: int, context: ssl.SSLContext, rounds: int, seconds: float, tenants: int
) -> dict[str, dict[str, sidebyside.Spread]]:
    """Every variant at every rate in every round, rotated; the figures per variant."""
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        _providers(port, context, tenants, None) as on_refresher,
        _providers(port, context, tenants, session) as on_caller,
    ):
        variants = {
            IDLE: (on_refresher, 0.0),
            f"{REFRESHER}, 20/s": (on_refresher, 20.0),
            f"{KEPT_ALIVE}, 20/s": (on_caller, 20.0),
            f"{REFRESHER}, 100/s": (on_refresher, 100.0),
            f"{KEPT_ALIVE}, 100/s": (on_caller, 100.0),
        }
        runs: dict[str, list[Run]] = {name: [] for name in variants}
        for order in sidebyside.orders(list(variants), rounds):
            for name in order:
                providers, rate = variants[name]
                runs[name].append(await run(providers, rate, seconds))
    lag = sidebyside.ratios({n: [r.p99_lag for r in rs] for n, rs in runs.items()}, IDLE)
    figures: dict[str, dict[str, sidebyside.Spread]] = {}
    for name, rs in runs.items():
        idle = runs[IDLE]
        per_refresh = [
            (r.cpu - i.cpu) / r.refreshes for r, i in zip(rs, idle, strict=True) if r.refreshes
        ]
        figures[name] = {
            "p99 lag ms": sidebyside.spread([r.p99_lag * 1000 for r in rs]),
            "p99 lag / idle": lag[name],
        }
        if per_refresh:
            figures[name]["CPU ms per refresh"] = sidebyside.spread([x * 1000 for x in per_refresh])
    return figures


def report(figures: dict[str, dict[str, sidebyside.Spread]], rounds: int, seconds: float) -> None:
    """Print the figures and the goals."""
    print(f"{rounds} rounds x {seconds:g} s per variant, order rotated each round")
    print("median (range over rounds)")
    print(f"{'variant':<32} {'p99 lag ms':>22} {'p99 lag / idle':>22} {'CPU ms per refresh':>22}")
    for name, figure in figures.items():
        cpu = figure.get("CPU ms per refresh")
        print(
            f"{name:<32} {figure['p99 lag ms'].text(2):>22} "
            f"{figure['p99 lag / idle'].text(2, 'x'):>22} {cpu.text(2) if cpu else '-':>22}"
        )
    for rate in ("20/s", "100/s"):
        ours = figures[f"{REFRESHER}, {rate}"]["CPU ms per refresh"].median
        kept = figures[f"{KEPT_ALIVE}, {rate}"]["CPU ms per refresh"].median
        print(
            f"at {rate}: CPU per refresh, refresher / kept-alive on the caller's loop: "
            f"{ours / kept:.2f}x (goal <= 1.5x)"
        )
    lag = figures[f"{REFRESHER}, 100/s"]["p99 lag / idle"].median
    print(f"p99 lag at 100/s on the refresher: {lag:.2f}x the no-refresh run (goal <= 4x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()
    with serving_https() as (port, context):
        figures = asyncio.run(bench(port, context, args.rounds, args.seconds, args.tenants))
    report(figures, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
