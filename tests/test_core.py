"""The rebuilt core (issue 11): state owned by the cache, waiter budgets, the refresher,
cool-downs, the 401 guard, closed means closed, many tenants.

Real loopback servers throughout; the cross-loop and ``asyncio.run`` cases use real threads
and event loops. Figures are printed with ``record`` (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from _clock import PolicyClock
from _providers import FAST
from _reliability import record
from _servers import fake_in_thread, requests_seen, settle
from aiohttp import web

import plainid_async as pa
from plainid_async.testing import FakePlainID, free_port, running_fetches

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def provider_on(fake: FakePlainID, cache: pa.TokenCache, **options: Any) -> pa.TokenProvider:
    """A TokenProvider with ``fake``'s credentials and URL, ``cache`` and ``options``."""
    return pa.TokenProvider(
        fake.client_id, fake.client_secret, base_url=str(fake.base_url), cache=cache, **options
    )


#: Every test here fails if it leaves a token fetch running.
pytestmark = pytest.mark.usefixtures("no_leftover_fetches")


# -- 4. a memory of failures -----------------------------------------------------------


async def test_calls_inside_a_cool_down_fail_at_once_with_the_same_error() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=pa.RetryPolicy(attempts=3))
        async with provider:
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError) as first:
                await provider.get_token()
            assert len(fake.token_requests) == 3
            timings = []
            for _ in range(20):
                started = time.perf_counter()
                with pytest.raises(pa.TokenEndpointUnavailableError) as again:
                    await provider.get_token()
                timings.append(time.perf_counter() - started)
                assert again.value is first.value
            assert len(fake.token_requests) == 3  # no token request inside the cool-down
    record(
        "cool-down: a call inside it",
        slowest_ms=round(max(timings) * 1000, 3),
        median_ms=round(sorted(timings)[len(timings) // 2] * 1000, 3),
    )


async def test_an_outage_costs_one_fetch_plus_one_request_per_cool_down_step() -> None:
    """50 sequential calls over 2 s, no usable token, the endpoint down throughout."""
    retry = pa.RetryPolicy(attempts=3, backoff_base=0.05, backoff_max=0.1, deadline=5.0)
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        clock = PolicyClock(cache.key_states)
        provider = provider_on(fake, cache, retry=retry)
        async with provider:
            fake.start_outage(503)
            failures = 0
            started = time.monotonic()
            for _ in range(50):
                with pytest.raises(pa.TokenEndpointUnavailableError):
                    await provider.get_token()
                failures += 1
                await asyncio.sleep(0.04)  # the load: one call every 40 ms
            elapsed = time.monotonic() - started
            state = cache.key_states.get(provider.cache_key)
            assert state is not None
            steps = state.failures - 1  # fetches after the first: one per cool-down step
            requests = len(fake.token_requests)
            assert requests == retry.attempts + steps
            assert requests < 15  # without the cool-down: 50 calls x 3 attempts = 150
            fake.end_outage()
            clock.skip(100)  # skip the rest of the cool-down: the next call fetches
            assert fake.is_valid((await provider.get_token()).access_token)
    record(
        "cool-down: outage with no usable token",
        load=f"50 sequential calls over {elapsed:.1f} s",
        token_requests=requests,
        cool_down_steps=steps,
        fetch_attempts=retry.attempts,
        failures=failures,
    )


async def test_force_refresh_and_rotate_secret_start_afresh_inside_a_cool_down() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=FAST)
        async with provider:
            fake.fail_next(*[503] * FAST.attempts)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token()
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token()  # cooling down: no request
            assert len(fake.token_requests) == FAST.attempts
            forced = await provider.get_token(force_refresh=True)
            assert fake.is_valid(forced.access_token)

            fake.rotate_secret(fake.client_id, "new-secret")
            fake.revoke_all()
            with pytest.raises(pa.InvalidCredentialsError):
                await provider.get_token(force_refresh=True)
            with pytest.raises(pa.InvalidCredentialsError):
                await provider.get_token()  # the 401 starts a cool-down too
            before = len(fake.token_requests)
            provider.rotate_secret("new-secret")
            rotated = await provider.get_token()
            assert fake.is_valid(rotated.access_token)
            assert len(fake.token_requests) == before + 1


async def test_a_background_failure_keeps_serving_and_warns_by_what_is_cached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        provider = provider_on(fake, cache, retry=FAST)
        async with provider:
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token()
            [cold] = [r for r in caplog.records if r.levelname == "WARNING"]
            assert "no usable token is cached" in cold.getMessage()
            assert "keeps being served" not in cold.getMessage()

        caplog.clear()
        other = pa.MemoryTokenCache()
        provider = provider_on(fake, other, retry=FAST)
        async with provider:
            stale = pa.Token(
                access_token="cached",
                token_type="Bearer",
                expires_in=100.0,
                expires_at=time.time() + 40,
                expires_at_monotonic=time.monotonic() + 40,
            )
            await other.store(provider.cache_key, stale)
            assert await provider.get_token() is stale
            await settle()
            [warm] = [r for r in caplog.records if r.levelname == "WARNING"]
            assert "still valid, keeps being served" in warm.getMessage()
            assert await provider.get_token() is stale  # no cool-down while it is usable


# -- 5. the 401 guard ------------------------------------------------------------------


@pytest.fixture
async def always_401() -> AsyncIterator[str]:
    """An API on 127.0.0.1 that answers 401 to every request."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="no")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def guarded_calls(provider: pa.TokenProvider, api: str, calls: int) -> list[int]:
    middleware = pa.BearerAuthMiddleware(provider, origins=[api])
    statuses = []
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        for _ in range(calls):
            async with session.get(f"{api}/api/1.0/anything") as response:
                statuses.append(response.status)
    return statuses


async def test_an_api_that_always_answers_401_costs_at_most_three_token_requests(
    always_401: str,
) -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache())
        async with provider:
            statuses = await guarded_calls(provider, always_401, 50)
    assert statuses == [401] * 50
    assert len(fake.token_requests) <= 3
    record(
        "401 guard: an API that always answers 401",
        load="50 sequential calls through BearerAuthMiddleware",
        token_requests=len(fake.token_requests),
    )


async def test_a_token_revoked_once_recovers_on_the_next_call() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache())
        async with provider, provider.session() as session:
            token = await provider.get_token()
            fake.revoke(token.access_token)
            async with session.get("api/1.0/x") as response:
                assert response.status == 200
            assert len(fake.token_requests) == 2
            # A second rejection inside the guard interval comes back as it is: no request.
            fake.revoke((await provider.get_token()).access_token)
            async with session.get("api/1.0/x") as response:
                assert response.status == 401
            assert len(fake.token_requests) == 2


def test_the_guard_interval_doubles_on_repeats_and_resets_after_a_quiet_spell() -> None:
    provider = pa.TokenProvider("id", "secret", region="us1", cache=pa.MemoryTokenCache())
    cache = provider.cache
    assert isinstance(cache, pa.MemoryTokenCache)
    clock = PolicyClock(cache.key_states)
    state = cache.key_states.state(provider.cache_key)
    lengths: list[int] = []
    for _ in range(6):
        token = pa.Token.issued(f"t{len(lengths)}", expires_in=3600)
        asyncio.run(cache.store(provider.cache_key, token))
        assert provider.report_unauthorized(token)
        guard = state.guard
        # Another 401 for the token being replaced: its retry waits for the replacement,
        # and the guard is left as it is.
        assert provider.report_unauthorized(token)
        assert state.guard == guard
        lengths.append(round(state.guard.until - clock()))
        clock.skip(state.guard.until - clock())  # the interval has just ended
    assert lengths == [5, 10, 20, 40, 60, 60]
    clock.skip(state.guard.until - clock() + 1000)  # long quiet: the next one starts over
    token = pa.Token.issued("later", expires_in=3600)
    asyncio.run(cache.store(provider.cache_key, token))
    assert provider.report_unauthorized(token)
    assert round(state.guard.until - clock()) == 5


# -- 8. the hot path never serves a dropped token --------------------------------------


async def test_an_invalidated_token_is_never_served_from_the_hot_path() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        provider = provider_on(fake, cache)
        async with provider:
            token = await provider.get_token()
            assert await provider.get_token() is token  # the hot path
            other = provider_on(fake, cache)
            assert other.invalidate(token)  # another provider of the key drops it
            assert await provider.get_token() is not token
            cache.clear()
            assert await provider.get_token() is not token
            await other.close()


async def test_a_cool_down_lasts_at_least_the_servers_retry_after() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        retry = pa.RetryPolicy(attempts=3, backoff_base=0.01, deadline=1.0)
        provider = provider_on(fake, cache, retry=retry)
        async with provider:
            fake.start_outage(503, retry_after="20")
            with pytest.raises(pa.TokenEndpointUnavailableError) as info:
                await provider.get_token()
            assert info.value.retry_after == 20
            # Retry-After went past the deadline: one attempt, then a 20 s cool-down.
            assert len(fake.token_requests) == 1
            state = cache.key_states.get(provider.cache_key)
            assert state is not None
            assert state.cooldown_until - time.monotonic() > 19


# -- 9. guarantees that hold together (issue 20) ----------------------------------------


async def test_a_token_that_arrives_expired_is_a_failed_fetch_never_handed_out() -> None:
    """A 2 s token after 2.5 s of latency (a process frozen mid-fetch): nobody gets it."""
    async with FakePlainID(expires_in=2, latency=2.5) as fake:
        cache = pa.MemoryTokenCache()
        provider = provider_on(fake, cache, retry=pa.RetryPolicy(attempts=1))
        async with provider:
            callers = [asyncio.create_task(provider.get_token()) for _ in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 30)
            for result in results:
                assert isinstance(result, pa.TokenEndpointUnavailableError), result
                assert "expired" in str(result)
            assert len(fake.token_requests) == 1
            assert cache.get(provider.cache_key) is None  # not stored either
            health = provider.health()
            assert health.failures == 1
            assert provider.stats.failures == 1


async def test_lru_eviction_keeps_the_cool_down_of_keys_open_providers_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three open providers, a cache of two keys, an outage: one fetch and one WARNING
    per key, then cool-downs, not a fetch per call."""
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache(max_entries=2)
        providers = [
            pa.TokenProvider(
                f"client-{i}",
                "secret",
                base_url=str(fake.base_url),
                cache=cache,
                retry=pa.RetryPolicy(attempts=1),
            )
            for i in range(3)
        ]
        fake.start_outage(503)
        caplog.set_level(logging.WARNING, logger="plainid_async")
        for call in range(48):
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await providers[call % 3].get_token()
        requests = len(fake.token_requests)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        for provider in providers:
            await provider.close()
    assert requests == 3, requests  # one per key; 48 without the cool-downs
    assert len(warnings) == 3


async def test_force_refresh_during_an_outage_keeps_the_valid_token_served() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=FAST)
        async with provider:
            token = await provider.get_token()
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token(force_refresh=True)
            # Replace, never drop: the token, still valid, is served to every other call.
            served = [await provider.get_token() for _ in range(100)]
            assert all(t is token for t in served)
            fake.end_outage()
            fresh = await provider.get_token(force_refresh=True)
            assert fresh != token
            assert await provider.get_token() is fresh


