"""django-oauth-toolkit as an independent token endpoint at PlainID's path."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from typing import TYPE_CHECKING

import pytest

from deployments._harness import (
    Process,
    free_port,
    listening,
    refreshes,
    require_module,
    wait_for,
)
from plainid_async import InvalidCredentialsError, MemoryTokenCache, TokenProvider

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "dot-client-secret-0123456789"
#: DOT's token lifetime (seconds).
LIFETIME = 4
SECONDS = 10.0


class Toolkit:
    def __init__(self, url: str, database: Path) -> None:
        self.url = url
        self.database = database

    def issued(self) -> int:
        """Access tokens DOT issued so far."""
        with sqlite3.connect(self.database) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM oauth2_provider_accesstoken").fetchone()
        return int(count)


@pytest.fixture(scope="module")
def toolkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toolkit]:
    """One django-oauth-toolkit server for the module (its migrations take seconds)."""
    tmp_path = tmp_path_factory.mktemp("dot")
    require_module("oauth2_provider")
    require_module("gunicorn")
    env = {
        "DOT_DATABASE": str(tmp_path / "dot.sqlite3"),
        "DOT_CLIENT_SECRET": SECRET,
        "DOT_EXPIRES_IN": str(LIFETIME),
    }
    setup = Process(
        [sys.executable, "-m", "deployments.apps.oauth_site", "setup"],
        log=tmp_path / "setup.log",
        env=env,
    )
    assert setup.wait(120) == 0, setup.output()
    port = free_port()
    server = Process(
        [
            sys.executable, "-m", "gunicorn", "deployments.apps.oauth_site:application",
            "--bind", f"127.0.0.1:{port}", "--workers", "1",
        ],
        log=tmp_path / "dot.log",
        env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: listening(port), what="django-oauth-toolkit start")
        yield Toolkit(f"http://127.0.0.1:{port}", tmp_path / "dot.sqlite3")
        assert server.stop() == 0, server.output()
    finally:
        server.kill()


def provider(
    toolkit: Toolkit, client_id: str = "dot-client", secret: str = SECRET
) -> TokenProvider:
    return TokenProvider(client_id, secret, base_url=toolkit.url, cache=MemoryTokenCache())


async def test_toolkit_issues_a_token_for_the_right_secret(toolkit: Toolkit) -> None:
    before = toolkit.issued()
    async with provider(toolkit) as p:
        token = await p.get_token()
    assert token.token_type == "Bearer"
    assert 0 < token.expires_in <= LIFETIME
    assert toolkit.issued() == before + 1


async def test_toolkit_rejects_a_wrong_secret_as_invalid_credentials(toolkit: Toolkit) -> None:
    before = toolkit.issued()
    async with provider(toolkit, secret="wrong-" + SECRET) as p:
        with pytest.raises(InvalidCredentialsError) as info:
            await p.get_token()
    assert (info.value.status, info.value.error) == (401, "invalid_client")
    assert SECRET not in str(info.value)
    assert toolkit.issued() == before


async def test_toolkit_refuses_a_client_not_allowed_the_grant(toolkit: Toolkit) -> None:
    before = toolkit.issued()
    async with provider(toolkit, client_id="dot-authcode") as p:
        with pytest.raises(InvalidCredentialsError) as info:
            await p.get_token()
    assert (info.value.status, info.value.error) == (400, "unauthorized_client")
    assert toolkit.issued() == before


async def test_toolkit_tokens_expire_and_are_refreshed_once_per_refresh(toolkit: Toolkit) -> None:
    tokens = set()
    before = toolkit.issued()
    async with provider(toolkit) as p:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SECONDS
        while loop.time() < deadline:
            token = await p.get_token()
            assert token.expires_at_monotonic - loop.time() > 0
            tokens.add(token.access_token)
            await asyncio.sleep(0.02)
        stats = p.stats
    issued = toolkit.issued() - before
    assert issued == stats.token_requests
    assert 3 <= len(tokens) <= issued <= refreshes(SECONDS, LIFETIME)
