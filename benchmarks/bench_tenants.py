"""Many tenants: 10,000 distinct API clients in one process, one memory cache.

Measures, against FakePlainID on 127.0.0.1:
- token requests for 10,000 clients that each get a token (must be exactly 10,000);
- memory the cache holds per key (key, token, per-key state; goal under 2 KB);
- ``MemoryTokenCache.store`` and the ``get_token()`` hot path at 100 and at 10,000 keys
  (goal: flat, as ``store`` is O(1) amortised), on this thread's CPU time.

Run: .venv/bin/python benchmarks/bench_tenants.py [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import tracemalloc

import plainid_async as pa
from plainid_async.testing import FakePlainID


def keys_and_tokens(count: int, prefix: str) -> list[tuple[pa.CacheKey, pa.Token]]:
    url = "https://api.us1.plainid.io/api/1.0/api-key/token"
    return [
        (
            pa.CacheKey.for_credentials(url, f"{prefix}-{i}", secrets.token_urlsafe(24)),
            pa.Token.issued(secrets.token_urlsafe(600), expires_in=3600),
        )
        for i in range(count)
    ]


async def memory_per_key(count: int) -> float:
    """Bytes the cache holds per key: keys, tokens and states allocated for it."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cache = pa.MemoryTokenCache()
    for key, token in keys_and_tokens(count, "mem"):
        await cache.store(key, token)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    if len(cache) != count:
        raise AssertionError(len(cache))
    return held / count


async def store_time(count: int, rounds: int = 5) -> float:
    """Seconds per ``store`` of a new token for an existing key, with ``count`` keys held."""
    cache = pa.MemoryTokenCache()
    pairs = keys_and_tokens(count, "store")
    for key, token in pairs:
        await cache.store(key, token)
    fresh = [pa.Token.issued("t", expires_in=3600) for _ in range(1000)]
    samples = []
    for _ in range(rounds):
        start = time.thread_time()
        for i, token in enumerate(fresh):
            await cache.store(pairs[i % count][0], token)
        samples.append((time.thread_time() - start) / len(fresh))
    return statistics.median(samples)


async def hot_path_time(fake: FakePlainID, count: int, calls: int = 50_000) -> float:
    """Seconds per ``get_token()`` on a FRESH token, with ``count`` other keys held."""
    cache = pa.MemoryTokenCache()
    for key, token in keys_and_tokens(count, "hot"):
        await cache.store(key, token)
    provider = pa.TokenProvider(
        fake.client_id, fake.client_secret, base_url=str(fake.base_url), cache=cache
    )
    async with provider:
        await provider.get_token()
        get = provider.get_token
        samples = []
        for _ in range(7):
            start = time.thread_time()
            for _ in range(calls):
                await get()
            samples.append((time.thread_time() - start) / calls)
    return statistics.median(samples)


async def many_clients(fake: FakePlainID, count: int) -> tuple[int, float]:
    """``count`` clients, each getting a token once: token requests made, seconds taken."""
    cache = pa.MemoryTokenCache()
    providers = []
    for i in range(count):
        client_id, secret = f"tenant-{i}", f"secret-{i}-{secrets.token_hex(8)}"
        fake.add_client(client_id, secret)
        providers.append(
            pa.TokenProvider(client_id, secret, base_url=str(fake.base_url), cache=cache)
        )
    before = len(fake.token_requests)
    start = time.perf_counter()  # wall time: the fetches run on the refresher's thread
    for batch in range(0, count, 100):
        await asyncio.gather(*(p.get_token() for p in providers[batch : batch + 100]))
    elapsed = time.perf_counter() - start
    for provider in providers:  # every key is served from memory now
        await provider.get_token()
    requests = len(fake.token_requests) - before
    if len(cache.key_states) != count:
        raise AssertionError(len(cache.key_states))
    for provider in providers:
        await provider.close()
    return requests, elapsed


async def main(clients: int) -> None:
    async with FakePlainID(max_records=clients + 10) as fake:
        requests, elapsed = await many_clients(fake, clients)
        print(f"{clients} clients: {requests} token requests in {elapsed:.1f} s (must be equal)")
        if requests != clients:
            raise AssertionError(requests)
        print(f"memory per key: {await memory_per_key(clients):8.0f} B (goal < 2048 B)")
        for count in (100, clients):
            store = await store_time(count) * 1e6
            hot = await hot_path_time(fake, count) * 1e9
            print(f"{count:6d} keys: store {store:6.2f} us   get_token() hot path {hot:6.1f} ns")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.clients))
