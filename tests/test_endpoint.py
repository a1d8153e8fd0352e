"""Token endpoint: URL validation, retry policy, request_token (parsing: test_wire.py).

The token request is mocked with aioresponses; a few wire-level checks (the encoded body,
session middlewares, TLS, streamed bodies) use a real aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from _servers import LoopbackServer, client_tls, server_tls
from _tracebacks import everything_reported, failure_of, raised_by, with_locals
from aiohttp import web
from aioresponses import aioresponses
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from plainid_async._endpoint import (
    TOKEN_PATH,
    Endpoint,
    RetryPolicy,
    request_token,
    resolve_endpoint,
)
from plainid_async._origins import is_loopback_host
from plainid_async._secret import Secret
from plainid_async._wire import MAX_BODY_SIZE, parse_token_response
from plainid_async.exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    InvalidTokenResponseError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    import trustme
    from aioresponses.core import RequestCall

    from plainid_async._token import Token

CLIENT_ID = "client-123"
SECRET = "S3cr3t-client-secret-Value"
ACCESS = "eyJhbGciOiJIUzI1NiJ9.payload-of-the-token.signature"
TOKEN_URL = URL("https://api.us1.plainid.io/api/1.0/api-key/token")
GOOD = {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600}


# -- is_loopback_host ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "localhost.example.com",
        "10.0.0.1",
        "0.0.0.0",  # noqa: S104 (a host name under test; nothing binds to it)
        "::",
        "api.us1.plainid.io",
    ],
)
def test_non_loopback_hosts(host: str | None) -> None:
    assert not is_loopback_host(host)


# -- resolve_endpoint: region --------------------------------------------------------------


@pytest.mark.parametrize("region", ["us1", "ca1", "eu1", "ap2", "x", "usgov1", "123"])
def test_region_gives_the_plainid_api_origin(region: str) -> None:
    endpoint = resolve_endpoint(region=region, base_url=None)
    assert endpoint == Endpoint(
        api_url=URL(f"https://api.{region}.plainid.io"),
        token_url=URL(f"https://api.{region}.plainid.io/api/1.0/api-key/token"),
    )


@pytest.mark.parametrize(
    "region",
    [
        "",
        " ",
        "US1",
        "Us1",
        "us1.evil.com",
        "us1/evil",
        "evil.com/",
        "user@evil.com",
        "us@1",
        "us 1",
        "us1\n",
        "us-1",
        "us_1",
        "us1:443",
        "us1#",
        "us1?x",
        "ü1",
        "x" * 100,
    ],
)
def test_region_that_could_change_the_host_is_rejected(region: str) -> None:
    with pytest.raises(ConfigurationError, match="region"):
        resolve_endpoint(region=region, base_url=None)


@pytest.mark.parametrize("region", [1, b"us1", ["us1"]])
def test_region_that_is_not_a_string_is_rejected(region: Any) -> None:
    with pytest.raises(ConfigurationError, match="region"):
        resolve_endpoint(region=region, base_url=None)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="region"):
        resolve_endpoint(region="US1", base_url=None)


@pytest.mark.parametrize(("region", "base_url"), [(None, None), ("us1", "https://pap.example.com")])
def test_exactly_one_of_region_and_base_url(region: str | None, base_url: str | None) -> None:
    with pytest.raises(ConfigurationError, match=r"region=.*base_url="):
        resolve_endpoint(region=region, base_url=base_url)


# -- resolve_endpoint: base_url ------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "api_url"),
    [
        ("https://pap.example.com", "https://pap.example.com"),
        ("https://pap.example.com/", "https://pap.example.com"),
        ("https://pap.example.com:8443/plainid/", "https://pap.example.com:8443/plainid"),
        ("https://pap.example.com/a/b//", "https://pap.example.com/a/b"),
        ("https://pap.example.com/a%2Fb/", "https://pap.example.com/a%2Fb"),
        ("https://pap.example.com/a%20b", "https://pap.example.com/a%20b"),
        ("HTTPS://PAP.Example.COM/x", "https://pap.example.com/x"),
        ("http://localhost:8080/p/", "http://localhost:8080/p"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
        ("http://127.1.2.3", "http://127.1.2.3"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_base_url_is_kept_with_its_path_prefix(base_url: str, api_url: str) -> None:
    endpoint = resolve_endpoint(region=None, base_url=base_url)
    assert str(endpoint.api_url) == api_url
    assert str(endpoint.token_url) == f"{api_url}/{TOKEN_PATH}"


def test_base_url_may_be_a_yarl_url() -> None:
    endpoint = resolve_endpoint(region=None, base_url=URL("https://pap.example.com/x/"))
    assert endpoint.token_url == URL("https://pap.example.com/x/api/1.0/api-key/token")


@pytest.mark.parametrize(
    "base_url",
    [
        "http://pap.example.com",  # plain http off loopback
        "http://10.0.0.1",
        "http://0.0.0.0",
        "http://localhost.evil.com",
        "https://user:pw@pap.example.com",  # userinfo
        "https://user@pap.example.com",
        "https://pap.example.com?x=1",  # query
        "https://pap.example.com/#frag",  # fragment
        "/api",  # relative
        "pap.example.com",
        "//pap.example.com",
        "ftp://pap.example.com",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://",
        "",
    ],
)
def test_unsafe_base_url_is_rejected(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        resolve_endpoint(region=None, base_url=base_url)


@pytest.mark.parametrize("base_url", [1, b"https://pap.example.com", object()])
def test_base_url_that_is_not_a_string_or_url_is_rejected(base_url: Any) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        resolve_endpoint(region=None, base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "https://admin:Pa55word@pap.example.com",
        "http://admin:Pa55word@pap.example.com",
        "admin:Pa55word@pap.example.com",  # no scheme: yarl finds no host
        "https://admin:Pa55word@",  # yarl cannot parse it
        "https://admin:Pa55word@pap example.com",
    ],
)
def test_base_url_error_never_echoes_a_password(base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url") as info:
        resolve_endpoint(region=None, base_url=base_url)
    assert "Pa55word" not in str(info.value)


# -- RetryPolicy ---------------------------------------------------------------------------


def test_default_policy_makes_at_least_three_attempts_within_a_deadline() -> None:
    policy = RetryPolicy()
    assert policy.attempts >= 3
    assert math.isfinite(policy.deadline)


def test_backoff_grows_exponentially() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=100.0)
    assert [policy.backoff(n, 0.0) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]


def test_backoff_is_capped_at_backoff_max() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0)
    assert policy.backoff(10, 0.0) == 2.5
    assert policy.backoff(10, 0.999) <= 5.0


@given(
    attempt=st.integers(min_value=1, max_value=100_000),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    backoff_base=st.floats(min_value=0.0, max_value=100.0),
    backoff_max=st.floats(min_value=0.0, max_value=1000.0),
)
def test_backoff_with_jitter_stays_within_half_and_all_of_the_base(
    attempt: int, jitter: float, backoff_base: float, backoff_max: float
) -> None:
    policy = RetryPolicy(backoff_base=backoff_base, backoff_max=backoff_max)
    base = min(backoff_max, backoff_base * 2.0 ** min(attempt - 1, 1023))
    delay = policy.backoff(attempt, jitter)
    assert base / 2 <= delay <= base


def test_backoff_for_a_very_late_attempt_is_the_cap() -> None:
    policy = RetryPolicy(attempts=5000, backoff_base=0.0, backoff_max=8.0, deadline=1e9)
    assert policy.backoff(3000, 0.5) == 0.0
    assert RetryPolicy(attempts=5000).backoff(3000, 0.0) == 4.0


def test_next_delay_without_a_hint_is_the_backoff() -> None:
    policy = RetryPolicy()
    assert policy.next_delay(1, elapsed=0.0, retry_after=None, jitter=0.3) == policy.backoff(1, 0.3)


def test_next_delay_honours_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=60.0, deadline=100.0)
    assert policy.next_delay(1, elapsed=0.0, retry_after=7.0, jitter=0.5) == 7.0
    assert policy.next_delay(1, elapsed=0.0, retry_after=0.0, jitter=0.5) == 0.0


def test_next_delay_caps_retry_after_at_max_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=10.0, deadline=100.0)
    assert policy.next_delay(1, elapsed=0.0, retry_after=3600.0, jitter=0.5) == 10.0


def test_next_delay_gives_up_after_the_last_attempt() -> None:
    policy = RetryPolicy(attempts=3)
    assert policy.next_delay(2, elapsed=0.0, retry_after=None, jitter=0.5) is not None
    assert policy.next_delay(3, elapsed=0.0, retry_after=None, jitter=0.5) is None
    assert RetryPolicy(attempts=1).next_delay(1, elapsed=0, retry_after=None, jitter=0) is None


def test_next_delay_gives_up_when_the_wait_would_cross_the_deadline() -> None:
    policy = RetryPolicy(deadline=10.0, max_retry_after=60.0)
    assert policy.next_delay(1, elapsed=2.0, retry_after=7.0, jitter=0.5) == 7.0
    assert policy.next_delay(1, elapsed=3.5, retry_after=7.0, jitter=0.5) is None
    assert policy.next_delay(1, elapsed=10.0, retry_after=None, jitter=0.5) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("attempts", 0),
        ("attempts", -1),
        ("attempts", 2.5),
        ("attempts", True),
        ("attempts", "3"),
        ("backoff_base", -0.1),
        ("backoff_base", float("nan")),
        ("backoff_max", float("inf")),
        ("backoff_max", "8"),
        ("max_retry_after", -1),
        ("max_retry_after", None),
        ("deadline", float("nan")),
        ("deadline", -5),
        ("deadline", True),
    ],
)
def test_invalid_retry_settings_are_configuration_errors(name: str, value: object) -> None:
    settings: dict[str, Any] = {name: value}
    with pytest.raises(ConfigurationError, match=name):
        RetryPolicy(**settings)


# -- request_token with aioresponses -------------------------------------------------------


class FakeSleep:
    """Records the delays request_token waits, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


