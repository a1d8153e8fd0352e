"""Cost of plainid_async.httpx.BearerAuth on sequential httpx GETs over loopback.

The httpx twin of bench_middleware.py, with its server (a small aiohttp app in a child
process). Two ``httpx.AsyncClient`` send the same sequential GETs: one with ``BearerAuth``
(the token comes from a TokenProvider's cache), one with the same ``Authorization`` header
fixed in its default headers (httpx then runs its no-op ``Auth`` flow). Rounds alternate the
order; the median of the per-round ratios resists bursts of load from other processes. The
cost of the auth flow alone, driven without any I/O, is measured too. Goal: the BearerAuth
client reaches >= 0.98 of the static-header client's requests/s.

Run: .venv/bin/python benchmarks/bench_httpx.py [--rounds 30] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time

import httpx
from bench_middleware import TOKEN_BODY, serving

from plainid_async import MemoryTokenCache, TokenProvider
from plainid_async.httpx import BearerAuth


async def _rate(client: httpx.AsyncClient, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        response = await client.get("/api/1.0/bench")
        if response.status_code != 200:
            raise SystemExit(f"unexpected status {response.status_code}")
    return n / (time.perf_counter() - start)


async def _flow_cost(auth: httpx.Auth, calls: int) -> float:
    """Seconds per call of ``auth.async_auth_flow`` for one request and its 200, no I/O."""
    request = httpx.Request("GET", "http://127.0.0.1:9/api/1.0/bench")
    response = httpx.Response(200, request=request)
    start = time.perf_counter()
    for _ in range(calls):
        flow = auth.async_auth_flow(request)
        await flow.__anext__()
        with contextlib.suppress(StopAsyncIteration):
            await flow.asend(response)
        request.headers.pop("authorization", None)
    return (time.perf_counter() - start) / calls


async def bench(port: int, rounds: int, requests: int) -> float:
    base_url = f"http://127.0.0.1:{port}"
    async with TokenProvider(
        "bench", "bench-secret", base_url=base_url, cache=MemoryTokenCache()
    ) as provider:
        token = await provider.get_token()
        assert token.access_token == TOKEN_BODY["access_token"]  # noqa: S101
        auth = BearerAuth(provider)
        async with (
            httpx.AsyncClient(base_url=base_url, auth=auth) as ours,
            httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": token.authorization}
            ) as floor,
        ):
            await _rate(ours, 20)  # warm: connection and hot token
            await _rate(floor, 20)
            ratios = []
            for index in range(rounds):
                pair = (ours, floor) if index % 2 else (floor, ours)
                rates = {id(client): await _rate(client, requests) for client in pair}
                ratios.append(rates[id(ours)] / rates[id(floor)])
            flow = await _flow_cost(auth, 20_000)
            noop = await _flow_cost(httpx.Auth(), 20_000)
            floor_rate = await _rate(floor, requests)
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"static header (httpx): {floor_rate:.0f} requests/s (last block)")
    print(
        f"BearerAuth / static header: median {ratio:.3f} over {rounds} rounds of {requests} "
        f"GETs (IQR {quartiles[0]:.3f}-{quartiles[2]:.3f})"
    )
    print(
        f"auth flow per request, no I/O: BearerAuth {flow * 1e6:.2f} us, httpx's no-op Auth "
        f"{noop * 1e6:.2f} us: {(flow - noop) * 1e6:.2f} us more, "
        f"{(flow - noop) * floor_rate * 100:.2f} % of one loopback GET"
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--goal", type=float, default=0.98)
    args = parser.parse_args()
    with serving() as port:
        ratio = asyncio.run(bench(port, args.rounds, args.requests))
    return 0 if ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
