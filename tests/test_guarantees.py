"""The guarantee matrix: each guarantee, across caches, loop models, processes and faults.

Issue 20 part 11. Every cell runs real parts: FakePlainID (on its own thread, so callers
may make and close loops as they like), a real redis-server or a real 3-master Redis
Cluster, real threads, real forked and spawned processes, real SIGSTOP. Written against the
public API only. Cells assert counts, never timings (a bound that turns a hang into a
failure is not a timing). A failing cell names its combination in its id:
``GUARANTEE-CACHE-LOOPS-PROCESSES-FAULT``.

Guarantees:

* ``one-request``: one token request per refresh per process, or per fleet with a shared
  cache: token requests <= 1 + ceil(run / (lifetime / 2)) (a refresh opens at half the
  lifetime at the earliest), and no call fails. Under a 401 storm (every call's token
  reported as rejected): at most 3 token requests per 50 calls.
* ``no-wait``: no call fails or waits while a usable token exists: with a slow endpoint,
  after the first (cold) call no call waits for a fetch (``stats.waits``) or fails.
* ``outage``: an outage inside the refresh window fails no call (503, or 429 with
  ``Retry-After``; or, in a fleet, the refreshing process frozen with SIGSTOP).
* ``budget``: nobody waits past its own budget: against a token endpoint that never
  answers, every call ends with ``TokenRequestError`` (none hangs); a child forked while a
  fetch is in flight gets a token of its own.
* ``close``: nothing left running after close: a provider closed while its fetch runs
  leaves no fetch running (``plainid_async.testing.running_fetches()``).

Dimensions: caches ``memory`` (``MemoryTokenCache``), ``redis``
(``RedisTokenCache.from_url``), ``cluster`` (``from_url(cluster=True)``); loop models
``long`` (one loop for the whole run), ``per-call`` (``asyncio.run`` per call), ``threads``
(8 threads, each ``asyncio.run`` per call), ``uvloop`` (one uvloop loop); process models
``one``, ``fork`` (a child forked mid-fetch), ``three`` (3 processes on one Redis); faults
``none``, ``outage`` (503), ``401-storm``, ``429`` (with ``Retry-After``), ``slow`` (1 s
endpoint; for ``budget``: an endpoint that never answers), ``sigstop``.

The covering set (``CELLS``), not the full cross product (4 x 3 x 4 x 3 x 6 = 864 cells,
too long for CI): every guarantee runs with every cache; every loop model with every
cache; every fault with a shared cache; the fleet (``three``) with Redis and Redis Cluster;
fork with memory and Redis. The figures each cell measured are written to
``$PLAINID_GUARANTEES_OUT`` (one JSON object a line) when set, from which
``docs/reliability.md``'s table is made (see there for the command).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _providers import make_provider
from _redis_server import RedisServer, ThreadedFake, redis_binary
from test_redis_cluster import cluster  # noqa: F401 (the fixture: a 3-master cluster)

from plainid_async import (
    MemoryTokenCache,
    ProviderClosedError,
    TokenCache,
    TokenProvider,
    TokenRequestError,
)
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import running_fetches

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

OUT_ENV = "PLAINID_GUARANTEES_OUT"
#: Token lifetime of every cell, seconds: a refresh window opens at about half of it.
LIFETIME = 4.0
#: How long a cell drives calls, seconds: one lifetime and a bit, so at least one refresh.
RUN = 4.5
#: Pause between a caller's calls, seconds.
INTERVAL = 0.02
#: Threads of the ``threads`` loop model.
THREADS = 8
#: A bound that turns a hang into a failure (never a timing: cells finish far below it).
HANG = 60.0


@attrs.frozen
class Cell:
    """One combination of the matrix."""

    guarantee: str
    cache: str
    loops: str
    processes: str
    fault: str
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The combination, as the test id shows it."""
        return f"{self.guarantee}-{self.cache}-{self.loops}-{self.processes}-{self.fault}"


