"""The scenarios: each one bounded in requests and in time, each against a fresh fake.

Every function returns one flat JSON-able record per contender. Token requests and 401s are
counted by the FakePlainID process (what PlainID would see); statuses, failures and
latencies by the caller (what the application sees).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import statistics
import sys
import time
import traceback
from asyncio.subprocess import DEVNULL, PIPE
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import contenders as c

if TYPE_CHECKING:
    from server import ServerProcess

Record = dict[str, Any]

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-4d1c8e"  # noqa: S105 (a fake credential, easy to search for)
#: How long in-flight requests may still run after a timed scenario ends.
DRAIN_LIMIT = 15.0
#: Requests per second in the expiry and outage runs: under a third of what the httpx floor
#: serves with 20 concurrent callers on the 2-core benchmark machine (about 340/s).
RATE = 100.0
#: The bad-credentials run: a distinctive secret, so a leak is found by searching for it.
WRONG_SECRET = "wrong-secret-7f3a9c1e5b"  # noqa: S105


@dataclass
class Tally:
    """What the caller saw: statuses, exceptions, latencies."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    unfinished: int = 0
    first_error: BaseException | None = None

    async def call(self, client: c.Client) -> None:
        start = time.perf_counter()
        try:
            status = await client.get(c.RESOURCE_PATH)
        except asyncio.CancelledError:
            self.unfinished += 1
            raise
        except Exception as exc:  # noqa: BLE001 (any failure counts as a failed request)
            self.errors[type(exc).__name__] += 1
            if self.first_error is None:
                self.first_error = exc
        else:
            self.statuses[status] += 1
        self.latencies.append(time.perf_counter() - start)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """Requests that raised or did not end with a 2xx."""
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        return self.requests - ok + self.unfinished

    def summary(self, slow: float | None = None) -> Record:
        lat = sorted(self.latencies)
        record: Record = {
            "requests": self.requests,
            "failed": self.failed,
            "caller_401": self.statuses.get(401, 0),
            "errors": dict(self.errors),
            "unfinished": self.unfinished,
            "p50_ms": round(_quantile(lat, 0.50) * 1000, 1),
            "p99_ms": round(_quantile(lat, 0.99) * 1000, 1),
            "max_ms": round((lat[-1] if lat else 0.0) * 1000, 1),
        }
        if slow is not None:
            record["slow"] = sum(1 for x in lat if x > slow)
        return record


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _diff(before: Record, after: Record) -> Record:
    tokens: collections.Counter[str] = collections.Counter(after["token_statuses"])
    tokens.subtract(before["token_statuses"])
    resources: collections.Counter[str] = collections.Counter(after["resource_statuses"])
    resources.subtract(before["resource_statuses"])
    return {
        "token_requests": after["token_requests"] - before["token_requests"],
        "token_statuses": {k: v for k, v in tokens.items() if v},
        "server_401": resources.get("401", 0),
    }


def _base(scenario: str, contender: c.Contender, params: Record) -> Record:
    return {
        "scenario": scenario,
        "contender": contender.label,
        "library": contender.name,
        "variant": contender.variant,
        "params": params,
    }


async def _open(server: ServerProcess, contender: c.Contender, **fake: float) -> c.Client:
    """A fresh fake with ``fake``'s settings, and ``contender``'s client for it.

    A static-header floor cannot refresh its token, so it always gets an hour-long one: its
    rows are the same load with no token work at all, what the transport alone gives.
    """
    if contender.floor:
        fake["expires_in"] = 3600.0
    base_url = await server.new_fake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **fake)
    return await contender.make(c.Target(base_url, CLIENT_ID, CLIENT_SECRET))


