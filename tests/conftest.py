"""Fixtures shared by the test modules."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from _reliability import LoopWatch

from plainid_async import _provider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def loop_watch() -> AsyncIterator[LoopWatch]:
    """A LoopWatch over the test; at the end no task it left and no loop error it caused."""
    watch = LoopWatch.start()
    yield watch
    await asyncio.gather(
        *(f.task for f in list(_provider._FLIGHTS.values())), return_exceptions=True
    )
    seen = await watch.finish()
    assert seen["leaked_tasks"] == 0, watch.leaked_tasks()
    assert seen["loop_errors"] == 0, watch.contexts
    _provider._EPISODES.clear()
