"""Flights (plainid_async/_flight.py): a caller that joins another's token fetch waits only
its own budget, takes a token that arrived while its loop was busy, and fetches anew when the
loop running the fetch stops; a memory of failures (cool-downs) turns an outage into one
fetch plus one request per cool-down step.

Moved from test_core.py (issue 19): real loopback servers, real threads and event loops.
Figures are printed with ``record`` (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import threading
import time
from typing import Any

import aiohttp
import pytest
from _clock import PolicyClock
from _providers import FAST, make_provider, token_with
from _reliability import record
from _servers import fake_in_thread, requests_seen, settle

import plainid_async as pa
from plainid_async._cache import KeyStates
from plainid_async._flight import Flight
from plainid_async.testing import FakePlainID, free_port, running_fetches

#: Every test here fails if it leaves a token fetch running.
pytestmark = pytest.mark.usefixtures("no_leftover_fetches")


async def test_a_fail_fast_provider_waits_only_its_own_budget_on_a_hung_shared_fetch() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        patient = make_provider(fake, cache=cache, timeout=30.0, retry=pa.RetryPolicy(attempts=1))
        hasty = make_provider(fake, cache=cache, timeout=0.3, retry=pa.RetryPolicy(attempts=1))
        async with patient, hasty:
            fake.hang = True
            hung = asyncio.create_task(patient.get_token())
            await requests_seen(fake)
            started = time.monotonic()
            # Without its own budget it would wait the 30 s of the fetch it joined.
            with pytest.raises(pa.TokenEndpointUnavailableError, match="time budget"):
                await asyncio.wait_for(hasty.get_token(), 10)
            waited = time.monotonic() - started
            assert len(fake.token_requests) == 1  # it joined; it did not fetch
            hung.cancel()
            await asyncio.gather(hung, return_exceptions=True)
    record(
        "waiter budget: fail-fast provider joins a hung fetch",
        budget="timeout=0.3 s, attempts=1 (+0.25 s grace)",
        waited_s=round(waited, 3),
        joined_fetch_timeout_s=30,
    )


async def test_a_waiter_takes_the_token_that_arrived_while_its_loop_was_too_busy_to_wake_it() -> (
    None
):
    """The fetch succeeds in time, but the callers' loop is busy past their budget (1,000
    httpx requests queued on one pool did it in the cold-stampede benchmark): each waiter's
    timeout and its wake-up then run together, and the token that is there wins.
    """
    budget = 0.3 + 0.25  # timeout, one attempt, plus the grace
    succeeded = threading.Event()

    def on_event(event: pa.TokenEvent) -> None:
        if event.kind is pa.EventKind.FETCH_SUCCEEDED:
            succeeded.set()

    def other_work() -> None:
        """Runs on the callers' loop: nothing else runs there until it returns."""
        succeeded.wait(10)
        time.sleep(budget * 2)

    with fake_in_thread() as fake:
        provider = make_provider(
            fake,
            timeout=0.3,
            retry=pa.RetryPolicy(attempts=1),
            on_event=on_event,
        )
        async with provider:
            callers = [asyncio.create_task(provider.get_token()) for _ in range(20)]
            asyncio.get_running_loop().call_soon(other_work)  # after the callers start waiting
            tokens = await asyncio.wait_for(asyncio.gather(*callers), 10)
        assert succeeded.is_set()
        assert {token.access_token for token in tokens} == set(fake.issued_tokens)
        assert len(fake.token_requests) == 1


async def test_waiters_on_another_loop_fetch_anew_when_the_fetch_loop_stops() -> None:
    """A fetch bound to loop A (a session= of A): A stops, the waiter on this loop goes on."""
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        loop_a = asyncio.new_event_loop()
        thread = threading.Thread(target=loop_a.run_forever, daemon=True)
        thread.start()

        async def start_on_a() -> tuple[aiohttp.ClientSession, pa.TokenProvider, Any]:
            session = aiohttp.ClientSession()
            provider_a = make_provider(fake, cache=cache, session=session)
            return session, provider_a, asyncio.ensure_future(provider_a.get_token())

        fake.hang = True
        session_a, provider_a, task_a = asyncio.run_coroutine_threadsafe(
            start_on_a(), loop_a
        ).result(10)
        await requests_seen(fake)
        [flight] = running_fetches()
        assert flight.loop is loop_a
        here = make_provider(fake, cache=cache, retry=FAST)
        waiter = asyncio.create_task(here.get_token())
        await asyncio.sleep(0.1)  # it joined the flight of loop A
        assert not waiter.done()
        assert len(fake.token_requests) == 1
        fake.hang = False
        loop_a.call_soon_threadsafe(loop_a.stop)
        thread.join(10)
        started = time.monotonic()
        token = await asyncio.wait_for(waiter, 10)  # before: waited forever
        waited = time.monotonic() - started
        assert fake.is_valid(token.access_token)

        async def clean_up_a() -> None:
            task_a.cancel()
            await asyncio.gather(task_a, return_exceptions=True)
            await provider_a.close()
            await session_a.close()

        thread = threading.Thread(target=loop_a.run_until_complete, args=(clean_up_a(),))
        thread.start()
        thread.join(10)
        # The fetch left behind on A is still provider A's: its close() cancelled it, so A
        # closes with nothing pending ("Task was destroyed but it is pending" otherwise).
        assert flight.task is not None
        assert flight.task.cancelled()
        loop_a.close()
        await here.close()
    record("waiter: the loop running its fetch stopped", restarted_after_s=round(waited, 3))


