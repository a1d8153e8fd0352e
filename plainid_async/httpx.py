"""PlainID tokens on httpx or httpx2 requests, for PlainID's origin only (extra ``httpx(2)``).

The twin of :class:`~plainid_async.BearerAuthMiddleware` for httpx: the same provider, the
same tokens and cache, the same origin rules (``plainid_async._origins``). Tokens are still
fetched with aiohttp, the provider's transport; httpx only carries them.

Either library works: httpx, or httpx2 (Pydantic's maintained fork, imported as ``httpx2``,
with the same API). :class:`BearerAuth` is an auth of every one of them that is installed,
so an ``httpx.AsyncClient`` and an ``httpx2.AsyncClient`` both take it; :func:`client` opens
an httpx2 client when httpx2 is installed, else an httpx one.

httpx runs an auth flow once per ``send()`` and follows redirects inside it
(``_send_handling_auth`` → ``_send_handling_redirects``): it drops ``Authorization`` when a
redirect leaves the origin (except an http → https upgrade of the same host on the default
ports) and never runs the flow again on later hops. So :class:`BearerAuth` decides once, on
the first hop, and the tests prove both directions: a redirect from the API elsewhere carries
no token, and a request that reaches the API through a redirect from elsewhere carries none.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final, cast

from ._checks import check_token_origin
from ._origins import allows, host_port
from ._source import TokenScope, TokenSource
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator
    from types import ModuleType

    import httpx


def _installed() -> tuple[ModuleType, ...]:
    """httpx2 and httpx, whichever are installed, httpx2 first."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return tuple(found)


_LIBRARIES: Final = _installed()
if not _LIBRARIES:  # pragma: no cover (the test group installs both; a subprocess checks it)
    raise ImportError(
        "plainid_async.httpx needs httpx or httpx2: install an extra, "
        "pip install 'plainid-async[httpx]' or pip install 'plainid-async[httpx2]'"
    )
#: The library :func:`client` opens its client with: httpx2 when installed, else httpx.
_PREFERRED: Final = _LIBRARIES[0]
_BYTE_STREAMS: Final[tuple[type, ...]] = tuple(library.ByteStream for library in _LIBRARIES)
_URLS: Final[tuple[type, ...]] = tuple(library.URL for library in _LIBRARIES)

if TYPE_CHECKING:
    # Type checkers see an httpx.Auth: the two libraries' Request types differ, so no class
    # can be typed as both (docs/httpx.md says how httpx2 code passes it under mypy).
    _Auth = httpx.Auth
else:
    # Each library's client checks isinstance(auth, its own Auth): be both.
    _Auth = type("_Auth", tuple(library.Auth for library in _LIBRARIES), {})

__all__ = ["BearerAuth", "client"]


def _can_replay(request: httpx.Request) -> bool:
    """Whether httpx can send ``request``'s body again, byte for byte.

    Bytes, str, JSON and url-encoded forms are an :class:`httpx.ByteStream`, read into memory
    when the request was built. Anything else (async iterators, files, multipart uploads) is a
    stream that the first send consumed, or may be a pipe.
    """
    return isinstance(request.stream, _BYTE_STREAMS)


