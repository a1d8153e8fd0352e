"""The static-header floors alone: what httpx and aiohttp give N concurrent callers.

No auth layer at all: one ``Authorization`` header fixed in the client's default headers, the
same loopback server as bench_middleware.py (a small aiohttp app in a child process). Each
transport gets ``--workers`` loops of sequential GETs for ``--seconds`` (a closed load, as in
the earlier expiry and outage runs), then one request every ``1 / --rate`` s (the open load the
expiry and outage runs use now). It prints requests/s, p50/p99 and the requests over 250 ms,
and whether ``sniffio`` is importable: httpcore 1.0.x runs ``import sniffio`` for every lock
it sets up, a failed search of sys.path each time when it is missing (docs/httpx.md).

Run: .venv/bin/python benchmarks/bench_transports.py [--workers 20] [--seconds 5] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from typing import TYPE_CHECKING

import aiohttp
import httpx
from bench_middleware import TOKEN_BODY, serving

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SLOW = 0.25
HEADERS = {"Authorization": f"Bearer {TOKEN_BODY['access_token']}"}
PATH = "/api/1.0/bench"


async def _closed(get: Callable[[], Awaitable[None]], workers: int, seconds: float) -> list[float]:
    end = time.monotonic() + seconds
    latencies: list[float] = []

    async def worker() -> None:
        while time.monotonic() < end:
            start = time.perf_counter()
            await get()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies


async def _open(get: Callable[[], Awaitable[None]], rate: float, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        await get()
        latencies.append(time.perf_counter() - start)

    begin = loop.time()
    tasks = []
    for index in range(round(rate * seconds)):
        delay = begin + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies


def _line(label: str, latencies: list[float], seconds: float) -> str:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    slow = sum(1 for x in ordered if x > SLOW)
    return (
        f"{label:<34} {len(ordered) / seconds:7.0f} req/s  p50 {at(0.5):6.1f} ms  "
        f"p99 {at(0.99):6.1f} ms  max {ordered[-1] * 1000:6.1f} ms  >250 ms: {slow}"
    )


async def bench(port: int, workers: int, seconds: float, rate: float) -> None:
    base_url = f"http://127.0.0.1:{port}"
    async with (
        httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=30) as hx,
        aiohttp.ClientSession(base_url, headers=HEADERS) as session,
    ):

        async def httpx_get() -> None:
            (await hx.get(PATH)).raise_for_status()

        async def aiohttp_get() -> None:
            async with session.get(PATH) as response:
                response.raise_for_status()
                await response.read()

        for name, get in (("httpx", httpx_get), ("aiohttp", aiohttp_get)):
            await get()  # warm: the connection
            latencies = await _closed(get, workers, seconds)
            print(_line(f"{name}, {workers} workers (closed)", latencies, seconds), flush=True)
            latencies = await _open(get, rate, seconds)
            print(_line(f"{name}, {rate:g}/s (open)", latencies, seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    sniffio = importlib.util.find_spec("sniffio") is not None
    print(f"sniffio importable: {'yes' if sniffio else 'no'}")
    with serving() as port:
        asyncio.run(bench(port, args.workers, args.seconds, args.rate))


if __name__ == "__main__":
    main()
