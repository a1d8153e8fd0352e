"""Fixtures shared by the test modules."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from _reliability import LoopWatch

from plainid_async._refresher import refresher_loop
from plainid_async.testing import Flight, running_fetches

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture(scope="session", autouse=True)
def _refresher_running() -> None:
    """Start the refresher thread once, first: its loop's file descriptors and thread are
    the process's from then on, not a leak of whichever test fetched first."""
    refresher_loop()


async def cancel_leftover_fetches() -> list[Flight]:
    """Cancel the token fetches still running, wait for them, and return them."""
    leftover = running_fetches()
    for flight in leftover:
        flight.cancel()
    if leftover:
        await asyncio.gather(*(f.wait() for f in leftover), return_exceptions=True)
    return leftover


@pytest.fixture
async def no_leftover_fetches() -> AsyncIterator[None]:
    """Fail a test that leaves a token fetch running (each fetch removes itself when done)."""
    yield
    leftover = await cancel_leftover_fetches()
    assert not leftover, f"token fetches still running at the end of the test: {leftover}"


@pytest.fixture
async def loop_watch() -> AsyncIterator[LoopWatch]:
    """A LoopWatch over the test; at the end no fetch or task it left, no loop error it caused.

    A token fetch still running when the test ends is a leak and fails the test (it is
    cancelled first, so it does not spill into the next test): a test that starts
    background refreshes waits for them itself.
    """
    watch = LoopWatch.start()
    yield watch
    leaked = await cancel_leftover_fetches()
    seen = await watch.finish()
    assert not leaked, f"token fetches still running at the end of the test: {leaked}"
    assert seen["leaked_tasks"] == 0, watch.leaked_tasks()
    assert seen["loop_errors"] == 0, watch.contexts
