"""TokenProvider end to end against FakePlainID on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest
from _clock import PolicyClock
from _providers import FAST, make_provider, recording, token_with
from _reliability import record
from _servers import LoopbackServer, requests_seen, settle
from aiohttp import web

import plainid_async as pa
from plainid_async.testing import FakePlainID, FakeResponse, free_port, running_fetches

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def fake() -> AsyncIterator[FakePlainID]:
    async with FakePlainID(latency=0.02) as server:
        yield server


@pytest.fixture
def cache() -> pa.MemoryTokenCache:
    return pa.MemoryTokenCache()


@pytest.fixture
async def provider(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> AsyncIterator[pa.TokenProvider]:
    async with make_provider(fake, cache=cache, retry=FAST, timeout=2.0) as p:
        yield p


#: Every test here fails if it leaves a token fetch running.
pytestmark = pytest.mark.usefixtures("no_leftover_fetches")


# -- configuration ----------------------------------------------------------------------


def test_construction_needs_no_event_loop_and_does_no_io() -> None:
    provider = pa.TokenProvider("id", "secret", region="us1")
    assert provider.api_url == pa.TokenProvider("id", "s", region="us1").api_url
    assert str(provider.api_url) == "https://api.us1.plainid.io"
    assert str(provider.token_url) == "https://api.us1.plainid.io/api/1.0/api-key/token"


@pytest.mark.parametrize(
    "region", ["US1", "us1.evil.com", "us1/x", "a@b", "us 1", "", "us1.", "é1"]
)
def test_region_that_could_change_the_host_is_rejected(region: str) -> None:
    with pytest.raises(pa.ConfigurationError, match="region"):
        pa.TokenProvider("id", "secret", region=region)


def test_base_url_path_prefix_is_kept() -> None:
    provider = pa.TokenProvider("id", "secret", base_url="https://pap.example.com/plainid/")
    assert str(provider.token_url) == "https://pap.example.com/plainid/api/1.0/api-key/token"


@pytest.mark.parametrize(
    "base_url",
    ["http://pap.example.com", "ftp://127.0.0.1", "pap.example.com", "https://u:p@x.com"],
)
def test_unsafe_base_url_is_rejected(base_url: str) -> None:
    with pytest.raises(pa.ConfigurationError, match="base_url"):
        pa.TokenProvider("id", "secret", base_url=base_url)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "[::1]"])
def test_plain_http_is_allowed_for_loopback_hosts(host: str) -> None:
    provider = pa.TokenProvider("id", "secret", base_url=f"http://{host}:8080")
    assert provider.api_url.scheme == "http"


def test_exactly_one_of_region_and_base_url() -> None:
    with pytest.raises(pa.ConfigurationError, match="exactly one"):
        pa.TokenProvider("id", "secret")
    with pytest.raises(pa.ConfigurationError, match="exactly one"):
        pa.TokenProvider("id", "secret", region="us1", base_url="https://x.example.com")


@pytest.mark.parametrize(
    ("client_id", "secret", "name"),
    [
        ("", "s", "client_id"),
        ("  ", "s", "client_id"),
        ("id", "", "client_secret"),
        ("id", " \t", "client_secret"),
    ],
)
def test_blank_credentials_are_rejected_by_name(client_id: str, secret: str, name: str) -> None:
    with pytest.raises(pa.ConfigurationError, match=name):
        pa.TokenProvider(client_id, secret, region="us1")


@pytest.mark.parametrize(
    ("option", "value"),
    [("refresh_margin", -1), ("refresh_margin", float("nan")), ("timeout", 0), ("timeout", True)],
)
def test_bad_numeric_options_are_rejected_by_name(option: str, value: float) -> None:
    with pytest.raises(pa.ConfigurationError, match=option):
        pa.TokenProvider("id", "secret", region="us1", **{option: value})  # type: ignore[arg-type]


def test_configuration_errors_never_echo_the_secret() -> None:
    secret = "sup3r-s3cret-value"
    for kwargs in ({"region": "BAD"}, {"base_url": "http://x.example.com"}, {}):
        with pytest.raises(pa.ConfigurationError) as info:
            pa.TokenProvider("id", secret, **kwargs)  # type: ignore[arg-type]
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


def test_from_env_reads_the_four_variables() -> None:
    env = {
        "PLAINID_CLIENT_ID": "cid",
        "PLAINID_CLIENT_SECRET": "csecret",
        "PLAINID_REGION": "eu1",
    }
    provider = pa.TokenProvider.from_env(env)
    assert provider.client_id == "cid"
    assert str(provider.api_url) == "https://api.eu1.plainid.io"
    env = {**env, "PLAINID_REGION": "", "PLAINID_BASE_URL": "http://127.0.0.1:9"}
    assert str(pa.TokenProvider.from_env(env).api_url) == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PLAINID_CLIENT_SECRET": "s", "PLAINID_REGION": "us1"}, "PLAINID_CLIENT_ID"),
        ({"PLAINID_CLIENT_ID": "i", "PLAINID_REGION": "us1"}, "PLAINID_CLIENT_SECRET"),
        ({"PLAINID_CLIENT_ID": "i", "PLAINID_CLIENT_SECRET": "s"}, "PLAINID_REGION"),
        (
            {
                "PLAINID_CLIENT_ID": "i",
                "PLAINID_CLIENT_SECRET": "s",
                "PLAINID_REGION": "us1",
                "PLAINID_BASE_URL": "https://x.example.com",
            },
            "PLAINID_BASE_URL",
        ),
        (
            {"PLAINID_CLIENT_ID": "i", "PLAINID_CLIENT_SECRET": "s", "PLAINID_REGION": "U.S"},
            "PLAINID_REGION",
        ),
    ],
)
def test_from_env_names_the_missing_or_bad_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(pa.ConfigurationError, match=named):
        pa.TokenProvider.from_env(env)


def test_from_env_names_every_missing_variable_at_once() -> None:
    with pytest.raises(pa.ConfigurationError) as info:
        pa.TokenProvider.from_env({"PLAINID_CLIENT_SECRET": "s3cret-value"})
    message = str(info.value)
    for name in ("PLAINID_CLIENT_ID", "PLAINID_REGION", "PLAINID_BASE_URL"):
        assert name in message
    assert "client secret" not in message
    assert "s3cret-value" not in message
    with pytest.raises(pa.ConfigurationError) as info:
        pa.TokenProvider.from_env({})
    for name in ("PLAINID_CLIENT_ID", "PLAINID_CLIENT_SECRET", "PLAINID_REGION"):
        assert name in str(info.value)


def test_from_env_reads_the_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret\n")
    env = {
        "PLAINID_CLIENT_ID": "cid",
        "PLAINID_CLIENT_SECRET_FILE": str(secret_file),
        "PLAINID_REGION": "us1",
    }
    provider = pa.TokenProvider.from_env(env)
    # one trailing newline dropped: the key is the one of the secret itself
    expected = pa.TokenProvider("cid", "file-secret", region="us1")
    assert provider.cache_key == expected.cache_key


@pytest.mark.parametrize(
    ("content", "named"),
    [(None, "PLAINID_CLIENT_SECRET_FILE"), ("\n", "is empty"), ("ok", "only one")],
)
def test_from_env_secret_file_errors_name_the_variable_and_hide_the_content(
    tmp_path: Path, content: str | None, named: str
) -> None:
    secret_file = tmp_path / "secret"
    env = {
        "PLAINID_CLIENT_ID": "cid",
        "PLAINID_CLIENT_SECRET_FILE": str(secret_file),
        "PLAINID_REGION": "us1",
    }
    if content is not None:
        secret_file.write_text(content)
    if content == "ok":
        env["PLAINID_CLIENT_SECRET"] = "also-set"
    with pytest.raises(pa.ConfigurationError, match=named) as info:
        pa.TokenProvider.from_env(env)
    assert "also-set" not in str(info.value)


def test_repr_shows_no_secret() -> None:
    provider = pa.TokenProvider("cid", "the-secret-value", region="us1")
    assert "the-secret-value" not in repr(provider)
    assert "the-secret-value" not in repr(provider.cache_key)
    assert "cid" in repr(provider)


# -- fetching and caching -----------------------------------------------------------------


async def test_token_request_is_a_form_post_with_no_basic_auth_and_nothing_in_the_url(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    token = await provider.get_token()
    assert fake.is_valid(token.access_token)
    [request] = fake.token_requests
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.grant_type == "client_credentials"
    assert request.accept == "application/json"
    assert request.query == ""
    assert not request.authorization_header


async def test_thousand_cold_callers_make_exactly_one_token_request(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.latency = 0.1
    tokens = await asyncio.gather(*(provider.get_token() for _ in range(1000)))
    assert len(fake.token_requests) == 1
    assert len({t.access_token for t in tokens}) == 1
    assert provider.stats.token_requests == 1
    assert provider.stats.tokens_fetched == 1


async def test_a_cached_token_is_served_without_a_request(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    first = await provider.get_token()
    for _ in range(10):
        assert await provider.get_token() is first
    assert len(fake.token_requests) == 1
    assert provider.stats.cache_hits == 10


async def test_expiry_is_measured_from_when_the_request_was_sent(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.expires_in = 100
    fake.latency = 0.3
    token = await provider.get_token()
    received = time.monotonic()
    # sent at least `latency` before the answer arrived, so expiry is at least that early
    assert token.expires_at_monotonic <= received - 0.3 + 100


async def test_two_providers_with_the_same_credentials_share_one_token(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    a = make_provider(fake, cache=cache)
    b = make_provider(fake, cache=cache)
    async with a, b:
        ta, tb = await asyncio.gather(a.get_token(), b.get_token())
        assert ta is tb
    assert len(fake.token_requests) == 1


async def test_providers_share_the_process_wide_cache_by_default(fake: FakePlainID) -> None:
    fake.add_client("shared-default", "shared-secret")
    base = str(fake.base_url)
    a = pa.TokenProvider("shared-default", "shared-secret", base_url=base)
    b = pa.TokenProvider("shared-default", "shared-secret", base_url=base)
    async with a, b:
        assert a.cache is b.cache
        assert (await a.get_token()) is (await b.get_token())
    assert len(fake.token_requests) == 1


async def test_a_provider_with_another_secret_never_gets_that_token(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    base = str(fake.base_url)
    good = pa.TokenProvider(fake.client_id, fake.client_secret, base_url=base, cache=cache)
    bad = pa.TokenProvider(fake.client_id, "another-secret", base_url=base, cache=cache, retry=FAST)
    async with good, bad:
        await good.get_token()
        with pytest.raises(pa.InvalidCredentialsError):
            await bad.get_token()
    assert len(fake.token_requests) == 2


async def test_rejected_credentials_are_tried_once_and_every_caller_gets_the_same_error(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    provider = pa.TokenProvider(
        fake.client_id, "wrong-secret", base_url=str(fake.base_url), cache=cache, retry=FAST
    )
    async with provider:
        results = await asyncio.gather(
            *(provider.get_token() for _ in range(20)), return_exceptions=True
        )
    assert len(fake.token_requests) == 1
    assert all(isinstance(r, pa.InvalidCredentialsError) for r in results)
    assert len({id(r) for r in results}) == 1
    error = results[0]
    assert isinstance(error, pa.InvalidCredentialsError)
    assert error.status == 401
    assert not error.retryable
    assert provider.stats.failures == 1


MALFORMED = {
    "not json": FakeResponse(body="<html>ok</html>", content_type="text/html"),
    "missing token": FakeResponse(body={"token_type": "Bearer", "expires_in": 60}),
    "empty token": FakeResponse(
        body={"access_token": "", "token_type": "Bearer", "expires_in": 60}
    ),
    "zero lifetime": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": 0}
    ),
    "negative lifetime": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": -5}
    ),
    "boolean lifetime": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": True}
    ),
    "absurd lifetime": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": 10**12}
    ),
    "text lifetime": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": "soon"}
    ),
    "other token type": FakeResponse(
        body={"access_token": "t", "token_type": "mac", "expires_in": 60}
    ),
    "oversized body": FakeResponse(
        body={"access_token": "t", "token_type": "Bearer", "expires_in": 60, "pad": "x" * 70_000}
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_token_response_is_an_invalid_token_response_error(
    fake: FakePlainID, provider: pa.TokenProvider, case: str
) -> None:
    fake.fail_next(MALFORMED[case])
    with pytest.raises(pa.InvalidTokenResponseError) as info:
        await provider.get_token()
    assert isinstance(info.value, ValueError)
    assert len(fake.token_requests) == 1  # a malformed 200 is not retried


async def test_transient_failures_are_retried(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.fail_next(503)
    token = await provider.get_token()
    assert fake.is_valid(token.access_token)
    assert len(fake.token_requests) == 2
    assert provider.stats.token_requests == 2


async def test_outage_with_no_cached_token_fails_with_endpoint_unavailable(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.start_outage(503)
    with pytest.raises(pa.TokenEndpointUnavailableError) as info:
        await provider.get_token()
    assert info.value.status == 503
    assert info.value.retryable
    assert len(fake.token_requests) == FAST.attempts


# -- refresh ahead of expiry -------------------------------------------------------------


async def test_stale_token_is_served_at_once_and_refreshed_in_the_background(
    fake: FakePlainID, provider: pa.TokenProvider, cache: pa.MemoryTokenCache
) -> None:
    stale = token_with(remaining=40)  # window opens at >= 45 s of a 100 s token
    await cache.store(provider.cache_key, stale)
    fake.latency = 0.2
    call = asyncio.ensure_future(provider.get_token())
    await asyncio.sleep(0)
    assert call.done(), "a caller in the refresh window must not wait"
    assert call.result() is stale
    assert provider.stats.background_refreshes == 1
    # more callers while the refresh runs: still served at once, no second refresh
    assert await provider.get_token() is stale
    assert provider.stats.background_refreshes == 1
    assert provider.stats.waits == 0
    await settle()
    fresh = await provider.get_token()
    assert fresh is not stale
    assert fake.is_valid(fresh.access_token)
    assert len(fake.token_requests) == 1


async def test_token_state_reports_the_cached_token(
    provider: pa.TokenProvider, cache: pa.MemoryTokenCache
) -> None:
    assert provider.token_state() is None
    await provider.get_token()
    assert provider.token_state() is pa.TokenState.FRESH
    await cache.store(provider.cache_key, token_with(remaining=40))
    assert provider.token_state() is pa.TokenState.STALE
    await cache.store(provider.cache_key, token_with(remaining=5))
    assert provider.token_state() is pa.TokenState.EXPIRED
    assert provider.stats.background_refreshes == 0  # looking starts nothing


async def test_expired_token_is_not_handed_out(
    fake: FakePlainID, provider: pa.TokenProvider, cache: pa.MemoryTokenCache
) -> None:
    await cache.store(provider.cache_key, token_with(remaining=5))  # under min(30, 10) s left
    token = await provider.get_token()
    assert token.access_token != "preloaded"
    assert provider.stats.waits == 1


async def test_outage_in_the_refresh_window_fails_no_call_and_warns_once(
    fake: FakePlainID,
    provider: pa.TokenProvider,
    cache: pa.MemoryTokenCache,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    clock = PolicyClock(cache.key_states)
    stale = token_with(remaining=40)
    await cache.store(provider.cache_key, stale)
    fake.start_outage(503)
    for _ in range(3):  # three failure episodes' worth of calls
        for _ in range(50):
            assert await provider.get_token() is stale
        await settle()
        clock.skip(100)  # let the backoff pass without sleeping
    assert provider.stats.background_refreshes == 3  # one per backoff period, not per call
    assert provider.stats.failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    fake.end_outage()
    assert await provider.get_token() is stale
    await settle()
    recovered = await provider.get_token()
    assert recovered is not stale
    assert fake.is_valid(recovered.access_token)
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_failed_background_refresh_waits_for_its_backoff(
    fake: FakePlainID, provider: pa.TokenProvider, cache: pa.MemoryTokenCache
) -> None:
    await cache.store(provider.cache_key, token_with(remaining=40))
    fake.start_outage(503)
    await provider.get_token()
    await settle()
    before = len(fake.token_requests)
    for _ in range(100):
        await provider.get_token()
    await settle()
    assert len(fake.token_requests) == before


async def test_background_retry_comes_before_half_the_usable_time_is_gone(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    clock = PolicyClock(cache.key_states)
    # a long backoff after a failure: 15-30 s (the longest cool-down step)
    slow = pa.RetryPolicy(attempts=1, backoff_base=1000, backoff_max=1000)
    async with make_provider(fake, cache=cache, retry=slow) as provider:
        stale = token_with(remaining=20)  # usable for 10 s more
        await cache.store(provider.cache_key, stale)
        fake.start_outage(503)
        await provider.get_token()
        await settle()
        fake.end_outage()
        episode = cache.key_states.get(provider.cache_key)
        assert episode is not None
        assert episode.record.retry_at - clock() >= 14.9
        # it failed with 10 s of usable time left: the retry is due 5 s later, not 15-30 s
        clock.skip(6)
        await provider.get_token()
        await settle()
        assert fake.token_requests[-1].status == 200
        assert (await provider.get_token()) is not stale


async def test_background_retry_respects_its_backoff_while_time_is_left(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    clock = PolicyClock(cache.key_states)
    slow = pa.RetryPolicy(attempts=1, backoff_base=1000, backoff_max=1000)
    async with make_provider(fake, cache=cache, retry=slow) as provider:
        await cache.store(provider.cache_key, token_with(remaining=20))
        fake.start_outage(503)
        await provider.get_token()
        await settle()
        fake.end_outage()
        clock.skip(4)  # before both the backoff and half the usable time left (5 s)
        requests = len(fake.token_requests)
        await provider.get_token()
        await settle()
        assert len(fake.token_requests) == requests


async def test_callers_who_must_wait_cut_short_a_background_backoff(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    slow_retry = pa.RetryPolicy(attempts=3, backoff_base=1000, backoff_max=1000, deadline=5000)
    provider = make_provider(fake, cache=cache, retry=slow_retry)
    async with provider:
        await cache.store(provider.cache_key, token_with(remaining=40))
        fake.fail_next(503)
        await provider.get_token()  # starts the background refresh, which fails once
        await requests_seen(fake)
        # the token is now too close to expiry: callers must wait for the refresh, which
        # is sleeping through a 500-1000 s backoff
        await cache.store(provider.cache_key, token_with(remaining=5, value="nearly-gone"))
        token = await asyncio.wait_for(provider.get_token(), timeout=30)
        assert fake.is_valid(token.access_token)
        assert [r.status for r in fake.token_requests] == [503, 200]


async def test_after_callers_start_waiting_the_backoff_starts_over(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    # backoff_base 0.02 s doubling to 1000 s: a long-running refresh sleeps for ages
    retry = pa.RetryPolicy(attempts=6, backoff_base=0.02, backoff_max=1000, deadline=5000)
    seen: list[pa.TokenEvent] = []
    provider = make_provider(fake, cache=cache, retry=retry, on_event=seen.append)
    async with provider:
        await cache.store(provider.cache_key, token_with(remaining=40))
        fake.fail_next(*[503] * 3)
        await provider.get_token()  # background refresh; its attempts fail
        await requests_seen(fake, 2)
        await cache.store(provider.cache_key, token_with(remaining=5, value="nearly-gone"))
        token = await asyncio.wait_for(provider.get_token(), timeout=30)
        assert fake.is_valid(token.access_token)
        # The events report each delay decided between attempts: the refresh's own
        # steps while nobody waited, then, after callers came waiting, one first-step
        # sleep (<= 0.02 s), not the 0.04-0.08 s and longer steps the refresh had reached
        delays = [e.retry_in for e in seen if e.kind is pa.EventKind.ATTEMPT_FAILED]
        assert len(delays) == 3
        assert delays[0] is not None
        assert 0.01 <= delays[0] <= 0.02
        assert delays[1] is not None
        assert delays[1] == 0.0 or delays[1] >= 0.02  # 0.0: callers came before it slept
        assert delays[2] is not None
        assert delays[2] <= 0.02
        assert [r.status for r in fake.token_requests] == [503, 503, 503, 200]


async def test_callers_who_join_a_failing_background_refresh_get_a_full_retry_budget(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    retry = pa.RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01, deadline=60)
    provider = make_provider(fake, cache=cache, retry=retry)
    async with provider:
        await cache.store(provider.cache_key, token_with(remaining=40))
        # the background refresh's first attempt fails slowly; callers come waiting meanwhile
        fake.fail_next(FakeResponse(status=503, delay=0.2), 503)
        await provider.get_token()
        await requests_seen(fake)
        await cache.store(provider.cache_key, token_with(remaining=5, value="nearly-gone"))
        tokens = await asyncio.gather(*(provider.get_token() for _ in range(10)))
        assert len({t.access_token for t in tokens}) == 1
        assert fake.is_valid(tokens[0].access_token)
        # the refresh gave up after its 2 attempts; the callers' own fetch then succeeded
        assert [r.status for r in fake.token_requests] == [503, 503, 200]


async def test_a_waiting_caller_gets_one_second_chance_only(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    retry = pa.RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01, deadline=60)
    provider = make_provider(fake, cache=cache, retry=retry)
    async with provider:
        await cache.store(provider.cache_key, token_with(remaining=40))
        fake.fail_next(FakeResponse(status=503, delay=0.2))
        fake.start_outage(503)
        await provider.get_token()
        await requests_seen(fake)
        await cache.store(provider.cache_key, token_with(remaining=5, value="nearly-gone"))
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token()
        assert len(fake.token_requests) == 4  # two fetches of two attempts, not more


async def test_refresh_margin_overrides_the_default_window(
    fake: FakePlainID, cache: pa.MemoryTokenCache
) -> None:
    provider = make_provider(fake, cache=cache, refresh_margin=20)
    async with provider:
        # 40 s left of 100 s is STALE by default (window 50 s) but FRESH with a 20 s margin
        await cache.store(provider.cache_key, token_with(remaining=40))
        await provider.get_token()
        assert provider.stats.background_refreshes == 0
        await cache.store(provider.cache_key, token_with(remaining=15, value="later"))
        await provider.get_token()
        assert provider.stats.background_refreshes == 1
        await settle()


# -- single flight and cancellation -------------------------------------------------------


async def test_cancelled_caller_does_not_cancel_the_fetch_for_others(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.latency = 0.2
    first = asyncio.ensure_future(provider.get_token())
    second = asyncio.ensure_future(provider.get_token())
    await requests_seen(fake)
    first.cancel()
    token = await second
    assert first.cancelled()
    assert fake.is_valid(token.access_token)
    assert len(fake.token_requests) == 1


async def test_cancelling_every_caller_leaves_the_fetch_to_fill_the_cache(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    fake.latency = 0.1
    callers = [asyncio.ensure_future(provider.get_token()) for _ in range(5)]
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await settle()
    token = await provider.get_token()
    assert len(fake.token_requests) == 1
    assert fake.is_valid(token.access_token)


def test_one_provider_works_across_successive_event_loops_under_contention() -> None:
    port = free_port()
    provider = pa.TokenProvider(
        "test-client",
        "test-secret",
        base_url=f"http://127.0.0.1:{port}",
        cache=pa.MemoryTokenCache(),
    )
    seen: list[str] = []
    requests: list[int] = []

    async def run(step: int) -> None:
        async with FakePlainID(port=port, latency=0.05) as fake:
            fake.add_client("test-client", "test-secret")
            for token in seen:  # the previous loop's fake issued these
                fake.revoke(token)
            if step == 1:
                tokens = await asyncio.gather(*(provider.get_token() for _ in range(200)))
            elif step == 2:
                cached = await asyncio.gather(*(provider.get_token() for _ in range(200)))
                assert {t.access_token for t in cached} == set(seen)
                tokens = await asyncio.gather(
                    *(provider.get_token(force_refresh=True) for _ in range(200))
                )
            else:
                provider.invalidate(await provider.get_token())
                tokens = await asyncio.gather(*(provider.get_token() for _ in range(200)))
            assert len({t.access_token for t in tokens}) == 1
            seen.append(tokens[0].access_token)
            requests.append(len(fake.token_requests))

    for step in (1, 2, 3):
        asyncio.run(run(step))
    assert requests == [1, 1, 1]
    assert len(set(seen)) == 3


# -- invalidate, force_refresh, rotation --------------------------------------------------


async def test_invalidate_compares_before_dropping(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    old = await provider.get_token()
    assert provider.invalidate(old)
    new = await provider.get_token()
    assert new != old
    assert not provider.invalidate(old)  # no longer the cached one: nothing happens
    assert await provider.get_token() is new
    assert len(fake.token_requests) == 2


async def test_many_concurrent_invalidations_of_one_token_cause_one_refresh(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    rejected = await provider.get_token()

    async def on_401() -> pa.Token:
        provider.invalidate(rejected)
        return await provider.get_token()

    tokens = await asyncio.gather(*(on_401() for _ in range(50)))
    assert len({t.access_token for t in tokens}) == 1
    assert len(fake.token_requests) == 2


async def test_concurrent_force_refresh_makes_one_request(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    old = await provider.get_token()
    tokens = await asyncio.gather(*(provider.get_token(force_refresh=True) for _ in range(30)))
    assert {t.access_token for t in tokens} != {old.access_token}
    assert len({t.access_token for t in tokens}) == 1
    assert len(fake.token_requests) == 2


async def test_secret_rotation_uses_the_new_secret(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    await provider.get_token()
    fake.rotate_secret(fake.client_id, "rotated-secret")
    provider.rotate_secret("rotated-secret")
    token = await provider.get_token()
    assert fake.is_valid(token.access_token)
    assert fake.token_requests[-1].status == 200
    assert len(fake.token_requests) == 2


async def test_rotation_during_a_fetch_fails_no_caller(
    fake: FakePlainID, provider: pa.TokenProvider
) -> None:
    # the fetch in flight is rejected because the secret was rotated under it
    fake.fail_next(FakeResponse(status=401, delay=0.2))
    callers = [asyncio.ensure_future(provider.get_token()) for _ in range(10)]
    await requests_seen(fake)
    fake.rotate_secret(fake.client_id, "rotated-secret")
    provider.rotate_secret("rotated-secret")
    tokens = await asyncio.gather(*callers)
    assert all(fake.is_valid(t.access_token) for t in tokens)
    assert [r.status for r in fake.token_requests] == [401, 200]


async def test_rotation_rejects_a_blank_secret(provider: pa.TokenProvider) -> None:
    with pytest.raises(pa.ConfigurationError, match="client_secret"):
        provider.rotate_secret("  ")


# -- lifecycle -----------------------------------------------------------------------------


async def test_close_is_idempotent_and_use_after_close_is_a_clear_error(
    provider: pa.TokenProvider,
) -> None:
    await provider.get_token()
    await provider.close()
    await provider.close()
    assert provider.closed
    with pytest.raises(pa.ProviderClosedError):
        await provider.get_token()
    with pytest.raises(pa.ProviderClosedError):
        async with provider:
            pass


async def test_close_cancels_a_background_refresh(
    fake: FakePlainID, provider: pa.TokenProvider, cache: pa.MemoryTokenCache
) -> None:
    await cache.store(provider.cache_key, token_with(remaining=40))
    fake.hang = True
    await provider.get_token()
    [flight] = running_fetches()
    await provider.close()
    with pytest.raises(asyncio.CancelledError):
        await flight.wait()


async def test_a_session_passed_in_is_used_and_never_closed(fake: FakePlainID) -> None:
    seen: list[str] = []

    async def recorder(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        seen.append(str(request.url))
        return await handler(request)

    async with aiohttp.ClientSession(middlewares=(recorder,)) as session:
        provider = make_provider(fake, cache=pa.MemoryTokenCache(), session=session)
        async with provider:
            await provider.get_token()
        assert not session.closed
        assert seen == []  # the session's middlewares are bypassed for token requests
    assert len(fake.token_requests) == 1


async def test_a_session_with_its_own_authorization_is_refused() -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as session:
        with pytest.raises(pa.ConfigurationError, match="session"):
            pa.TokenProvider("id", "secret", region="us1", session=session)


# -- redaction -----------------------------------------------------------------------------


def _everything_said(
    caplog: pytest.LogCaptureFixture, errors: list[BaseException], objects: list[object]
) -> str:
    parts = [r.getMessage() for r in caplog.records]
    parts += [repr(r.args) for r in caplog.records]
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            parts += [str(chain), repr(chain), repr(chain.args)]
            chain = chain.__cause__ or chain.__context__
    parts += [repr(o) for o in objects] + [str(o) for o in objects]
    return "\n".join(parts)


async def test_secret_and_token_appear_in_no_log_repr_or_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "S3CRET-never-shown"
    errors: list[BaseException] = []
    objects: list[object] = []
    async with FakePlainID(client_id="cid", client_secret=secret) as fake:
        cache = pa.MemoryTokenCache()
        provider = pa.TokenProvider(
            "cid", secret, base_url=str(fake.base_url), cache=cache, retry=FAST
        )
        async with provider:
            token = await provider.get_token()
            objects += [provider, token, provider.cache_key, provider.stats, cache, fake]
            await cache.store(
                provider.cache_key, token_with(remaining=40, value=token.access_token + "x")
            )
            fake.start_outage(503)
            await provider.get_token()  # background refresh fails, warns
            await settle()
            fake.end_outage()
            provider.invalidate(await provider.get_token())
            for scripted in (
                503,
                FakeResponse(body={"message": f"bad secret {secret}"}, status=401),
                MALFORMED["text lifetime"],
            ):
                fake.fail_next(*[scripted] * (FAST.attempts if scripted == 503 else 1))
                try:  # forced: each scripted failure is fetched, not met by the cool-down
                    await provider.get_token(force_refresh=True)
                except pa.PlainIDError as exc:
                    errors.append(exc)
        wrong = pa.TokenProvider(
            "cid", secret + "-old", base_url=str(fake.base_url), cache=cache, retry=FAST
        )
        async with wrong:
            with pytest.raises(pa.InvalidCredentialsError) as info:
                await wrong.get_token()
            errors.append(info.value)
            objects.append(wrong)
        issued = fake.issued_tokens
    assert len(errors) == 4
    said = _everything_said(caplog, errors, objects)
    assert secret not in said
    for value in issued:
        assert value not in said


# -- closed means closed (moved from test_core.py) ------------------------------------


async def test_after_close_nothing_hands_out_a_token() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        async with provider.session() as session:
            await provider.get_token()
            await provider.close()
            assert provider.token_state() is pa.TokenState.FRESH  # looking starts nothing
            with pytest.raises(pa.ProviderClosedError):
                await provider.get_token()
            with pytest.raises(pa.ProviderClosedError):
                await session.get("api/1.0/x")
            with pytest.raises(pa.ProviderClosedError):
                await provider.get_token()


async def test_a_call_waiting_when_its_provider_closes_gets_no_token() -> None:
    async with FakePlainID(latency=0.2) as fake:
        cache = pa.MemoryTokenCache()
        starter, waiting = make_provider(fake, cache=cache), make_provider(fake, cache=cache)
        async with starter:
            first = asyncio.create_task(starter.get_token())
            await requests_seen(fake)
            call = asyncio.create_task(waiting.get_token())
            while waiting.stats.waits == 0:  # noqa: ASYNC110 (it joined the starter's fetch)
                await asyncio.sleep(0)
            await waiting.close()
            with pytest.raises(pa.ProviderClosedError):
                await asyncio.wait_for(call, 10)
            assert fake.is_valid((await first).access_token)


# -- the 401 guard (moved from test_core.py) -----------------------------------------------


@pytest.fixture
async def always_401() -> AsyncIterator[str]:
    """An API on 127.0.0.1 that answers 401 to every request."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="no")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    async with LoopbackServer(app) as server:
        yield str(server.url)


