"""The token request on the wire, without the I/O: the form body, reading answers, typed errors.

Pure functions of bytes, statuses and exceptions: :mod:`plainid_async._endpoint` does the
one request and the retries and asks this module what was sent and what came back.

Two rules keep secrets out of tracebacks (Sentry's default ``include_local_variables``,
``traceback.TracebackException(..., capture_locals=True)``), which show the locals of every
frame between a ``raise`` and its handler, and of every exception in the chain:

- A body that may hold a token is read by functions that *return* the outcome, token or
  error; none of them raises, so none of their frames (locals ``body``, ``data``, the
  token) is ever part of a traceback, and the error has no ``__context__``.
- A transport error is never chained as it is: :func:`sanitized_cause` gives a copy with
  no traceback, no chain of its own and no ``Proxy-Authorization`` header.

Text a server or a library wrote is redacted here, once, where the secrets of the request
are known (:func:`clean_text`); everything else only shapes it (:func:`shown_text`).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, NoReturn

import aiohttp
import attrs
from aiohttp import payload
from multidict import CIMultiDict, CIMultiDictProxy

from ._secret import Secret, redact
from ._token import Token, lifetime_problem
from .exceptions import (
    InvalidCredentialsError,
    InvalidTokenResponseError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from yarl import URL

    from ._proxy import Proxy

__all__ = [
    "FORM_CONTENT_TYPE",
    "MAX_BODY_SIZE",
    "MAX_QUOTED_MESSAGE",
    "MAX_TOKEN_LENGTH",
    "FormBody",
    "clean_text",
    "error_for_exception",
    "error_for_status",
    "form_body",
    "is_retryable_status",
    "parse_retry_after",
    "parse_token_response",
    "sanitized_cause",
    "secrets_of",
    "shown_text",
    "token_or_error",
]

#: Largest token-endpoint response body read, in bytes.
MAX_BODY_SIZE: Final = 64 * 1024
#: Longest access token accepted, in characters.
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: Longest text quoted from a server or shown in an event, in characters.
MAX_QUOTED_MESSAGE: Final = 200
#: The token request's content type.
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"

_TOKEN_CHARS_RE: Final = re.compile(r"[\x21-\x7e]+")
_LIFETIME_TEXT_RE: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")
#: 4xx answers that refuse the request as made (grant, client or request not accepted).
_REFUSED_STATUSES: Final = frozenset({400, 403})
#: An OAuth error code (RFC 6749: printable ASCII without '"' and '\\') or PlainID's name.
_ERROR_CODE_RE: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")
#: Request headers a transport error's copy never keeps.
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})


# -- text ------------------------------------------------------------------------------


def shown_text(text: str) -> str:
    """Text fit for a message or an event: one line, at most :data:`MAX_QUOTED_MESSAGE`.

    It redacts nothing: every message of a token request was redacted where it was made.
    """
    text = _CONTROL_RE.sub(" ", text).strip()
    if len(text) > MAX_QUOTED_MESSAGE:
        text = text[:MAX_QUOTED_MESSAGE] + "…"
    return text


def clean_text(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Text a server or a library wrote, made fit for a message: redacted, one line, bounded."""
    return shown_text(redact(_CONTROL_RE.sub(" ", text), secrets))


def secrets_of(client_secret: Secret, proxy: Proxy | None) -> tuple[Secret | None, ...]:
    """The secrets a token request carries: the client secret and the proxy password."""
    return (client_secret, None if proxy is None else proxy.password)


# -- the request -----------------------------------------------------------------------


class FormBody(payload.BytesPayload):
    """The form-encoded token request body; its repr never shows it (it holds the secret)."""

    def __repr__(self) -> str:
        """Say what it is, never what it holds."""
        return "<token request form body: not shown>"


def form_body(client_id: str, client_secret: Secret) -> FormBody:
    """The token request body: ``grant_type=client_credentials``, the id and the secret.

    Built in this small frame, which never raises once it has the secret, so no frame that
    may end up in a traceback holds the form or the encoded body in a plain local.
    """
    return FormBody(
        urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret.reveal(),
            }
        ).encode("ascii"),
        content_type=FORM_CONTENT_TYPE,
    )


# -- the answer ------------------------------------------------------------------------