class BearerAuth(TokenScope, _Auth):
    """An ``httpx.Auth`` (and ``httpx2.Auth``) that sends PlainID access tokens to PlainID only.

    Each request whose origin (scheme, host, port) is the provider's API origin, or one of
    ``origins``, gets ``Authorization: Bearer <token>``. An ``Authorization`` header the
    caller set (on the request or as a client default) is left alone. On a 401 to a request
    that carried the token, the token is reported (``provider.report_unauthorized``, which
    drops it, compare-and-drop, unless its 401 guard holds) and the request is sent once
    more with a fresh token, provided its body can be sent again (none, bytes, str, JSON,
    url-encoded form); a streamed body is never sent twice, and the caller gets the 401.

    For ``httpx.AsyncClient`` only: the token comes from an asyncio provider.
    ``httpx.Client`` raises :class:`~plainid_async.ConfigurationError`.

    Args:
        provider: Where tokens come from: a :class:`~plainid_async.TokenProvider`, or any
            object with ``api_url``, ``get_token()`` and ``report_unauthorized(token)``.
        origins: More origins that take the token, such as ``"https://pap.example.com"``:
            absolute URLs without a path, https (http only for loopback hosts).
        retry_on_401: Whether to refresh the token and retry once on a 401.

    Raises:
        ConfigurationError: An argument is invalid; the message names it.
    """

    # httpx reads neither body for us: a streamed upload stays streamed.
    requires_request_body = False
    requires_response_body = False

    def allows(self, url: httpx.URL | str) -> bool:
        """Whether a request to ``url`` would get the token."""
        # An httpx or an httpx2 URL as it is; anything else parsed (both parse alike).
        parsed = url if isinstance(url, _URLS) else _PREFERRED.URL(url)
        return self._allows(cast("httpx.URL", parsed))

    def _allows(self, url: httpx.URL) -> bool:
        key = host_port(url.raw_host.decode("ascii"), url.port)
        return allows(self._allowed, url.scheme, key)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Add the token to ``request`` if its origin is allowed; retry once on a 401."""
        if "authorization" in request.headers or not self._allows(request.url):
            yield request
            return
        provider = self._provider
        # A FRESH token from the provider's hot slot, without a coroutine; else get_token().
        token = self._hot_token() or await provider.get_token()
        for attempt in range(2):
            # No local of this frame holds the header value (a traceback with locals, as
            # Sentry captures it, would show it when the next get_token() fails): it goes
            # from the token (built once per token) into the request, whose repr httpx redacts.
            request.headers["Authorization"] = token.authorization
            response = yield request
            if response.status_code != 401 or attempt or not self._retry_on_401:
                return
            # After redirects, the 401 may come from a hop the token never reached (httpx
            # dropped it on the way to another origin): only a rejected token is reported.
            if response.request.headers.get("authorization") != token.authorization:
                return
            if not provider.report_unauthorized(token) or not _can_replay(request):
                return  # guard held, or a streamed body cannot be sent again: the 401 stays
            token = await provider.get_token()  # waits for the rejected token's replacement

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Refuse: tokens come from an asyncio provider, so use ``httpx.AsyncClient``.

        Raises:
            ConfigurationError: Always, before anything is sent.
        """
        raise ConfigurationError(
            "plainid_async.httpx.BearerAuth works with httpx.AsyncClient only: tokens come "
            f"from an asyncio TokenProvider (not sent: {request.method} {request.url.host})"
        )


def client(provider: TokenSource, **kwargs: Any) -> httpx.AsyncClient:  # noqa: ANN401 (httpx.AsyncClient options)
    """Open an ``AsyncClient`` for PlainID's APIs, sending the provider's tokens.

    The client is an ``httpx2.AsyncClient`` when httpx2 is installed, else an
    ``httpx.AsyncClient``. To choose, build it yourself:
    ``httpx.AsyncClient(auth=BearerAuth(provider), base_url=str(provider.api_url))``.

    The twin of :meth:`TokenProvider.session() <plainid_async.TokenProvider.session>`:
    ``base_url`` defaults to the provider's API URL and ``auth`` is a :class:`BearerAuth`
    for the provider; all other keyword arguments (``headers``, ``timeout``, ``transport``,
    ``follow_redirects``, …) go to ``httpx.AsyncClient`` as they are. httpx appends request
    paths to ``base_url``: ``"api/1.0/..."`` and ``"/api/1.0/..."`` both go under a path
    prefix of the API URL.

    Args:
        provider: Where tokens come from.
        **kwargs: Options of ``httpx.AsyncClient``, except ``auth``.

    Returns:
        The client; close it (``async with``) when done.

    Raises:
        ConfigurationError: ``auth`` was given: build ``httpx.AsyncClient(auth=BearerAuth(
            provider, ...))`` yourself for other auth options. Or ``base_url`` is on an
            origin that gets no token (as for ``provider.session()``).
    """
    if "auth" in kwargs:
        raise ConfigurationError(
            "client() sets auth= itself; for other options pass "
            "auth=BearerAuth(provider, ...) to httpx.AsyncClient yourself"
        )
    auth = BearerAuth(provider)
    if "base_url" in kwargs:  # as provider.session(): its requests must get the token
        base_url = kwargs["base_url"]
        check_token_origin(
            "base_url",
            str(base_url) if isinstance(base_url, _URLS) else base_url,
            allows=lambda url: auth.allows(str(url)),
            origins=auth.origins,
        )
    kwargs.setdefault("base_url", str(auth.provider.api_url))
    return cast("httpx.AsyncClient", _PREFERRED.AsyncClient(auth=auth, **kwargs))
