"""The pytest plugin for users, run by pytester on the example test of docs/middleware.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
pytest_plugins = ["plainid_async.testing.pytest_plugin"]
"""

DOCS = Path(__file__).resolve().parent.parent / "docs" / "middleware.md"


def docs_example() -> str:
    """The example test a user copies: docs/middleware.md, "Testing with the pytest plugin"."""
    text = DOCS.read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    [example] = [block for block in blocks if "plainid_provider: TokenProvider" in block]
    return example


LIFECYCLE = """
import pytest

from plainid_async import MemoryTokenCache, TokenProvider
from plainid_async.testing import FakePlainID

SEEN = []


@pytest.mark.asyncio
async def test_first(plainid_fake: FakePlainID, plainid_provider: TokenProvider) -> None:
    SEEN.append((plainid_fake, plainid_provider))
    assert plainid_provider.api_url == plainid_fake.base_url
    assert isinstance(plainid_provider.cache, MemoryTokenCache)
    await plainid_provider.get_token()


@pytest.mark.asyncio
async def test_second(plainid_fake: FakePlainID, plainid_provider: TokenProvider) -> None:
    (fake, provider), = SEEN
    assert provider.closed
    assert provider is not plainid_provider
    assert fake is not plainid_fake
    assert provider.cache is not plainid_provider.cache
    assert plainid_provider.cache.get(plainid_provider.cache_key) is None
    assert plainid_fake.token_requests == []
"""

STRICT_INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


def _setup(pytester: pytest.Pytester, ini: str | None) -> Path:
    pytester.makeconftest(CONFTEST)
    if ini is not None:
        pytester.makeini(ini)
    return pytester.makepyfile(test_example=docs_example(), test_lifecycle=LIFECYCLE)


@pytest.mark.parametrize("ini", [STRICT_INI, None], ids=["filterwarnings-error", "defaults"])
def test_plugin_fixtures_with_the_example_test(pytester: pytest.Pytester, ini: str | None) -> None:
    _setup(pytester, ini)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_plugin_in_auto_mode(pytester: pytest.Pytester) -> None:
    _setup(pytester, STRICT_INI + "asyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


ENTRY_POINT_ONLY = """
import pytest

from plainid_async.testing import FakePlainID


@pytest.mark.asyncio
async def test_uses_the_fixture(plainid_fake: FakePlainID) -> None:
    assert plainid_fake.token_requests == []


def test_needs_no_fixture() -> None:
    pass
"""


def test_plugin_is_registered_by_the_installed_package(pytester: pytest.Pytester) -> None:
    """No conftest line: the pytest11 entry point of the installed distribution loads it."""
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_entry_point=ENTRY_POINT_ONLY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    blocked = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:plainid_async.testing.pytest_plugin"
    )
    blocked.assert_outcomes(passed=1, errors=1)


def test_plugin_without_pytest_asyncio_names_the_extra(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pytest-asyncio the plugin still loads (pytest runs every other test) and a test
    that asks for its fixtures fails saying which extra to install.
    """
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_entry_point=ENTRY_POINT_ONLY.replace("@pytest.mark.asyncio\nasync def", "def")
    )
    # Shadows the installed pytest-asyncio with a module that reports itself missing.
    pytester.mkpydir("not_installed").joinpath("pytest_asyncio.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pytest_asyncio'\", name='pytest_asyncio')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(pytester.path / "not_installed"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "ignore::pytest.PytestConfigWarning"
    )
    result.assert_outcomes(passed=1, errors=1)
    assert "pip install 'plainid-async[testing]'" in result.stdout.str()
