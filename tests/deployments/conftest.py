"""Fixtures of the deployment suite: a fake PlainID and its API, each its own process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from deployments._harness import LIFETIME, ApiServer, FakeServer, plainid

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def fake_and_api(tmp_path: Path) -> Iterator[tuple[FakeServer, ApiServer]]:
    """``fake-server`` issuing tokens of :data:`LIFETIME` seconds, and the API checking them."""
    with plainid(tmp_path, expires_in=LIFETIME) as servers:
        yield servers