async def run_at_rate(tally: Tally, client: c.Client, rate: float, duration: float) -> None:
    """Start a GET every ``1 / rate`` s for ``duration`` s, then a bounded drain.

    An open load, as a web service sees it: requests arrive on their own schedule, whether or
    not the earlier ones have finished, so a request the auth layer holds is counted as slow
    without slowing down the arrivals. Requests not even sent by the end (the event loop was
    blocked) count as unfinished. The rate is kept well under what the slower transport
    (httpx) serves at its static-header floor, so a slow request is one the auth layer held,
    not one queued behind a saturated client (see "Load" in docs/benchmarks.md).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals = round(rate * duration)
    tasks: list[asyncio.Task[None]] = []
    for index in range(arrivals):
        if loop.time() >= start + duration:
            # A client that blocks the event loop (httpx-auth's synchronous fetch) delays the
            # sending itself: the requests due by now were never sent, and count as unfinished.
            tally.unfinished += arrivals - index
            break
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(tally.call(client)))
    await _settle(tasks, DRAIN_LIMIT)


async def _settle(tasks: list[asyncio.Task[None]], limit: float) -> None:
    """Wait up to ``limit`` s for ``tasks``, then cancel the rest and wait for them too."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- cold stampede ---------------------------------------------------------------------------


async def cold_stampede(
    server: ServerProcess,
    contender: c.Contender,
    *,
    requests: int = 1000,
    latency: float = 0.1,
    limit: float = 60.0,
) -> Record:
    """``requests`` concurrent first requests on a cold client (no token yet)."""
    params = {"requests": requests, "token_latency_s": latency, "expires_in_s": 3600}
    client = await _open(server, contender, expires_in=3600, latency=latency)
    tally = Tally()
    try:
        before = await server.stats()
        start = time.perf_counter()
        tasks = [asyncio.create_task(tally.call(client)) for _ in range(requests)]
        await _settle(tasks, limit)
        wall = time.perf_counter() - start
        after = await server.stats()
    finally:
        await client.aclose()
    return {
        **_base("cold_stampede", contender, params),
        **_diff(before, after),
        **tally.summary(),
        "wall_s": round(wall, 3),
    }


# -- steady overhead -------------------------------------------------------------------------


async def steady_overhead(  # noqa: C901 (the measurement loop and its bookkeeping)
    server: ServerProcess,
    line_up: list[c.Contender],
    *,
    rounds: int = 15,
    requests: int = 200,
) -> list[Record]:
    """Sequential GETs on a long-lived token, each block sandwiched between floor blocks.

    Within each HTTP library's group, every round times ``requests`` sequential GETs per
    client in a rotating order, with a block of the static-header floor before and after each
    one: F A F B F C F. A block's ratio is its rate over the mean rate of the two floor blocks
    around it, and a contender's ratio is the median over rounds, so the drifts and bursts of
    a shared machine hit both sides of each ratio alike.
    """
    params = {"rounds": rounds, "requests_per_block": requests, "expires_in_s": 3600}
    base_url = await server.new_fake(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, expires_in=3600
    )
    target = c.Target(base_url, CLIENT_ID, CLIENT_SECRET)
    groups: dict[str, list[c.Contender]] = collections.defaultdict(list)
    for contender in line_up:
        if not contender.floor:
            groups[contender.http].append(contender)
    floors = {http: c.floor_for(members[0]) for http, members in groups.items()}
    clients: dict[str, c.Client] = {}
    rates: dict[str, list[float]] = collections.defaultdict(list)
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    failures: collections.Counter[str] = collections.Counter()

    async def block(contender: c.Contender) -> float:
        client = clients[contender.label]
        start = time.perf_counter()
        for _ in range(requests):
            if await client.get(c.RESOURCE_PATH) != 200:
                failures[contender.label] += 1
        rate = requests / (time.perf_counter() - start)
        rates[contender.label].append(rate)
        return rate

    try:
        for http, members in groups.items():
            for contender in [floors[http], *members]:
                client = await contender.make(target)
                clients[contender.label] = client
                await client.get(c.RESOURCE_PATH)  # warm: token and connection
        before = await server.stats()
        for index in range(rounds):
            for http, members in groups.items():
                shift = index % len(members)
                floor = floors[http]
                previous = await block(floor)
                for contender in members[shift:] + members[:shift]:
                    rate = await block(contender)
                    following = await block(floor)
                    ratios[contender.label].append(rate / ((previous + following) / 2))
                    previous = following
        after = await server.stats()
    finally:
        for client in clients.values():
            await client.aclose()
    diff = _diff(before, after)
    records = []
    for http, members in groups.items():
        for contender in [floors[http], *members]:
            label = contender.label
            spread = ratios[label] or [1.0]
            records.append(
                {
                    **_base("steady_overhead", contender, params),
                    "floor": floors[http].label,
                    "rps": round(statistics.median(rates[label]), 1),
                    "ratio": round(statistics.median(spread), 3),
                    "ratio_q1": round(_quantile(sorted(spread), 0.25), 3),
                    "ratio_q3": round(_quantile(sorted(spread), 0.75), 3),
                    "failed": failures[label],
                    # Shared by the whole run: all clients talk to one fake.
                    "token_requests_all": diff["token_requests"],
                }
            )
    return records