async def fetch(
    session: aiohttp.ClientSession,
    sleep: Callable[[float], Awaitable[object]],
    *,
    url: URL = TOKEN_URL,
    retry: RetryPolicy | None = None,
    on_attempt: Callable[[], None] | None = None,
    ssl: ssl.SSLContext | bool | None = None,
) -> Token:
    return await request_token(
        session,
        url,
        client_id=CLIENT_ID,
        client_secret=Secret(SECRET),
        timeout=5.0,
        retry=RetryPolicy() if retry is None else retry,
        ssl=ssl,
        on_attempt=on_attempt,
        sleep=sleep,
        jitter=lambda: 0.5,
    )


def sent(mock: aioresponses, url: URL = TOKEN_URL) -> list[RequestCall]:
    assert mock.requests is not None
    return mock.requests.get(("POST", url), [])


def all_requests(mock: aioresponses) -> list[tuple[str, URL]]:
    assert mock.requests is not None
    return [key for key, calls in mock.requests.items() for _ in calls]


async def test_token_request_shape(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, payload=GOOD)
    token = await fetch(session, sleep)
    assert token.access_token == ACCESS
    assert all_requests(mocked) == [("POST", TOKEN_URL)]
    [call] = sent(mocked)
    kwargs = call.kwargs
    assert urllib.parse.parse_qs(kwargs["data"]._value.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [SECRET],
    }
    assert SECRET not in repr(kwargs["data"])
    headers = {k.lower(): v for k, v in kwargs["headers"].items()}
    assert headers == {
        "accept": "application/json",
        "content-type": "application/x-www-form-urlencoded",
    }
    assert kwargs.get("auth") is None
    assert kwargs.get("params") is None
    assert kwargs["allow_redirects"] is False
    assert kwargs["middlewares"] == ()
    assert TOKEN_URL.query_string == ""
    assert SECRET not in str(TOKEN_URL)