def test_an_orphaned_fetch_frees_its_keys_slot_and_stays_listed_until_it_ends() -> None:
    """A waiter found the fetch's loop stopped: a new fetch may start, and the provider that
    started the orphan still finds it among the flights it must cancel when it closes."""
    states = KeyStates()
    key = pa.CacheKey.for_credentials("http://127.0.0.1:1/token", "client", "secret")
    state = states.state(key)
    loop = asyncio.new_event_loop()
    old, new = (
        Flight(
            key=key,
            reason=pa.FetchReason.COLD,
            future=concurrent.futures.Future(),
            loop=loop,
            owner=object(),
        )
        for _ in range(2)
    )
    try:
        state.begin(old)
        assert state.orphan(old)
        assert state.flight is None
        assert not state.orphan(old)  # a second waiter finds it orphaned already
        state.begin(new)
        assert states.flights() == [new]
        assert states.flights(orphans=True) == [new, old]
        assert not state.end(old)  # the orphan ended: not the key's fetch, no longer listed
        assert states.flights(orphans=True) == [new]
        assert state.end(new)
        assert states.flights(orphans=True) == []
    finally:
        for flight in (old, new):  # never left running for the leftover check to wait on
            flight.future.cancel()
        loop.close()


# -- a memory of failures: cool-downs (moved from test_core.py) ----------------------------


async def test_calls_inside_a_cool_down_fail_at_once_with_the_same_error() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(
            fake, cache=pa.MemoryTokenCache(), retry=pa.RetryPolicy(attempts=3)
        )
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
        provider = make_provider(fake, cache=cache, retry=retry)
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
        provider = make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST)
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
        provider = make_provider(fake, cache=cache, retry=FAST)
        async with provider:
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token()
            [cold] = [r for r in caplog.records if r.levelname == "WARNING"]
            assert "no usable token is cached" in cold.getMessage()
            assert "keeps being served" not in cold.getMessage()

        caplog.clear()
        other = pa.MemoryTokenCache()
        provider = make_provider(fake, cache=other, retry=FAST)
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


# -- guarantees of joined and replaced fetches, issue 20 (moved from test_core.py) ---------


async def test_a_401_call_waits_for_the_replacement_while_other_calls_keep_the_token() -> None:
    async with FakePlainID(latency=0.2) as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        other = make_provider(fake, cache=provider.cache)  # same key, its own hot slot
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


def test_a_child_forked_mid_fetch_fetches_for_itself() -> None:
    """The parent's fetch hangs when the child is forked: the child must not wait for it."""
    with fake_in_thread() as fake:
        cache = pa.MemoryTokenCache()
        provider = make_provider(fake, cache=cache, timeout=5.0, retry=pa.RetryPolicy(attempts=1))
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
        proxied = make_provider(
            fake,
            cache=cache,
            proxy=f"http://127.0.0.1:{free_port()}",
            retry=pa.RetryPolicy(attempts=1),
        )
        direct = make_provider(fake, cache=cache, retry=pa.RetryPolicy(attempts=1))
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
        provider = make_provider(
            fake, cache=pa.MemoryTokenCache(), retry=pa.RetryPolicy(attempts=1)
        )
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
        refresher = make_provider(fake, cache=cache, timeout=5.0)
        hasty = make_provider(fake, cache=cache, timeout=0.3, retry=pa.RetryPolicy(attempts=1))
        async with refresher, hasty:
            await cache.store(refresher.cache_key, token_with(40))
            fake.start_outage(429, retry_after="3")
            await refresher.get_token()  # STALE: its background refresh gets the 429
            await requests_seen(fake)
            await cache.store(refresher.cache_key, token_with(5))  # EXPIRED now
            with pytest.raises(pa.TokenEndpointUnavailableError) as info:
                await asyncio.wait_for(hasty.get_token(), 10)
            assert info.value.status == 429  # the window's own error, not "time budget"
            assert len(fake.token_requests) == 1  # nothing was asked inside the window
            fake.end_outage()
            token = await asyncio.wait_for(refresher.get_token(), 10)  # waits the window out
            assert fake.is_valid(token.access_token)
            assert len(fake.token_requests) == 2
