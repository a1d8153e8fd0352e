"""Cost of plainid_async.httpx.BearerAuth on sequential httpx GETs over loopback.

The httpx twin of bench_middleware.py, with its server (a small aiohttp app in a child
process). Three ``httpx.AsyncClient`` send the same sequential GETs: one with ``BearerAuth``
(the token comes from a TokenProvider's cache), one with the same ``Authorization`` header
fixed in its default headers (httpx then runs its no-op ``Auth`` flow), and one with the
cheapest possible auth: an ``httpx.Auth`` whose asynchronous flow sets a precomputed
header. Every round runs them all, in an order that rotates from round to round
(benchmarks/sidebyside.py), and
within a round the clients take turns request by request; each figure is the median and the
range of the per-round ratios to the static-header client of the same round, in requests/s
and in this thread's CPU per request (client CPU). The cost of the auth flows alone, driven
without any I/O, is measured too. Goal: the BearerAuth client reaches >= 0.99 of the
static-header client in client CPU (median of rounds), as the cheapest auth does.

Run: .venv/bin/python benchmarks/bench_httpx.py [--rounds 30] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import TYPE_CHECKING

import httpx
import sidebyside
from bench_middleware import TOKEN_BODY, serving

from plainid_async import MemoryTokenCache, TokenProvider
from plainid_async.httpx import BearerAuth

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

STATIC = "static header"
OURS = "BearerAuth"
CHEAPEST = "precomputed-header Auth"


class _Precomputed(httpx.Auth):
    """The least a token auth can do: set a precomputed header.

    An asynchronous flow, as BearerAuth's: httpx runs a synchronous ``auth_flow`` on an
    ``AsyncClient`` through a wrapper that costs about 1.5 us per request more, which made
    this floor look higher than it is (it did until 2026-12-05).
    """

    def __init__(self, value: str) -> None:
        self.value = value

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = self.value
        yield request


async def _run(client: httpx.AsyncClient, n: int) -> None:
    """``n`` sequential GETs (a warm-up)."""
    for _ in range(n):
        await _one(client)


async def _one(client: httpx.AsyncClient) -> tuple[float, float]:
    """One GET: (wall-clock seconds, this thread's CPU seconds), the client's own work."""
    start, cpu = time.perf_counter(), time.thread_time()
    response = await client.get("/api/1.0/bench")
    if response.status_code != 200:
        raise SystemExit(f"unexpected status {response.status_code}")
    return time.perf_counter() - start, time.thread_time() - cpu


async def _flow_cost(auth: httpx.Auth, calls: int) -> float:
    """Best of five: thread CPU seconds per ``auth.async_auth_flow`` for one request, no I/O."""
    request = httpx.Request("GET", "http://127.0.0.1:9/api/1.0/bench")
    response = httpx.Response(200, request=request)
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(calls):
            flow = auth.async_auth_flow(request)
            await flow.__anext__()
            with contextlib.suppress(StopAsyncIteration):
                await flow.asend(response)
            request.headers.pop("authorization", None)
        best = min(best, (time.thread_time() - start) / calls)
    return best


async def bench(port: int, rounds: int, requests: int) -> float:
    """The clients side by side; returns our median client-CPU ratio to the static header."""
    base_url = f"http://127.0.0.1:{port}"
    async with TokenProvider(
        "bench", "bench-secret", base_url=base_url, cache=MemoryTokenCache()
    ) as provider:
        token = await provider.get_token()
        assert token.access_token == TOKEN_BODY["access_token"]  # noqa: S101
        auth = BearerAuth(provider)
        cheapest = _Precomputed(token.authorization)
        async with (
            httpx.AsyncClient(base_url=base_url, auth=auth) as ours,
            httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": token.authorization}
            ) as floor,
            httpx.AsyncClient(base_url=base_url, auth=cheapest) as least,
        ):
            clients = {STATIC: floor, OURS: ours, CHEAPEST: least}
            for client in clients.values():  # warm: connection and hot token
                await _run(client, 20)
            rates: dict[str, list[float]] = {name: [] for name in clients}
            cpu: dict[str, list[float]] = {name: [] for name in clients}
            for order in sidebyside.orders(list(clients), rounds):
                # Request by request, the clients take turns (in this round's order), so a
                # burst of load from other processes lands on all of them alike.
                wall, used = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0.0)
                for _ in range(requests):
                    for name in order:
                        seconds, spent = await _one(clients[name])
                        wall[name] += seconds
                        used[name] += spent
                for name in order:
                    rates[name].append(requests / wall[name])
                    cpu[name].append(requests / used[name])  # requests per client CPU second
            flow = await _flow_cost(auth, 20_000)
            least_flow = await _flow_cost(cheapest, 20_000)
            noop = await _flow_cost(httpx.Auth(), 20_000)
    rate_ratios = sidebyside.ratios(rates, STATIC)
    cpu_ratios = sidebyside.ratios(cpu, STATIC)
    print(
        f"{rounds} rounds x {requests} sequential GETs per client, the clients taking turns "
        "request by request, their order rotated each round"
    )
    print("ratio to the static-header client of the same round: median (range over rounds)")
    print(f"{'client':>24}  {'requests/s':>10}  {'wall-clock ratio':>22}  client CPU ratio")
    for name in clients:
        rate = sidebyside.spread(rates[name]).median
        print(
            f"{name:>24}  {rate:10.0f}  {rate_ratios[name].text(4):>22}  {cpu_ratios[name].text(4)}"
        )
    static_cpu = 1 / sidebyside.spread(cpu[STATIC]).median
    print(
        f"auth flow per request, no I/O: BearerAuth {flow * 1e6:.2f} us, the precomputed-header "
        f"Auth {least_flow * 1e6:.2f} us, httpx's no-op Auth {noop * 1e6:.2f} us: ours costs "
        f"{(flow - least_flow) * 1e6:.2f} us more than the cheapest, "
        f"{(flow - least_flow) / static_cpu * 100:.2f} % of one loopback GET's client CPU"
    )
    return cpu_ratios[OURS].median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--goal", type=float, default=0.99)
    args = parser.parse_args()
    with serving() as port:
        ratio = asyncio.run(bench(port, args.rounds, args.requests))
    verdict = "met" if ratio >= args.goal else "NOT met"
    print(f"goal: BearerAuth / static header >= {args.goal} in client CPU (median): {verdict}")
    return 0 if ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
