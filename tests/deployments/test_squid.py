"""Token requests through squid with Basic proxy authentication: library and CLI."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trustme
from _proxy import PROXY_VARIABLES, child_environ

from deployments._squid import Squid
from plainid_async import RetryPolicy, TokenEndpointUnavailableError, TokenProvider
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

LOGIN = "proxyuser"
PASSWORD = "sq-proxy-Pa55-never-shown"


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def squid() -> Iterator[Squid]:
    running = Squid(LOGIN, PASSWORD)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def fake() -> AsyncIterator[FakePlainID]:
    async with FakePlainID() as running:
        yield running


@pytest.fixture
async def tls_fake(ca: trustme.CA) -> AsyncIterator[FakePlainID]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with FakePlainID(ssl_context=context) as running:
        yield running


def provider_for(fake: FakePlainID, **options: object) -> TokenProvider:
    return TokenProvider(
        fake.client_id,
        fake.client_secret,
        base_url=str(fake.base_url),
        retry=RetryPolicy(attempts=2, backoff_base=0.0, backoff_max=0.0),
        **options,  # type: ignore[arg-type]
    )


def settled_log(squid: Squid, lines: int) -> list[str]:
    """squid's access log once it has ``lines`` lines (it writes after each request ends)."""
    deadline = time.monotonic() + 10
    while len(squid.access_log) < lines and time.monotonic() < deadline:
        time.sleep(0.05)
    return squid.access_log


async def test_squid_without_credentials_is_a_407_sent_once(
    fake: FakePlainID, squid: Squid
) -> None:
    async with provider_for(fake, proxy=squid.url) as provider:
        with pytest.raises(TokenEndpointUnavailableError) as info:
            await provider.get_token()
    assert info.value.status == 407
    assert "wants credentials" in str(info.value)
    assert fake.token_requests == []
    assert [line.split()[0] for line in settled_log(squid, 1)] == ["407"]


async def test_squid_with_credentials_forwards_the_token_request(
    fake: FakePlainID, squid: Squid
) -> None:
    async with provider_for(fake, proxy=squid.url_with_credentials) as provider:
        token = await provider.get_token()
        assert PASSWORD not in repr(provider)
    assert fake.is_valid(token.access_token)
    assert len(fake.token_requests) == 1
    log = settled_log(squid, 2)
    # aiohttp sends the credentials only after the 407, or straight away: either way the
    # token request went through squid as the proxy user, once.
    forwarded = [line for line in log if line.startswith("200 POST")]
    assert len(forwarded) == 1
    assert forwarded[0].endswith(LOGIN)
    assert all(PASSWORD not in line for line in log)


async def test_https_proxy_variable_with_trust_env_tunnels_to_an_https_token_url(
    tls_fake: FakePlainID, squid: Squid, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", squid.url_with_credentials)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with provider_for(tls_fake, trust_env=True, ssl=context) as provider:
        await provider.get_token()
    assert len(tls_fake.token_requests) == 1
    log = settled_log(squid, 1)
    assert [line for line in log if line.startswith("200 CONNECT")] != []


async def test_no_proxy_sends_the_token_request_direct(
    fake: FakePlainID, squid: Squid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", squid.url_with_credentials)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with provider_for(fake, trust_env=True) as provider:
        await provider.get_token()
    assert len(fake.token_requests) == 1
    assert squid.access_log == []


def run_cli(fake: FakePlainID, **env: str) -> subprocess.CompletedProcess[str]:
    environ = child_environ()
    environ.update(
        PLAINID_CLIENT_ID=fake.client_id,
        PLAINID_CLIENT_SECRET=fake.client_secret,
        PLAINID_BASE_URL=str(fake.base_url),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "plainid_async", "token", "--attempts", "1"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


async def test_cli_through_squid_with_credentials_prints_a_token_and_without_exits_4(
    fake: FakePlainID, squid: Squid
) -> None:
    import asyncio  # noqa: PLC0415

    good = await asyncio.to_thread(run_cli, fake, HTTP_PROXY=squid.url_with_credentials)
    assert good.returncode == 0, good.stderr
    assert fake.is_valid(good.stdout.strip())
    refused = await asyncio.to_thread(run_cli, fake, HTTP_PROXY=squid.url)
    assert refused.returncode == 4
    assert "407" in refused.stderr
    assert len(fake.token_requests) == 1
    assert PASSWORD not in good.stderr + refused.stderr