async def guarded_calls(provider: pa.TokenProvider, api: str, calls: int) -> list[int]:
    middleware = pa.BearerAuthMiddleware(provider, origins=[api])
    statuses = []
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        for _ in range(calls):
            async with session.get(f"{api}/api/1.0/anything") as response:
                statuses.append(response.status)
    return statuses


async def test_an_api_that_always_answers_401_costs_at_most_three_token_requests(
    always_401: str,
) -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        async with provider:
            statuses = await guarded_calls(provider, always_401, 50)
    assert statuses == [401] * 50
    assert len(fake.token_requests) <= 3
    record(
        "401 guard: an API that always answers 401",
        load="50 sequential calls through BearerAuthMiddleware",
        token_requests=len(fake.token_requests),
    )


async def test_a_token_revoked_once_recovers_on_the_next_call() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        async with provider, provider.session() as session:
            token = await provider.get_token()
            fake.revoke(token.access_token)
            async with session.get("api/1.0/x") as response:
                assert response.status == 200
            assert len(fake.token_requests) == 2
            # A second rejection inside the guard interval comes back as it is: no request.
            fake.revoke((await provider.get_token()).access_token)
            async with session.get("api/1.0/x") as response:
                assert response.status == 401
            assert len(fake.token_requests) == 2


def test_the_guard_interval_doubles_on_repeats_and_resets_after_a_quiet_spell() -> None:
    provider = pa.TokenProvider("id", "secret", region="us1", cache=pa.MemoryTokenCache())
    cache = provider.cache
    assert isinstance(cache, pa.MemoryTokenCache)
    clock = PolicyClock(cache.key_states)
    state = cache.key_states.state(provider.cache_key)
    lengths: list[int] = []
    for _ in range(6):
        token = pa.Token.issued(f"t{len(lengths)}", expires_in=3600)
        asyncio.run(cache.store(provider.cache_key, token))
        assert provider.report_unauthorized(token)
        guard = state.guard
        # Another 401 for the token being replaced: its retry waits for the replacement,
        # and the guard is left as it is.
        assert provider.report_unauthorized(token)
        assert state.guard == guard
        lengths.append(round(state.guard.until - clock()))
        clock.skip(state.guard.until - clock())  # the interval has just ended
    assert lengths == [5, 10, 20, 40, 60, 60]
    clock.skip(state.guard.until - clock() + 1000)  # long quiet: the next one starts over
    token = pa.Token.issued("later", expires_in=3600)
    asyncio.run(cache.store(provider.cache_key, token))
    assert provider.report_unauthorized(token)
    assert round(state.guard.until - clock()) == 5


