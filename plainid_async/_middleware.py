"""BearerAuthMiddleware: PlainID tokens on aiohttp requests, for PlainID's origin only.

Modelled on aiohttp's ``DigestAuthMiddleware``: a class with ``async __call__(request,
handler)``, checked arguments, ``Final`` attributes and a bounded retry. aiohttp runs client
middlewares once per redirect hop, each time on a new :class:`aiohttp.ClientRequest`, so the
origin check below runs on every hop: a redirect to another origin gets no token, although
aiohttp would otherwise let a middleware re-add the header it stripped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import hdrs, payload
from yarl import URL

from ._endpoint import is_loopback_host
from ._provider import TokenProvider
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType

    from ._token import Token

__all__ = ["BearerAuthMiddleware", "provider_session"]

#: WebSocket handshakes are requests to ws:// and wss:// URLs; they share the http(s) origin.
_WS_SCHEMES: Final = {"http": "ws", "https": "wss"}

#: Bodies aiohttp can send again as they are: bytes, str, JSON and url-encoded forms (all
#: BytesPayload) and BytesIO (rewound by aiohttp). Async generators, stream readers and files
#: are left out: a generator is drained by the first send and a file may be a pipe.
_REPLAYABLE: Final = (payload.BytesPayload, payload.BytesIOPayload)


def _is_allowed(allowed: Mapping[str | None, frozenset[str]], url: URL) -> bool:
    # The origin is (scheme, host, port). yarl's host_port_subcomponent is the host, lowercased
    # and IDNA-encoded, with the port unless it is the scheme's default: so (scheme, it) names
    # one origin, "https://h:443" and "https://h" alike (URL.origin() tells them apart). aiohttp
    # has already computed it for the Host header, so this check allocates nothing.
    schemes = allowed.get(url.host_port_subcomponent)
    return schemes is not None and url.scheme in schemes


def _check_origin(value: object) -> URL:
    if not isinstance(value, (str, URL)):
        raise ConfigurationError(
            f"origins must hold strings or yarl.URL objects, not {type(value).__name__}"
        )
    try:
        url = URL(value) if isinstance(value, str) else value
        shown = str(url.with_user(None).with_password(None)) if url.raw_host else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"origins: {str(value)!r} is not a valid URL") from exc
    if not url.absolute or not url.raw_host or url.scheme not in _WS_SCHEMES:
        raise ConfigurationError(f"origins: {shown!r} must be an absolute http(s) URL")
    if url.user is not None or url.password is not None:
        raise ConfigurationError(f"origins: {shown!r} must not carry credentials")
    if url.path not in {"", "/"} or url.query_string or url.fragment:
        raise ConfigurationError(
            f"origins: {shown!r} must be an origin only (scheme, host, port), without a "
            "path, query or fragment"
        )
    if url.scheme == "http" and not is_loopback_host(url.raw_host):
        raise ConfigurationError(
            f"origins: {shown!r} must use https (plain http is allowed for loopback hosts only)"
        )
    return url


def _check_origins(origins: object) -> tuple[URL, ...]:
    if origins is None:
        return ()
    if isinstance(origins, (str, URL)):
        raise ConfigurationError("origins must be a list of origins, not a single string or URL")
    if not isinstance(origins, Iterable):
        raise ConfigurationError(f"origins must be an iterable, not {type(origins).__name__}")
    return tuple(_check_origin(origin).origin() for origin in origins)


def _allowed_schemes(origins: Iterable[URL]) -> dict[str | None, frozenset[str]]:
    """Map each allowed host[:port] to the schemes allowed with it, ws(s) with http(s)."""
    allowed: dict[str | None, frozenset[str]] = {}
    for origin in origins:
        key = origin.host_port_subcomponent
        allowed[key] = allowed.get(key, frozenset()) | {origin.scheme, _WS_SCHEMES[origin.scheme]}
    return allowed


def _can_replay(body: object) -> bool:
    """Whether aiohttp can send ``body`` (``ClientRequest.body``) again, byte for byte."""
    if isinstance(body, bytes):  # no body at all: ClientRequest.body is b""
        return True
    if isinstance(body, aiohttp.MultipartWriter):  # multipart form data: every part must be
        parts: Iterable[tuple[Any, ...]] = body
        return not getattr(body, "consumed", False) and all(_can_replay(p[0]) for p in parts)
    # ``consumed`` exists from aiohttp 3.12's reusable payloads on; before that, trust the type.
    return isinstance(body, _REPLAYABLE) and not getattr(body, "consumed", False)


class BearerAuthMiddleware:
    """An aiohttp client middleware that sends PlainID access tokens to PlainID only.

    Each request whose origin (scheme, host, port) is the provider's API origin, or one of
    ``origins``, gets ``Authorization: Bearer <token>``; the check runs on every redirect hop,
    so a redirect elsewhere carries no token. An ``Authorization`` header the caller set is
    left alone. On a 401 from an allowed origin the middleware releases the response, drops
    the token it sent (only if it is still the cached one, so many 401s cause one refresh),
    gets a fresh token and sends the request once more, provided the body can be sent again
    (none, bytes, str, JSON, form data, BytesIO); a streamed body is never sent twice, and
    the caller gets the 401. A second 401 is returned to the caller.

    Install it first in the chain: ``aiohttp.ClientSession(middlewares=(middleware, ...))``,
    or use :meth:`TokenProvider.session`. Token requests go through the provider's own
    session without middlewares, so they never come back through this one.

    Args:
        provider: Where tokens come from.
        origins: More origins that take the token, such as ``"https://pap.example.com"``:
            absolute URLs without a path, https (http only for loopback hosts).
        retry_on_401: Whether to refresh the token and retry once on a 401.

    Raises:
        ConfigurationError: An argument is invalid; the message names it.
    """

    __slots__ = ("_allowed", "_header", "_origins", "_provider", "_retry_on_401")

    def __init__(
        self,
        provider: TokenProvider,
        *,
        origins: Iterable[str | URL] | None = None,
        retry_on_401: bool = True,
    ) -> None:
        """Check the arguments and precompute the allowed origins."""
        if not isinstance(provider, TokenProvider):
            raise ConfigurationError(
                f"provider must be a plainid_async.TokenProvider, not {type(provider).__name__}"
            )
        if not isinstance(retry_on_401, bool):
            raise ConfigurationError(f"retry_on_401 must be a bool, not {retry_on_401!r}")
        self._provider: Final = provider
        extra = _check_origins(origins)
        self._origins: Final = (provider.api_url.origin(), *extra)
        self._allowed: Final = _allowed_schemes(self._origins)
        self._retry_on_401: Final = retry_on_401
        # The last token and its header value, replaced as one object (so threads sharing
        # the middleware never pair a token with another token's header): the hot path
        # then builds no string.
        self._header: tuple[Token | None, str] = (None, "")

    @property
    def provider(self) -> TokenProvider:
        """The token provider."""
        return self._provider

    @property
    def origins(self) -> tuple[URL, ...]:
        """The origins that get the token, the provider's API origin first."""
        return self._origins

    def __repr__(self) -> str:
        """Show the origins and the options; never a token."""
        shown = ", ".join(f"'{origin}'" for origin in self._origins)
        return f"<BearerAuthMiddleware origins=({shown}) retry_on_401={self._retry_on_401}>"

    def allows(self, url: URL) -> bool:
        """Whether a request to ``url`` would get the token."""
        return _is_allowed(self._allowed, url)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Add the token to ``request`` if its origin is allowed; retry once on a 401."""
        headers = request.headers
        if hdrs.AUTHORIZATION in headers or not _is_allowed(self._allowed, request.url):
            return await handler(request)
        provider = self._provider
        for attempt in range(2):
            token = await provider.get_token()
            header = self._header
            if header[0] is not token:
                header = self._header = (token, token.authorization)
            headers[hdrs.AUTHORIZATION] = header[1]
            response = await handler(request)
            if response.status != 401 or attempt or not self._retry_on_401:
                break
            # The token was rejected: drop it, if it is still the cached one, so this retry
            # or else the caller's next request gets a new one.
            # Guard held, or a streamed body cannot be sent again: the caller gets the 401.
            if not provider.report_unauthorized(token) or not _can_replay(request.body):
                break
            # Free the connection first: the retry (or, with a shared session, the token
            # request) may need it from a small pool.
            response.release()
        return response


def provider_session(provider: TokenProvider, **kwargs: Any) -> aiohttp.ClientSession:  # noqa: ANN401 (aiohttp.ClientSession options)
    """Open an :class:`aiohttp.ClientSession` for PlainID's APIs, sending the provider's tokens.

    ``base_url`` defaults to the provider's API URL, with a trailing ``/`` as aiohttp
    requires. aiohttp joins request paths to it as RFC 3986 says: a path without a leading
    ``/`` (``"api/1.0/..."``) goes under a path prefix of the API URL, a path with one
    (``"/api/1.0/..."``) replaces that prefix. Without a prefix both are the same.
    A :class:`BearerAuthMiddleware` comes first in the middleware chain, before the
    ``middlewares`` given; all other keyword arguments (``headers``, ``timeout``,
    ``connector``, …) go to :class:`aiohttp.ClientSession` as they are.

    Args:
        provider: Where tokens come from.
        **kwargs: Options of :class:`aiohttp.ClientSession`.

    Returns:
        The session; close it (``async with``) when done.
    """
    if "base_url" not in kwargs:
        api_url = provider.api_url
        kwargs["base_url"] = api_url.with_path(api_url.path.rstrip("/") + "/")
    kwargs["middlewares"] = (BearerAuthMiddleware(provider), *(kwargs.get("middlewares") or ()))
    return aiohttp.ClientSession(**kwargs)
