"""Token requests made by N processes starting cold: memory cache vs RedisTokenCache.

Each round starts N worker processes against one FakePlainID (with some latency) and, once
all have imported everything, lets them ask for a token at the same moment. With the default
memory cache every process fetches its own token; with RedisTokenCache one process fetches
and the others read its token from Redis.

    python benchmarks/bench_processes.py --processes 8 --latency 0.2 --rounds 3

Needs redis-server on PATH (a throwaway one is started on a free port), or --redis-url.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import redis.asyncio
import sidebyside

from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

MODES = {"memory": "memory (default)", "redis": "RedisTokenCache"}


# -- worker --------------------------------------------------------------------------------


async def worker(mode: str, base_url: str, redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = RedisTokenCache(client, timeout=2.0) if mode == "redis" else None
    provider = TokenProvider("test-client", "test-secret", base_url=base_url, cache=cache)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.perf_counter()
    async with provider:
        token = await provider.get_token()
    elapsed = time.perf_counter() - started
    await client.aclose()
    digest = hashlib.sha256(token.access_token.encode()).hexdigest()[:16]
    print(digest, f"{elapsed:.6f}", flush=True)


# -- parent --------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", directory, "--loglevel", "warning"]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603 (fixed binary and args)
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


async def one_round(
    mode: str, processes: int, latency: float, redis_url: str
) -> tuple[int, int, float]:
    async with FakePlainID(latency=latency) as fake:
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                mode,
                str(fake.base_url),
                redis_url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(processes)
        ]
        for process in workers:
            assert process.stdout is not None  # noqa: S101 (set by PIPE)
            await process.stdout.readline()
        for process in workers:
            assert process.stdin is not None  # noqa: S101
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        results = [(await process.communicate())[0].decode().split() for process in workers]
        tokens = {digest for digest, _ in results}
        slowest = max(float(seconds) for _, seconds in results)
        return len(fake.token_requests), len(tokens), slowest


async def run(processes: int, latency: float, rounds: int, redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    print(f"{processes} processes starting cold, token endpoint latency {latency * 1000:g} ms")
    figures: dict[str, list[tuple[int, int, float]]] = {mode: [] for mode in MODES}
    for order in sidebyside.orders(list(MODES), rounds):  # the caches alternate, round by round
        for mode in order:
            await client.flushdb()
            figures[mode].append(await one_round(mode, processes, latency, redis_url))
    await client.aclose()
    print(f"{'cache':<18} {'token requests':>15} {'distinct tokens':>16} {'slowest (ms)':>20}")
    for mode, label in MODES.items():
        requests = "/".join(str(f[0]) for f in figures[mode])
        distinct = "/".join(str(f[1]) for f in figures[mode])
        slowest = sidebyside.spread([f[2] * 1000 for f in figures[mode]]).text(0)
        print(f"{label:<18} {requests:>15} {distinct:>16} {slowest:>20}")
    print(
        f"(per round, {rounds} rounds, the caches' order alternating; slowest = the slowest "
        "process of a round: median (range) over the rounds)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="token endpoint, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "BASE_URL", "REDIS_URL"))
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(*args.worker))
        return
    if args.redis_url:
        asyncio.run(run(args.processes, args.latency, args.rounds, args.redis_url))
        return
    with redis_server() as url:
        asyncio.run(run(args.processes, args.latency, args.rounds, url))


if __name__ == "__main__":
    main()