async def test_a_revocation_after_steady_unrelated_401s_recovers_on_the_second_call(
    always_401: str,
) -> None:
    """One API path answers 401 all the time (a permission problem); then the token is
    really revoked: healthy calls recover within 2 calls, not after the guard's interval."""
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        middleware = pa.BearerAuthMiddleware(provider, origins=[always_401])
        async with provider, aiohttp.ClientSession(middlewares=(middleware,)) as session:

            async def healthy() -> int:
                async with session.get(f"{fake.base_url}/api/1.0/x") as response:
                    return response.status

            async def refused() -> int:
                async with session.get(f"{always_401}/api/1.0/x") as response:
                    return response.status

            for _ in range(10):  # steady: the refused path 401s, the healthy one works
                assert await refused() == 401
                assert await healthy() == 200
                assert await healthy() == 200
            steady_requests = len(fake.token_requests)
            fake.revoke((await provider.get_token()).access_token)
            statuses = [await healthy(), await healthy(), await healthy()]
    assert statuses[1:] == [200, 200], statuses  # recovered by the second call
    assert len(fake.token_requests) == steady_requests + 1
    assert steady_requests <= 3  # the unrelated 401s cost no token storm


# -- the hot path never serves a dropped token (moved from test_core.py) -------------------


async def test_an_invalidated_token_is_never_served_from_the_hot_path() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        provider = make_provider(fake, cache=cache)
        async with provider:
            token = await provider.get_token()
            assert await provider.get_token() is token  # the hot path
            other = make_provider(fake, cache=cache)
            assert other.invalidate(token)  # another provider of the key drops it
            assert await provider.get_token() is not token
            cache.clear()
            assert await provider.get_token() is not token
            await other.close()


