"""PlainID's token endpoint: where it is, one token request, its parsing, and retries.

The pure parts (URL validation, response parsing, ``Retry-After``, the retry decision) are
plain functions; :func:`request_token` is the only I/O.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import math
import random
import re
import time
from typing import TYPE_CHECKING, Any, Final, NoReturn

import aiohttp
import attrs
from yarl import URL

from ._token import MAX_LIFETIME, Token
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    InvalidTokenResponseError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Mapping

__all__ = [
    "MAX_BODY_SIZE",
    "TOKEN_PATH",
    "Endpoint",
    "RetryPolicy",
    "is_loopback_host",
    "parse_retry_after",
    "parse_token_response",
    "request_token",
    "resolve_endpoint",
]

logger = logging.getLogger("plainid_async")

#: Path of the token endpoint below the API base URL.
TOKEN_PATH: Final = "api/1.0/api-key/token"  # noqa: S105 (a path, not a password)
#: Largest token-endpoint response body read, in bytes.
MAX_BODY_SIZE: Final = 64 * 1024
#: Longest access token accepted, in characters.
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: Longest error message quoted from PlainID, in characters.
MAX_QUOTED_MESSAGE: Final = 200

_REGION_RE: Final = re.compile(r"[a-z0-9]{1,32}")
_TOKEN_CHARS_RE: Final = re.compile(r"[\x21-\x7e]+")
_LIFETIME_TEXT_RE: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")
_CREDENTIAL_STATUSES: Final = frozenset({400, 401, 403})


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    if not isinstance(base_url, (str, URL)):
        raise ConfigurationError(f"base_url must be a string or yarl.URL, not {type(base_url)}")
    try:
        url = URL(base_url) if isinstance(base_url, str) else base_url
    except (ValueError, TypeError) as exc:
        shown = _without_userinfo(str(base_url))
        raise ConfigurationError(f"base_url={shown!r} is not a valid URL") from exc
    shown = (
        str(url.with_user(None).with_password(None))
        if url.host
        else _without_userinfo(str(base_url))
    )
    if not url.absolute or not url.host or url.scheme not in {"http", "https"}:
        raise ConfigurationError(f"base_url={shown!r} must be an absolute http(s) URL")
    if url.user is not None or url.password is not None:
        raise ConfigurationError(f"base_url={shown!r} must not carry credentials")
    if url.query_string or url.fragment:
        raise ConfigurationError(f"base_url={shown!r} must not have a query or fragment")
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise ConfigurationError(
            f"base_url={shown!r} must use https (plain http is allowed for loopback hosts only)"
        )
    # The raw path, so an encoded "/" (%2F) in the prefix stays encoded.
    return url.with_path(url.raw_path.rstrip("/"), encoded=True)


def _without_userinfo(text: str) -> str:
    # A URL yarl could not split is shown as typed, minus whatever precedes an "@": that
    # may be a password.
    return "***@" + text.rpartition("@")[2] if "@" in text else text


def _invalid(reason: str) -> NoReturn:
    raise InvalidTokenResponseError(f"invalid token response: {reason}", status=200)


def _reject_constant(name: str) -> NoReturn:
    _invalid(f"JSON constant {name} is not allowed")


def _parse_lifetime(value: object) -> float:
    if isinstance(value, bool) or value is None:
        _invalid(f"expires_in must be a number of seconds, not {type(value).__name__}")
    if isinstance(value, str):
        if not _LIFETIME_TEXT_RE.fullmatch(value.strip()):
            _invalid("expires_in is a string that is not a plain number of seconds")
        seconds = float(value.strip())
    elif isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            _invalid("expires_in is too large")
    else:
        _invalid(f"expires_in must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        _invalid("expires_in must be a positive, finite number of seconds")
    if seconds > MAX_LIFETIME:
        _invalid(f"expires_in is absurdly large (over {MAX_LIFETIME:.0f} s)")
    return seconds


def parse_token_response(
    body: bytes, *, sent_at: float | None = None, sent_at_monotonic: float | None = None
) -> Token:
    """Validate a 200 response body from the token endpoint and build the token.

    Args:
        body: The raw response body.
        sent_at: Wall-clock time the request was sent.
        sent_at_monotonic: Monotonic time the request was sent.

    Returns:
        The token, its expiry measured from when the request was sent.

    Raises:
        InvalidTokenResponseError: The body is not a JSON object with a non-empty
            ``access_token`` string, ``token_type`` "Bearer" (any case) and a positive finite
            ``expires_in``. The message never contains the token.
    """
    if len(body) > MAX_BODY_SIZE:
        _invalid(f"body larger than {MAX_BODY_SIZE} bytes")
    try:
        data: Any = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        _invalid("body is not JSON")
    if not isinstance(data, dict):
        _invalid("body is not a JSON object")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        _invalid("access_token is missing or not a non-empty string")
    if len(access_token) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS_RE.fullmatch(access_token):
        _invalid("access_token has characters that cannot go in an Authorization header")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = _CONTROL_RE.sub("", str(token_type))[:40]
        _invalid(f"token_type is {shown!r}, expected 'Bearer'")
    expires_in = _parse_lifetime(data.get("expires_in"))
    return Token.issued(
        access_token,
        token_type=token_type,
        expires_in=expires_in,
        sent_at=sent_at,
        sent_at_monotonic=sent_at_monotonic,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header into seconds from now.

    Args:
        value: The header value: delay seconds or an HTTP date.
        now: The current wall-clock time; defaults to now.

    Returns:
        Seconds to wait (never negative), or ``None`` when absent or unparsable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isdigit() and text.isascii():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"attempts={value!r} must be an integer >= 1")

    def __attrs_post_init__(self) -> None:
        """Check the durations."""
        for name in ("backoff_base", "backoff_max", "max_retry_after", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"{name}={value!r} must be a finite number >= 0")

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


def _clean_text(text: str, secret: str) -> str:
    """Server-influenced text made fit for a message: one line, redacted, bounded."""
    text = _CONTROL_RE.sub(" ", text).strip()
    if secret:
        text = text.replace(secret, "***")
    if len(text) > MAX_QUOTED_MESSAGE:
        text = text[:MAX_QUOTED_MESSAGE] + "…"
    return text


def _quote_message(body: bytes, secret: str) -> str | None:
    """PlainID's error ``message`` (or an OAuth ``error_description``), cleaned and redacted."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError, InvalidTokenResponseError):
        return None
    if not isinstance(data, dict):
        return None
    for field in ("message", "error_description", "error"):
        text = data.get(field)
        if isinstance(text, str) and text.strip():
            text = _CONTROL_RE.sub(" ", text).strip()
            if secret:
                text = text.replace(secret, "***")
            return text[:MAX_QUOTED_MESSAGE]
    return None


