"""How much a slow ``on_event`` listener on one provider adds to another provider's cold fetch.

Provider A has an ``on_event`` callback that takes ``--delay`` seconds (``time.sleep``) on
``FETCH_SUCCEEDED``; provider B has other credentials and its own cache. Each round times
B's cold ``get_token()`` twice: alone (the baseline), and started while A's callback is
busy with the end of A's own cold fetch. The figure is the difference, median over
``--rounds`` rounds. FakePlainID answers on 127.0.0.1, in this process.

    python benchmarks/bench_listeners.py --rounds 5 --delay 1.0

The goal (issue 20, part 9): a 1 s listener on A adds under 10 ms to B's cold fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time

from plainid_async import EventKind, MemoryTokenCache, TokenEvent, TokenProvider
from plainid_async.testing import FakePlainID


async def _cold(fake: FakePlainID, client_id: str, secret: str) -> float:
    """Seconds B's first get_token() takes, with a cache of its own."""
    async with TokenProvider(
        client_id, secret, base_url=str(fake.base_url), cache=MemoryTokenCache()
    ) as provider:
        started = time.perf_counter()
        await provider.get_token()
        return time.perf_counter() - started


async def one_round(fake: FakePlainID, n: int, delay: float) -> tuple[float, float]:
    """B's cold fetch alone, then while A's listener is busy: seconds, seconds."""
    client_b, secret_b = f"b-{n}", f"b-secret-{n}"
    fake.add_client(client_b, secret_b)
    fake.add_client(f"w-{n}", secret_b)
    fake.add_client(f"b2-{n}", secret_b)
    await _cold(fake, f"w-{n}", secret_b)  # the same warmth as beside A's fetch
    alone = await _cold(fake, client_b, secret_b)

    busy = threading.Event()

    def slow(event: TokenEvent) -> None:
        if event.kind is EventKind.FETCH_SUCCEEDED:
            busy.set()
            time.sleep(delay)

    client_a, secret_a = f"a-{n}", f"a-secret-{n}"
    fake.add_client(client_a, secret_a)
    async with TokenProvider(
        client_a, secret_a, base_url=str(fake.base_url), cache=MemoryTokenCache(), on_event=slow
    ) as a:
        first = asyncio.create_task(a.get_token())
        if not await asyncio.to_thread(busy.wait, 10):
            raise RuntimeError("A's listener never ran")
        beside = await _cold(fake, f"b2-{n}", secret_b)
        await first
    return alone, beside


async def main(rounds: int, delay: float) -> None:
    """Print each round and the median added time."""
    added = []
    async with FakePlainID() as fake:
        await _cold(fake, fake.client_id, fake.client_secret)  # warm up imports and sockets
        for n in range(rounds):
            alone, beside = await one_round(fake, n, delay)
            added.append(beside - alone)
            print(
                f"round {n + 1}: B cold alone {alone * 1000:.1f} ms, beside A's "
                f"{delay:g} s listener {beside * 1000:.1f} ms"
            )
    median = statistics.median(added) * 1000
    print(
        f"added to B's cold fetch by a {delay:g} s listener on A: median {median:.1f} ms "
        f"over {rounds} rounds (goal < 10 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median), at least 3")
    parser.add_argument("--delay", type=float, default=1.0, help="the listener's seconds")
    args = parser.parse_args()
    if args.rounds < 3:
        sys.exit("--rounds: at least 3")
    asyncio.run(main(args.rounds, args.delay))
