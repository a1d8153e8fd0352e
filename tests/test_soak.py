"""Soak: continuous load through provider.session() while the token endpoint keeps failing.

Tokens live 3 s (so a run of a minute goes through some 40 refreshes), 20% of token requests
fail at random (5xx, 429) and outages come in bursts shorter than the STALE window. No API
call may fail, the fake may never see a token it did not accept, and Python memory
(tracemalloc) and open file descriptors must stay flat: the assertions are on the trend
between the first and the last third of the run, with margins a real leak would exceed.

The retry policy is scaled to the 3 s lifetime the way the defaults are scaled to real ones
(minutes to hours): backoff in tenths of a second, a deadline of a few seconds.

``PLAINID_SOAK_SECONDS`` changes the length (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import secrets
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _reliability import (
    InFlightFake,
    LoopWatch,
    StreamingRedaction,
    open_fds,
    record,
)

import plainid_async as pa
from plainid_async.testing import FakeResponse

SECONDS = float(os.environ.get("PLAINID_SOAK_SECONDS", "60"))
WORKERS = 16
LIFETIME = 3.0  # STALE from ~1.5 s before expiry, EXPIRED 0.3 s before: a 1.08 s STALE window
FAILURE_RATE = 0.2
BURST_EVERY = (4.0, 8.0)  # seconds between bursts
BURST_LENGTH = (0.3, 1.0)  # shorter than the STALE window
SAMPLE_EVERY = 2.0
SECRET = "soak-S3CRET-" + secrets.token_hex(8)
# Enough attempts that a fetch caught by a burst still has several after it ends.
POLICY = pa.RetryPolicy(
    attempts=16, backoff_base=0.05, backoff_max=0.5, max_retry_after=0.5, deadline=6.0
)
MEMORY_MARGIN = 1_000_000  # bytes; a leak of 20 bytes per call over the run exceeds it
FD_MARGIN = 8
FAILURES = (
    FakeResponse(status=500),
    FakeResponse(status=502, body="<html>Bad Gateway</html>", content_type="text/html"),
    FakeResponse(status=503, headers={"Retry-After": "0"}),
    FakeResponse(status=504, body=b"", content_type=""),
    FakeResponse(status=429, headers={"Retry-After": "0"}),
)


def rss() -> int:
    """Resident set size in bytes (Linux), for the record; -1 elsewhere."""
    try:
        pages = Path("/proc/self/statm").read_text().split()[1]
    except FileNotFoundError:  # pragma: no cover - not Linux
        return -1
    return int(pages) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_soak_under_failing_token_endpoint() -> None:  # noqa: C901, PLR0915 (one scenario, told in order)
    rng = random.Random(60)  # noqa: S311 (a load shape, not crypto)
    watch = LoopWatch.start()
    fake = InFlightFake(client_id="soak", client_secret=SECRET, expires_in=LIFETIME)
    checker = StreamingRedaction({SECRET}, lambda: fake.issued_tokens)
    tracemalloc.start(1)
    injected = {"random": 0, "burst": 0, "other": 0}
    bursts: list[float] = []

    last_burst = [0.0]

    def maybe_fail() -> None:
        now = time.monotonic()
        # Half the bursts start with a refresh, so they hit it (timed bursts rarely do).
        quiet = not fake.in_outage and now - last_burst[0] > BURST_EVERY[0]
        if quiet and rng.random() < 0.5:
            length = rng.uniform(*BURST_LENGTH)
            fake.outage_between(0, length, rng.choice((502, 503)))
            bursts.append(length)
            last_burst[0] = now
        if fake.in_outage:
            injected["burst"] += 1
        else:
            # Exactly one in five of the other token requests fails, of a random kind.
            injected["other"] += 1
            if injected["other"] % round(1 / FAILURE_RATE) == 0:
                injected["random"] += 1
                fake.fail_next(rng.choice(FAILURES))

    fake.before = maybe_fail
    calls = {"ok": 0, "failed": 0}
    unauthorized = 0
    samples: list[tuple[float, int, int, int, int]] = []  # time, calls, traced, fds, RSS
    try:
        async with fake:
            provider = pa.TokenProvider(
                "soak",
                SECRET,
                base_url=str(fake.base_url),
                cache=pa.MemoryTokenCache(),
                retry=POLICY,
                timeout=1.0,
            )
            async with provider, provider.session() as session:
                stop = time.monotonic() + SECONDS

                async def worker() -> None:
                    while time.monotonic() < stop:
                        try:
                            async with session.get("api/1.0/soak") as response:
                                await response.read()
                                ok = response.status == 200
                        except (aiohttp.ClientError, pa.PlainIDError):
                            ok = False
                        calls["ok" if ok else "failed"] += 1

                async def outages() -> None:
                    while time.monotonic() < stop:
                        await asyncio.sleep(rng.uniform(*BURST_EVERY))
                        length = rng.uniform(*BURST_LENGTH)
                        if fake.in_outage:
                            continue
                        fake.start_outage(rng.choice((502, 503)))
                        last_burst[0] = time.monotonic()
                        await asyncio.sleep(length)
                        fake.end_outage()
                        bursts.append(length)

                async def sampler() -> None:
                    nonlocal unauthorized
                    while time.monotonic() < stop:
                        await asyncio.sleep(SAMPLE_EVERY)
                        # Count, then drop, what the fake records, so it holds no memory.
                        unauthorized += sum(not r.authorized for r in fake.resource_requests)
                        fake.resource_requests.clear()
                        fake.token_requests.clear()
                        gc.collect()
                        traced, _ = tracemalloc.get_traced_memory()
                        samples.append(
                            (time.monotonic(), sum(calls.values()), traced, open_fds(), rss())
                        )

                loads = [asyncio.create_task(worker()) for _ in range(WORKERS)]
                helpers = [asyncio.create_task(outages()), asyncio.create_task(sampler())]
                await asyncio.gather(*loads)
                for helper in helpers:
                    helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*helpers)
                fake.end_outage()
                unauthorized += sum(not r.authorized for r in fake.resource_requests)
                stats = provider.stats
                final_token = await provider.get_token()
                shown = [repr(o) + str(o) for o in (provider, stats, session, fake, final_token)]
            issued = len(fake.issued_tokens)
            shown_leaks = [
                text
                for text in shown
                if SECRET in text or any(t in text for t in fake.issued_tokens)
            ]
            max_in_flight = max(fake.max_in_flight.values())
        seen = await watch.finish()
    finally:
        tracemalloc.stop()
        checker.close()

    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    memory_growth = statistics.median(s[2] for s in last) - statistics.median(s[2] for s in first)
    fd_growth = statistics.median(s[3] for s in last) - statistics.median(s[3] for s in first)
    rss_growth = statistics.median(s[4] for s in last) - statistics.median(s[4] for s in first)
    total = calls["ok"] + calls["failed"]
    figures: dict[str, Any] = {
        "load": f"{WORKERS} workers through provider.session() for {SECONDS:.0f} s, 3 s tokens",
        "faults": (
            f"{FAILURE_RATE:.0%} of token requests outside bursts 5xx/429 "
            f"({injected['random']} of {injected['other']}); "
            f"{len(bursts)} outage bursts of {min(bursts, default=0):.1f}-"
            f"{max(bursts, default=0):.1f} s ({injected['burst']} requests hit them)"
        ),
        "requests": total,
        "failures": calls["failed"],
        "wrong_tokens": unauthorized,
        "tokens_issued": issued,
        "token_requests": stats.token_requests,
        "background_refreshes": stats.background_refreshes,
        "waits": stats.waits,
        "failed_fetches": stats.failures,
        "max_token_requests_in_flight": max_in_flight,
        "memory_growth_bytes": int(memory_growth),
        "memory_first_third_bytes": int(statistics.median(s[2] for s in first)),
        "rss_growth_bytes": int(rss_growth),
        "fd_growth": int(fd_growth),
        "fds_min_max": [min(s[3] for s in samples), max(s[3] for s in samples)],
        "log_records_checked": checker.checked,
        "leaked_tasks": seen["leaked_tasks"],
        "loop_errors": seen["loop_errors"],
    }
    record("soak", **figures)
    assert calls["failed"] == 0
    assert unauthorized == 0
    assert total > 0
    assert injected["random"] > 0
    assert bursts
    assert max_in_flight == 1
    assert len(samples) >= 6
    assert memory_growth < MEMORY_MARGIN, figures
    assert fd_growth <= FD_MARGIN, figures
    assert checker.leaks == []
    assert shown_leaks == []
    assert checker.checked > 0
    assert seen["leaked_tasks"] == 0
    assert seen["loop_errors"] == 0, watch.contexts
