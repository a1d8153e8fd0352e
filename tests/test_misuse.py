"""Misuse fails at the call that made it: typed, naming the parameter, never silently kept.

Each case is one bad value passed to one public constructor or method. The call must raise
a ``TypeError`` or ``ValueError`` (``ConfigurationError`` is one) whose message names the
parameter, and must not let the value through to fail later calls with a bare error.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis
import redis.asyncio

import plainid_async as pa
from plainid_async import otel
from plainid_async.httpx import BearerAuth, client
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from _pytest.mark.structures import ParameterSet

SECRET = "misuse-S3cret-never-shown"


def _provider(**kwargs: Any) -> pa.TokenProvider:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:9"}
    options.update(kwargs)
    return pa.TokenProvider("cid", SECRET, **options)


def _token() -> pa.Token:
    return pa.Token.issued(access_token="t0k3n", expires_in=3600)


class _Garbage:
    """Not a token, with the attributes a careless duck type might look for."""

    access_token = "t0k3n"
    token_type = "Bearer"


#: Values that are no number of seconds at all (each rule has its own bad numbers).
NOT_SECONDS: list[object] = [-1, -0.001, math.nan, math.inf, -math.inf, "10", b"1", True, [1]]
NOT_COUNTS: list[object] = [0, -1, 1.0, 2.5, "3", True, None, [4]]
NOT_TEXT: list[object] = [None, 42, b"bytes", "", "  ", "a\nb", "a\x00b", ["id"]]
NOT_FLAGS: list[object] = [None, 1, 0, "yes", "false", [True]]
NOT_ORIGINS: list[object] = [
    "https://pap.example.com",  # a string, not a list of them: its characters would be origins
    ["ftp://pap.example.com"],
    ["http://pap.example.com"],  # plain http off loopback
    ["https://pap.example.com/path"],
    ["https://user:pw@pap.example.com"],
    ["not a url"],
    [42],
    42,
]
NOT_SSL: list[object] = ["yes", "no", 1, 0, b"ctx", ssl.Purpose.SERVER_AUTH, ["ctx"]]
NOT_PROXIES: list[object] = [
    42,
    "proxy.internal:3128",  # no scheme
    "ftp://proxy.internal",
    "http://",
    "http://proxy.internal/path?x=1",
    b"http://proxy.internal:3128",
]
NOT_REGIONS: list[object] = ["US1", "us 1", "us1.evil.example", "us1/x", "", "@us1", 1, b"us1"]
NOT_BASE_URLS: list[object] = [
    "http://pap.example.com",  # plain http off loopback
    "pap.example.com",
    "ftp://pap.example.com",
    "https://",
    "https://pap.example.com?x=1",
    "https://pap.example.com#frag",
    "https://user:pw@pap.example.com",
    42,
]
NOT_TOKENS: list[object] = [None, "t0k3n", b"t0k3n", 42, _Garbage(), {"access_token": "t"}]


def _from_env(**kwargs: Any) -> pa.TokenProvider:
    environ = {
        "PLAINID_CLIENT_ID": "cid",
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_BASE_URL": "http://127.0.0.1:9",
    }
    return pa.TokenProvider.from_env(environ, **kwargs)


def each(
    label: str, name: str, values: list[object], call: Callable[[Any], object]
) -> Iterator[ParameterSet]:
    """One case per value: ``call(value)`` must refuse it, naming ``name``."""
    for i, value in enumerate(values):
        yield pytest.param(lambda v=value: call(v), name, id=f"{label}-{i}-{value!r:.30}")


def provider_keywords(label: str, build: Callable[..., object]) -> Iterator[ParameterSet]:
    """The keywords TokenProvider and from_env share."""
    yield from each(f"{label}.timeout", "timeout", [*NOT_SECONDS, 0], lambda v: build(timeout=v))
    yield from each(
        f"{label}.refresh_margin",
        "refresh_margin",
        NOT_SECONDS,
        lambda v: build(refresh_margin=v),
    )
    yield from each(f"{label}.ssl", "ssl", NOT_SSL, lambda v: build(ssl=v))
    yield from each(f"{label}.proxy", "proxy", NOT_PROXIES, lambda v: build(proxy=v))
    yield from each(f"{label}.trust_env", "trust_env", NOT_FLAGS, lambda v: build(trust_env=v))
    yield from each(
        f"{label}.cache", "cache", [{}, "memory", object(), 1], lambda v: build(cache=v)
    )
    yield from each(
        f"{label}.session",
        "session",
        ["s", object(), aiohttp.ClientTimeout()],
        lambda v: build(session=v),
    )
    yield from each(
        f"{label}.retry", "retry", [3, {"attempts": 3}, "fast"], lambda v: build(retry=v)
    )
    yield from each(
        f"{label}.on_event", "on_event", ["print", 1, [print]], lambda v: build(on_event=v)
    )


def cases() -> Iterator[ParameterSet]:
    """Every (call with one bad value, the parameter its message must name)."""

    # TokenProvider and from_env share every keyword.
    yield from provider_keywords("TokenProvider", _provider)
    yield from provider_keywords("from_env", _from_env)
    yield from each(
        "TokenProvider.client_id",
        "client_id",
        NOT_TEXT,
        lambda v: pa.TokenProvider(v, SECRET, region="us1"),
    )
    yield from each(
        "TokenProvider.client_secret",
        "client_secret",
        NOT_TEXT,
        lambda v: pa.TokenProvider("cid", v, region="us1"),
    )
    yield from each(
        "TokenProvider.region", "region", NOT_REGIONS, lambda v: _provider(base_url=None, region=v)
    )
    yield from each(
        "TokenProvider.base_url", "base_url", NOT_BASE_URLS, lambda v: _provider(base_url=v)
    )
    yield from each(
        "from_env.environ",
        "environ",
        ["PLAINID_REGION=us1", 1, [("PLAINID_REGION", "us1")]],
        pa.TokenProvider.from_env,
    )
    yield from each(
        "rotate_secret", "client_secret", NOT_TEXT, lambda v: _provider().rotate_secret(v)
    )
    yield from each("invalidate", "token", NOT_TOKENS, lambda v: _provider().invalidate(v))
    yield from each(
        "report_unauthorized", "token", NOT_TOKENS, lambda v: _provider().report_unauthorized(v)
    )
    yield from each(
        "get_token",
        "force_refresh",
        [1, "yes", None, 0, ""],
        lambda v: asyncio.run(_provider().get_token(force_refresh=v)),
    )
    yield from each(
        "session.origins", "origins", NOT_ORIGINS, lambda v: _provider().session(origins=v)
    )
    yield from each(
        "session.base_url",
        "base_url",
        ["https://elsewhere.example.com", "http://127.0.0.1:8"],
        lambda v: _provider().session(base_url=v),
    )

    # Middleware and httpx.
    yield from each(
        "BearerAuthMiddleware.provider",
        "provider",
        [None, "provider", object()],
        pa.BearerAuthMiddleware,
    )
    yield from each(
        "BearerAuthMiddleware.origins",
        "origins",
        NOT_ORIGINS,
        lambda v: pa.BearerAuthMiddleware(_provider(), origins=v),
    )
    yield from each(
        "BearerAuthMiddleware.retry_on_401",
        "retry_on_401",
        NOT_FLAGS,
        lambda v: pa.BearerAuthMiddleware(_provider(), retry_on_401=v),
    )
    yield from each("BearerAuth.provider", "provider", [None, "provider", object()], BearerAuth)
    yield from each(
        "BearerAuth.origins", "origins", NOT_ORIGINS, lambda v: BearerAuth(_provider(), origins=v)
    )
    yield from each(
        "BearerAuth.retry_on_401",
        "retry_on_401",
        NOT_FLAGS,
        lambda v: BearerAuth(_provider(), retry_on_401=v),
    )
    yield from each("client.provider", "provider", [None, "provider"], client)
    yield from each(
        "client.base_url",
        "base_url",
        ["https://elsewhere.example.com", "http://127.0.0.1:8"],
        lambda v: client(_provider(), base_url=v),
    )

    # Caches and the retry policy.
    yield from each(
        "MemoryTokenCache.max_entries",
        "max_entries",
        NOT_COUNTS,
        lambda v: pa.MemoryTokenCache(max_entries=v),
    )
    yield from each(
        "RedisTokenCache.client",
        "client",
        [None, "redis://127.0.0.1", redis.Redis()],
        RedisTokenCache,
    )
    yield from each(
        "RedisTokenCache.namespace",
        "namespace",
        [None, "", "a b", "{x}", 1],
        lambda v: RedisTokenCache(redis.asyncio.Redis(), namespace=v),
    )
    yield from each(
        "RedisTokenCache.timeout",
        "timeout",
        [*NOT_SECONDS[:4], 0],
        lambda v: RedisTokenCache(redis.asyncio.Redis(), timeout=v),
    )
    yield from each(
        "RedisTokenCache.max_entries",
        "max_entries",
        NOT_COUNTS[:4],
        lambda v: RedisTokenCache(redis.asyncio.Redis(), max_entries=v),
    )
    yield from each(
        "RetryPolicy.attempts",
        "attempts",
        NOT_COUNTS,
        lambda v: pa.RetryPolicy(attempts=v),
    )
    yield from each(
        "RetryPolicy.backoff_base",
        "backoff_base",
        NOT_SECONDS[:5],
        lambda v: pa.RetryPolicy(backoff_base=v),
    )
    yield from each(
        "RetryPolicy.deadline", "deadline", NOT_SECONDS[:5], lambda v: pa.RetryPolicy(deadline=v)
    )

    # The fake and telemetry.
    yield from each(
        "FakePlainID.expires_in",
        "expires_in",
        [0, -1, math.nan, "60", True],
        lambda v: FakePlainID(expires_in=v),
    )
    yield from each(
        "FakePlainID.latency", "latency", NOT_SECONDS[:5], lambda v: FakePlainID(latency=v)
    )
    yield from each(
        "FakePlainID.port", "port", [-1, 65536, "80", 1.5, True], lambda v: FakePlainID(port=v)
    )
    yield from each(
        "FakePlainID.client_id", "client_id", NOT_TEXT[:5], lambda v: FakePlainID(client_id=v)
    )
    yield from each(
        "FakePlainID.ssl_context",
        "ssl_context",
        ["yes", True, 1],
        lambda v: FakePlainID(ssl_context=v),
    )
    yield from each(
        "otel.instrument.meter_provider",
        "meter_provider",
        ["otel", 1, object()],
        lambda v: otel.instrument(meter_provider=v),
    )
    yield from each(
        "otel.instrument.tracer_provider",
        "tracer_provider",
        ["otel", 1, object()],
        lambda v: otel.instrument(tracer_provider=v),
    )


CASES = list(cases())


def test_at_least_150_bad_values_are_tried() -> None:
    assert len(CASES) >= 150


@pytest.mark.parametrize(("call", "name"), CASES)
def test_a_bad_value_fails_at_the_call_typed_and_named(
    call: Callable[[], object], name: str
) -> None:
    try:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
    finally:
        otel.uninstrument()
    assert name in str(info.value)
    assert SECRET not in str(info.value)


def test_a_session_from_another_loop_is_named_at_the_first_call_on_this_one() -> None:
    async def make_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    other = asyncio.new_event_loop()
    session = other.run_until_complete(make_session())
    try:
        provider = _provider(session=session, cache=pa.MemoryTokenCache())
        for _ in range(2):  # every call says the same, never a bare RuntimeError
            with pytest.raises(pa.ConfigurationError) as info:
                asyncio.run(provider.get_token())
            assert str(info.value).startswith("session= belongs to an event loop that is")
    finally:
        other.run_until_complete(session.close())
        other.close()


async def test_a_session_from_this_loop_is_used(fake: FakePlainID) -> None:
    async with aiohttp.ClientSession() as session:
        provider = pa.TokenProvider(
            fake.client_id,
            fake.client_secret,
            base_url=str(fake.base_url),
            session=session,
            cache=pa.MemoryTokenCache(),
        )
        async with provider:
            token = await provider.get_token()
    assert token.access_token == fake.issued_tokens[-1]