async def test_a_401_during_an_outage_gets_its_response_and_the_valid_token_stays() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=FAST)
        async with provider, provider.session() as session:
            token = await provider.get_token()
            fake.start_outage(503)
            fake.revoke(token.access_token)
            # The 401 call gets a response (its 401), not the endpoint's outage.
            async with session.get("api/1.0/x") as response:
                assert response.status == 401
            assert await provider.get_token() is token  # not dropped before a replacement
            fake.end_outage()


async def test_a_401_call_waits_for_the_replacement_while_other_calls_keep_the_token() -> None:
    async with FakePlainID(latency=0.2) as fake:
        provider = provider_on(fake, pa.MemoryTokenCache())
        other = provider_on(fake, provider.cache)  # same key, its own hot slot
        async with provider, other, provider.session() as session:
            token = await provider.get_token()
            assert await other.get_token() is token
            fake.revoke(token.access_token)
            call = asyncio.create_task(session.get("api/1.0/x"))
            await requests_seen(fake, 2)  # the replacement is being fetched
            assert await other.get_token() is token  # served at once meanwhile
            async with await asyncio.wait_for(call, 10) as response:
                assert response.status == 200  # its retry had the fresh token
            assert await other.get_token() is not token
            assert len(fake.token_requests) == 2


async def test_a_replacement_refused_for_invalid_credentials_drops_the_token() -> None:
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=FAST)
        async with provider:
            token = await provider.get_token()
            fake.start_outage(401)
            with pytest.raises(pa.InvalidCredentialsError):
                await provider.get_token(force_refresh=True)
            assert provider.cache.get(provider.cache_key) is None
            assert token is not None


