"""pytest fixtures for code that uses PlainID tokens: a running FakePlainID and a provider.

Installing ``plainid-async[testing]`` registers them with pytest (the ``pytest11`` entry
point): nothing to enable. Where the package is not installed as a distribution (a checkout
on ``sys.path``), enable them with one line in your ``conftest.py``::

    pytest_plugins = ["plainid_async.testing.pytest_plugin"]

The fixtures are async (pytest-asyncio) and function-scoped: ``plainid_fake`` is a running
:class:`~plainid_async.testing.FakePlainID`, and ``plainid_provider`` a
:class:`~plainid_async.TokenProvider` bound to it, with a cache of its own so no token leaks
from one test to the next. Both are closed after the test. Their event loop follows
pytest-asyncio's ``asyncio_default_fixture_loop_scope``; keep it ``function`` (the default)
so they run in the loop of the test that uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from plainid_async._cache import MemoryTokenCache
from plainid_async._provider import TokenProvider
from plainid_async.testing._fake import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["plainid_fake", "plainid_provider"]

MISSING_EXTRA = (
    "the plainid_fake and plainid_provider fixtures need pytest-asyncio, from the 'testing' "
    "extra: pip install 'plainid-async[testing]'"
)

try:
    import pytest_asyncio
except ModuleNotFoundError as _missing:  # pragma: no cover - depends on the installed extras
    if _missing.name != "pytest_asyncio":
        raise
    # pytest loads this plugin in every run of every project that has plainid-async installed
    # (the entry point): without the extra it must load, and fail only the tests that use it.

    @pytest.fixture(name="plainid_fake")
    def _plainid_fake_needs_the_extra() -> None:
        """Fails the test that asks for it, naming the extra to install."""
        pytest.fail(MISSING_EXTRA, pytrace=False)

    @pytest.fixture(name="plainid_provider")
    def _plainid_provider_needs_the_extra() -> None:
        """Fails the test that asks for it, naming the extra to install."""
        pytest.fail(MISSING_EXTRA, pytrace=False)

else:

    @pytest_asyncio.fixture
    async def plainid_fake() -> AsyncIterator[FakePlainID]:
        """A running FakePlainID on 127.0.0.1 (a free port), stopped after the test."""
        async with FakePlainID() as fake:
            yield fake

    @pytest_asyncio.fixture
    async def plainid_provider(plainid_fake: FakePlainID) -> AsyncIterator[TokenProvider]:
        """A TokenProvider for ``plainid_fake``, its own memory cache, closed after the test."""
        async with TokenProvider(
            client_id=plainid_fake.client_id,
            client_secret=plainid_fake.client_secret,
            base_url=plainid_fake.base_url,
            cache=MemoryTokenCache(),
        ) as provider:
            yield provider