CELLS = [
    # one token request per refresh, per process or fleet
    Cell("one-request", "memory", "long", "one", "none"),
    Cell("one-request", "redis", "per-call", "one", "none"),
    Cell("one-request", "cluster", "threads", "one", "none"),
    Cell("one-request", "redis", "uvloop", "one", "none"),
    Cell("one-request", "redis", "per-call", "three", "none"),
    Cell("one-request", "cluster", "long", "three", "none"),
    Cell("one-request", "memory", "threads", "one", "401-storm"),
    Cell("one-request", "redis", "long", "one", "401-storm"),
    # no call fails or waits while a usable token exists
    Cell("no-wait", "memory", "per-call", "one", "slow"),
    Cell("no-wait", "redis", "threads", "one", "slow"),
    Cell("no-wait", "cluster", "uvloop", "one", "slow"),
    # an outage inside the refresh window fails no call
    Cell("outage", "memory", "long", "one", "outage"),
    Cell("outage", "redis", "per-call", "one", "outage"),
    Cell("outage", "cluster", "long", "one", "outage"),
    Cell("outage", "redis", "threads", "one", "429"),
    Cell("outage", "redis", "long", "three", "sigstop"),
    # nobody waits past its own budget
    Cell("budget", "memory", "per-call", "one", "slow"),
    Cell("budget", "redis", "threads", "one", "slow"),
    Cell("budget", "cluster", "long", "one", "slow"),
    Cell("budget", "memory", "long", "fork", "none"),
    Cell("budget", "redis", "long", "fork", "none"),
    # nothing left running after close
    Cell("close", "memory", "long", "one", "slow"),
    Cell("close", "redis", "uvloop", "one", "slow"),
    Cell("close", "cluster", "per-call", "one", "slow"),
]


def record(cell: Cell, **figures: Any) -> None:
    """Append the cell's figures to ``$PLAINID_GUARANTEES_OUT`` (and print them)."""
    entry = {"cell": cell.id, **attrs.asdict(cell), **figures}
    line = json.dumps(entry)
    print(f"GUARANTEE {line}")  # noqa: T201 (figures are meant to be read with -s)
    out = os.environ.get(OUT_ENV)
    if out:
        with Path(out).open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def refresh_bound(run: float, lifetime: float = LIFETIME) -> int:
    """Most token requests one refresh per lifetime's second half allows in ``run`` s."""
    return 1 + math.ceil(run / (lifetime / 2))


# -- the driver: one process's callers, in one loop model --------------------------------


@attrs.define
class Tally:
    """What one process's callers saw."""

    calls: int = 0
    failed: int = 0
    waits: int = 0
    errors: list[str] = attrs.Factory(list)


def make_cache(kind: str, url: str, timeout: float = 2.0) -> TokenCache:
    """The cache of a cell: a new one per process, as an application makes at import.

    A generous Redis ``timeout`` by default: on a loaded machine a slow answer must not
    count as Redis being down (each process would then fetch for itself).
    """
    if kind == "memory":
        return MemoryTokenCache()
    return RedisTokenCache.from_url(
        url, cluster=kind == "cluster", timeout=timeout, lock_poll_interval=0.02
    )


def close_cache(cache: TokenCache) -> None:
    if isinstance(cache, RedisTokenCache):
        asyncio.run(cache.aclose())


def run_loop(loops: str, main: Coroutine[Any, Any, None]) -> None:
    if loops == "uvloop":
        import uvloop  # noqa: PLC0415 (only its cells need it)

        uvloop.run(main)
    else:
        asyncio.run(main)