def test_a_child_forked_mid_fetch_fetches_for_itself() -> None:
    """The parent's fetch hangs when the child is forked: the child must not wait for it."""
    with fake_in_thread() as fake:
        cache = pa.MemoryTokenCache()
        provider = provider_on(fake, cache, timeout=5.0, retry=pa.RetryPolicy(attempts=1))
        fake.hang = True

        def parent_call() -> None:
            with contextlib.suppress(pa.PlainIDError, asyncio.CancelledError):
                asyncio.run(provider.get_token())

        hung = threading.Thread(target=parent_call, daemon=True)
        hung.start()
        deadline = time.monotonic() + 10
        while not running_fetches() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running_fetches()
        pid = os.fork()
        if pid == 0:  # the child: one call, its own fetch, then out (no test teardown)
            code = 1
            try:
                token = asyncio.run(asyncio.wait_for(provider.get_token(), 3))
                code = 0 if token.access_token and not running_fetches() else 2
            finally:
                os._exit(code)
        fake.hang = False  # the child's own request is answered
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for flight in running_fetches():
            flight.cancel()
        hung.join(10)


async def test_one_providers_broken_proxy_never_fails_a_direct_provider_of_the_same_key() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        proxied = provider_on(
            fake, cache, proxy=f"http://127.0.0.1:{free_port()}", retry=pa.RetryPolicy(attempts=1)
        )
        direct = provider_on(fake, cache, retry=pa.RetryPolicy(attempts=1))
        async with proxied, direct:
            with pytest.raises(pa.TokenEndpointUnavailableError, match=r"proxy|127\.0\.0\.1"):
                await proxied.get_token()
            # Same credentials, same key: the proxy's cool-down is not the direct one's.
            token = await direct.get_token()
            assert fake.is_valid(token.access_token)
            assert len(fake.token_requests) == 1


