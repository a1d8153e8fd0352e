"""BearerAuthMiddleware: PlainID tokens on aiohttp requests, for PlainID's origin only.

Modelled on aiohttp's ``DigestAuthMiddleware``: a class with ``async __call__(request,
handler)``, checked arguments, ``Final`` attributes and a bounded retry. aiohttp runs client
middlewares once per redirect hop, each time on a new :class:`aiohttp.ClientRequest`, so the
origin check below runs on every hop: a redirect to another origin gets no token, although
aiohttp would otherwise let a middleware re-add the header it stripped.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import hdrs, payload

from ._checks import check_token_origin
from ._origins import is_allowed as _is_allowed  # the name __call__ uses
from ._source import TokenScope

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType
    from yarl import URL

    from ._provider import TokenProvider
    from ._token import Token

__all__ = ["BearerAuthMiddleware", "provider_session"]

#: The header's name, a module constant: one lookup fewer per use than hdrs.AUTHORIZATION.
_AUTHORIZATION: Final = hdrs.AUTHORIZATION

#: Statuses aiohttp follows as redirects.
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

#: The request (see _chain_of) whose next hop a redirect from an origin that gets no token
#: chose, and the middlewares whose token that origin does not get: each withholds its own
#: token from the rest of the request, and only its own (a session may hold several, each
#: for its own origins). Middlewares run in the caller's task, once per hop, so the hop
#: after a foreign redirect sees what the hop before it set; concurrent requests run in
#: other tasks (or are other requests) and see nothing of it.
_FOREIGN_REDIRECT: Final[contextvars.ContextVar[tuple[object, tuple[object, ...]] | None]] = (
    contextvars.ContextVar("plainid_async_foreign_redirect", default=None)
)

#: Bodies aiohttp can send again as they are: bytes, str, JSON and url-encoded forms (all
#: BytesPayload) and BytesIO (rewound by aiohttp). Async generators, stream readers and files
#: are left out: a generator is drained by the first send and a file may be a pipe.
_REPLAYABLE: Final = (payload.BytesPayload, payload.BytesIOPayload)


def _can_replay(body: object) -> bool:
    """Whether aiohttp can send ``body`` (``ClientRequest.body``) again, byte for byte."""
    if isinstance(body, bytes):  # no body at all: ClientRequest.body is b""
        return True
    if isinstance(body, aiohttp.MultipartWriter):  # multipart form data: every part must be
        parts: Iterable[tuple[Any, ...]] = body
        return not getattr(body, "consumed", False) and all(_can_replay(p[0]) for p in parts)
    # ``consumed`` exists from aiohttp 3.12's reusable payloads on; before that, trust the type.
    return isinstance(body, _REPLAYABLE) and not getattr(body, "consumed", False)


class BearerAuthMiddleware(TokenScope):
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
        provider: Where tokens come from: a :class:`TokenProvider`, or any object with
            ``api_url``, ``get_token()`` and ``report_unauthorized(token)`` (a test double).
        origins: More origins that take the token, such as ``"https://pap.example.com"``:
            absolute URLs without a path, https (http only for loopback hosts).
        retry_on_401: Whether to refresh the token and retry once on a 401.

    Attributes:
        provider: The token provider (read-only).
        origins: The origins that get the token, the provider's API origin first (read-only).

    Raises:
        ConfigurationError: An argument is invalid; the message names it.
    """

    __slots__ = ()

    def allows(self, url: URL) -> bool:
        """Whether a request to ``url`` would get the token."""
        return _is_allowed(self._allowed, url)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Add the token to ``request`` if its origin is allowed; retry once on a 401.

        A hop that a redirect from an origin that gets no token led here gets no token
        either, whatever its origin: that origin chose its method, path and body.
        """
        # Every request pays for what this method does before handler(): it stays a few
        # attribute reads and dict lookups, with no call of ours and no coroutine unless
        # the token is not at hand (docs/benchmarks.md has the figures).
        if _AUTHORIZATION in request.headers:
            # Set by the caller, or by another middleware for its own origin: left alone. A
            # redirect from an origin that gets no token from this middleware still counts.
            if self._gets_token(request):
                return await handler(request)
            return await self._send_without_token(request, handler)
        url = request.url
        # The common case of _gets_token, decided inline: the origin is allowed (the check of
        # _origins.is_allowed, two calls fewer) and no foreign redirect is on record. Anything
        # else goes to _gets_token, the full rule.
        schemes = self._allowed.get(url.host_port_subcomponent)
        if (
            schemes is None or url.scheme not in schemes or _FOREIGN_REDIRECT.get() is not None
        ) and not self._gets_token(request):
            return await self._send_without_token(request, handler)
        # A FRESH token straight from the provider's hot slot; else its get_token() waits,
        # refreshes or raises.
        token = self._hot_token() or await self._provider.get_token()
        # The header value (built once per token) goes from the token straight into the
        # request: no local of this frame holds it (nor the headers), so a traceback with
        # locals shows only Token's repr.
        request.headers[_AUTHORIZATION] = token.authorization
        try:
            response = await handler(request)
        finally:
            # Sent, or failed: either way the header leaves the request now, so neither a
            # frame below (which may hold request.headers) nor the response's request_info
            # (a live view of them, in ClientResponseError's repr) shows it. pop(), not
            # popall(), which builds a list: about 20 ns, nothing allocated.
            request.headers.pop(_AUTHORIZATION, None)
        if response.status != 401 or not self._retry_on_401:
            return response
        return await self._retry(request, handler, token, response)

    def _gets_token(self, request: ClientRequest) -> bool:
        """Whether this hop gets the token: its origin is allowed, and no redirect from an
        origin that gets no token from this middleware led here.
        """  # noqa: D205 (two conditions)
        if any(owner is self for owner in _withheld_from(request)):
            return False
        return _is_allowed(self._allowed, request.url)

    async def _send_without_token(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        """Send a hop that gets no token; remember it if it redirects (see _FOREIGN_REDIRECT)."""
        response = await handler(request)
        if response.status in _REDIRECT_STATUSES:
            # aiohttp follows this redirect, if at all, with its next hop in this same task
            # and request (chain): that hop must not get this middleware's token.
            chain = _chain_of(request)
            if chain is not None:
                withheld = _withheld_from(request)
                if not any(owner is self for owner in withheld):
                    _FOREIGN_REDIRECT.set((chain, (*withheld, self)))
        return response

    async def _retry(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        token: Token,
        response: ClientResponse,
    ) -> ClientResponse:
        """A 401 to ``token``: drop it, get a fresh one and send once more, if worth it."""
        provider = self._provider
        # The token was rejected: drop it, if it is still the cached one, so this retry or
        # else the caller's next request gets a new one. When the guard holds or a streamed
        # body cannot be sent again, the caller gets the 401.
        if not provider.report_unauthorized(token) or not _can_replay(request.body):
            return response
        # Free the connection first: the retry (or, with a shared session, the token
        # request) may need it from a small pool.
        response.release()
        token = await provider.get_token()
        # As in __call__ (kept inline there for the hot path): no local holds the header,
        # and it leaves the request once sent. A second 401 goes to the caller.
        request.headers[_AUTHORIZATION] = token.authorization
        try:
            return await handler(request)
        finally:
            request.headers.pop(_AUTHORIZATION, None)


def _withheld_from(request: ClientRequest) -> tuple[object, ...]:
    """The middlewares that withhold their token from this hop of ``request``.

    An earlier hop of the same request went to an origin that each of them does not serve,
    and that origin redirected it (see _FOREIGN_REDIRECT). A record of another request is
    forgotten here.
    """
    steered = _FOREIGN_REDIRECT.get()
    if steered is None:
        return ()
    chain, withheld = steered
    if chain is _chain_of(request):
        return withheld
    _FOREIGN_REDIRECT.set(None)  # another request: forget the last one's redirects
    return ()


def _chain_of(request: ClientRequest) -> list[object] | None:
    """What the hops of one aiohttp request share, and no other request does.

    aiohttp builds a new :class:`~aiohttp.ClientRequest` per redirect hop, but hands every
    hop of one ``session.request()`` call the same list of its trace contexts (a new list
    per call, even without ``trace_configs``). ``None`` if aiohttp stops doing so; then
    redirect steering is off and the origin check of each hop still holds.
    """
    chain = getattr(request, "_traces", None)
    return chain if isinstance(chain, list) else None


def provider_session(
    provider: TokenProvider,
    *,
    origins: Iterable[str | URL] | None = None,
    **kwargs: Any,  # noqa: ANN401 (aiohttp.ClientSession options)
) -> aiohttp.ClientSession:
    """Open an :class:`aiohttp.ClientSession` for PlainID's APIs, sending the provider's tokens.

    ``base_url`` defaults to the provider's API URL, with a trailing ``/`` as aiohttp
    requires (an encoded ``/``, ``%2F``, in its path prefix stays encoded). aiohttp joins
    request paths to it as RFC 3986 says: a path without a leading ``/``
    (``"api/1.0/..."``) goes under a path prefix of the API URL, a path with one
    (``"/api/1.0/..."``) replaces that prefix. Without a prefix both are the same.
    A :class:`BearerAuthMiddleware` with ``origins`` comes first in the middleware chain,
    before the ``middlewares`` given; all other keyword arguments (``headers``,
    ``timeout``, ``connector``, …) go to :class:`aiohttp.ClientSession` as they are.

    Args:
        provider: Where tokens come from.
        origins: More origins that get the token, as for :class:`BearerAuthMiddleware`.
        **kwargs: Options of :class:`aiohttp.ClientSession`.

    Returns:
        The session; close it (``async with``) when done.

    Raises:
        ConfigurationError: ``origins`` is invalid, or ``base_url`` is on an origin that
            gets no token (its requests would silently go without one).
    """
    middleware = BearerAuthMiddleware(provider, origins=origins)
    if "base_url" not in kwargs:
        api_url = provider.api_url
        kwargs["base_url"] = api_url.with_path(api_url.raw_path.rstrip("/") + "/", encoded=True)
    elif kwargs["base_url"] is not None:
        check_token_origin(
            "base_url", kwargs["base_url"], allows=middleware.allows, origins=middleware.origins
        )
    kwargs["middlewares"] = (middleware, *(kwargs.get("middlewares") or ()))
    return aiohttp.ClientSession(**kwargs)