async def test_token_expiry_is_measured_from_when_the_request_was_sent(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, payload={**GOOD, "expires_in": 600})
    before_wall, before = time.time(), time.monotonic()
    token = await fetch(session, sleep)
    after_wall, after = time.time(), time.monotonic()
    assert token.expires_in == 600.0
    assert before + 600 <= token.expires_at_monotonic <= after + 600
    assert before_wall + 600 <= token.expires_at <= after_wall + 600


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_rejected_credentials_are_not_retried(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, status: int
) -> None:
    mocked.post(TOKEN_URL, status=status, repeat=True)
    with pytest.raises(InvalidCredentialsError) as info:
        await fetch(session, sleep)
    assert info.value.status == status
    assert info.value.retryable is False
    assert len(sent(mocked)) == 1
    assert sleep.delays == []


async def test_plainid_message_is_quoted_with_the_secret_redacted(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    error_body = {
        "id": "abc",
        "status": 401,
        "name": "Unauthorized",
        "message": f"client secret {SECRET} is not valid for {CLIENT_ID}",
    }
    mocked.post(TOKEN_URL, status=401, payload=error_body)
    with pytest.raises(InvalidCredentialsError) as info:
        await fetch(session, sleep)
    text = str(info.value)
    assert "is not valid for client-123" in text
    assert "HTTP 401" in text
    assert SECRET not in text
    assert SECRET not in repr(info.value)


async def test_control_characters_and_length_of_a_quoted_message_are_bounded(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=401, payload={"message": "bad\r\nX-Injected: 1" + "z" * 5000})
    with pytest.raises(InvalidCredentialsError) as info:
        await fetch(session, sleep)
    text = str(info.value)
    assert "\r" not in text
    assert "\n" not in text
    assert len(text) < 400


@pytest.mark.parametrize(
    "error_body", [b"", b"Unauthorized", b"[1, 2]", b'{"message": 42}', b'{"x": NaN}']
)
async def test_401_without_a_usable_message_is_still_invalid_credentials(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, error_body: bytes
) -> None:
    mocked.post(TOKEN_URL, status=401, body=error_body)
    with pytest.raises(InvalidCredentialsError, match=r"HTTP 401"):
        await fetch(session, sleep)


async def test_5xx_twice_then_200_gives_the_token_after_three_requests(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=503)
    mocked.post(TOKEN_URL, status=503)
    mocked.post(TOKEN_URL, payload=GOOD)
    attempts: list[None] = []
    token = await fetch(session, sleep, on_attempt=lambda: attempts.append(None))
    assert token.access_token == ACCESS
    assert len(sent(mocked)) == 3
    assert len(attempts) == 3
    policy = RetryPolicy()
    assert sleep.delays == [policy.backoff(1, 0.5), policy.backoff(2, 0.5)]
    assert sleep.delays[1] > sleep.delays[0]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, status: int
) -> None:
    mocked.post(TOKEN_URL, status=status)
    mocked.post(TOKEN_URL, payload=GOOD)
    assert (await fetch(session, sleep)).access_token == ACCESS
    assert len(sent(mocked)) == 2


