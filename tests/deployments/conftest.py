"""Fixtures of the deployment suite: a fake PlainID and its API, each its own process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from _harness import ApiServer, FakeServer, plainid

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Token lifetime for the tests that run across refreshes (seconds): long enough for a
#: process to start, short enough for a few refreshes in a test of ~10 s.
LIFETIME = 4.0


@pytest.fixture
def fake_and_api(tmp_path: Path) -> Iterator[tuple[FakeServer, ApiServer]]:
    """``fake-server`` issuing tokens of :data:`LIFETIME` seconds, and the API checking them."""
    with plainid(tmp_path, expires_in=LIFETIME) as servers:
        yield servers