async def test_a_cool_down_lasts_at_least_the_servers_retry_after() -> None:
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        retry = pa.RetryPolicy(attempts=3, backoff_base=0.01, deadline=1.0)
        provider = make_provider(fake, cache=cache, retry=retry)
        async with provider:
            fake.start_outage(503, retry_after="20")
            with pytest.raises(pa.TokenEndpointUnavailableError) as info:
                await provider.get_token()
            assert info.value.retry_after == 20
            # Retry-After went past the deadline: one attempt, then a 20 s cool-down.
            assert len(fake.token_requests) == 1
            state = cache.key_states.get(provider.cache_key)
            assert state is not None
            assert state.cooldown_until - time.monotonic() > 19


# -- a valid token is replaced, never dropped, issue 20 (moved from test_core.py) ----------


async def test_a_token_that_arrives_expired_is_a_failed_fetch_never_handed_out() -> None:
    """A 2 s token after 2.5 s of latency (a process frozen mid-fetch): nobody gets it."""
    async with FakePlainID(expires_in=2, latency=2.5) as fake:
        cache = pa.MemoryTokenCache()
        provider = make_provider(fake, cache=cache, retry=pa.RetryPolicy(attempts=1))
        async with provider:
            callers = [asyncio.create_task(provider.get_token()) for _ in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 30)
            for result in results:
                assert isinstance(result, pa.TokenEndpointUnavailableError), result
                assert "expired" in str(result)
            assert len(fake.token_requests) == 1
            assert cache.get(provider.cache_key) is None  # not stored either
            health = provider.health()
            assert health.failures == 1
            assert provider.stats.failures == 1