async def test_429_retry_after_seconds_is_honoured(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=429, headers={"Retry-After": "7"})
    mocked.post(TOKEN_URL, payload=GOOD)
    await fetch(session, sleep)
    assert sleep.delays == [7.0]


async def test_retry_after_as_an_http_date_is_honoured(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    mocked.post(TOKEN_URL, status=503, headers={"Retry-After": when})
    mocked.post(TOKEN_URL, payload=GOOD)
    await fetch(session, sleep)
    [delay] = sleep.delays
    assert 15.0 < delay <= 20.0


async def test_retry_after_in_the_past_retries_at_once(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    mocked.post(TOKEN_URL, payload=GOOD)
    await fetch(session, sleep)
    assert sleep.delays == [0.0]


async def test_retry_after_is_capped_at_max_retry_after(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=429, headers={"Retry-After": "86400"})
    mocked.post(TOKEN_URL, payload=GOOD)
    await fetch(session, sleep, retry=RetryPolicy(max_retry_after=5.0, deadline=100.0))
    assert sleep.delays == [5.0]


async def test_retry_after_past_the_deadline_gives_up_without_waiting(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=429, headers={"Retry-After": "45"}, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, retry=RetryPolicy(deadline=30.0, max_retry_after=60.0))
    assert info.value.status == 429
    assert len(sent(mocked)) == 1
    assert sleep.delays == []


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ClientConnectionError("connection refused"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
        aiohttp.ServerTimeoutError("read timeout"),
    ],
    ids=["connection", "disconnected", "timeout", "server-timeout"],
)
async def test_network_failures_are_retried_then_raised_with_the_cause_chained(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    sleep: FakeSleep,
    exception: Exception,
) -> None:
    mocked.post(TOKEN_URL, exception=exception, repeat=True)
    attempts: list[None] = []
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(
            session,
            sleep,
            retry=RetryPolicy(attempts=3),
            on_attempt=lambda: attempts.append(None),
        )
    error = info.value
    assert error.__cause__ is exception
    assert error.retryable is True
    assert error.status is None
    assert "gave up after 3 attempts" in str(error)
    assert len(sent(mocked)) == 3
    assert len(attempts) == 3
    assert len(sleep.delays) == 2


async def test_connection_error_then_success_gives_the_token(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, exception=aiohttp.ClientConnectionError("reset"))
    mocked.post(TOKEN_URL, payload=GOOD)
    assert (await fetch(session, sleep)).access_token == ACCESS
    assert len(sleep.delays) == 1


async def test_5xx_until_the_attempts_run_out_raises_with_the_status(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=502, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, retry=RetryPolicy(attempts=4))
    assert info.value.status == 502
    assert info.value.retryable is True
    assert "gave up after 4 attempts" in str(info.value)
    assert len(sent(mocked)) == 4
    policy = RetryPolicy(attempts=4)
    assert sleep.delays == [policy.backoff(n, 0.5) for n in (1, 2, 3)]


async def test_5xx_message_is_quoted_with_the_secret_redacted(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=500, payload={"message": f"boom {SECRET}"}, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, retry=RetryPolicy(attempts=2))
    assert "boom" in str(info.value)
    assert SECRET not in str(info.value)


async def test_redirect_is_neither_followed_nor_retried(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    evil = URL("https://evil.example.com/steal")
    mocked.post(TOKEN_URL, status=302, headers={"Location": str(evil)}, repeat=True)
    mocked.post(evil, payload=GOOD, repeat=True)
    mocked.get(evil, payload=GOOD, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep)
    assert info.value.status == 302
    assert info.value.retryable is False
    assert all_requests(mocked) == [("POST", TOKEN_URL)]
    assert sleep.delays == []


@pytest.mark.parametrize("status", [404, 405, 410, 418])
async def test_other_client_errors_are_not_retried(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, status: int
) -> None:
    mocked.post(TOKEN_URL, status=status, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError, match="base_url") as info:
        await fetch(session, sleep)
    assert info.value.status == status
    assert info.value.retryable is False
    assert len(sent(mocked)) == 1


@pytest.mark.parametrize("status", [201, 204])
async def test_success_other_than_200_is_an_invalid_response(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, status: int
) -> None:
    mocked.post(TOKEN_URL, status=status, payload=GOOD)
    with pytest.raises(InvalidTokenResponseError) as info:
        await fetch(session, sleep)
    assert info.value.status == status
    assert len(sent(mocked)) == 1


async def test_malformed_200_is_not_retried(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, payload={**GOOD, "expires_in": "soon"}, repeat=True)
    with pytest.raises(InvalidTokenResponseError) as info:
        await fetch(session, sleep)
    assert info.value.status == 200
    assert ACCESS not in str(info.value)
    assert len(sent(mocked)) == 1


async def test_oversized_200_body_is_an_invalid_response(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, payload={**GOOD, "padding": "x" * MAX_BODY_SIZE})
    with pytest.raises(InvalidTokenResponseError, match="larger than"):
        await fetch(session, sleep)
    assert len(sent(mocked)) == 1


async def test_oversized_error_body_is_ignored_and_the_status_still_counts(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=503, body=b"x" * (MAX_BODY_SIZE + 1))
    mocked.post(TOKEN_URL, payload=GOOD)
    assert (await fetch(session, sleep)).access_token == ACCESS


async def test_on_attempt_counts_each_http_request(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=500)
    mocked.post(TOKEN_URL, exception=aiohttp.ClientConnectionError())
    mocked.post(TOKEN_URL, status=401)
    count = 0

    def on_attempt() -> None:
        nonlocal count
        count += 1

    with pytest.raises(InvalidCredentialsError):
        await fetch(session, sleep, on_attempt=on_attempt)
    assert count == 3
    assert len(sent(mocked)) == 3


async def test_logs_never_contain_the_secret_or_the_token(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    sleep: FakeSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    mocked.post(TOKEN_URL, status=500, payload={"message": f"echo {SECRET}"})
    mocked.post(TOKEN_URL, payload=GOOD)
    await fetch(session, sleep)
    assert caplog.records  # something was logged
    assert SECRET not in caplog.text
    assert ACCESS not in caplog.text


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 503},
        {"status": 401, "payload": {"message": SECRET}},
        {"exception": aiohttp.ClientConnectionError(f"refused {TOKEN_URL}")},
    ],
)
async def test_no_error_message_contains_the_secret(
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    sleep: FakeSleep,
    failure: dict[str, Any],
) -> None:
    mocked.post(TOKEN_URL, repeat=True, **failure)
    with pytest.raises(TokenRequestError) as info:
        await fetch(session, sleep, retry=RetryPolicy(attempts=2))
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