class _BodyTooLargeError(Exception):
    pass


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise _BodyTooLargeError
    buffer = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        buffer += chunk
        if len(buffer) > limit:
            raise _BodyTooLargeError
    return bytes(buffer)


def _error_for_status(status: int, body: bytes, secret: str, url: URL) -> TokenRequestError:
    quoted = _quote_message(body, secret)
    detail = f": {quoted}" if quoted else ""
    if status in _CREDENTIAL_STATUSES:
        return InvalidCredentialsError(
            f"token endpoint rejected the client credentials (HTTP {status}){detail}",
            status=status,
        )
    if 300 <= status < 400:
        return TokenEndpointUnavailableError(
            f"token endpoint {url} answered a redirect (HTTP {status}); not followed, so the "
            "client secret is not posted to another URL",
            status=status,
            retryable=False,
        )
    if _is_retryable_status(status):
        return TokenEndpointUnavailableError(
            f"token endpoint {url} answered HTTP {status}{detail}", status=status
        )
    if 200 <= status < 300:
        return InvalidTokenResponseError(
            f"invalid token response: HTTP {status}, expected 200", status=status
        )
    return TokenEndpointUnavailableError(
        f"token endpoint {url} answered HTTP {status}{detail}; check region or base_url",
        status=status,
        retryable=False,
    )


def _is_retryable_status(status: int) -> bool:
    return status in {408, 429} or 500 <= status < 600


@attrs.frozen
class _Attempt:
    """The outcome of one failed attempt, for the retry loop."""

    error: TokenRequestError
    cause: BaseException | None = None
    retry_after: float | None = None


