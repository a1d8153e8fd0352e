"""PlainID's token endpoint: where it is, one token request, its parsing, and retries.

The pure parts (URL validation, response parsing, ``Retry-After``, the retry decision) are
plain functions; :func:`request_token` is the only I/O.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import logging
import os
import random
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, NoReturn

import aiohttp
import attrs
from aiohttp import payload
from yarl import URL

from ._checks import check_count, check_seconds
from ._log import LOGGER_NAME
from ._origins import check_http_url, is_loopback_host, without_userinfo
from ._secret import Secret, redact
from ._token import Token, lifetime_problem
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    InvalidTokenResponseError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable, Mapping

__all__ = [
    "MAX_BODY_SIZE",
    "TOKEN_PATH",
    "Endpoint",
    "Proxy",
    "RetryPolicy",
    "is_loopback_host",
    "parse_retry_after",
    "parse_token_response",
    "proxy_from_env",
    "request_token",
    "resolve_endpoint",
    "resolve_proxy",
]

logger = logging.getLogger(LOGGER_NAME)

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
#: 4xx answers that refuse the request as made (grant, client or request not accepted).
_REFUSED_STATUSES: Final = frozenset({400, 403})
#: An OAuth error code (RFC 6749: printable ASCII without '"' and '\\') or PlainID's name.
_ERROR_CODE_RE: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")
_FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"


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
class Proxy:
    """An HTTP proxy for token requests; its credentials never show.

    Attributes:
        url: The proxy URL without credentials, e.g. ``http://proxy.internal:3128``.
        login: The proxy user name, if any.
        password: The proxy password, if any.
    """

    url: URL
    login: str | None = attrs.field(default=None, repr=False)
    password: Secret | None = attrs.field(default=None, repr=False)


def resolve_proxy(proxy: object, *, source: str = "proxy") -> Proxy | None:
    """Validate a proxy URL and split its credentials off.

    Args:
        proxy: ``None``, or an ``http://`` (or ``https://``) proxy URL as a string or
            :class:`yarl.URL`, with optional ``user:password@``.
        source: What gave the value, for messages (``proxy``, ``--proxy``, a variable).

    Returns:
        The proxy, or ``None`` for no proxy.

    Raises:
        ConfigurationError: The value is not such a URL; the message never shows its
            credentials.
    """
    if proxy is None:
        return None
    if not isinstance(proxy, (str, URL)):
        raise ConfigurationError(f"{source} must be a string or yarl.URL, not {type(proxy)}")
    try:
        url = URL(proxy) if isinstance(proxy, str) else proxy
        shown = str(url.with_user(None)) if url.host else without_userinfo(str(proxy))
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{source}={without_userinfo(str(proxy))!r} is not a valid URL"
        ) from None
    if not url.absolute or not url.host or url.scheme not in {"http", "https"}:
        raise ConfigurationError(
            f"{source}={shown!r} must be an absolute http:// proxy URL, such as "
            "'http://proxy.internal:3128'"
        )
    if url.raw_path not in {"", "/"} or url.query_string or url.fragment:
        raise ConfigurationError(f"{source}={shown!r} must not have a path, query or fragment")
    login = url.user or None
    password = None if url.password is None else Secret(url.password)
    return Proxy(url.with_user(None).with_path(""), login, password)


def proxy_from_env(url: URL, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy the environment names for ``url``, as curl reads it.

    ``HTTPS_PROXY`` (or ``https_proxy``) for https URLs, ``HTTP_PROXY`` (or ``http_proxy``)
    for http ones, lower case winning; none for a host ``NO_PROXY`` (or ``no_proxy``) lists
    (comma-separated host names or domain suffixes, ``*`` for all). ``~/.netrc`` is never
    read.

    Args:
        url: The URL to be requested.
        environ: Where to read the variables; defaults to :data:`os.environ`.

    Returns:
        The proxy, or ``None`` for a direct connection.

    Raises:
        ConfigurationError: The variable holds no valid proxy URL.
    """
    env = os.environ if environ is None else environ
    scheme = url.scheme
    name = f"{scheme}_proxy"
    value = env.get(name) or env.get(name.upper())
    if not value or not value.strip():
        return None
    if _bypassed(url.host or "", env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    source = name if env.get(name) else name.upper()
    text = value.strip()
    return resolve_proxy(text if "://" in text else f"http://{text}", source=source)


def _bypassed(host: str, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        pattern = entry.strip().lower()
        if not pattern:
            continue
        if pattern == "*":
            return True
        pattern = pattern.lstrip(".").strip("[]")
        if ":" in pattern and not _is_ip(pattern):
            pattern = pattern.rpartition(":")[0]  # host:port: the port does not matter here
        if host == pattern or host.endswith("." + pattern):
            return True
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _invalid(reason: str) -> NoReturn:
    raise InvalidTokenResponseError(f"invalid token response: {reason}", status=200)


def _reject_constant(name: str) -> NoReturn:
    _invalid(f"JSON constant {name} is not allowed")


def _parse_lifetime(value: object) -> float:
    # The wire format also allows a numeric string; the rule itself is _token's.
    if isinstance(value, str):
        if not _LIFETIME_TEXT_RE.fullmatch(value.strip()):
            _invalid("expires_in is a string that is not a plain number of seconds")
        value = float(value.strip())
    problem = lifetime_problem(value)
    if problem is not None:
        _invalid(f"expires_in {problem}")
    return float(value)  # type: ignore[arg-type]  # lifetime_problem saw an int or float


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


def _clean_text(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Server-influenced text made fit for a message: one line, redacted, bounded."""
    text = redact(_CONTROL_RE.sub(" ", text).strip(), secrets)
    if len(text) > MAX_QUOTED_MESSAGE:
        text = text[:MAX_QUOTED_MESSAGE] + "…"
    return text


@attrs.frozen
class _ServerError:
    """What an error body said: its code and its description, both cleaned and redacted."""

    code: str | None = None
    description: str | None = None

    def detail(self, status: int) -> str:
        """``HTTP 400 invalid_request: description``, with what the server gave."""
        code = f" {self.code}" if self.code else ""
        description = f": {self.description}" if self.description else ""
        return f"HTTP {status}{code}{description}"


def _parse_error_body(body: bytes, secrets: Iterable[Secret | str | None]) -> _ServerError:
    """Read an OAuth ``{"error", "error_description"}`` or PlainID ``{"name", "message"}`` body.

    Anything else (empty, not JSON, other fields) gives an empty result, never an error.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError, InvalidTokenResponseError):
        return _ServerError()
    if not isinstance(data, dict):
        return _ServerError()
    secrets = tuple(secrets)
    code = None
    for field in ("error", "name"):
        value = data.get(field)
        if isinstance(value, str) and _ERROR_CODE_RE.fullmatch(value):
            code = redact(value, secrets)
            break
    description = None
    for field in ("error_description", "message"):
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            description = _clean_text(value, secrets)
            break
    return _ServerError(code, description)


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


def _error_for_status(  # noqa: PLR0911 (one answer per kind of status)
    status: int, body: bytes, secrets: Iterable[Secret | str | None], url: URL
) -> TokenRequestError:
    said = _parse_error_body(body, secrets)
    detail, code = said.detail(status), said.code
    if status == 401 or (code == "invalid_client" and 400 <= status < 500):
        return InvalidCredentialsError(
            f"token endpoint rejected the client credentials ({detail})", status=status, error=code
        )
    if status in _REFUSED_STATUSES:
        return InvalidCredentialsError(
            f"token endpoint refused the token request ({detail})", status=status, error=code
        )
    if status == 407:
        return _proxy_wants_credentials(None, error=code)
    if 300 <= status < 400:
        return TokenEndpointUnavailableError(
            f"token endpoint {url} answered a redirect (HTTP {status}); not followed, so the "
            "client secret is not posted to another URL",
            status=status,
            retryable=False,
        )
    if _is_retryable_status(status):
        return TokenEndpointUnavailableError(
            f"token endpoint {url} answered {detail}", status=status, error=code
        )
    if 200 <= status < 300:
        return InvalidTokenResponseError(
            f"invalid token response: HTTP {status}, expected 200", status=status
        )
    return TokenEndpointUnavailableError(
        f"token endpoint {url} answered {detail}; check region or base_url",
        status=status,
        retryable=False,
        error=code,
    )


def _proxy_wants_credentials(
    proxy: Proxy | None, *, status: int = 407, error: str | None = None
) -> TokenRequestError:
    where = f"proxy {proxy.url}" if proxy is not None else "the proxy"
    if proxy is not None and proxy.login is not None:
        advice = "it refused the credentials in proxy="
    else:
        advice = "give them in proxy= as http://USER:PASSWORD@HOST:PORT"
    return TokenEndpointUnavailableError(
        f"{where} wants credentials (HTTP {status} to the proxy request): {advice}",
        status=status,
        retryable=False,
        error=error,
    )


def _is_retryable_status(status: int) -> bool:
    return status in {408, 429} or 500 <= status < 600


@attrs.frozen
class _Attempt:
    """The outcome of one failed attempt, for the retry loop."""

    error: TokenRequestError
    cause: BaseException | None = None
    retry_after: float | None = None


class _FormBody(payload.BytesPayload):
    """The form-encoded token request body; its repr never shows it (it holds the secret)."""

    def __repr__(self) -> str:
        return "<token request form body: not shown>"


def _form_body(client_id: str, client_secret: Secret) -> _FormBody:
    # Built in this small frame, which never raises once it has the secret, so no frame
    # that may end up in a traceback holds the form or the encoded body in a plain local.
    return _FormBody(
        urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret.reveal(),
            }
        ).encode("ascii"),
        content_type=_FORM_CONTENT_TYPE,
    )


