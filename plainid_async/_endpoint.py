"""PlainID's token endpoint: where it is, and the I/O of getting a token from it.

:func:`request_token` sends one token request per attempt and retries transient failures;
what goes on the wire and what an answer means (the form body, parsing, typed errors) is
:mod:`plainid_async._wire`'s, and which proxy the request takes is
:mod:`plainid_async._proxy`'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import TYPE_CHECKING, Final

import aiohttp
import attrs
from yarl import URL

from ._checks import check_count, check_seconds
from ._log import LOGGER_NAME
from ._origins import check_http_url
from ._proxy import choose_proxy, proxy_headers
from ._token import Token
from ._wire import (
    FORM_CONTENT_TYPE,
    MAX_BODY_SIZE,
    error_for_exception,
    error_for_status,
    form_body,
    parse_retry_after,
    sanitized_cause,
    token_or_error,
)
from .exceptions import (
    ConfigurationError,
    InvalidTokenResponseError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from ._proxy import Proxy
    from ._secret import Secret

__all__ = [
    "TOKEN_PATH",
    "Endpoint",
    "RetryPolicy",
    "request_token",
    "resolve_endpoint",
]

logger = logging.getLogger(LOGGER_NAME)

#: Path of the token endpoint below the API base URL.
TOKEN_PATH: Final = "api/1.0/api-key/token"  # noqa: S105 (a path, not a password)

_REGION_RE: Final = re.compile(r"[a-z0-9]{1,32}")


@attrs.frozen
class Endpoint:
    """Where PlainID's APIs and token endpoint are.

    Attributes:
        api_url: The API base URL, e.g. ``https://api.us1.plainid.io`` (a path prefix of a
            ``base_url`` is kept).
        token_url: The token endpoint, ``api_url`` + ``/api/1.0/api-key/token``.
    """

    api_url: URL
    token_url: URL


def resolve_endpoint(*, region: str | None, base_url: str | URL | None) -> Endpoint:
    """Validate ``region`` or ``base_url`` and work out the API and token URLs.

    Args:
        region: A PlainID region such as ``us1``: lowercase letters and digits only, so it
            cannot change the host.
        base_url: The base URL of a customer-hosted deployment: https, or http for loopback
            hosts only; no credentials, query or fragment.

    Returns:
        The endpoint.

    Raises:
        ConfigurationError: Neither or both were given, or the one given is invalid.
    """
    if (region is None) == (base_url is None):
        raise ConfigurationError("give exactly one of region= and base_url=")
    if region is not None:
        if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
            raise ConfigurationError(
                f"region={region!r} is not a PlainID region: expected lowercase letters and "
                "digits only, such as 'us1', 'ca1' or 'eu1'"
            )
        api_url = URL.build(scheme="https", host=f"api.{region}.plainid.io")
    else:
        api_url = _validate_base_url(base_url)
    return Endpoint(api_url=api_url, token_url=api_url / TOKEN_PATH)


def _validate_base_url(base_url: str | URL | None) -> URL:
    url = check_http_url(base_url, "base_url")
    # The raw path, so an encoded "/" (%2F) in the prefix stays encoded.
    return url.with_path(url.raw_path.rstrip("/"), encoded=True)


@attrs.frozen
class RetryPolicy:
    """How often and how long to retry a failing token request.

    Retries use exponential backoff with jitter, honour ``Retry-After`` (capped at
    ``max_retry_after``), and stop after ``attempts`` requests or when the next wait would go
    past ``deadline`` seconds from the first attempt.

    Attributes:
        attempts: Requests at most, the first included (at least 1).
        backoff_base: Wait before the first retry, before jitter (seconds).
        backoff_max: Longest wait between attempts from backoff alone (seconds).
        max_retry_after: Longest ``Retry-After`` honoured (seconds).
        deadline: Overall time budget for all attempts (seconds).
    """

    attempts: int = attrs.field(default=4)
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 60.0
    deadline: float = 30.0

    @attempts.validator
    def _check_attempts(self, _: attrs.Attribute[int], value: int) -> None:
        check_count("attempts", value)

    def __attrs_post_init__(self) -> None:
        """Check the durations."""
        for name in ("backoff_base", "backoff_max", "max_retry_after", "deadline"):
            check_seconds(name, getattr(self, name), allow_zero=True)

    def backoff(self, attempt: int, jitter: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), with no hint.

        Half the exponential delay is fixed and half is random, so retries spread out yet
        always back off.
        """
        # The exponent is capped so a large attempt number gives backoff_max, not OverflowError.
        base = min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 1023))
        return base / 2 + base / 2 * jitter

    def next_delay(
        self, attempt: int, *, elapsed: float, retry_after: float | None, jitter: float
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        Args:
            attempt: The attempt that just failed (1-based).
            elapsed: Seconds since the first attempt started.
            retry_after: The server's ``Retry-After`` in seconds, if it gave one.
            jitter: A number in [0, 1).
        """
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            delay = min(retry_after, self.max_retry_after)
        else:
            delay = self.backoff(attempt, jitter)
        if elapsed + delay >= self.deadline:
            return None
        return delay


@attrs.frozen
class _Attempt:
    """The outcome of one failed attempt, for the retry loop."""

    error: TokenRequestError
    cause: BaseException | None = None
    retry_after: float | None = None


async def _attempt(
    session: aiohttp.ClientSession,
    url: URL,
    client_id: str,
    client_secret: Secret,
    *,
    timeout: float,
    ssl: ssl.SSLContext | bool | None,
    proxy: Proxy | None,
) -> Token | _Attempt:
    """One token request. Returns its outcome and never raises what went wrong.

    Every value that holds a secret (the form, ``Proxy-Authorization``, the body) is built
    or read in a frame that returns before this one does, and the transport's error is
    chained only as :func:`~plainid_async._wire.sanitized_cause` made it.
    """
    sent_at, sent_at_monotonic = time.time(), time.monotonic()
    try:
        async with session.post(
            url,
            data=form_body(client_id, client_secret),
            # Explicit, so no default header of a session (Content-Type: application/json)
            # relabels the form.
            headers={
                "Accept": "application/json",
                "Content-Type": FORM_CONTENT_TYPE,
                **proxy_headers(proxy, url, tunnel=False),
            },
            allow_redirects=False,
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            ssl=True if ssl is None else ssl,
            proxy=None if proxy is None else proxy.url,
            proxy_headers=proxy_headers(proxy, url, tunnel=True) or None,
            middlewares=(),
        ) as response:
            return await _answer(
                response,
                url,
                client_secret=client_secret,
                proxy=proxy,
                sent_at=sent_at,
                sent_at_monotonic=sent_at_monotonic,
            )
    except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not session.closed:
            raise
        error = error_for_exception(
            exc, url, timeout=timeout, client_secret=client_secret, proxy=proxy
        )
        return _Attempt(error, sanitized_cause(exc))


async def _answer(
    response: aiohttp.ClientResponse,
    url: URL,
    *,
    client_secret: Secret,
    proxy: Proxy | None,
    sent_at: float,
    sent_at_monotonic: float,
) -> Token | _Attempt:
    """What an answer means: the token, or the failed attempt. The body ends with this frame."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    body = await _read_bounded(response, MAX_BODY_SIZE)
    if response.status == 200:
        outcome = (
            InvalidTokenResponseError(
                f"invalid token response: body larger than {MAX_BODY_SIZE} bytes", status=200
            )
            if body is None
            else token_or_error(body, sent_at=sent_at, sent_at_monotonic=sent_at_monotonic)
        )
        return outcome if isinstance(outcome, Token) else _Attempt(outcome)
    error = error_for_status(
        response.status, body or b"", url, client_secret=client_secret, proxy=proxy
    )
    return _Attempt(error, None, retry_after)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or ``None`` when it is larger than ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        return None
    buffer = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        buffer += chunk
        if len(buffer) > limit:
            return None
    return bytes(buffer)


def _isolated(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """A private session on ``session``'s connector: its pool and TLS, nothing else.

    The session's proxy settings are applied per request (see
    :func:`~plainid_async._proxy.choose_proxy`).

    Whatever ``raise_for_status``, default headers, cookies, ``base_url``, auth,
    ``skip_auto_headers`` or middlewares the given session carries, the token request is
    then the same request as on a session of our own. Closing it leaves the connector open.
    """
    return aiohttp.ClientSession(
        connector=session.connector,
        connector_owner=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # the proxy is chosen by choose_proxy, and ~/.netrc never read
    )


async def request_token(
    session: aiohttp.ClientSession,
    token_url: URL,
    *,
    client_id: str,
    client_secret: Secret,
    timeout: float,
    retry: RetryPolicy,
    ssl: ssl.SSLContext | bool | None = None,
    proxy: Proxy | None = None,
    trust_env: bool = False,
    on_attempt: Callable[[], None] | None = None,
    on_retry: Callable[[TokenRequestError, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
) -> Token:
    """Get a token from the token endpoint, retrying transient failures.

    The credentials go in a form-encoded body (never the URL, never HTTP Basic); redirects
    are not followed; of ``session`` only the connector and the transport settings are used
    (its proxy, proxy auth and ``trust_env``), never its middlewares, headers, cookies,
    ``base_url``, ``raise_for_status`` or other defaults.

    Args:
        session: The aiohttp session whose connector sends the request.
        token_url: The token endpoint.
        client_id: The API client id.
        client_secret: The API client secret.
        timeout: Time limit of one attempt, seconds.
        retry: The retry policy.
        ssl: TLS verification for the request: ``None`` verifies with the default trust store.
        proxy: The HTTP proxy to go through, if any; without it, the one ``session`` was
            made with (``proxy=``, ``proxy_auth=``), else, with ``trust_env`` or a session
            made with ``trust_env=True``, the environment's.
        trust_env: Without a proxy given or on the session, take it from ``HTTPS_PROXY`` /
            ``HTTP_PROXY`` / ``NO_PROXY`` (never from ``~/.netrc``).
        on_attempt: Called before each HTTP request (for statistics).
        on_retry: Called when an attempt failed and another follows, with the attempt's
            error and the seconds until the next one (for the event stream, which logs it).
        sleep: Waits between attempts (a test may pass a fake).
        jitter: Returns a number in [0, 1) for backoff jitter.

    Returns:
        The token.

    Raises:
        InvalidCredentialsError: The credentials or the request were refused; not retried.
        InvalidTokenResponseError: A 200 that is not a valid token response; not retried.
        ConfigurationError: The session's proxy or the environment's is not a valid proxy
            URL; the message names which.
        TokenEndpointUnavailableError: The endpoint kept failing until the attempts or the
            deadline ran out; the last cause is chained. Also, not retryable, for a 407 from
            the proxy and when ``session`` is (or gets) closed.
    """
    if session.closed:
        # aiohttp would raise a bare RuntimeError, which callers of get_token do not expect.
        raise TokenEndpointUnavailableError(
            "the aiohttp session for token requests is closed", retryable=False
        )
    proxy = choose_proxy(proxy, session, token_url, trust_env=trust_env)
    async with _isolated(session) as private:
        return await _request_with_retries(
            private,
            token_url,
            client_id,
            client_secret,
            timeout=timeout,
            retry=retry,
            ssl=ssl,
            proxy=proxy,
            on_attempt=on_attempt,
            on_retry=on_retry,
            sleep=sleep,
            jitter=jitter,
        )


async def _request_with_retries(
    session: aiohttp.ClientSession,
    token_url: URL,
    client_id: str,
    client_secret: Secret,
    *,
    timeout: float,
    retry: RetryPolicy,
    ssl: ssl.SSLContext | bool | None,
    proxy: Proxy | None,
    on_attempt: Callable[[], None] | None,
    on_retry: Callable[[TokenRequestError, float], None] | None,
    sleep: Callable[[float], Awaitable[object]],
    jitter: Callable[[], float],
) -> Token:
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        remaining = retry.deadline - (time.monotonic() - started)
        if on_attempt is not None:
            on_attempt()
        logger.debug("token request %d to %s for client %s", attempt, token_url, client_id)
        outcome = await _attempt(
            session,
            token_url,
            client_id,
            client_secret,
            timeout=max(0.001, min(timeout, remaining)),
            ssl=ssl,
            proxy=proxy,
        )
        if isinstance(outcome, Token):
            logger.debug(
                "token obtained for client %s, expires in %g s", client_id, outcome.expires_in
            )
            return outcome
        error = outcome.error
        delay = (
            retry.next_delay(
                attempt,
                elapsed=time.monotonic() - started,
                retry_after=outcome.retry_after,
                jitter=jitter(),
            )
            if error.retryable
            else None
        )
        if delay is None:
            if attempt > 1 and error.retryable:
                error = type(error)(
                    f"{error} (gave up after {attempt} attempts)",
                    status=error.status,
                    retryable=error.retryable,
                    error=error.error,
                )
            error.retry_after = outcome.retry_after  # the provider's cool-down honours it
            raise error from outcome.cause
        if on_retry is not None:
            error.retry_after = outcome.retry_after  # the provider's waiters honour it
            on_retry(error, delay)
        await sleep(delay)