def drive(  # noqa: C901 (one branch per loop model)
    provider: TokenProvider,
    loops: str,
    run: float,
    *,
    storm: bool = False,
    calls: int | None = None,
) -> Tally:
    """Call ``get_token()`` for ``run`` seconds (or ``calls`` times per caller)."""
    tally = Tally()
    lock = threading.Lock()
    deadline = time.monotonic() + run

    def more(done: int) -> bool:
        return done < calls if calls is not None else time.monotonic() < deadline

    def count(error: BaseException | None) -> None:
        with lock:
            tally.calls += 1
            if error is not None:
                tally.failed += 1
                tally.errors.append(type(error).__name__)

    async def one() -> None:
        try:
            token = await provider.get_token()
        except TokenRequestError as error:
            count(error)
            return
        count(None)
        if storm:  # the API answered 401 to this token
            provider.report_unauthorized(token)

    if loops in ("long", "uvloop"):

        async def main() -> None:
            done = 0
            while more(done):
                await one()
                done += 1
                await asyncio.sleep(INTERVAL)

        run_loop(loops, main())
        return tally

    def per_call() -> None:
        done = 0
        while more(done):
            asyncio.run(one())
            done += 1
            time.sleep(INTERVAL)

    if loops == "per-call":
        per_call()
        return tally
    assert loops == "threads"
    pool = [threading.Thread(target=per_call) for _ in range(THREADS)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(HANG)
        assert not thread.is_alive(), "a caller hung"
    return tally


def warm_and_drive(provider: TokenProvider, loops: str, run: float, **options: Any) -> Tally:
    """One cold call, then ``drive``; ``waits`` counts the waits after the cold call."""
    asyncio.run(provider.get_token())
    before = provider.stats.waits
    tally = drive(provider, loops, run, **options)
    tally.waits = provider.stats.waits - before
    asyncio.run(provider.close())
    return tally


def worker_main(arguments: list[str]) -> None:
    """One process of a fleet: wait for "go", drive, print the tally as JSON."""
    base_url, cache_kind, url, loops, run, margin, timeout = arguments
    cache = make_cache(cache_kind, url, float(timeout))
    provider = TokenProvider(
        "test-client",
        "test-secret",
        base_url=base_url,
        cache=cache,
        refresh_margin=float(margin) if margin != "-" else None,
    )
    print("ready", flush=True)  # noqa: T201 (the fleet's protocol with the test)
    sys.stdin.readline()
    tally = warm_and_drive(provider, loops, float(run))
    close_cache(cache)
    print(json.dumps(attrs.asdict(tally)), flush=True)  # noqa: T201 (the protocol)


# -- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster_url(cluster: list[int]) -> str:  # noqa: F811 (the imported fixture)
    return f"redis://127.0.0.1:{cluster[0]}/0"


@pytest.fixture
def url(cell: Cell, request: pytest.FixtureRequest) -> str:
    """The cell's Redis (flushed), or nothing for the memory cache."""
    if cell.cache == "memory":
        return ""
    name = "cluster_url" if cell.cache == "cluster" else "redis_url"
    value: str = request.getfixturevalue(name)
    flush(value, is_cluster=cell.cache == "cluster")
    return value


def flush(url: str, *, is_cluster: bool) -> None:
    """Empty the cell's Redis (every master of a cluster), so cells share nothing."""
    import redis.asyncio  # noqa: PLC0415
    from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415

    async def go() -> None:
        client = RedisCluster.from_url(url) if is_cluster else redis.asyncio.Redis.from_url(url)
        try:
            if is_cluster:
                await client.flushall(target_nodes=RedisCluster.PRIMARIES)
            else:
                await client.flushall()
        finally:
            await client.aclose()

    asyncio.run(go())


def _param(cell: Cell) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=cell.xfail)] if cell.xfail else []
    return pytest.param(cell, id=cell.id, marks=marks)


@pytest.fixture(params=[_param(c) for c in CELLS])
def cell(request: pytest.FixtureRequest) -> Cell:
    value: Cell = request.param
    return value


# -- the cells -----------------------------------------------------------------------------


def test_guarantee(cell: Cell, url: str) -> None:
    """Run the cell's guarantee in its combination; record and check its figures."""
    if cell.processes == "three":
        run_fleet(cell, url)
    elif cell.processes == "fork":
        run_fork(cell, url)
    elif cell.guarantee == "budget":
        run_budget(cell, url)
    elif cell.guarantee == "close":
        run_close(cell, url)
    else:
        run_one(cell, url)


