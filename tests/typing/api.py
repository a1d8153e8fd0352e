# pyright: strict
"""The public API's types, as a user's code sees them: checked by mypy and pyright (strict) in
`make test`, never run (nothing here is a test pytest would collect).

A change that makes one of these lines an error, or changes a revealed type, changes the API
our users type-check against.
"""

from __future__ import annotations

import ssl
from typing import assert_type

import aiohttp
import httpx

import plainid_async as pa
from plainid_async import otel
from plainid_async.httpx import BearerAuth, client
from plainid_async.redis import RedisTokenCache  # noqa: TC001 (imported as a user would)
from plainid_async.testing import FakePlainID, FakeResponse


async def provider_api() -> None:
    provider = pa.TokenProvider(
        "client-id",
        "client-secret",
        region="us1",
        cache=pa.MemoryTokenCache(max_entries=100),
        timeout=5.0,
        retry=pa.RetryPolicy(attempts=3, backoff_base=0.1, backoff_max=1.0, deadline=10.0),
        ssl=ssl.create_default_context(),
        trust_env=False,
        on_event=lambda event: assert_type(event, pa.TokenEvent),
    )
    async with provider as opened:
        assert_type(opened, pa.TokenProvider)
        token = await provider.get_token()
        assert_type(token, pa.Token)
        assert_type(await provider.get_token(force_refresh=True), pa.Token)
        assert_type(token.access_token, str)
        assert_type(token.expires_in, float)
        assert_type(provider.invalidate(token), bool)
        assert_type(provider.health(), pa.HealthReport)
        assert_type(provider.health().state, pa.TokenState | None)
        assert_type(provider.stats, pa.ProviderStats)
        assert_type(provider.cache_key, pa.CacheKey)
        async with provider.session(origins=["https://api.us1.plainid.io"]) as session:
            assert_type(session, aiohttp.ClientSession)
    assert_type(pa.TokenProvider.from_env({"PLAINID_REGION": "us1"}), pa.TokenProvider)
    middleware = pa.BearerAuthMiddleware(provider, origins=None, retry_on_401=True)
    aiohttp.ClientSession(middlewares=(middleware,))


def errors(error: pa.PlainIDError) -> None:
    if isinstance(error, pa.TokenRequestError):
        assert_type(error.status, int | None)
        assert_type(error.retryable, bool)
        assert_type(error.error, str | None)
    if isinstance(error, pa.ConfigurationError):
        assert_type(error, pa.ConfigurationError)
        assert isinstance(error, ValueError)


async def integrations(provider: pa.TokenProvider, redis_cache: RedisTokenCache) -> None:
    async with client(provider) as http:
        assert_type(http, httpx.AsyncClient)
    httpx.AsyncClient(auth=BearerAuth(provider, origins=["https://api.us1.plainid.io"]))
    pa.TokenProvider("id", "secret", region="us1", cache=redis_cache)
    otel.instrument()
    otel.uninstrument()


async def testing() -> None:
    async with FakePlainID(expires_in=60) as fake:
        assert_type(fake, FakePlainID)
        fake.fail_next(503, FakeResponse(status=429, headers={"Retry-After": "0"}))
        assert_type(fake.client_id, str)
