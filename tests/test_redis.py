"""RedisTokenCache against a real redis-server on 127.0.0.1 and FakePlainID."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
import redis.asyncio
from _providers import make_provider
from _proxy import child_environ
from _redis_server import RedisServer, ThreadedFake, connected_clients, redis_binary
from _servers import LoopbackServer
from aiohttp import web

from plainid_async import (
    BearerAuthMiddleware,
    CacheKey,
    ConfigurationError,
    ProviderClosedError,
    Token,
    TokenCache,
    TokenProvider,
)
from plainid_async._token import MAX_LIFETIME
from plainid_async.redis import RedisTokenCache, _open, _seal, _token_id
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


# One "process" of the fleet: waits for "go" on stdin, gets a token, prints its hash and how
# many token requests it sent.
WORKER = """
import asyncio, hashlib, sys
import redis.asyncio
from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache

async def main(base_url, redis_url, lock_timeout):
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = RedisTokenCache(client, timeout=2.0, lock_timeout=float(lock_timeout),
                            lock_poll_interval=0.02)
    provider = TokenProvider("test-client", "test-secret", base_url=base_url, cache=cache)
    print("ready", flush=True)
    sys.stdin.readline()
    async with provider:
        token = await provider.get_token()
    await client.aclose()
    digest = hashlib.sha256(token.access_token.encode()).hexdigest()
    print(digest, provider.stats.token_requests, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""

# Takes the fleet lock for the fake's client, says so, and hangs (to be killed with SIGKILL).
LOCK_HOLDER = """
import asyncio, sys
import redis.asyncio
from plainid_async import CacheKey
from plainid_async.redis import RedisTokenCache

async def main(token_url, redis_url):
    cache = RedisTokenCache(redis.asyncio.Redis.from_url(redis_url), lock_timeout=1.0)
    key = CacheKey.for_credentials(token_url, "test-client", "test-secret")
    async with cache.fetch_lock(key):
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


# Takes the fleet lock with a 30 s lock_timeout, says so, and waits (to be frozen).
FROZEN_HOLDER = """
import asyncio, sys
from plainid_async import CacheKey
from plainid_async.redis import RedisTokenCache

async def main(token_url, redis_url):
    cache = RedisTokenCache.from_url(redis_url, timeout=0.3, lock_timeout=30.0)
    key = CacheKey.for_credentials(token_url, "test-client", "test-secret")
    async with cache.fetch_lock(key):
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield connection
    finally:
        await connection.aclose()


def documented_acl() -> list[str]:
    """The ACL rules docs/many-processes.md gives for the cache's Redis user, as they are."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "many-processes.md").read_text()
    [line] = re.findall(r"^ACL SETUSER plainid-cache (.+)$", text, flags=re.MULTILINE)
    rules: list[str] = line.split()
    return rules


@pytest.fixture(params=["default-user", "documented-acl"])
async def cache_client(
    request: pytest.FixtureRequest, redis_server: RedisServer, client: redis.asyncio.Redis
) -> AsyncIterator[redis.asyncio.Redis]:
    """The client the caches use: the default user, or one with exactly the documented ACL.

    Tests inspect and tamper with Redis through ``client`` (the default user).
    """
    if request.param == "default-user":
        yield client
        return
    rules = documented_acl()
    password = next(rule[1:] for rule in rules if rule.startswith(">"))
    await client.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "plainid-cache", "reset", *rules
    )
    restricted = redis.asyncio.Redis(
        host="127.0.0.1", port=redis_server.port, username="plainid-cache", password=password
    )
    try:
        yield restricted
    finally:
        await restricted.aclose()


def fast(client: redis.asyncio.Redis, namespace: str = "plainid") -> RedisTokenCache:
    """A cache with small limits, so failures and dead locks cost fractions of a second."""
    return RedisTokenCache(
        client,
        namespace=namespace,
        timeout=0.3,
        lock_timeout=1.0,
        lock_poll_interval=0.02,
        retry_interval=0.05,
    )


def made(access_token: str, expires_in: float = 600) -> Token:
    return Token.issued(access_token, expires_in=expires_in)


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "plainid_async" and r.levelno == logging.WARNING and "Redis" in r.message
    ]


async def run_python(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


# -- the fleet -------------------------------------------------------------------------


async def test_eight_cold_processes_make_one_token_request(redis_server: RedisServer) -> None:
    async with FakePlainID(latency=0.3) as fake:
        workers = [
            await run_python(WORKER, str(fake.base_url), redis_server.url, "10") for _ in range(8)
        ]
        for worker in workers:
            assert worker.stdout is not None
            assert (await worker.stdout.readline()).strip() == b"ready"
        for worker in workers:  # all start together, against an empty Redis
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        outputs = [await worker.communicate() for worker in workers]
        assert [worker.returncode for worker in workers] == [0] * 8
        results = [stdout.decode().split() for stdout, _ in outputs]
        assert len(fake.token_requests) == 1
        assert {digest for digest, _ in results} == {sha(fake.issued_tokens[0])}
        assert sorted(int(requests) for _, requests in results) == [0] * 7 + [1]


async def test_a_second_provider_reads_the_token_from_redis(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    async with make_provider(fake, cache=fast(cache_client)) as first:
        token = await first.get_token()
    async with make_provider(fake, cache=fast(cache_client)) as second:
        again = await second.get_token()
    assert again.access_token == token.access_token
    assert abs(again.expires_at - token.expires_at) < 1
    assert len(fake.token_requests) == 1


async def test_invalidate_in_one_process_is_seen_by_another(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    cache_a, cache_b = fast(cache_client), fast(cache_client)
    async with make_provider(fake, cache=cache_a) as a, make_provider(fake, cache=cache_b) as b:
        first = await a.get_token()
        assert (await b.get_token()).access_token == first.access_token
        assert a.invalidate(first)
        await cache_a.flush()
        assert await client.get(cache_a.token_key(a.cache_key)) is None
        second = await a.get_token()
        assert second.access_token != first.access_token
        # b's request with the old token got a 401: it invalidates and picks up a's token.
        assert b.invalidate(await b.get_token())
        assert (await b.get_token()).access_token == second.access_token
    assert len(fake.token_requests) == 2


# -- what Redis holds --------------------------------------------------------------------


async def test_redis_holds_nothing_readable_and_every_key_expires(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    fake.add_client("other-client", "other-secret")
    cache = fast(cache_client)
    async with (
        make_provider(fake, cache=cache) as one,
        TokenProvider(
            "other-client", "other-secret", base_url=str(fake.base_url), cache=cache
        ) as two,
    ):
        tokens = [await one.get_token(), await two.get_token()]
        async with cache.fetch_lock(one.cache_key):  # a lock key exists during the scan
            names = [name async for name in client.scan_iter(match="*")]
            values = {name: await client.get(name) for name in names}
            ttls = {name: await client.pttl(name) for name in names}
    forbidden = [
        fake.client_id,
        "other-client",
        "test-secret",
        "other-secret",
        str(fake.base_url),
        *fake.issued_tokens,
    ]
    assert len(names) == 3
    for name in names:
        value = values[name]
        assert value is not None
        for text in forbidden:
            assert text.encode() not in name
            assert text.encode() not in value
        assert ttls[name] > 0
    for provider, token in zip((one, two), tokens, strict=True):
        name = cache.token_key(provider.cache_key).encode()
        assert name.startswith(b"plainid:token:")
        assert token.remaining() * 1000 - 5000 < ttls[name] <= token.remaining() * 1000 + 1000
    assert sum(name.startswith(b"plainid:lock:") for name in names) == 1


async def test_namespace_prefixes_every_key(client: redis.asyncio.Redis) -> None:
    cache = fast(client, namespace="team-a")  # the documented ACL covers "plainid:" only
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    await cache.store(key, made("tok"))
    async with cache.fetch_lock(key):
        names = sorted([name async for name in client.scan_iter(match="*")])
    assert names == [
        f"team-a:lock:{{{key.digest()}}}".encode(),
        f"team-a:token:{{{key.digest()}}}".encode(),
    ]


@pytest.mark.parametrize("lifetime", [0, -1, MAX_LIFETIME + 1, True, None, "600"], ids=repr)
def test_stored_token_whose_lifetime_breaks_the_rule_is_ignored(lifetime: object) -> None:
    """A value the secret opens is still ignored when its expires_in breaks _token's rule."""
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    good = made("tok")
    token_id = _token_id(key, "tok")
    assert _open(key, _seal(key, good, token_id), ttl_ms=0) is not None
    odd = attrs.evolve(good, expires_in=lifetime)  # type: ignore[arg-type]
    assert _open(key, _seal(key, odd, token_id), ttl_ms=0) is None


async def test_expired_token_is_not_written(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache = fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    await cache.store(key, Token.issued("old", expires_in=10, sent_at_monotonic=0.0))
    assert await client.dbsize() == 0


async def test_value_under_another_secret_or_key_is_ignored(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    writer = fast(cache_client)
    url = "http://127.0.0.1:1/t"
    key = CacheKey.for_credentials(url, "client", "secret-one")
    await writer.store(key, made("tok"))
    value = await client.get(writer.token_key(key))
    assert isinstance(value, bytes)

    reader = fast(cache_client)
    # Same Redis key, another secret (as after a rotation): unreadable, ignored.
    assert await reader.load(CacheKey(url, "client", key.fingerprint, "secret-two")) is None
    # The value copied under another key's name: the associated data does not match.
    other = CacheKey.for_credentials(url, "client-b", "secret-one")
    await client.set(reader.token_key(other), value, px=60_000)
    assert await reader.load(other) is None
    # Tampered with, or not ours at all.
    flipped = value[:-2] + (b"A" if value[-2:-1] != b"A" else b"B") + value[-1:]
    for junk in (flipped, b"hello", b"1.x.y", b"1..", b"\xff\xfe"):
        await client.set(reader.token_key(key), junk, px=60_000)
        assert await reader.load(key) is None
    assert reader.get(key) is None


async def test_works_with_decode_responses(redis_server: RedisServer) -> None:
    text_client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    try:
        writer, reader = fast(text_client), fast(text_client)
        key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
        token = made("tok")
        await writer.store(key, token)
        loaded = await reader.load(key)
        assert loaded is not None
        assert loaded.access_token == "tok"
        assert reader.discard(key, loaded)
        await reader.flush()
        assert await text_client.exists(reader.token_key(key)) == 0
        async with reader.fetch_lock(key):
            assert await text_client.exists(reader.lock_key(key)) == 1
        assert await text_client.exists(reader.lock_key(key)) == 0
    finally:
        await text_client.aclose()


# -- local layer -------------------------------------------------------------------------


async def test_get_returns_the_same_object_until_it_changes(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache, elsewhere = fast(cache_client), fast(cache_client)
    assert isinstance(cache, TokenCache)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    assert cache.get(key) is None
    token = made("one")
    await cache.store(key, token)
    assert cache.get(key) is token
    assert await cache.load(key) is token  # Redis holds the same token: same object
    assert cache.get(key) is token
    newer = made("two", expires_in=900)
    await elsewhere.store(key, newer)
    assert cache.get(key) is token  # get never does I/O
    loaded = await cache.load(key)
    assert loaded is not None
    assert loaded.access_token == "two"
    assert cache.get(key) is loaded
    assert await cache.load(key) is loaded


async def test_load_keeps_a_newer_local_token(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache, elsewhere = fast(cache_client), fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    newer = made("newer", expires_in=900)
    await cache.store(key, newer)
    await elsewhere.store(key, made("older", expires_in=300))
    assert await cache.load(key) is newer


async def test_discard_is_compare_and_delete(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    mine, theirs = fast(cache_client), fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    old, new = made("old"), made("new", expires_in=900)
    await mine.store(key, old)
    await theirs.store(key, new)  # another process replaced it in Redis meanwhile
    assert mine.discard(key, old)
    assert mine.get(key) is None
    assert not mine.discard(key, old)  # already gone here
    await mine.flush()
    assert (await fast(cache_client).load(key)) == new  # survived
    assert theirs.discard(key, new)
    await theirs.flush()
    assert await client.exists(theirs.token_key(key)) == 0


async def test_discard_of_a_replaced_token_keeps_the_current_one(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
) -> None:
    cache = fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    old, new = made("old"), made("new")
    await cache.store(key, old)
    await cache.store(key, new)
    assert not cache.discard(key, old)
    await cache.flush()
    assert cache.get(key) is new
    assert await client.exists(cache.token_key(key)) == 1


async def test_load_never_returns_a_discarded_token(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    cache, elsewhere = fast(cache_client), fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    token = made("rejected")
    await cache.store(key, token)
    assert cache.discard(key, token)
    await cache.flush()
    await elsewhere.store(key, token)  # a process that has not seen the 401 writes it back
    assert await cache.load(key) is None
    assert await client.exists(cache.token_key(key)) == 0  # and load deleted it again


def test_discard_without_a_running_loop_drops_locally() -> None:
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    token = made("tok")

    async def store() -> RedisTokenCache:
        nowhere = redis.asyncio.Redis(port=1)
        cache = fast(nowhere)
        await cache.store(key, token)
        await nowhere.aclose()
        return cache

    cache = asyncio.run(store())
    assert cache.discard(key, token)
    assert cache.get(key) is None


# -- the fleet lock ----------------------------------------------------------------------


async def test_lock_is_released_only_by_its_owner(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache = fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    name = cache.lock_key(key)
    async with cache.fetch_lock(key):
        ttl = await client.pttl(name)
        assert 0 < ttl <= 1000
        # Our lock expired and another process took it: leaving must not free theirs.
        await client.set(name, "someone-else", px=5000)
    assert await client.get(name) == b"someone-else"


async def test_waiters_take_the_lock_when_it_is_released(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache, other = fast(cache_client), fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    order: list[str] = []
    entered = asyncio.Event()

    async def holder() -> None:
        async with cache.fetch_lock(key):
            entered.set()
            await asyncio.sleep(0.1)
            order.append("holder done")

    async def waiter() -> None:
        await entered.wait()
        async with other.fetch_lock(key):
            order.append("waiter in")
            assert await client.exists(other.lock_key(key)) == 1

    await asyncio.gather(holder(), waiter())
    assert order == ["holder done", "waiter in"]


async def test_a_waiter_takes_the_token_stored_by_the_lock_owner(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    patient = RedisTokenCache(cache_client, timeout=0.3, lock_timeout=30.0, lock_poll_interval=0.02)
    async with make_provider(fake, cache=patient) as provider:
        key = provider.cache_key
        await client.set(patient.lock_key(key), "another-process", px=30_000)
        waiting = asyncio.create_task(provider.get_token())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        # The other process got its token and stored it; it still holds the lock.
        stored = made("fetched-elsewhere")
        await fast(cache_client).store(key, stored)
        async with asyncio.timeout(10):  # far below the 30 s lock timeout
            token = await waiting
    assert token == stored
    assert fake.token_requests == []
    assert await client.get(patient.lock_key(key)) == b"another-process"


async def test_closing_a_provider_that_waits_for_the_lock_leaves_it_alone(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    # A generous Redis timeout: on a loaded machine a slow answer must not count as Redis
    # being down (the provider would then fetch without the lock).
    cache = RedisTokenCache(cache_client, timeout=5.0, lock_timeout=30.0, lock_poll_interval=0.02)
    provider = make_provider(fake, cache=cache)
    name = cache.lock_key(provider.cache_key)
    await client.set(name, "another-process", px=30_000)
    waiting = asyncio.create_task(provider.get_token())
    await asyncio.sleep(0.1)
    await provider.close()
    with pytest.raises(ProviderClosedError):
        await waiting
    await cache.flush()
    assert await client.get(name) == b"another-process"
    assert fake.token_requests == []


class SwallowsOneCancel:
    """A real client whose EVAL once answers although its task was cancelled meanwhile.

    What redis-py (8.x, ``socket_timeout`` set) does on Python 3.11 now and then: it sends
    through ``asyncio.wait_for``, which drops a cancel that lands as the write completes,
    and the command returns its reply. Here the cancel lands there every time.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.answered = asyncio.Event()  # an EVAL has its reply and waits to return it
        self.swallowed = False

    async def eval(self, *args: object) -> object:
        reply = await self.client.eval(*args)  # type: ignore[arg-type]
        if not self.swallowed:
            self.answered.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                self.swallowed = True  # the reply is returned, the cancel is lost
        return reply

    async def set(self, *args: object, **kwargs: object) -> object:
        return await self.client.set(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_cancel_the_redis_client_swallows_still_stops_the_lock_wait(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    swallowing = SwallowsOneCancel(cache_client)
    cache = RedisTokenCache(
        swallowing,  # type: ignore[arg-type]
        timeout=5.0,
        lock_timeout=30.0,
        lock_poll_interval=0.02,
    )
    provider = make_provider(fake, cache=cache)
    name = cache.lock_key(provider.cache_key)
    await client.set(name, "another-process", px=30_000)
    waiting = asyncio.create_task(provider.get_token())
    async with asyncio.timeout(10):  # far below the 30 s lock timeout; before: 30 s
        await swallowing.answered.wait()  # the first lock poll is under way
        await provider.close()  # its cancel lands inside that EVAL, which answers anyway
        with pytest.raises(ProviderClosedError):
            await waiting
    assert swallowing.swallowed
    await cache.flush()
    assert await client.get(name) == b"another-process"
    assert fake.token_requests == []
    assert cache.key_states.flights() == []


async def test_a_stale_lock_blocks_no_longer_than_the_lock_timeout(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    cache = fast(cache_client)
    async with make_provider(fake, cache=cache) as provider:
        # A process took the lock and vanished without releasing it.
        await client.set(cache.lock_key(provider.cache_key), "dead-owner", px=60_000)
        token = await provider.get_token()
    assert token.access_token == fake.issued_tokens[0]
    assert len(fake.token_requests) == 1


async def test_a_lock_owner_killed_mid_fetch_blocks_nobody_for_long(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
) -> None:
    holder = await run_python(LOCK_HOLDER, str(fake.token_url), redis_server.url)
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"locked"
    os.kill(holder.pid, signal.SIGKILL)
    await holder.wait()
    cache = RedisTokenCache(cache_client, timeout=0.3, lock_timeout=30.0, lock_poll_interval=0.02)
    async with make_provider(fake, cache=cache) as provider:
        assert await client.exists(cache.lock_key(provider.cache_key)) == 1
        token = await provider.get_token()  # the dead owner's lock expires (1 s)
    assert token.access_token == fake.issued_tokens[0]
    assert len(fake.token_requests) == 1


# -- Redis down, slow, back --------------------------------------------------------------


async def test_redis_stopped_mid_run_fails_no_call_and_warns_once(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    cache = fast(cache_client)
    async with make_provider(fake, cache=cache) as provider:
        first = await provider.get_token()
        redis_server.stop()
        tokens = [await provider.get_token(force_refresh=True) for _ in range(3)]
        provider.invalidate(tokens[-1])
        await cache.flush()
        tokens.append(await provider.get_token())
        warned = redis_warnings(caplog)
        async with make_provider(fake, cache=fast(cache_client)) as cold:
            tokens.append(await cold.get_token())  # a new process while Redis is down
    assert len({t.access_token for t in [first, *tokens]}) == 6
    assert len(fake.token_requests) == 6
    assert len(warned) == 1
    assert len(redis_warnings(caplog)) == 2  # and one from the cold process's cache
    for record in caplog.records:
        for secret in ("test-secret", *fake.issued_tokens):
            assert secret not in record.getMessage()


async def test_redis_restarted_is_used_again(
    client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="plainid_async")
    cache = fast(client)  # an ACL user would not survive the restart (no persistence)
    async with make_provider(fake, cache=cache) as provider:
        await provider.get_token()
        redis_server.stop()
        await provider.get_token(force_refresh=True)
        redis_server.start()
        await asyncio.sleep(0.1)  # past retry_interval
        # The first command after the restart may still meet the old, dead connection.
        for _ in range(20):
            current = await provider.get_token(force_refresh=True)
            if await client.exists(cache.token_key(provider.cache_key)):
                break
            await asyncio.sleep(0.1)
        assert cache.get(provider.cache_key) is current
    async with make_provider(fake, cache=fast(client)) as another:
        assert (await another.get_token()).access_token == current.access_token
    assert len(redis_warnings(caplog)) == 1
    assert any("answers again" in r.message for r in caplog.records)


async def test_frozen_redis_costs_a_timeout_not_a_failure(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = fast(cache_client)
    async with make_provider(fake, cache=cache) as provider:
        await provider.get_token()
        redis_server.pause()
        try:
            token = await provider.get_token(force_refresh=True)
            assert token.access_token == fake.issued_tokens[-1]
            assert await cache.load(provider.cache_key) is token
        finally:
            redis_server.resume()
    assert len(redis_warnings(caplog)) == 1
    assert "no answer within 0.3 s" in redis_warnings(caplog)[0].message


async def test_unreachable_redis_from_the_start(fake: FakePlainID) -> None:
    dead = redis.asyncio.Redis(host="127.0.0.1", port=1)
    try:
        async with make_provider(fake, cache=fast(dead)) as provider:
            assert (await provider.get_token()).access_token == fake.issued_tokens[0]
    finally:
        await dead.aclose()


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"namespace": ""},
        {"namespace": "a b"},
        {"namespace": "a{b"},
        {"namespace": 3},
        {"timeout": 0},
        {"lock_timeout": -1},
        {"lock_poll_interval": float("nan")},
        {"retry_interval": True},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RedisTokenCache(redis.asyncio.Redis(port=1), **options)  # type: ignore[arg-type]


async def test_repr_shows_no_secret(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache = RedisTokenCache(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "client", "s3cr3t")
    await cache.store(key, made("tok-value"))
    text = repr(cache)
    assert text == "<RedisTokenCache namespace='plainid' tokens=1 redis=up>"


async def test_redis_ttl_bounds_a_loaded_token(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    writer, reader = fast(cache_client), fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    token = made("tok", expires_in=600)
    await writer.store(key, token)
    # As if the writer's wall clock ran 10 minutes ahead: Redis says 60 s are left.
    await client.pexpire(writer.token_key(key), 60_000)
    loaded = await reader.load(key)
    assert loaded == token
    assert loaded is not None
    assert loaded.remaining() <= 60


# -- permissions (ACL) -----------------------------------------------------------------------


async def restricted_client(
    client: redis.asyncio.Redis, redis_server: RedisServer, rules: list[str]
) -> redis.asyncio.Redis:
    await client.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "narrow", "reset", "on", ">pw", *rules
    )
    return redis.asyncio.Redis(
        host="127.0.0.1", port=redis_server.port, username="narrow", password="pw"
    )


@pytest.mark.parametrize(
    ("rules", "refused"),
    [
        (["~plainid:*", "+get", "+set", "+pttl", "+del"], "'eval' command"),
        (["~plainid:token:*", "+eval", "+get", "+set", "+pttl", "+del"], "plainid:lock:"),
    ],
    ids=["no-eval", "no-lock-key"],
)
async def test_a_refused_permission_is_one_error_naming_it_not_an_outage(  # noqa: PLR0917
    client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
    caplog: pytest.LogCaptureFixture,
    rules: list[str],
    refused: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    narrow = await restricted_client(client, redis_server, rules)
    try:
        cache = fast(narrow)
        async with make_provider(fake, cache=cache) as provider:
            for _ in range(3):
                await provider.get_token(force_refresh=True)  # every call still succeeds
                await asyncio.sleep(0.06)  # past retry_interval: Redis is asked again
    finally:
        await narrow.aclose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.message for r in errors]
    message = errors[0].getMessage()
    assert "EVAL" in message
    assert refused in message
    assert "many-processes.md" in message
    assert redis_warnings(caplog) == []  # not reported as Redis being down
    assert fake.client_secret not in caplog.text


async def test_the_401_guard_keeps_the_fleets_shared_token(
    client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    """An API that answers 401 to everything: the shared token is replaced once, then kept."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    async with LoopbackServer(app) as server:
        api = str(server.url)
        cache = fast(client)
        provider = make_provider(fake, cache=cache)
        middleware = BearerAuthMiddleware(provider, origins=[api])
        async with provider, aiohttp.ClientSession(middlewares=(middleware,)) as session:
            statuses = []
            for _ in range(50):
                async with session.get(f"{api}/x") as response:
                    statuses.append(response.status)
            await cache.flush()
            stored = await client.get(cache.token_key(provider.cache_key))
            assert stored is not None  # the 401s inside the guard deleted nothing
            assert cache.get(provider.cache_key) is not None
    assert statuses == [401] * 50
    assert len(fake.token_requests) == 2  # the first token, and one replacement


# -- from_url: any loop, any thread, any process (issue 20 part 1 and 2) -----------------


def from_url_cache(server: RedisServer, **options: Any) -> RedisTokenCache:
    return RedisTokenCache.from_url(
        server.url, timeout=2.0, lock_timeout=10.0, lock_poll_interval=0.02, **options
    )


def run_per_call(calls: int, make_provider: Callable[[], TokenProvider]) -> list[Token]:
    """``asyncio.run`` per call, each with a provider of its own, as a WSGI handler does."""

    async def one() -> Token:
        async with make_provider() as provider:
            return await provider.get_token()

    return [asyncio.run(one()) for _ in range(calls)]


# A process whose from_url cache lives as long as it does, never closed (as a module global
# in a web app): it gets a token, closes the provider or not, and exits.
PROCESS_LONG_CACHE = """
import asyncio, sys
from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache

CACHE = RedisTokenCache.from_url(sys.argv[2], timeout=2.0)

async def main(base_url, ending):
    provider = TokenProvider("test-client", "test-secret", base_url=base_url, cache=CACHE)
    await provider.get_token()
    await provider.get_token(force_refresh=True)
    if ending == "close":
        await provider.close()

asyncio.run(main(sys.argv[1], sys.argv[3]))
"""


@pytest.mark.parametrize("ending", ["close", "no close"])
async def test_a_from_url_cache_never_closed_leaves_nothing_to_finalize_at_exit(
    redis_server: RedisServer, ending: str
) -> None:
    """Its connections close at exit on the refresher's loop: no warning, in debug mode too."""
    async with FakePlainID() as fake:
        # -X dev: asyncio's debug mode and ResourceWarnings shown, as a developer runs it.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "dev",
            "-c",
            PROCESS_LONG_CACHE,
            str(fake.base_url),
            redis_server.url,
            ending,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_environ(),
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert len(fake.token_requests) == 2
    assert process.returncode == 0, stderr.decode()
    assert stderr.decode() == ""
    assert connected_clients(redis_server.port) == 0


# A from_url cache across a fork: the parent uses it, the child uses it and exits normally
# (its exit hooks run, the parent's objects it holds are finalized), then the parent again.
FORKED_LONG_CACHE = """
import asyncio, os, sys, warnings
from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache

CACHE = RedisTokenCache.from_url(sys.argv[2], timeout=2.0)

async def use():
    async with TokenProvider("test-client", "test-secret", base_url=sys.argv[1],
                             cache=CACHE) as provider:
        await provider.get_token(force_refresh=True)
        return provider.health().source

asyncio.run(use())
# Python 3.12+ warns that forking a threaded process may deadlock: this one forks at a quiet
# moment, as gunicorn --preload does.
warnings.filterwarnings("ignore", "This process", DeprecationWarning)
pid = os.fork()
if pid == 0:
    print("child", asyncio.run(use()), flush=True)
    sys.exit(0)
status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print("parent", status, asyncio.run(use()), flush=True)
"""


async def test_a_forked_childs_exit_leaves_the_parents_redis_connection_working(
    redis_server: RedisServer,
) -> None:
    """The child never unregisters the parent's sockets from the epoll instance they share.

    Before, the child's exit finalized the parent's connection there, its transport removed
    the socket from the inherited selector, and the parent's next command got no answer:
    "Redis token cache unavailable", and tokens fetched without Redis.
    """
    async with FakePlainID() as fake:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FORKED_LONG_CACHE,
            str(fake.base_url),
            redis_server.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_environ(),
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    # "redis": each process's Redis commands were answered (the parent's after the child's exit).
    assert stdout.decode().splitlines() == ["child redis", "parent 0 redis"]
    assert stderr.decode() == ""  # no "Redis token cache unavailable" WARNING either


def test_from_url_serves_a_loop_per_call_with_one_request_one_connection_no_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = from_url_cache(redis_server)
    with ThreadedFake() as fake:
        tokens = run_per_call(30, lambda: make_provider(fake, cache=cache))
        assert len(fake.token_requests) == 1
    assert {token.access_token for token in tokens} == {fake.issued_tokens[0]}
    assert redis_warnings(caplog) == []
    # One client for the process, however many loops asked through it.
    assert connected_clients(redis_server.port) == 1
    asyncio.run(cache.aclose())
    assert connected_clients(redis_server.port) == 0


def test_from_url_serves_eight_threads_each_running_loops(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = from_url_cache(redis_server)
    with ThreadedFake(latency=0.15) as fake:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            runs = [
                pool.submit(run_per_call, 5, lambda: make_provider(fake, cache=cache))
                for _ in range(8)
            ]
            tokens = [token for run in runs for token in run.result(60)]
        assert len(fake.token_requests) == 1
    assert len(tokens) == 40
    assert redis_warnings(caplog) == []
    asyncio.run(cache.aclose())


def test_a_passed_in_client_used_from_another_loop_names_from_url_not_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    cache = fast(client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(cache.store(key, made("first-loop")))  # the client's loop
        with pytest.raises(ConfigurationError, match=r"from_url"):
            asyncio.run(cache.load(key))
        assert home.run_until_complete(cache.load(key)) == cache.get(key) is not None
        home.run_until_complete(client.aclose())
    finally:
        home.close()
    assert redis_warnings(caplog) == []
    assert cache.source == "redis"


def test_redis_pys_own_loop_error_is_named_not_blamed_on_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    cache = fast(client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(client.ping())  # the user's own use: its loop is this one
        with pytest.raises(ConfigurationError, match=r"from_url"):
            asyncio.run(cache.load(key))  # the cache's first use, from another loop
        home.run_until_complete(client.aclose())
    finally:
        home.close()
    assert redis_warnings(caplog) == []


@pytest.mark.parametrize(
    "client",
    [None, "redis://127.0.0.1:6379", object()],
    ids=["none", "a-url", "an-object"],
)
def test_what_is_no_asyncio_client_is_refused_naming_client(client: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^client must be"):
        RedisTokenCache(client)  # type: ignore[arg-type]


def test_a_synchronous_client_is_refused_naming_client() -> None:
    import redis as sync_redis  # noqa: PLC0415 (only this test needs the sync client)

    sync_client = sync_redis.Redis(port=1)
    try:
        with pytest.raises(ConfigurationError, match=r"^client must be.*synchronous"):
            RedisTokenCache(sync_client)  # type: ignore[arg-type]
    finally:
        sync_client.close()


@pytest.mark.parametrize(
    ("url", "options", "names"),
    [
        ("http://127.0.0.1:6379", {}, "url"),
        ("", {}, "url"),
        (6379, {}, "url"),
        ("redis://127.0.0.1:6379", {"no_such_option": 1}, "no_such_option"),
        ("redis://127.0.0.1:6379", {"cluster": "yes"}, "cluster"),
        ("redis://127.0.0.1:6379", {"timeout": 0}, "timeout"),
    ],
)
def test_from_url_refuses_bad_arguments_naming_them(
    url: object, options: dict[str, object], names: str
) -> None:
    with pytest.raises(ConfigurationError, match=names):
        RedisTokenCache.from_url(url, **options)  # type: ignore[arg-type]


async def test_discard_of_what_is_no_token_is_refused_naming_token(
    cache_client: redis.asyncio.Redis,
) -> None:
    cache = fast(cache_client)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    kept = made("kept")
    await cache.store(key, kept)
    with pytest.raises(ConfigurationError, match=r"^token must be a Token"):
        cache.discard(key, None)  # type: ignore[arg-type]
    assert cache.get(key) is kept


def fork_and_report(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it returned (or its error's text)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (the refresher's):
        # exactly the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            result = work()
        except BaseException as error:  # noqa: BLE001 (reported to the parent)
            result = f"{type(error).__name__}: {error}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_a_forked_child_talks_to_redis_on_its_own_connection(redis_server: RedisServer) -> None:
    cache = from_url_cache(redis_server)
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    asyncio.run(cache.store(key, made("from-the-parent", expires_in=600)))
    assert connected_clients(redis_server.port) == 1

    def child() -> str:
        token = asyncio.run(cache.load(key))
        # Still alive here: count the connections while the child holds its own.
        return f"{token and token.access_token} {connected_clients(redis_server.port)}"

    assert fork_and_report(child) == "from-the-parent 2"
    # The parent's connection was never used by the child: its next reply is its own.
    loaded = asyncio.run(cache.load(key))
    assert loaded is not None
    assert loaded.access_token == "from-the-parent"
    asyncio.run(cache.aclose())


def test_a_passed_in_client_in_a_forked_child_names_from_url(redis_server: RedisServer) -> None:
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")

    async def parent() -> tuple[RedisTokenCache, redis.asyncio.Redis]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        cache = fast(client)
        await cache.store(key, made("from-the-parent"))
        return cache, client

    loop = asyncio.new_event_loop()
    try:
        cache, client = loop.run_until_complete(parent())
        # The child goes on in the very loop the client belongs to, as a fork inside a
        # running program does: only the process differs.
        result = fork_and_report(lambda: repr(loop.run_until_complete(cache.load(key))))
        assert result.startswith("ConfigurationError")
        assert "from_url" in result
        loop.run_until_complete(client.aclose())
    finally:
        loop.close()


# -- a fleet lock that cannot be orphaned (issue 20 part 6) ------------------------------


class LosesLockAnswers:
    """A real client whose lock command runs on Redis but whose answer comes too late."""

    def __init__(self, client: redis.asyncio.Redis, delay: float) -> None:
        self.client = client
        self.delay = delay

    async def eval(self, script: str, *args: object) -> object:
        reply = await self.client.eval(script, *args)  # type: ignore[arg-type]
        if "'NX'" in script:  # the lock script: it ran; the answer is late
            await asyncio.sleep(self.delay)
        return reply

    async def set(self, *args: object, **kwargs: object) -> object:
        return await self.client.set(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_lock_whose_answer_was_lost_is_released_not_orphaned(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    late = RedisTokenCache(
        LosesLockAnswers(cache_client, delay=1.0),  # type: ignore[arg-type]
        timeout=0.2,
        lock_timeout=30.0,
        retry_interval=30.0,  # Redis counts as down for the rest of the test: no matter
    )
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    async with late.fetch_lock(key):
        pass  # went on without the lock: its answer never came
    await late.flush()
    assert await client.exists(late.lock_key(key)) == 0
    # Another process takes the lock at once, instead of waiting 30 s for it.
    other = RedisTokenCache(cache_client, timeout=2.0, lock_timeout=30.0)
    async with asyncio.timeout(10):
        async with other.fetch_lock(key):
            assert await client.get(other.lock_key(key)) not in (None, b"")


async def test_a_lock_key_without_a_ttl_is_stale(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis, fake: FakePlainID
) -> None:
    cache = RedisTokenCache(cache_client, timeout=2.0, lock_timeout=30.0, lock_poll_interval=0.02)
    async with make_provider(fake, cache=cache) as provider:
        await client.set(cache.lock_key(provider.cache_key), "planted-forever")
        async with asyncio.timeout(10):  # far below the 30 s lock timeout
            token = await provider.get_token()
    assert token.access_token == fake.issued_tokens[0]
    assert len(fake.token_requests) == 1
    assert await client.exists(cache.lock_key(provider.cache_key)) == 0


async def test_a_hash_at_a_token_key_affects_that_key_only(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
    fake: FakePlainID,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add_client("other-client", "other-secret")
    cache = fast(cache_client)
    broken = make_provider(fake, cache=cache)
    healthy = TokenProvider(
        "other-client", "other-secret", base_url=str(fake.base_url), cache=cache
    )
    async with broken, healthy:
        await client.hset(cache.token_key(broken.cache_key), "field", "value")
        await broken.get_token()
        await healthy.get_token()
        # Another process finds both tokens in Redis: the HASH was replaced by a token.
        second = fast(cache_client)
        assert await second.load(broken.cache_key) == await cache.load(broken.cache_key)
        assert await second.load(healthy.cache_key) is not None
    assert cache.source == "redis"
    assert redis_warnings(caplog) == []
    assert len(fake.token_requests) == 2


async def test_a_frozen_lock_owner_blocks_the_fleet_for_one_lease_only(
    client: redis.asyncio.Redis,
    cache_client: redis.asyncio.Redis,
    redis_server: RedisServer,
    fake: FakePlainID,
) -> None:
    holder = await run_python(FROZEN_HOLDER, str(fake.token_url), redis_server.url)
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"locked"
    os.kill(holder.pid, signal.SIGSTOP)  # frozen mid-fetch, as a paused VM or Lambda is
    try:
        cache = RedisTokenCache(
            cache_client, timeout=0.3, lock_timeout=30.0, lock_poll_interval=0.02
        )
        async with make_provider(fake, cache=cache) as provider:
            async with asyncio.timeout(10):  # far below its 30 s lock_timeout
                token = await provider.get_token()
        assert token.access_token == fake.issued_tokens[0]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        await holder.wait()


async def test_the_lock_is_kept_while_its_owner_fetches_longer_than_a_lease(
    client: redis.asyncio.Redis, cache_client: redis.asyncio.Redis
) -> None:
    cache = RedisTokenCache(cache_client, timeout=0.1, lock_timeout=30.0)  # lease 0.3 s
    key = CacheKey.for_credentials("http://127.0.0.1:1/t", "c", "s")
    name = cache.lock_key(key)
    async with cache.fetch_lock(key):
        owner = await client.get(name)
        for _ in range(4):  # four leases
            await asyncio.sleep(0.3)
            assert await client.get(name) == owner
    assert await client.exists(name) == 0


def test_a_loop_per_job_costs_no_more_token_requests_with_redis_than_with_memory(
    redis_server: RedisServer,
) -> None:
    """benchmarks/bench_loops.py, shortened: 8 threads, asyncio.run per job, one refresh."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_loops  # noqa: PLC0415 (a script of benchmarks/, imported for its scenario)

    knobs: dict[str, Any] = {"lifetime": 4.0, "latency": 0.15, "interval": 0.02}
    memory = bench_loops.run("memory", redis_url=redis_server.url, duration=4.5, **knobs)
    shared = bench_loops.run("redis", redis_url=redis_server.url, duration=4.5, **knobs)
    assert memory.failed_jobs == shared.failed_jobs == 0
    assert shared.false_warnings == 0
    assert shared.jobs > 100  # the scenario really ran many loops
    assert shared.token_requests <= memory.token_requests + 2