def _proxy_headers(proxy: Proxy | None, url: URL, *, tunnel: bool) -> dict[str, str]:
    """``Proxy-Authorization`` for the proxy, where aiohttp sends it on: the CONNECT of a
    tunnel (https) or the forwarded request itself (http). Empty without credentials.
    """  # noqa: D205 (the summary is the two places)
    if proxy is None or proxy.login is None or tunnel != (url.scheme == "https"):
        return {}
    password = "" if proxy.password is None else proxy.password.reveal()
    basic = base64.b64encode(f"{proxy.login}:{password}".encode()).decode("ascii")
    return {"Proxy-Authorization": f"Basic {basic}"}


def _secrets_of(client_secret: Secret, proxy: Proxy | None) -> tuple[Secret | None, ...]:
    return (client_secret, None if proxy is None else proxy.password)


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
    sent_at, sent_at_monotonic = time.time(), time.monotonic()
    try:
        async with session.post(
            url,
            data=_form_body(client_id, client_secret),
            # Explicit, so no default header of a session (Content-Type: application/json)
            # relabels the form.
            headers={
                "Accept": "application/json",
                "Content-Type": _FORM_CONTENT_TYPE,
                **_proxy_headers(proxy, url, tunnel=False),
            },
            allow_redirects=False,
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            ssl=True if ssl is None else ssl,
            proxy=None if proxy is None else proxy.url,
            proxy_headers=_proxy_headers(proxy, url, tunnel=True) or None,
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
    except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not session.closed:
            raise
        return _Attempt(_error_for_exception(exc, url, timeout, proxy, client_secret), exc)
    if status == 200:
        return parse_token_response(body, sent_at=sent_at, sent_at_monotonic=sent_at_monotonic)
    error = _error_for_status(status, body, _secrets_of(client_secret, proxy), url)
    if status == 407 and proxy is not None:
        error = _proxy_wants_credentials(proxy, error=error.error)
    return _Attempt(error, None, retry_after)


def _error_for_exception(  # noqa: PLR0911 (one answer per kind of failure)
    exc: Exception, url: URL, timeout: float, proxy: Proxy | None, client_secret: Secret
) -> TokenRequestError:
    """The typed error for a request that got no answer from the token endpoint."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TokenEndpointUnavailableError(
            f"TLS certificate of {url.host} could not be verified: {exc.certificate_error}",
            retryable=False,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return TokenEndpointUnavailableError(
            f"TLS connection to {url.host} failed: {type(exc).__name__}", retryable=False
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy refused the CONNECT tunnel of an https token URL. Some proxies
        # (tinyproxy) answer wrong credentials with 401 rather than 407.
        if exc.status in {401, 407}:
            return _proxy_wants_credentials(proxy, status=exc.status)
        return TokenEndpointUnavailableError(
            f"proxy {'' if proxy is None else proxy.url} answered HTTP {exc.status} to the "
            f"tunnel to {url.host}",
            status=exc.status,
            retryable=_is_retryable_status(exc.status),
        )
    if isinstance(exc, TimeoutError):
        return TokenEndpointUnavailableError(
            f"token request to {url} timed out after {timeout:.3g} s"
        )
    if isinstance(exc, RuntimeError):
        # The session was closed between attempts (say, during a backoff): aiohttp's bare
        # RuntimeError becomes the error callers of get_token expect.
        return TokenEndpointUnavailableError(
            "the aiohttp session for token requests was closed", retryable=False
        )
    return TokenEndpointUnavailableError(
        f"token request to {url} failed: {type(exc).__name__}: "
        f"{_clean_text(str(exc), _secrets_of(client_secret, proxy))}"
    )


def _isolated(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """A private session on ``session``'s connector: its pool and TLS, nothing else.

    Whatever ``raise_for_status``, default headers, cookies, ``base_url``, auth,
    ``skip_auto_headers`` or middlewares the given session carries, the token request is
    then the same request as on a session of our own. Closing it leaves the connector open.
    """
    return aiohttp.ClientSession(
        connector=session.connector,
        connector_owner=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # we pick the proxy ourselves and never read ~/.netrc
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
    are not followed; only ``session``'s connector is used (its middlewares, headers,
    cookies and other defaults are not).

    Args:
        session: The aiohttp session whose connector sends the request.
        token_url: The token endpoint.
        client_id: The API client id.
        client_secret: The API client secret.
        timeout: Time limit of one attempt, seconds.
        retry: The retry policy.
        ssl: TLS verification for the request: ``None`` verifies with the default trust store.
        proxy: The HTTP proxy to go through, if any.
        trust_env: Without ``proxy``, take the proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
            ``NO_PROXY`` (never from ``~/.netrc``).
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
        TokenEndpointUnavailableError: The endpoint kept failing until the attempts or the
            deadline ran out; the last cause is chained. Also, not retryable, for a 407 from
            the proxy and when ``session`` is (or gets) closed.
    """
    if session.closed:
        # aiohttp would raise a bare RuntimeError, which callers of get_token do not expect.
        raise TokenEndpointUnavailableError(
            "the aiohttp session for token requests is closed", retryable=False
        )
    if proxy is None and trust_env:
        proxy = proxy_from_env(token_url)
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
            on_retry(error, delay)
        await sleep(delay)