# -- expiry under load -----------------------------------------------------------------------


async def expiry_under_load(
    server: ServerProcess,
    contender: c.Contender,
    *,
    expires_in: float = 4.0,
    latency: float = 0.3,
    rate: float = RATE,
    duration: float = 12.0,
    slow: float = 0.25,
) -> Record:
    """Short tokens, a slow token endpoint, a steady arrival of GETs across several expiries.

    One request fetches the first token before the clock starts, so the cold start (which
    every client pays once) is not counted; everything after it is. A static-header floor
    gets an hour-long token (see :func:`_open`).
    """
    params = {
        "expires_in_s": expires_in,
        "token_latency_s": latency,
        "rate_per_s": rate,
        "duration_s": duration,
        "slow_s": slow,
    }
    client = await _open(server, contender, expires_in=expires_in, latency=latency)
    tally = Tally()
    try:
        await client.get(c.RESOURCE_PATH)
        stats_before = client.stats()
        before = await server.stats()
        await run_at_rate(tally, client, rate, duration)
        after = await server.stats()
        stats_after = client.stats()
    finally:
        await client.aclose()
    record = {
        **_base("expiry_under_load", contender, params),
        **_diff(before, after),
        **tally.summary(slow),
    }
    if stats_before is not None and stats_after is not None:
        record["provider"] = {k: stats_after[k] - stats_before[k] for k in stats_after}
    return record


# -- outage in the refresh window ------------------------------------------------------------


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:  # noqa: ARG002
        self.count += 1


async def outage_in_refresh_window(
    server: ServerProcess,
    contender: c.Contender,
    *,
    expires_in: float = 6.0,
    outage: tuple[float, float] = (3.0, 5.5),
    rate: float = RATE,
    duration: float = 8.0,
    slow: float = 0.25,
) -> Record:
    """The token endpoint answers 503 from ``outage[0]`` to ``outage[1]`` s after the first
    token was fetched, while the token is still valid until ``expires_in``.

    A static-header floor gets an hour-long token (see :func:`_open`).
    """
    params = {
        "expires_in_s": expires_in,
        "outage_s": list(outage),
        "rate_per_s": rate,
        "duration_s": duration,
        "slow_s": slow,
    }
    client = await _open(server, contender, expires_in=expires_in)
    tally = Tally()
    counter = _CountWarnings()
    root = logging.getLogger()
    root.addHandler(counter)
    try:
        await client.get(c.RESOURCE_PATH)
        stats_before = client.stats()
        before = await server.stats()
        await server.outage(*outage)
        await run_at_rate(tally, client, rate, duration)
        after = await server.stats()
        stats_after = client.stats()
    finally:
        root.removeHandler(counter)
        await client.aclose()
    record = {
        **_base("outage_in_refresh_window", contender, params),
        **_diff(before, after),
        **tally.summary(slow),
        "log_warnings": counter.count,
        # An error handed to the caller that holds the secret (e.g. the token request with
        # its form body) is one error report away from a leak.
        "secret_in_errors": tally.first_error is not None
        and _reachable(tally.first_error, CLIENT_SECRET),
    }
    if stats_before is not None and stats_after is not None:
        record["provider"] = {k: stats_after[k] - stats_before[k] for k in stats_after}
    return record


# -- bad credentials -------------------------------------------------------------------------