# -- request_token against a real server on 127.0.0.1 --------------------------------------


class Recorder:
    """A tiny token endpoint that records what it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.redirect_hits = 0
        self.handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    async def token(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "content_type": request.content_type,
                "headers": dict(request.headers),
                "query": request.query_string,
                "form": dict(await request.post()),
            }
        )
        if self.handler is not None:
            return await self.handler(request)
        return web.json_response(GOOD)

    async def elsewhere(self, _request: web.Request) -> web.StreamResponse:
        self.redirect_hits += 1
        return web.json_response(GOOD)


async def serve(
    recorder: Recorder, ssl_context: ssl.SSLContext | None = None
) -> tuple[LoopbackServer, URL]:
    app = web.Application()
    app.router.add_post(f"/prefix/{TOKEN_PATH}", recorder.token)
    app.router.add_route("*", "/elsewhere", recorder.elsewhere)
    running = LoopbackServer(app, ssl_context=ssl_context)
    root = await running.start()
    return running, root.with_path(f"/prefix/{TOKEN_PATH}")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, URL]]:
    recorder = Recorder()
    running, url = await serve(recorder)
    try:
        yield recorder, url
    finally:
        await running.close()


async def test_wire_request_is_a_form_post_with_no_authorization(
    server: tuple[Recorder, URL], session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    recorder, url = server
    token = await fetch(session, sleep, url=url)
    assert token.access_token == ACCESS
    [request] = recorder.requests
    assert request["method"] == "POST"
    assert request["content_type"] == "application/x-www-form-urlencoded"
    assert request["form"] == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    assert request["headers"]["Accept"] == "application/json"
    assert "Authorization" not in request["headers"]
    assert request["query"] == ""


async def test_session_middlewares_are_bypassed(
    server: tuple[Recorder, URL], sleep: FakeSleep
) -> None:
    recorder, url = server
    calls: list[URL] = []

    async def bearer(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        calls.append(request.url)
        request.headers["Authorization"] = "Bearer leaked"
        return await handler(request)

    async with aiohttp.ClientSession(middlewares=(bearer,)) as session:
        await fetch(session, sleep, url=url)
    assert calls == []
    assert "Authorization" not in recorder.requests[0]["headers"]


async def test_wire_redirect_is_not_followed(
    server: tuple[Recorder, URL], session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    recorder, url = server

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(location="/elsewhere")

    recorder.handler = redirect
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, url=url)
    assert info.value.status == 307
    assert len(recorder.requests) == 1
    assert recorder.redirect_hits == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_wire_oversized_body_is_rejected(
    server: tuple[Recorder, URL], session: aiohttp.ClientSession, sleep: FakeSleep, chunked: bool
) -> None:
    recorder, url = server
    raw = json.dumps({**GOOD, "padding": "x" * (4 * MAX_BODY_SIZE)}).encode()

    async def big(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=raw, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(raw), 8192):
            await response.write(raw[start : start + 8192])
        await response.write_eof()
        return response

    recorder.handler = big
    with pytest.raises(InvalidTokenResponseError, match="larger than"):
        await fetch(session, sleep, url=url)
    assert len(recorder.requests) == 1


async def test_refused_connection_is_retried_then_unavailable(
    session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    recorder = Recorder()
    running, url = await serve(recorder)
    await running.close()  # nothing listens on that port any more
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, url=url, retry=RetryPolicy(attempts=2))
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    assert info.value.status is None
    assert len(sleep.delays) == 1


async def test_untrusted_certificate_is_not_retried(
    ca: trustme.CA, session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    recorder = Recorder()
    running, url = await serve(recorder, server_tls(ca))
    try:
        attempts: list[None] = []
        with pytest.raises(TokenEndpointUnavailableError, match="certificate") as info:
            await request_token(
                session,
                url,
                client_id=CLIENT_ID,
                client_secret=Secret(SECRET),
                timeout=5.0,
                retry=RetryPolicy(),
                on_attempt=lambda: attempts.append(None),
                sleep=sleep,
            )
        assert info.value.retryable is False
        assert len(attempts) == 1
        assert recorder.requests == []

        token = await fetch(session, sleep, url=url, ssl=client_tls(ca))
        assert token.access_token == ACCESS
    finally:
        await running.close()


# -- token requests isolated from the session they run on ---------------------------------


def wire_view(request: dict[str, Any]) -> dict[str, Any]:
    """What of a recorded request must not depend on the session (Host has the port)."""
    headers = {k.lower(): v for k, v in request["headers"].items() if k.lower() != "host"}
    return {**request, "headers": headers}


@pytest.mark.parametrize(
    "options",
    [
        {"raise_for_status": True},
        {"headers": {"Content-Type": "application/json", "X-Tenant": "t1"}},
        {"headers": {"Accept": "text/html"}},
        {"cookies": {"session-id": "abc"}},
        {"base_url": "http://127.0.0.1:1/elsewhere/"},
        {"skip_auto_headers": ("Content-Type", "User-Agent")},
        {"version": aiohttp.HttpVersion10},
        {"auto_decompress": False},
    ],
    ids=lambda options: next(iter(options)),
)
async def test_token_request_is_the_same_whatever_the_session_carries(
    server: tuple[Recorder, URL], sleep: FakeSleep, options: dict[str, Any]
) -> None:
    recorder, url = server
    async with aiohttp.ClientSession() as plain:
        await fetch(plain, sleep, url=url)
    async with aiohttp.ClientSession(**options) as theirs:
        token = await fetch(theirs, sleep, url=url)
        assert not theirs.closed  # its connector was borrowed, not closed
    assert token.access_token == ACCESS
    mine, with_theirs = recorder.requests
    assert wire_view(with_theirs) == wire_view(mine)


async def test_raise_for_status_session_still_reports_a_401_as_bad_credentials_once(
    server: tuple[Recorder, URL], sleep: FakeSleep
) -> None:
    recorder, url = server

    async def rejected(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "invalid_client"}, status=401)

    recorder.handler = rejected
    async with aiohttp.ClientSession(raise_for_status=True) as theirs:
        with pytest.raises(InvalidCredentialsError) as info:
            await fetch(theirs, sleep, url=url)
    assert info.value.retryable is False
    assert len(recorder.requests) == 1
    assert sleep.delays == []


async def test_cookies_the_token_endpoint_sets_stay_out_of_the_users_session(
    server: tuple[Recorder, URL], sleep: FakeSleep
) -> None:
    recorder, url = server

    async def with_cookie(_request: web.Request) -> web.StreamResponse:
        response = web.json_response(GOOD)
        response.set_cookie("tracker", "1")
        return response

    recorder.handler = with_cookie
    async with aiohttp.ClientSession() as theirs:
        await fetch(theirs, sleep, url=url)
        assert len(theirs.cookie_jar) == 0


async def test_session_closed_during_a_backoff_is_unavailable_with_the_cause_chained(
    server: tuple[Recorder, URL],
) -> None:
    recorder, url = server

    async def unavailable(_request: web.Request) -> web.StreamResponse:
        return web.json_response({}, status=503)

    recorder.handler = unavailable
    theirs = aiohttp.ClientSession()

    async def close_while_waiting(_delay: float) -> None:
        await theirs.close()

    with pytest.raises(TokenEndpointUnavailableError, match="closed") as info:
        await fetch(theirs, close_while_waiting, url=url)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.retryable is False
    assert len(recorder.requests) == 1


# -- what the server said: error codes and messages ---------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "client authentication failed"},
            "invalid_client",
            "rejected the client credentials (HTTP 401 invalid_client: client authentication",
        ),
        (400, {"error": "invalid_client"}, "invalid_client", "rejected the client credentials"),
        (401, None, None, "rejected the client credentials (HTTP 401)"),
        (
            400,
            {"error": "unsupported_grant_type"},
            "unsupported_grant_type",
            "refused the token request (HTTP 400 unsupported_grant_type)",
        ),
        (
            400,
            {"error": "unauthorized_client", "error_description": "grant not allowed"},
            "unauthorized_client",
            "refused the token request (HTTP 400 unauthorized_client: grant not allowed)",
        ),
        (
            400,
            {"error": "invalid_request", "error_description": "Missing client_id"},
            "invalid_request",
            "refused the token request (HTTP 400 invalid_request: Missing client_id)",
        ),
        (
            403,
            {"id": "e1", "status": 403, "name": "forbiddenTenant", "message": "tenant is off"},
            "forbiddenTenant",
            "refused the token request (HTTP 403 forbiddenTenant: tenant is off)",
        ),
    ],
)
async def test_refusals_carry_the_servers_code_and_say_what_it_said(  # noqa: PLR0917 (cases)
    session: aiohttp.ClientSession,
    mocked: aioresponses,
    sleep: FakeSleep,
    status: int,
    body: dict[str, Any] | None,
    error: str | None,
    says: str,
) -> None:
    mocked.post(TOKEN_URL, status=status, payload=body, repeat=True)
    with pytest.raises(InvalidCredentialsError) as info:
        await fetch(session, sleep)
    assert info.value.error == error
    assert info.value.status == status
    assert says in str(info.value)
    if "rejected" not in says:
        assert "rejected the client credentials" not in str(info.value)
    assert len(sent(mocked)) == 1


async def test_code_of_a_retried_failure_is_kept_after_the_retries(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=503, payload={"error": "temporarily_unavailable"}, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep, retry=RetryPolicy(attempts=2))
    assert info.value.error == "temporarily_unavailable"
    assert "HTTP 503 temporarily_unavailable" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [{"error": 42}, {"error": "a\nb"}, {"error": "x" * 500}, {"error": 'q"uote'}, [1], "text"],
)
async def test_a_code_that_is_not_a_short_printable_token_is_none(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep, body: object
) -> None:
    mocked.post(TOKEN_URL, status=400, payload=body)
    with pytest.raises(InvalidCredentialsError) as info:
        await fetch(session, sleep)
    assert info.value.error is None


async def test_407_is_not_retried_and_says_the_proxy_wants_credentials(
    session: aiohttp.ClientSession, mocked: aioresponses, sleep: FakeSleep
) -> None:
    mocked.post(TOKEN_URL, status=407, repeat=True)
    with pytest.raises(TokenEndpointUnavailableError) as info:
        await fetch(session, sleep)
    assert info.value.status == 407
    assert info.value.retryable is False
    assert "proxy" in str(info.value)
    assert "wants credentials" in str(info.value)
    assert "region" not in str(info.value)
    assert len(sent(mocked)) == 1


async def test_an_echoed_url_encoded_secret_is_redacted(server: tuple[Recorder, URL]) -> None:
    recorder, url = server
    secret = "b64+Secret/Value=="

    async def echo(request: web.Request) -> web.StreamResponse:
        raw = urllib.parse.urlencode(dict(await request.post()))
        answer = {"error": "invalid_request", "message": f"bad body {raw}"}
        return web.json_response(answer, status=400)

    recorder.handler = echo
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InvalidCredentialsError) as info:
            await request_token(
                session,
                url,
                client_id=CLIENT_ID,
                client_secret=Secret(secret),
                timeout=5.0,
                retry=RetryPolicy(),
            )
    text = f"{info.value} {info.value!r}"
    assert "client_secret=[redacted]" in text
    assert secret not in text
    assert "b64%2BSecret%2FValue%3D%3D" not in text


# -- nothing secret in a frame or the chain (issue 21) --------------------------------------

#: A real-looking token a malformed 200 carries.
LEAKED = "eyJ0b2tlbiI6ImxlYWsifQ.real-token-in-a-malformed-answer"


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"access_token": LEAKED, "token_type": "MAC", "expires_in": 3600}),
        json.dumps({"access_token": LEAKED, "token_type": "Bearer", "expires_in": -5}),
        json.dumps({"access_token": LEAKED, "token_type": "Bearer", "expires_in": "soon"}),
        f'{{"access_token": "{LEAKED}", "token_type": "Bearer", "expires_in": NaN}}',
        f'{{"access_token": "{LEAKED}", "token_type": "Bearer", "expires_in": 36',  # cut off
    ],
    ids=["token_type", "negative expires_in", "text expires_in", "NaN", "truncated JSON"],
)
async def test_a_malformed_200_leaves_its_token_in_no_frame_and_no_chained_error(
    server: tuple[Recorder, URL], session: aiohttp.ClientSession, sleep: FakeSleep, raw: str
) -> None:
    recorder, url = server

    async def malformed(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=raw.encode(), content_type="application/json")

    recorder.handler = malformed
    error = await failure_of(fetch(session, sleep, url=url))
    assert isinstance(error, InvalidTokenResponseError)
    assert error.__cause__ is None
    assert error.__context__ is None  # no JSONDecodeError whose doc is the body
    reported = everything_reported(error)
    assert "client_id = 'client-123'" in reported  # the request's frames are there, locals too
    assert LEAKED not in reported


def test_parse_token_response_raises_with_no_body_among_its_locals() -> None:
    error = raised_by(
        lambda: parse_token_response(
            json.dumps({"access_token": LEAKED, "token_type": "MAC", "expires_in": 60}).encode()
        )
    )
    assert isinstance(error, InvalidTokenResponseError)
    reported = with_locals(error)
    assert "parse_token_response" in reported
    assert "outcome = InvalidTokenResponseError(" in reported
    assert LEAKED not in everything_reported(error)


async def test_a_reset_mid_answer_chains_the_transport_error_without_its_traceback(
    server: tuple[Recorder, URL], session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    recorder, url = server

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "500"})
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(f'{{"access_token": "{LEAKED}", '.encode())
        assert request.transport is not None
        request.transport.abort()
        return response

    recorder.handler = cut
    error = await failure_of(fetch(session, sleep, url=url, retry=RetryPolicy(attempts=1)))
    assert isinstance(error, TokenEndpointUnavailableError)
    cause = error.__cause__
    assert isinstance(cause, aiohttp.ClientPayloadError)
    assert cause.__traceback__ is None  # aiohttp's frames (the partial body) are not chained
    assert cause.__cause__ is None
    assert cause.__context__ is None
    assert LEAKED not in everything_reported(error)