def _dead_on_arrival() -> FakeResponse:
    """A 200 whose 1 s token is dead by the time it arrives (a process frozen mid-fetch)."""
    body = {"access_token": "dead-on-arrival", "token_type": "Bearer", "expires_in": 1}
    return FakeResponse(body=body, delay=1.2)


async def test_a_token_that_arrives_expired_is_asked_for_once_more_and_the_next_one_served() -> (
    None
):
    """Lambda thawed mid-fetch: the endpoint is fine, so one more request, at once, serves."""
    async with FakePlainID() as fake:
        fake.fail_next(_dead_on_arrival())
        provider, recorder = recording(fake)
        async with provider:
            token = await asyncio.wait_for(provider.get_token(), 30)
            assert token.access_token != "dead-on-arrival"
            assert fake.is_valid(token.access_token)
            assert len(fake.token_requests) == 2
            assert provider.stats.failures == 0
            (attempt,) = recorder.of(pa.EventKind.ATTEMPT_FAILED)
            assert attempt.retry_in == 0
            assert "arrived expired" in str(attempt.error)


async def test_a_token_that_arrives_expired_twice_fails_the_fetch_after_two_requests() -> None:
    async with FakePlainID() as fake:
        fake.fail_next(_dead_on_arrival(), _dead_on_arrival())
        provider, _ = recording(fake, retry=pa.RetryPolicy(attempts=4, deadline=30.0))
        async with provider:
            with pytest.raises(pa.TokenEndpointUnavailableError, match="arrived expired"):
                await asyncio.wait_for(provider.get_token(), 30)
            assert len(fake.token_requests) == 2
            assert provider.stats.failures == 1