def _reachable(root: object, needle: str, *, limit: int = 5000) -> bool:  # noqa: C901 (one branch per kind of object)
    """Whether ``needle`` is in a string or bytes reachable from ``root``'s attributes.

    Follows ``__cause__``, ``__context__``, ``args`` and instance attributes (``__dict__``
    and ``__slots__``) breadth first, up to ``limit`` objects: what an error reporter that
    serialises exceptions could pick up, such as ``httpx.HTTPStatusError.request`` and the
    form body it holds.
    """
    encoded = needle.encode()
    seen: set[int] = set()
    queue: collections.deque[object] = collections.deque([root])
    while queue and len(seen) < limit:
        obj = queue.popleft()
        if id(obj) in seen or obj is None or isinstance(obj, (int, float, bool, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if needle in obj:
                return True
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if encoded in bytes(obj):
                return True
            continue
        if isinstance(obj, dict):
            queue.extend(obj.keys())
            queue.extend(obj.values())
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            queue.extend(obj)
            continue
        if callable(obj) and not isinstance(obj, BaseException):
            continue
        if isinstance(obj, BaseException):
            queue.extend((obj.__cause__, obj.__context__, obj.args))
        with contextlib.suppress(TypeError):
            queue.extend(vars(obj).values())
        for name in getattr(type(obj), "__slots__", ()):
            with contextlib.suppress(AttributeError, TypeError):
                queue.append(getattr(obj, name))
    return False


async def bad_credentials(server: ServerProcess, contender: c.Contender) -> Record:
    """One request with a wrong secret: what the caller gets, and whether the secret leaks."""
    base_url = await server.new_fake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    target = c.Target(base_url, CLIENT_ID, WRONG_SECRET)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    outcome: str
    leak_exception = leak_attributes = False
    start = time.perf_counter()
    try:
        client = await contender.make(target)
        try:
            async with asyncio.timeout(60):
                status = await client.get(c.RESOURCE_PATH)
            outcome = f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 (what the caller sees is the point)
            text = "".join(traceback.format_exception(exc)) + repr(exc)
            leak_exception = WRONG_SECRET in text
            leak_attributes = _reachable(exc, WRONG_SECRET)
            message = str(exc).replace(WRONG_SECRET, "<secret>").splitlines()
            outcome = f"{type(exc).__name__}: {message[0] if message else ''}"
            outcome = outcome if len(outcome) <= 160 else outcome[:159] + "..."
        finally:
            await client.aclose()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    elapsed = time.perf_counter() - start
    after = await server.stats()
    return {
        **_base("bad_credentials", contender, {}),
        "outcome": outcome,
        "secret_in_exception": leak_exception,
        "secret_in_exception_attributes": leak_attributes,
        "secret_in_logs": WRONG_SECRET in log.getvalue(),
        "token_requests": after["token_requests"],
        "elapsed_s": round(elapsed, 3),
    }


# -- many processes --------------------------------------------------------------------------


WORKER = Path(__file__).resolve().parent / "worker.py"


async def many_processes(
    server: ServerProcess,
    contender: c.Contender,
    *,
    processes: int = 8,
    concurrency: int = 5,
    limit: float = 120.0,
) -> Record:
    """``processes`` worker processes start cold at once, each with its own memory cache.

    Each worker (benchmarks/worker.py) imports everything, says it is ready, and waits; once
    all are ready they are released together and each sends ``concurrency`` concurrent GETs.
    """
    params = {"processes": processes, "concurrency": concurrency, "cache": "memory"}
    base_url = await server.new_fake(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    args = (str(WORKER), contender.label, base_url, str(concurrency))
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=PIPE, stdout=PIPE, stderr=DEVNULL
        )
        for _ in range(processes)
    ]
    outcomes: list[Record] = []
    try:
        async with asyncio.timeout(limit):
            for child in children:
                assert child.stdout is not None  # noqa: S101 (stdout=PIPE)
                await child.stdout.readline()
            start = time.perf_counter()
            for child in children:
                assert child.stdin is not None  # noqa: S101 (stdin=PIPE)
                child.stdin.write(b"go\n")
                await child.stdin.drain()
            for child in children:
                out, _ = await child.communicate()
                with contextlib.suppress(ValueError):
                    outcomes.append(json.loads(out.decode().strip() or "null") or {})
            wall = time.perf_counter() - start
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    stats = await server.stats()
    failed = sum(int(o.get("failed", concurrency)) for o in outcomes)
    return {
        **_base("many_processes", contender, params),
        "token_requests": stats["token_requests"],
        "server_401": stats["resource_statuses"].get("401", 0),
        "failed": failed + (processes - len(outcomes)) * concurrency,
        "wall_s": round(wall, 3),
    }
