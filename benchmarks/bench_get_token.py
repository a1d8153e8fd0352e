"""Hot path: `await provider.get_token()` on a cached token vs a bare coroutine, and watched.

The floor is a coroutine that does what any token cache must do: one dict lookup and one
monotonic-clock check. Every variant runs in every round, in an order that rotates from
round to round (benchmarks/sidebyside.py), on the CPU time of this thread (time.thread_time:
another process taking the core does not count). Each figure is the per-round ratio to the
floor of the same round, as the median and the range over the rounds: absolute times on a
shared machine are noise. Goals: the unwatched lookup <= 1.2x the floor; watched (OpenTelemetry
instrumented, or 1, 10 or 100 no-op listeners) <= 2x.

The variants:

* ``get_token()``: a provider nobody watches;
* ``otel.instrument()``: plainid_async.otel instrumented with the OpenTelemetry SDK (an
  in-memory reader), on for that block only;
* ``N no-op listeners``: a provider with a no-op ``on_event=`` and, for N > 1, N - 1 no-op
  process-wide subscribers (what otel uses), on for that block only, each asking for the
  fetch events (``event_kinds=`` / ``kinds=``: every kind but the lookups), as a listener
  that alerts on failed fetches would;
* ``1 no-op listener of every kind``: a no-op ``on_event=`` that hears every kind, ``HIT``
  included: one event per lookup (the price of asking for them).

Run: .venv/bin/python benchmarks/bench_get_token.py [--rounds N] [--calls N] [--no-watched]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import time
from typing import TYPE_CHECKING

import sidebyside

import plainid_async as pa
from plainid_async._events import ALL_KINDS, LOOKUP_KINDS, subscribe
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

FLOOR = "bare dict+monotonic coroutine"
PLAIN = "get_token(), unwatched"
OTEL = "get_token(), otel.instrument()"
LISTENERS = (1, 10, 100)


EVERY_KIND = "get_token(), 1 no-op listener of every kind"
#: What the no-op listeners ask for: the fetch events, not the lookups.
FETCH_KINDS = ALL_KINDS - LOOKUP_KINDS


def _listeners_label(count: int) -> str:
    return f"get_token(), {count} no-op listener{'s' if count > 1 else ''}"


def _ignore(_event: pa.TokenEvent) -> None:
    pass


@contextlib.contextmanager
def _subscribed(count: int) -> Iterator[None]:
    """``count`` no-op process-wide subscribers, for the block."""
    unsubscribes = [subscribe(_ignore, kinds=FETCH_KINDS) for _ in range(count)]
    try:
        yield
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


@contextlib.contextmanager
def _instrumented() -> Iterator[None]:
    """plainid_async.otel on a fresh SDK meter provider, for the block."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    from plainid_async import otel  # noqa: PLC0415

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    otel.instrument(meter_provider=meters)
    try:
        yield
    finally:
        reader.get_metrics_data()  # the collection the instruments answer, outside the timing
        otel.uninstrument()
        meters.shutdown()


def otel_available() -> bool:
    """Whether the OpenTelemetry SDK is importable (the ``otel`` row needs it)."""
    return importlib.util.find_spec("opentelemetry.sdk") is not None


async def _time(get: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(100):  # untimed: the slow path once, after a subscriber came or went
        await get()
    start = time.thread_time()
    for _ in range(calls):
        await get()
    return (time.thread_time() - start) / calls


@contextlib.asynccontextmanager
async def _providers(
    fake: FakePlainID,
) -> AsyncIterator[tuple[pa.TokenProvider, pa.TokenProvider, pa.TokenProvider]]:
    def make(
        on_event: Callable[[pa.TokenEvent], object] | None = None,
        kinds: frozenset[pa.EventKind] | None = None,
    ) -> pa.TokenProvider:
        return pa.TokenProvider(
            fake.client_id,
            fake.client_secret,
            base_url=str(fake.base_url),
            cache=pa.MemoryTokenCache(),
            on_event=on_event,
            event_kinds=kinds,
        )

    async with make() as plain, make(_ignore, FETCH_KINDS) as heard, make(_ignore) as every:
        yield plain, heard, every


def _watched(
    plain: pa.TokenProvider, heard: pa.TokenProvider, every: pa.TokenProvider, calls: int
) -> dict[str, Callable[[], Awaitable[float]]]:
    """The watched variants: otel on ``plain``, listeners on ``heard`` and ``every``."""
    variants: dict[str, Callable[[], Awaitable[float]]] = {}
    if otel_available():

        async def with_otel() -> float:
            with _instrumented():
                return await _time(plain.get_token, calls)

        variants[OTEL] = with_otel
    for count in LISTENERS:

        async def with_listeners(count: int = count) -> float:
            with _subscribed(count - 1):
                return await _time(heard.get_token, calls)

        variants[_listeners_label(count)] = with_listeners
    variants[EVERY_KIND] = lambda: _time(every.get_token, calls)
    return variants


async def measure(rounds: int, calls: int, *, watched: bool = True) -> dict[str, sidebyside.Spread]:
    """Every variant in every round, rotated; the per-round ratios to the floor."""
    async with FakePlainID() as fake, _providers(fake) as (plain, heard, every):
        await plain.get_token()
        await heard.get_token()
        await every.get_token()
        table = {"key": await plain.get_token()}
        deadline = time.monotonic() + 3600

        async def bare() -> pa.Token:
            token = table["key"]
            if time.monotonic() < deadline:
                return token
            raise AssertionError

        variants: dict[str, Callable[[], Awaitable[float]]] = {
            FLOOR: lambda: _time(bare, calls),
            PLAIN: lambda: _time(plain.get_token, calls),
        }
        if watched:
            variants.update(_watched(plain, heard, every, calls))
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for order in sidebyside.orders(list(variants), rounds):
            for name in order:
                samples[name].append(await variants[name]())
        if len(fake.token_requests) != 3:
            raise AssertionError(fake.token_requests)
    spreads = sidebyside.ratios(samples, FLOOR)
    floor_ns = sidebyside.spread(samples[FLOOR]).median * 1e9
    print(f"{rounds} rounds x {calls} calls per variant, order rotated each round")
    print(f"floor ({FLOOR}): {floor_ns:.1f} ns/call (median)")
    print(f"{'variant':<40} {'ns/call':>8}  ratio to the floor: median (range)")
    for name, ratio in spreads.items():
        ns = sidebyside.spread(samples[name]).median * 1e9
        print(f"{name:<40} {ns:8.1f}  {ratio.text(2, 'x')}")
    print("goals: unwatched <= 1.2x, watched <= 2x (medians)")
    return spreads


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument(
        "--no-watched", action="store_true", help="only the unwatched lookup and its floor"
    )
    args = parser.parse_args()
    asyncio.run(measure(args.rounds, args.calls, watched=not args.no_watched))