def run_one(cell: Cell, url: str) -> None:
    """``one-request``, ``no-wait`` and ``outage`` in one process."""
    latency = 1.0 if cell.fault == "slow" else 0.05
    lifetime = 3600.0 if cell.fault == "401-storm" else LIFETIME
    cache = make_cache(cell.cache, url)
    try:
        with ThreadedFake(expires_in=lifetime, latency=latency) as fake:
            provider = make_provider(fake, cache=cache)
            if cell.fault in ("outage", "429"):
                # From before the refresh window opens (half the lifetime, less jitter) until
                # well before the token stops being usable (a tenth of it before expiry).
                retry_after = "1" if cell.fault == "429" else None
                status = 429 if cell.fault == "429" else 503
                fake.outage_between(1.6, 2.9, status, retry_after=retry_after)
            storm = cell.fault == "401-storm"
            tally = warm_and_drive(
                provider, cell.loops, RUN, storm=storm, calls=49 if storm else None
            )
            requests = len(fake.token_requests)
    finally:
        close_cache(cache)
    record(cell, token_requests=requests, **attrs.asdict(tally))
    assert tally.failed == 0, tally.errors
    if cell.guarantee == "one-request":
        if storm:
            assert tally.calls >= 49  # per caller: 49 calls, each answered with a 401
            assert requests <= 3 * math.ceil((tally.calls + 1) / 50)
        else:
            assert requests <= refresh_bound(RUN)
    if cell.guarantee == "no-wait":
        assert tally.waits == 0


def run_budget(cell: Cell, url: str) -> None:
    """A token endpoint that never answers: every call ends, with ``TokenRequestError``."""
    cache = make_cache(cell.cache, url)
    try:
        with ThreadedFake() as fake:
            fake.hang = True
            provider = make_provider(fake, cache=cache, timeout=0.5)
            tally = drive(provider, cell.loops, RUN, calls=2)
            asyncio.run(provider.close())
            requests = len(fake.token_requests)
    finally:
        close_cache(cache)
    record(cell, token_requests=requests, **attrs.asdict(tally))
    assert tally.calls == (THREADS * 2 if cell.loops == "threads" else 2)
    assert tally.failed == tally.calls
    assert set(tally.errors) <= {"TokenEndpointUnavailableError"}


def run_close(cell: Cell, url: str) -> None:
    """A provider closed while its (slow) fetch runs leaves no fetch running."""
    cache = make_cache(cell.cache, url)
    outcome: list[str] = []
    try:
        threaded = ThreadedFake(latency=5.0)
        with threaded as fake:
            provider = make_provider(fake, cache=cache)

            async def main() -> None:
                waiting = asyncio.create_task(provider.get_token())
                # Until the fetch is at the endpoint.
                await asyncio.to_thread(threaded.wait_for_requests, 1)
                await provider.close()
                try:
                    await waiting
                except ProviderClosedError:
                    outcome.append("closed")
                outcome.append(f"running={len(running_fetches())}")

            if cell.loops == "per-call":
                # The call's loop ends with the call: close from a loop of its own.
                asyncio.run(main())
            else:
                run_loop(cell.loops, main())
            left = len(running_fetches())
    finally:
        close_cache(cache)
    record(cell, outcome=outcome, running_after_close=left)
    assert outcome == ["closed", "running=0"]
    assert left == 0


def run_fork(cell: Cell, url: str) -> None:
    """A child forked while the parent's fetch is in flight gets a token of its own."""
    cache = make_cache(cell.cache, url)
    try:
        threaded = ThreadedFake(latency=1.0)
        with threaded as fake:
            provider = make_provider(fake, cache=cache, timeout=2.0)
            parent: list[object] = []
            fetching = threading.Thread(
                target=lambda: parent.append(asyncio.run(provider.get_token()))
            )
            fetching.start()
            threaded.wait_for_requests(1)  # the parent's fetch is at the endpoint

            async def child_call() -> str:
                async with asyncio.timeout(HANG):
                    token = await provider.get_token()
                return token.access_token  # checked by the parent, which runs the fake

            got = fork_and_report(lambda: asyncio.run(child_call()))
            fetching.join(HANG)
            child = "token" if got in fake.issued_tokens else f"no token ({got[:40]})"
            asyncio.run(provider.close())
            requests = len(fake.token_requests)
    finally:
        close_cache(cache)
    record(cell, child=child, parent_got_token=len(parent) == 1, token_requests=requests)
    assert len(parent) == 1
    assert child == "token"