async def _attempt(
    session: aiohttp.ClientSession,
    url: URL,
    form: Mapping[str, str],
    *,
    timeout: float,
    ssl: ssl.SSLContext | bool | None,
) -> Token | _Attempt:
    sent_at, sent_at_monotonic = time.time(), time.monotonic()
    try:
        async with session.post(
            url,
            data=dict(form),
            headers={"Accept": "application/json"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            ssl=True if ssl is None else ssl,
            middlewares=(),
        ) as response:
            status = response.status
            try:
                body = await _read_bounded(response, MAX_BODY_SIZE)
            except _BodyTooLargeError:
                if status == 200:
                    _invalid(f"body larger than {MAX_BODY_SIZE} bytes")
                body = b""
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    except aiohttp.ClientConnectorCertificateError as exc:
        error = TokenEndpointUnavailableError(
            f"TLS certificate of {url.host} could not be verified: {exc.certificate_error}",
            retryable=False,
        )
        return _Attempt(error, exc)
    except aiohttp.ClientSSLError as exc:
        error = TokenEndpointUnavailableError(
            f"TLS connection to {url.host} failed: {type(exc).__name__}", retryable=False
        )
        return _Attempt(error, exc)
    except TimeoutError as exc:
        error = TokenEndpointUnavailableError(
            f"token request to {url} timed out after {timeout:.3g} s"
        )
        return _Attempt(error, exc)
    except aiohttp.ClientError as exc:
        error = TokenEndpointUnavailableError(
            f"token request to {url} failed: {type(exc).__name__}: "
            f"{_clean_text(str(exc), form['client_secret'])}"
        )
        return _Attempt(error, exc)
    if status == 200:
        return parse_token_response(body, sent_at=sent_at, sent_at_monotonic=sent_at_monotonic)
    return _Attempt(_error_for_status(status, body, form["client_secret"], url), None, retry_after)


async def request_token(
    session: aiohttp.ClientSession,
    token_url: URL,
    *,
    client_id: str,
    client_secret: str,
    timeout: float,
    retry: RetryPolicy,
    ssl: ssl.SSLContext | bool | None = None,
    on_attempt: Callable[[], None] | None = None,
    on_retry: Callable[[TokenRequestError, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
) -> Token:
    """Get a token from the token endpoint, retrying transient failures.

    The credentials go in a form-encoded body (never the URL, never HTTP Basic); redirects
    are not followed; the session's own middlewares are bypassed.

    Args:
        session: The aiohttp session to send the request with.
        token_url: The token endpoint.
        client_id: The API client id.
        client_secret: The API client secret.
        timeout: Time limit of one attempt, seconds.
        retry: The retry policy.
        ssl: TLS verification for the request: ``None`` verifies with the default trust store.
        on_attempt: Called before each HTTP request (for statistics).
        on_retry: Called when an attempt failed and another follows, with the attempt's
            error and the seconds until the next one (for the event stream).
        sleep: Waits between attempts (a test may pass a fake).
        jitter: Returns a number in [0, 1) for backoff jitter.

    Returns:
        The token.

    Raises:
        InvalidCredentialsError: The credentials were rejected; not retried.
        InvalidTokenResponseError: A 200 that is not a valid token response; not retried.
        TokenEndpointUnavailableError: The endpoint kept failing until the attempts or the
            deadline ran out; the last cause is chained. Also, not retryable, when
            ``session`` is closed.
    """
    if session.closed:
        # aiohttp would raise a bare RuntimeError, which callers of get_token do not expect.
        raise TokenEndpointUnavailableError(
            "the aiohttp session for token requests is closed", retryable=False
        )
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        remaining = retry.deadline - (time.monotonic() - started)
        if on_attempt is not None:
            on_attempt()
        logger.debug("token request %d to %s for client %s", attempt, token_url, client_id)
        outcome = await _attempt(
            session, token_url, form, timeout=max(0.001, min(timeout, remaining)), ssl=ssl
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
                )
            raise error from outcome.cause
        logger.info(
            "token request %d for client %s failed (%s); retrying in %.2f s",
            attempt,
            client_id,
            error,
            delay,
        )
        if on_retry is not None:
            on_retry(error, delay)
        await sleep(delay)