async def test_force_refresh_during_an_outage_keeps_the_valid_token_served() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST)
        async with provider:
            token = await provider.get_token()
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token(force_refresh=True)
            # Replace, never drop: the token, still valid, is served to every other call.
            served = [await provider.get_token() for _ in range(100)]
            assert all(t is token for t in served)
            fake.end_outage()
            fresh = await provider.get_token(force_refresh=True)
            assert fresh != token
            assert await provider.get_token() is fresh


async def test_a_401_during_an_outage_gets_its_response_and_the_valid_token_stays() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST)
        async with provider, provider.session() as session:
            token = await provider.get_token()
            fake.start_outage(503)
            fake.revoke(token.access_token)
            # The 401 call gets a response (its 401), not the endpoint's outage.
            async with session.get("api/1.0/x") as response:
                assert response.status == 401
            assert await provider.get_token() is token  # not dropped before a replacement
            fake.end_outage()


async def test_a_replacement_refused_for_invalid_credentials_drops_the_token() -> None:
    async with FakePlainID() as fake:
        provider = make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST)
        async with provider:
            token = await provider.get_token()
            fake.start_outage(401)
            with pytest.raises(pa.InvalidCredentialsError):
                await provider.get_token(force_refresh=True)
            assert provider.cache.get(provider.cache_key) is None
            assert token is not None
