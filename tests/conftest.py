"""Fixtures shared by the test modules."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
import trustme
from _reliability import LoopWatch

from plainid_async._refresher import refresher_loop
from plainid_async.testing import FakePlainID, Flight, running_fetches

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def fake(plainid_fake: FakePlainID) -> FakePlainID:
    """A running FakePlainID: the project's own ``plainid_fake`` fixture, under a short name.

    A module that needs another fake (a clock, a client of its own) defines its own ``fake``.
    Providers for it come from ``_providers.make_provider``.
    """
    return plainid_fake


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private certificate authority (trustme), one per test module.

    ``_servers.server_tls(ca)`` serves a certificate it issued for 127.0.0.1;
    ``_servers.client_tls(ca)`` trusts it.
    """
    return trustme.CA()


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
        # A fetch whose loop stopped never ends: the test fails on it, never hangs.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
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
