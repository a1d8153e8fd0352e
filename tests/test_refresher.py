"""The refresher (plainid_async/_refresher.py): a background refresh outlives the event loop
that started it, for the memory cache and a user's own; ``asyncio.run`` per request costs no
extra token requests.

Moved from test_core.py (issue 19): real loopback servers, real threads and event loops.
Figures are printed with ``record`` (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import aiohttp
import pytest
from _providers import make_provider
from _reliability import record
from _servers import fake_in_thread

import plainid_async as pa
from plainid_async.testing import running_fetches

#: Every test here fails if it leaves a token fetch running.
pytestmark = pytest.mark.usefixtures("no_leftover_fetches")


def test_a_refresh_started_by_a_loop_that_ends_still_lands() -> None:
    with fake_in_thread(latency=0.1) as fake:
        cache = pa.MemoryTokenCache()
        provider = make_provider(fake, cache=cache)
        first = asyncio.run(provider.get_token())
        stale = pa.Token(
            access_token=first.access_token,
            token_type="Bearer",
            expires_in=100.0,
            expires_at=time.time() + 40,
            expires_at_monotonic=time.monotonic() + 40,
        )
        asyncio.run(cache.store(provider.cache_key, stale))
        # The loop ends at once; the refresh it started (100 ms at the endpoint) goes on.
        assert asyncio.run(provider.get_token()) is stale
        [flight] = running_fetches()
        flight.future.result(10)
        assert cache.get(provider.cache_key) not in (None, stale)
        assert len(fake.token_requests) == 2


class DictCache:
    """A cache of a user's own: the TokenCache protocol over a dict, nothing optional."""

    def __init__(self) -> None:
        self.tokens: dict[pa.CacheKey, pa.Token] = {}
        self.loops: set[asyncio.AbstractEventLoop] = set()

    def get(self, key: pa.CacheKey) -> pa.Token | None:
        return self.tokens.get(key)

    async def load(self, key: pa.CacheKey) -> pa.Token | None:
        self.loops.add(asyncio.get_running_loop())
        return self.tokens.get(key)

    async def store(self, key: pa.CacheKey, token: pa.Token) -> None:
        self.tokens[key] = token

    def discard(self, key: pa.CacheKey, token: pa.Token) -> bool:
        if self.tokens.get(key) is token:
            del self.tokens[key]
            return True
        return False

    def fetch_lock(self, key: pa.CacheKey) -> contextlib.AbstractAsyncContextManager[object]:  # noqa: ARG002
        return contextlib.nullcontext()


def test_a_refresh_for_a_user_cache_started_by_a_loop_that_ends_still_lands() -> None:
    """One fetch path for every cache: a user's cache gets the refresher's loop too."""
    with fake_in_thread(latency=0.1) as fake:
        cache = DictCache()
        provider = pa.TokenProvider(
            fake.client_id, fake.client_secret, base_url=str(fake.base_url), cache=cache
        )
        first = asyncio.run(provider.get_token())
        stale = pa.Token(
            access_token=first.access_token,
            token_type="Bearer",
            expires_in=100.0,
            expires_at=time.time() + 40,
            expires_at_monotonic=time.monotonic() + 40,
        )
        asyncio.run(cache.store(provider.cache_key, stale))
        loops_before = set(cache.loops)
        # The loop ends at once; the refresh it started (100 ms at the endpoint) goes on.
        assert asyncio.run(provider.get_token()) is stale
        [flight] = running_fetches()
        flight.future.result(10)
        assert cache.get(provider.cache_key) not in (None, stale)
        assert len(fake.token_requests) == 2
        assert cache.loops == loops_before  # both fetches ran on one loop, the refresher's


def test_a_session_of_a_loop_that_does_not_run_fails_with_an_error_naming_session() -> None:
    with fake_in_thread() as fake:
        other = asyncio.new_event_loop()
        try:

            async def make_session() -> aiohttp.ClientSession:
                return aiohttp.ClientSession()

            session = other.run_until_complete(make_session())
            provider = pa.TokenProvider(
                fake.client_id,
                fake.client_secret,
                base_url=str(fake.base_url),
                cache=pa.MemoryTokenCache(),
                session=session,
            )
            with pytest.raises(pa.ConfigurationError, match="session="):
                asyncio.run(provider.get_token())
            assert fake.token_requests == []
            other.run_until_complete(session.close())
        finally:
            other.close()


def test_two_hundred_asyncio_runs_need_no_extra_token_requests() -> None:
    """What Django, Flask or Celery code does: ``asyncio.run`` per request."""
    lifetime, latency, runs = 3.0, 0.1, 200
    with fake_in_thread(expires_in=lifetime, latency=latency) as fake:
        provider = make_provider(fake)

        async def handle_request() -> pa.Token:
            token = await provider.get_token()
            await asyncio.sleep(0.02)  # the request's own work
            return token

        started = time.monotonic()
        tokens = [asyncio.run(handle_request()) for _ in range(runs)]
        elapsed = time.monotonic() - started
        for flight in running_fetches():
            flight.future.result(10)
        stats = provider.stats
        # A token is usable for 2.7 s of its 3 s: this many cover the run, at the least.
        needed = math.ceil(elapsed / (lifetime * 0.9))
        requests = len(fake.token_requests)
        distinct = len({t.access_token for t in tokens})
        assert all(r.status == 200 for r in fake.token_requests)
        assert requests <= needed + 3, (requests, needed)
        assert stats.waits == 1  # only the very first call, with nothing cached, waited
    record(
        "asyncio.run per request",
        load=f"{runs} asyncio.run calls of ~20 ms, {lifetime:g} s tokens, {latency:g} s latency",
        elapsed_s=round(elapsed, 2),
        token_requests=requests,
        tokens_needed=needed,
        tokens_served=distinct,
        waits=stats.waits,
        background_refreshes=stats.background_refreshes,
    )
