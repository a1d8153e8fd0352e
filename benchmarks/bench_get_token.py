"""Hot path: `await provider.get_token()` on a cached token vs a bare coroutine.

The floor is a coroutine that does what any token cache must do: one dict lookup and one
monotonic-clock check. Both are timed in interleaved rounds in one run, on the CPU time of
this thread (time.thread_time: another process taking the core does not count); the ratio
is what counts (absolute times on a shared machine are noise). Goal: ratio <= 1.2.

With ``--otel``, plainid_async.otel is instrumented with the OpenTelemetry SDK (an in-memory
reader): the price of metrics on every call.

Run: .venv/bin/python benchmarks/bench_get_token.py [--rounds N] [--calls N] [--otel]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import plainid_async as pa
from plainid_async.testing import FakePlainID


async def main(rounds: int, calls: int, *, instrumented: bool = False) -> float:
    if instrumented:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

        from plainid_async import otel  # noqa: PLC0415

        meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
        otel.instrument(meter_provider=meters)
    try:
        return await _measure(rounds, calls)
    finally:
        if instrumented:
            otel.uninstrument()
            meters.shutdown()


async def _measure(rounds: int, calls: int) -> float:
    async with FakePlainID() as fake:
        provider = pa.TokenProvider(
            fake.client_id,
            fake.client_secret,
            base_url=str(fake.base_url),
            cache=pa.MemoryTokenCache(),
        )
        async with provider:
            await provider.get_token()
            table = {"key": await provider.get_token()}
            deadline = time.monotonic() + 3600

            async def bare() -> pa.Token:
                token = table["key"]
                if time.monotonic() < deadline:
                    return token
                raise AssertionError

            async def time_provider() -> float:
                get = provider.get_token
                start = time.thread_time()
                for _ in range(calls):
                    await get()
                return (time.thread_time() - start) / calls

            async def time_bare() -> float:
                start = time.thread_time()
                for _ in range(calls):
                    await bare()
                return (time.thread_time() - start) / calls

            ours, floor = [], []
            for _ in range(rounds):
                ours.append(await time_provider())
                floor.append(await time_bare())
            if len(fake.token_requests) != 1:
                raise AssertionError(fake.token_requests)
    ours_ns = statistics.median(ours) * 1e9
    floor_ns = statistics.median(floor) * 1e9
    ratio = ours_ns / floor_ns
    print(f"get_token() on a cached token: {ours_ns:8.1f} ns/call (median of {rounds} rounds)")
    print(f"bare dict+monotonic coroutine: {floor_ns:8.1f} ns/call")
    print(f"ratio: {ratio:.2f}x (goal <= 1.2x)")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--otel", action="store_true", help="instrument with the OTel SDK")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls, instrumented=args.otel))