async def test_callers_that_give_up_leave_no_never_retrieved_exception_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 callers with their own 0.2 s timeouts, then the shared fetch fails."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with FakePlainID(latency=0.5) as fake:
        provider = provider_on(fake, pa.MemoryTokenCache(), retry=pa.RetryPolicy(attempts=1))
        async with provider:
            fake.start_outage(503)

            async def impatient() -> BaseException | None:
                try:
                    await asyncio.wait_for(provider.get_token(), 0.2)
                except (TimeoutError, pa.TokenRequestError) as error:
                    return error
                return None

            results = await asyncio.gather(*(impatient() for _ in range(100)))
            assert all(isinstance(r, TimeoutError) for r in results)
            await settle()
            gc.collect()
            await asyncio.sleep(0)
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_a_caller_inside_a_retry_after_window_fails_fast_with_its_error() -> None:
    """A 429 with Retry-After during a background refresh, then the token runs out and a
    caller with a budget shorter than the window arrives: no token request inside it."""
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        refresher = provider_on(fake, cache, timeout=5.0)
        hasty = provider_on(fake, cache, timeout=0.3, retry=pa.RetryPolicy(attempts=1))
        async with refresher, hasty:
            await cache.store(refresher.cache_key, token_with_remaining(40))
            fake.start_outage(429, retry_after="3")
            await refresher.get_token()  # STALE: its background refresh gets the 429
            await requests_seen(fake)
            await cache.store(refresher.cache_key, token_with_remaining(5))  # EXPIRED now
            with pytest.raises(pa.TokenEndpointUnavailableError) as info:
                await asyncio.wait_for(hasty.get_token(), 10)
            assert info.value.status == 429  # the window's own error, not "time budget"
            assert len(fake.token_requests) == 1  # nothing was asked inside the window
            fake.end_outage()
            token = await asyncio.wait_for(refresher.get_token(), 10)  # waits the window out
            assert fake.is_valid(token.access_token)
            assert len(fake.token_requests) == 2


def token_with_remaining(remaining: float, lifetime: float = 100.0) -> pa.Token:
    """A token with ``remaining`` seconds left of ``lifetime``."""
    return pa.Token(
        access_token="preloaded",
        token_type="Bearer",
        expires_in=lifetime,
        expires_at=time.time() + remaining,
        expires_at_monotonic=time.monotonic() + remaining,
    )


async def test_a_revocation_after_steady_unrelated_401s_recovers_on_the_second_call(
    always_401: str,
) -> None:
    """One API path answers 401 all the time (a permission problem); then the token is
    really revoked: healthy calls recover within 2 calls, not after the guard's interval."""
    async with FakePlainID() as fake:
        provider = provider_on(fake, pa.MemoryTokenCache())
        middleware = pa.BearerAuthMiddleware(provider, origins=[always_401])
        async with provider, aiohttp.ClientSession(middlewares=(middleware,)) as session:

            async def healthy() -> int:
                async with session.get(f"{fake.base_url}/api/1.0/x") as response:
                    return response.status

            async def refused() -> int:
                async with session.get(f"{always_401}/api/1.0/x") as response:
                    return response.status

            for _ in range(10):  # steady: the refused path 401s, the healthy one works
                assert await refused() == 401
                assert await healthy() == 200
                assert await healthy() == 200
            steady_requests = len(fake.token_requests)
            fake.revoke((await provider.get_token()).access_token)
            statuses = [await healthy(), await healthy(), await healthy()]
    assert statuses[1:] == [200, 200], statuses  # recovered by the second call
    assert len(fake.token_requests) == steady_requests + 1
    assert steady_requests <= 3  # the unrelated 401s cost no token storm