def fork_and_report(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it returned (or its error's name)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            result = work()
        except BaseException as error:  # noqa: BLE001 (reported to the parent)
            result = type(error).__name__
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def run_fleet(cell: Cell, url: str) -> None:
    """Three processes on one Redis; with ``sigstop``, the first refresher is frozen."""
    sigstop = cell.fault == "sigstop"
    lifetime = 8.0 if sigstop else LIFETIME
    run = 7.5 if sigstop else RUN
    # With sigstop, a short Redis timeout: the lock's lease (three of them) must lapse
    # well inside the refresh window of the two processes that are not frozen.
    timeout = "0.5" if sigstop else "2.0"
    threaded = ThreadedFake(expires_in=lifetime, latency=0.5 if sigstop else 0.05)
    with threaded as fake:
        # With sigstop, process 0 refreshes first (at half the lifetime), the others late.
        margins = ["-", "2.0", "2.0"] if sigstop else ["-", "-", "-"]
        workers = [
            subprocess.Popen(  # noqa: S603 (this interpreter, this file)
                [
                    sys.executable,
                    __file__,
                    str(fake.base_url),
                    cell.cache,
                    url,
                    cell.loops,
                    str(run),
                    margin,
                    timeout,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for margin in margins
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                assert worker.stdout.readline().strip() == "ready"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            frozen = False
            if sigstop:
                threaded.wait_for_requests(2)  # the cold fetch, then process 0's refresh
                os.kill(workers[0].pid, signal.SIGSTOP)
                frozen = True
                workers[1].wait(HANG)
                workers[2].wait(HANG)
                os.kill(workers[0].pid, signal.SIGCONT)
            tallies = [json.loads(worker.communicate(timeout=HANG)[0]) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        requests = len(fake.token_requests)
    record(cell, token_requests=requests, frozen=frozen, processes_tallies=tallies)
    assert [worker.returncode for worker in workers] == [0, 0, 0]
    if sigstop:
        # The two that were not frozen failed no call and never waited: the frozen
        # one's lock lapsed with its lease, and one of them refreshed for both.
        assert [t["failed"] for t in tallies[1:]] == [0, 0]
        assert [t["waits"] for t in tallies[1:]] == [0, 0]
    else:
        assert sum(t["failed"] for t in tallies) == 0
        assert requests <= refresh_bound(run)  # for the whole fleet, not per process


# -- the table in docs/reliability.md -----------------------------------------------------


def figure(entry: dict[str, Any]) -> str:
    """The one figure a cell's table cell shows."""
    guarantee = entry["guarantee"]
    if guarantee == "close":
        return f"{entry['running_after_close']} running after close"
    if guarantee == "budget" and entry["processes"] == "fork":
        return f"child: {entry['child']}"
    if entry["processes"] == "three":
        failed = sum(t["failed"] for t in entry["processes_tallies"])
        calls = sum(t["calls"] for t in entry["processes_tallies"])
        return f"{entry['token_requests']} requests, {failed}/{calls} failed"
    if guarantee == "budget":
        return f"{entry['failed']}/{entry['calls']} ended with an error, none hung"
    if guarantee == "no-wait":
        return f"{entry['waits']} waits, {entry['failed']}/{entry['calls']} failed"
    return f"{entry['token_requests']} requests, {entry['failed']}/{entry['calls']} failed"


def table(lines: list[str]) -> str:
    """A markdown table of the recorded cells, in ``CELLS`` order."""
    entries = {e["cell"]: e for e in (json.loads(line) for line in lines if line.strip())}
    rows = [
        "| Guarantee | Cache | Loops | Processes | Fault | Measured |",
        "|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        entry = entries.get(cell.id)
        measured = "not run" if entry is None else figure(entry)
        if cell.xfail:
            measured += f" (expected to fail: {cell.xfail})"
        rows.append(
            f"| {cell.guarantee} | {cell.cache} | {cell.loops} | {cell.processes} "
            f"| {cell.fault} | {measured} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        print(table(Path(sys.argv[2]).read_text(encoding="utf-8").splitlines()))  # noqa: T201
    else:
        worker_main(sys.argv[1:])
