"""The static-header floors alone: what httpx and aiohttp give N concurrent callers.

No auth layer at all: the floors of benchmarks/contenders.py (one token fetched at setup, set
as a default ``Authorization`` header) against FakePlainID in its own process, as in
benchmarks/run.py. Each transport gets ``--workers`` loops of sequential GETs for
``--seconds`` (a closed load, as the expiry and outage runs used before), then the open load
those runs use now (scenarios.run_at_rate). It prints requests/s, p50/p99 and the requests
over 250 ms, and whether ``sniffio`` is importable: httpcore 1.0.x runs ``import sniffio``
for every lock it sets up, a failed search of sys.path each time when it is missing
(docs/httpx.md).

Run: .venv/bin/python benchmarks/bench_transports.py [--workers 20] [--seconds 5] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time

import contenders as c
import scenarios as s
from server import ServerProcess

SLOW = 0.25
FLOORS = ("static header (httpx)", "static header (aiohttp)")


async def _closed(tally: s.Tally, client: c.Client, workers: int, seconds: float) -> None:
    """``workers`` loops of sequential GETs for ``seconds``: each waits for its last answer."""
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            await tally.call(client)

    await asyncio.gather(*(worker() for _ in range(workers)))


def _line(label: str, tally: s.Tally, seconds: float) -> str:
    r = tally.summary(SLOW)
    return (
        f"{label:<46} {r['requests'] / seconds:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
        f"p99 {r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms  >250 ms: {r['slow']}  "
        f"failed: {r['failed']}"
    )


async def bench(server: ServerProcess, workers: int, seconds: float, rate: float) -> None:
    for label in FLOORS:
        client = await s._open(server, c.by_label(label))  # noqa: SLF001 (the scenarios' setup)
        try:
            await client.get(c.RESOURCE_PATH)  # warm: the connection
            closed = s.Tally()
            await _closed(closed, client, workers, seconds)
            print(_line(f"{label}, {workers} workers (closed)", closed, seconds), flush=True)
            opened = s.Tally()
            await s.run_at_rate(opened, client, rate, seconds)
            print(_line(f"{label}, {rate:g}/s (open)", opened, seconds), flush=True)
        finally:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    sniffio = importlib.util.find_spec("sniffio") is not None
    print(f"sniffio importable: {'yes' if sniffio else 'no'}")
    with ServerProcess() as server:
        asyncio.run(bench(server, args.workers, args.seconds, args.rate))


if __name__ == "__main__":
    main()
