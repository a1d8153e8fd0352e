"""Token requests when every job runs its own event loop: memory cache vs RedisTokenCache.

Eight threads each run ``asyncio.run`` per job, as Django's ``async_to_sync``, Flask or a
Celery worker does, against one module-level provider. Each job asks for a token and the
thread pauses ``--interval`` before the next. Tokens live ``--lifetime`` seconds, so the
run crosses at least one refresh window; the token endpoint (FakePlainID, in a thread of its
own) takes ``--latency`` to answer. Counted per cache: token requests, failed jobs, and
"Redis unavailable" WARNINGs while Redis is up (all false).

    python benchmarks/bench_loops.py --threads 8 --lifetime 20 --latency 0.15 \\
        --interval 0.02 --duration 21

Needs redis-server on PATH (a throwaway one is started on a free port), or --redis-url.
The goal (issue 20): RedisTokenCache.from_url costs no more token requests than the memory
cache (+2), with 0 false warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_processes import redis_server

from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from plainid_async import TokenCache

MODES = {"memory": "memory (default)", "redis": "RedisTokenCache.from_url"}


@attrs.define
class Figures:
    """What one run of one cache counted."""

    mode: str
    token_requests: int
    jobs: int
    failed_jobs: int
    false_warnings: int


class _Warnings(logging.Handler):
    """Counts WARNINGs of the plainid_async logger that blame Redis."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING and "Redis" in record.getMessage():
            self.count += 1


class _FakeThread:
    """FakePlainID on its own loop and thread: every job's loop closes after the job."""

    def __init__(self, *, lifetime: float, latency: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake = FakePlainID(expires_in=lifetime, latency=latency)

    def __enter__(self) -> FakePlainID:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run(
    mode: str,
    *,
    redis_url: str,
    threads: int = 8,
    lifetime: float = 20.0,
    latency: float = 0.15,
    interval: float = 0.02,
    duration: float = 21.0,
) -> Figures:
    """Run the scenario once with one cache; return its counts."""
    cache: TokenCache | None = None
    if mode == "redis":
        cache = RedisTokenCache.from_url(redis_url, timeout=2.0, lock_poll_interval=0.02)
    handler = _Warnings()
    logger = logging.getLogger("plainid_async")
    logger.addHandler(handler)
    jobs = failed = 0
    counter = threading.Lock()
    try:
        with _FakeThread(lifetime=lifetime, latency=latency) as fake:
            # One provider for the process, as a module-level one in a web app.
            provider = TokenProvider(
                fake.client_id, fake.client_secret, base_url=str(fake.base_url), cache=cache
            )
            deadline = time.monotonic() + duration

            def worker() -> None:
                nonlocal jobs, failed
                while time.monotonic() < deadline:
                    try:
                        asyncio.run(provider.get_token())
                        ok = True
                    except Exception:  # noqa: BLE001 (a failed job is a figure)
                        ok = False
                    with counter:
                        jobs += 1
                        failed += not ok
                    time.sleep(interval)

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            asyncio.run(provider.close())
            requests = len(fake.token_requests)
    finally:
        logger.removeHandler(handler)
        if isinstance(cache, RedisTokenCache):
            asyncio.run(cache.aclose())
    return Figures(mode, requests, jobs, failed, handler.count)


def main() -> None:
    """Run both caches and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--lifetime", type=float, default=20.0, help="token lifetime, seconds")
    parser.add_argument("--latency", type=float, default=0.15, help="token endpoint, seconds")
    parser.add_argument("--interval", type=float, default=0.02, help="pause between jobs, s")
    parser.add_argument("--duration", type=float, default=21.0, help="seconds per cache")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    knobs = {
        "threads": args.threads,
        "lifetime": args.lifetime,
        "latency": args.latency,
        "interval": args.interval,
        "duration": args.duration,
    }

    def table(url: str) -> None:
        print(
            f"{args.threads} threads, asyncio.run per job, {args.lifetime:g} s tokens, "
            f"{args.latency * 1000:g} ms endpoint, {args.interval * 1000:g} ms between jobs, "
            f"{args.duration:g} s per cache"
        )
        print(f"{'cache':<26} {'token requests':>15} {'jobs':>7} {'failed':>7} {'false WARN':>11}")
        for mode, label in MODES.items():
            f = run(mode, redis_url=url, **knobs)
            print(
                f"{label:<26} {f.token_requests:>15} {f.jobs:>7} {f.failed_jobs:>7} "
                f"{f.false_warnings:>11}"
            )

    if args.redis_url:
        table(args.redis_url)
        return
    with redis_server() as url:
        table(url)


if __name__ == "__main__":
    main()
