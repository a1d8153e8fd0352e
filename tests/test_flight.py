"""Flights (plainid_async/_flight.py): a caller that joins another's token fetch waits only
its own budget, takes a token that arrived while its loop was busy, and fetches anew when the
loop running the fetch stops.

Moved from test_core.py (issue 19): real loopback servers, real threads and event loops.
Figures are printed with ``record`` (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import pytest
from _providers import FAST, make_provider
from _reliability import record
from _servers import fake_in_thread, requests_seen

import plainid_async as pa
from plainid_async.testing import FakePlainID, running_fetches

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
        loop_a.close()
        await here.close()
    record("waiter: the loop running its fetch stopped", restarted_after_s=round(waited, 3))