class _BadConstantError(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a JSON body."""


def _reject_constant(name: str) -> NoReturn:
    raise _BadConstantError(name)


def _lifetime(value: object) -> float | str:
    """Seconds from ``expires_in``, or what is wrong with it."""
    # The wire format also allows a numeric string; the rule itself is _token's.
    if isinstance(value, str):
        if not _LIFETIME_TEXT_RE.fullmatch(value.strip()):
            return "expires_in is a string that is not a plain number of seconds"
        value = float(value.strip())
    problem = lifetime_problem(value)
    if problem is not None:
        return f"expires_in {problem}"
    return float(value)  # type: ignore[arg-type]  # lifetime_problem saw an int or float


def _read_token(body: bytes) -> tuple[str, str, float] | str:  # noqa: PLR0911 (one per rule)
    """``(access_token, token_type, expires_in)`` from a 200 body, or what is wrong with it."""
    if len(body) > MAX_BODY_SIZE:
        return f"body larger than {MAX_BODY_SIZE} bytes"
    try:
        data: Any = json.loads(body, parse_constant=_reject_constant)
    except _BadConstantError as exc:
        return f"JSON constant {exc} is not allowed"
    except (ValueError, RecursionError):
        return "body is not JSON"
    if not isinstance(data, dict):
        return "body is not a JSON object"
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        return "access_token is missing or not a non-empty string"
    if len(access_token) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS_RE.fullmatch(access_token):
        return "access_token has characters that cannot go in an Authorization header"
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = _CONTROL_RE.sub("", str(token_type))[:40]
        return f"token_type is {shown!r}, expected 'Bearer'"
    expires_in = _lifetime(data.get("expires_in"))
    if isinstance(expires_in, str):
        return expires_in
    return access_token, token_type, expires_in


def token_or_error(
    body: bytes, *, sent_at: float | None = None, sent_at_monotonic: float | None = None
) -> Token | InvalidTokenResponseError:
    """The token in a 200 response body, or the error that says what is wrong with it.

    Returns the error rather than raising it: no frame that saw the body (which may hold a
    real token beside a bad ``token_type``) is then part of the traceback, and the error
    chains nothing (no ``JSONDecodeError`` whose ``doc`` is the body).

    Args:
        body: The raw response body.
        sent_at: Wall-clock time the request was sent.
        sent_at_monotonic: Monotonic time the request was sent.

    Returns:
        The token, its expiry measured from when the request was sent; or an
        :class:`~plainid_async.InvalidTokenResponseError` (status 200) whose message never
        contains the token.
    """
    read = _read_token(body)
    if isinstance(read, str):
        return InvalidTokenResponseError(f"invalid token response: {read}", status=200)
    return Token.issued(
        read[0],
        token_type=read[1],
        expires_in=read[2],
        sent_at=sent_at,
        sent_at_monotonic=sent_at_monotonic,
    )


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
            ``expires_in``. Neither the message nor this frame's locals hold the token.
    """
    outcome = token_or_error(body, sent_at=sent_at, sent_at_monotonic=sent_at_monotonic)
    del body  # the raise below must not find the body among this frame's locals
    if isinstance(outcome, InvalidTokenResponseError):
        raise outcome
    return outcome


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


# -- errors ----------------------------------------------------------------------------


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
    except (ValueError, RecursionError):
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
            description = clean_text(value, secrets)
            break
    return _ServerError(code, description)


def is_retryable_status(status: int) -> bool:
    """Whether an answer with ``status`` may succeed when tried again (408, 429, 5xx)."""
    return status in {408, 429} or 500 <= status < 600


def proxy_wants_credentials(
    proxy: Proxy | None, *, status: int = 407, error: str | None = None
) -> TokenRequestError:
    """The error for a proxy that answered 407 (or 401 to a CONNECT), with what to do."""
    where = f"proxy {proxy.url}" if proxy is not None else "the proxy"
    advice = (
        proxy.credentials_advice()
        if proxy is not None
        else "give them with the proxy URL as http://USER:PASSWORD@HOST:PORT"
    )
    return TokenEndpointUnavailableError(
        f"{where} wants credentials (HTTP {status} to the proxy request): {advice}",
        status=status,
        retryable=False,
        error=error,
    )


def error_for_status(  # noqa: PLR0911 (one answer per kind of status)
    status: int,
    body: bytes,
    url: URL,
    *,
    client_secret: Secret,
    proxy: Proxy | None,
) -> TokenRequestError:
    """The typed error for a token endpoint's answer other than 200.

    Args:
        status: The HTTP status.
        body: The response body (read up to :data:`MAX_BODY_SIZE`; empty when larger).
        url: The token endpoint.
        client_secret: The client secret, to redact from what the server said.
        proxy: The proxy the request went through, if any.

    Returns:
        :class:`~plainid_async.InvalidCredentialsError` for 401, 400 and 403 (and
        ``invalid_client``); :class:`~plainid_async.TokenEndpointUnavailableError` for a
        proxy's 407, a redirect (not followed), 408, 429, 5xx (retryable) and the rest;
        :class:`~plainid_async.InvalidTokenResponseError` for another 2xx.
    """
    said = _parse_error_body(body, secrets_of(client_secret, proxy))
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
        return proxy_wants_credentials(proxy, error=code)
    if 300 <= status < 400:
        return TokenEndpointUnavailableError(
            f"token endpoint {url} answered a redirect (HTTP {status}); not followed, so the "
            "client secret is not posted to another URL",
            status=status,
            retryable=False,
        )
    if is_retryable_status(status):
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


def error_for_exception(  # noqa: PLR0911 (one answer per kind of failure)
    exc: BaseException,
    url: URL,
    *,
    timeout: float,
    client_secret: Secret,
    proxy: Proxy | None,
) -> TokenRequestError:
    """The typed error for a token request that got no answer from the token endpoint.

    Args:
        exc: What the transport raised: an :class:`aiohttp.ClientError`, a
            :class:`TimeoutError`, or aiohttp's :class:`RuntimeError` for a closed session.
        url: The token endpoint.
        timeout: The attempt's time limit, seconds.
        client_secret: The client secret, to redact from the transport's text.
        proxy: The proxy the request went through, if any.

    Returns:
        A :class:`~plainid_async.TokenEndpointUnavailableError`: retryable for connection
        errors and timeouts, not for TLS failures, a proxy's refusal or a closed session.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TokenEndpointUnavailableError(
            f"TLS certificate of {url.host} could not be verified: "
            f"{clean_text(str(exc.certificate_error), secrets_of(client_secret, proxy))}",
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
            return proxy_wants_credentials(proxy, status=exc.status)
        return TokenEndpointUnavailableError(
            f"proxy {'' if proxy is None else proxy.url} answered HTTP {exc.status} to the "
            f"tunnel to {url.host}",
            status=exc.status,
            retryable=is_retryable_status(exc.status),
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
        f"{clean_text(str(exc), secrets_of(client_secret, proxy))}"
    )


def _without_credentials(info: aiohttp.RequestInfo) -> aiohttp.RequestInfo:
    headers = CIMultiDict(
        (name, value)
        for name, value in info.headers.items()
        if name.lower() not in _CREDENTIAL_HEADERS
    )
    return aiohttp.RequestInfo(info.url, info.method, CIMultiDictProxy(headers), info.real_url)


def sanitized_cause(exc: BaseException) -> BaseException:
    """What a typed error chains for ``exc``: the transport's error, holding no secret.

    The traceback of the transport's error runs through aiohttp's frames, whose locals hold
    the proxy's ``Proxy-Authorization`` and the request; its chain holds more such frames.
    The cause keeps the error's type, text and attributes, with none of that: no traceback,
    no ``__cause__`` or ``__context__``, and, for an answer (such as the
    :class:`aiohttp.ClientHttpProxyError` of a refused CONNECT), a copy whose
    ``request_info`` has no ``Authorization``, ``Proxy-Authorization`` or ``Cookie``.

    Args:
        exc: What the transport raised; it is not raised again, so it may be changed.

    Returns:
        The exception to chain as the typed error's ``__cause__``.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        answer: dict[str, Any] = {
            "status": exc.status,
            "message": exc.message,
            "headers": exc.headers,
        }
        info = _without_credentials(exc.request_info)
        try:
            exc = type(exc)(info, (), **answer)
        except TypeError:  # a subclass with its own constructor: the base class then
            exc = aiohttp.ClientResponseError(info, (), **answer)
    for held in (exc, *(arg for arg in exc.args if isinstance(arg, BaseException))):
        held.__traceback__ = None
        held.__cause__ = held.__context__ = None
        held.__suppress_context__ = True
    return exc
