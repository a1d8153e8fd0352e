"""FakePlainID: a real aiohttp.web server that plays PlainID's token endpoint on loopback."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import http
import json
import re
import secrets
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Self, TypeAlias, TypeVar

import attrs
from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from yarl import URL

from plainid_async._checks import (
    check_count,
    check_instance,
    check_port,
    check_seconds,
    check_text,
)
from plainid_async._origins import is_loopback_host
from plainid_async._token import lifetime_problem
from plainid_async.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

_R = TypeVar("_R")

__all__ = [
    "TOKEN_PATH",
    "FakePlainID",
    "FakeResponse",
    "ResourceRequest",
    "TokenRequest",
    "TokenRequestHook",
    "free_port",
]

#: Path of PlainID's token endpoint, relative to the base URL.
TOKEN_PATH: Final = "api/1.0/api-key/token"  # noqa: S105 - a path, not a password

_FORM_TYPE: Final = "application/x-www-form-urlencoded"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_PREFIX_RE: Final = re.compile(r"(/[A-Za-z0-9._~\-]+)*")
_MAX_FORM_FIELDS: Final = 100
_WWW_AUTHENTICATE: Final = 'Bearer error="invalid_token"'


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound, then released).

    For a server that must be told its port up front (a subprocess, a server restarted on
    the same port) or for a port that refuses connections. Another process may take it in
    between: prefer ``port=0`` where the server reports the port it got.

    Args:
        host: The loopback address to bind.

    Returns:
        The port number.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"status must be an int from 200 to 599, not {status!r}")
    return status


def _status_validator(_instance: object, _attribute: object, value: int) -> None:
    _check_status(value)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_body(status: int, message: str) -> dict[str, object]:
    """Build a PlainID-style error document."""
    return {"id": str(uuid.uuid4()), "status": status, "name": _phrase(status), "message": message}


def _json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(_error_body(status, message), status=status, headers=headers)


@attrs.frozen
class FakeResponse:
    """A scripted answer to one token request, for :meth:`FakePlainID.fail_next`.

    Use it for what a plain status code cannot express: malformed 200s, ``Retry-After``
    headers, HTML error pages, redirects, slow answers. Examples::

        FakeResponse(body="<html>oops</html>", content_type="text/html")  # 200, not JSON
        FakeResponse(body={"token_type": "Bearer", "expires_in": 60})     # no access_token
        FakeResponse(body={"access_token": "t", "token_type": "Bearer", "expires_in": -1})
        FakeResponse(status=429, headers={"Retry-After": "2"})
        FakeResponse(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
        FakeResponse(body=b"x" * 1_000_000)                                # oversize
        FakeResponse(status=503, delay=0.5)

    Attributes:
        status: HTTP status, 200 to 599.
        body: ``bytes`` and ``str`` are sent as they are (``str`` as UTF-8); a mapping is
            sent as JSON. ``None`` sends a PlainID-style JSON error document
            (``{"id", "status", "name", "message"}``) when ``status >= 400``, else an empty body.
        headers: Extra response headers; a ``Content-Type`` here overrides ``content_type``.
        content_type: The ``Content-Type`` header, sent even when the body is not of that
            type (to script "says JSON, is not JSON"). An empty string leaves aiohttp's default.
        delay: Seconds to wait before answering, on top of :attr:`FakePlainID.latency`.
    """

    status: int = attrs.field(default=200, validator=_status_validator)
    body: bytes | str | Mapping[str, object] | None = attrs.field(default=None, hash=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    content_type: str = "application/json"
    delay: float = 0.0

    def _render(self) -> web.Response:
        if self.body is None:
            message = f"{_phrase(self.status)} (scripted by FakePlainID)"
            data = json.dumps(_error_body(self.status, message)) if self.status >= 400 else ""
            payload = data.encode()
        elif isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str):
            payload = self.body.encode()
        else:
            payload = json.dumps(self.body).encode()
        headers: dict[str, str] = {}
        if self.content_type:
            headers[hdrs.CONTENT_TYPE] = self.content_type
        for name, value in self.headers.items():
            for existing in [key for key in headers if key.lower() == name.lower()]:
                del headers[existing]
            headers[name] = value
        return web.Response(status=self.status, body=payload, headers=headers)


@attrs.frozen
class TokenRequest:
    """One request that reached the token endpoint, as :class:`FakePlainID` saw it.

    Attributes:
        client_id: The ``client_id`` form field, or ``None`` when absent.
        grant_type: The ``grant_type`` form field, or ``None`` when absent.
        content_type: The media type of the body without parameters (e.g.
            ``"application/x-www-form-urlencoded"``); empty when no ``Content-Type`` was sent.
        accept: The ``Accept`` header, or ``None``.
        query: The raw query string (empty when there was none).
        authorization_header: Whether an ``Authorization`` header was sent.
        status: The HTTP status the fake answered, or ``0`` for a request it never
            answered because :attr:`FakePlainID.hang` was set (and, in the request an
            :attr:`FakePlainID.on_token_request` hook receives, for one not answered yet).
        form: The decoded form fields (first value of each); empty unless the body was
            form-encoded. It holds the client secret, so it is left out of ``repr()``.
    """

    client_id: str | None
    grant_type: str | None
    content_type: str
    accept: str | None
    query: str
    authorization_header: bool
    status: int
    form: Mapping[str, str] = attrs.field(factory=dict, repr=False, hash=False)


@attrs.frozen
class ResourceRequest:
    """One request to the fake's protected resource (any path but the token endpoint).

    Websocket handshakes on ``/ws`` are recorded here too (status 101 when accepted).

    Attributes:
        method: The HTTP method.
        path: The request path, including the fake's ``path_prefix``.
        authorized: Whether it carried ``Authorization: Bearer <token>`` with a token this
            fake issued that is unexpired and unrevoked.
        status: The HTTP status the fake answered.
        authorization_header: Whether any ``Authorization`` header was sent, valid or
            not: a token leaked to the wrong server shows up here as ``True`` with
            ``authorized`` ``False``.
        body: The request body as received (left out of ``repr()``).
    """

    method: str
    path: str
    authorized: bool
    status: int
    authorization_header: bool = False
    body: bytes = attrs.field(default=b"", repr=False)


#: The type of :attr:`FakePlainID.on_token_request`: given the token request (its status
#: still ``0``), an async context manager that the fake enters before answering and exits
#: once the answer is ready. What it yields is the answer: a :class:`FakeResponse`, or
#: ``None`` to answer as usual (queued answers, outages, validation, in that order).
TokenRequestHook: TypeAlias = Callable[
    [TokenRequest], contextlib.AbstractAsyncContextManager[FakeResponse | None]
]


@attrs.frozen
class _Issued:
    client_id: str
    expires_at: float


@attrs.frozen
class _Window:
    start: float
    end: float
    answer: FakeResponse


def _is_loopback_target(target: str) -> bool:
    """Whether a redirect target stays on loopback (absolute loopback URL or a local path)."""
    if "\\" in target or any(ord(char) < 0x21 for char in target):
        return False
    try:
        url = URL(target)
    except (TypeError, ValueError):
        return False
    if url.host is None:
        return not url.scheme and target.startswith("/") and not target.startswith("//")
    return url.scheme in {"http", "https"} and is_loopback_host(url.host)


def _parse_form(raw: bytes) -> tuple[dict[str, str], str | None]:
    """Decode a form body into its first values, and an error message if it is malformed."""
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        return {}, "the form body could not be decoded"
    form: dict[str, str] = {}
    error = None
    for name, value in pairs:
        if name in form:
            error = f"the form parameter {name!r} was sent more than once"
        else:
            form[name] = value
    return form, error


class FakePlainID:
    """A fake PlainID token endpoint and protected API, served by aiohttp on loopback.

    It is a real HTTP server (``aiohttp.web`` on ``127.0.0.1``, a free port by default), so
    everything between your code and the socket is exercised: sessions, middlewares,
    redirects, timeouts, TLS. Use it as an async context manager::

        async with FakePlainID() as fake:
            provider = TokenProvider(
                client_id=fake.client_id, client_secret=fake.client_secret,
                base_url=str(fake.base_url),
            )
            ...
            assert len(fake.token_requests) == 1

    Routes, all under :attr:`base_url` (which ends with ``path_prefix``):

    * ``POST api/1.0/api-key/token`` (:attr:`token_url`): PlainID's token endpoint. The body
      must be ``application/x-www-form-urlencoded`` with ``grant_type=client_credentials``,
      ``client_id`` and ``client_secret``. Credentials in the query string or a malformed
      body get 400, wrong credentials 401, both with a PlainID-style JSON error document
      ``{"id", "status", "name", "message"}`` that never echoes the secret. Success is
      ``{"access_token", "token_type", "expires_in"}``, ``expires_in`` an int when whole.
      Before validating, the fake applies, in order: the :attr:`on_token_request` hook,
      the answers queued by :meth:`fail_next`, an outage (:meth:`start_outage`,
      :meth:`outage_between`), :attr:`hang`, then :attr:`latency` (which delays every
      answer). A token request sent to any other path (a wrong ``base_url`` or path
      prefix) gets 404, as an unknown path of PlainID would, not the resource's 401.
    * ``ws``: a websocket that needs a valid bearer token on the handshake (401 otherwise)
      and echoes text and binary messages.
    * ``redirect?to=<url>[&status=302]``: any method, no auth; answers a redirect (301,
      302, 303, 307 or 308) to ``url`` when it is a loopback URL or a local path, else 400.
    * Anything else, any method: the protected resource. With ``Authorization: Bearer
      <token>`` for a token this fake issued, unexpired and unrevoked, it answers 200
      ``{"ok": true, "method": ..., "path": ...}``; otherwise 401 with
      ``WWW-Authenticate: Bearer error="invalid_token"``.

    The knobs are plain attributes you may change while the server runs.

    Attributes:
        client_id: The client id the fake was created with.
        token_type: The ``token_type`` it answers, ``"Bearer"`` by default.
        hang: When true, token requests are never answered (until the client gives up
            or the fake closes); they are recorded with status ``0``.
        on_token_request: A hook for scripted behaviour, or ``None``: called with each
            token request, it returns an async context manager (a
            :data:`TokenRequestHook`) the fake holds while it answers. It may wait (hold
            a request until an event), count the requests in flight, or yield a
            :class:`FakeResponse` to answer with; yielding ``None`` answers as usual.
        clock: The monotonic clock for token expiry and outage windows; replace it to
            move time in tests.
        token_requests: Every request that reached the token endpoint, in order of
            arrival, failed ones included. You may clear it.
        resource_requests: Every request to the protected resource (and websocket
            handshake), in order. You may clear it.
        max_records: How many requests each of the two lists keeps: past that, the oldest
            are dropped (in batches of a tenth), so a long-running fake stays small.
    """

    def __init__(
        self,
        *,
        client_id: str = "test-client",
        client_secret: str = "test-secret",  # noqa: S107 - a fake credential
        expires_in: float = 3600,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        path_prefix: str = "",
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_records: int = 100_000,
    ) -> None:
        """Configure the fake; nothing listens until :meth:`start` or ``async with``.

        Args:
            client_id: The API client the fake knows from the start.
            client_secret: Its secret.
            expires_in: Lifetime of the tokens issued, in seconds.
            latency: Seconds to wait before answering any token request.
            host: Address to listen on; keep a loopback address.
            port: Port to listen on; ``0`` picks a free one.
            path_prefix: Path under which every route is served, e.g. ``"/plainid"``, to
                mimic a customer-hosted base URL with a path.
            ssl_context: Serve HTTPS with this server-side context instead of HTTP.
            clock: Monotonic clock used for token expiry and outage windows.
            max_records: How many requests :attr:`token_requests` and
                :attr:`resource_requests` keep each; the oldest go first.

        Raises:
            ValueError: If the prefix has characters other than unreserved ones and
                ``/``, or ``latency`` is not a number of seconds >= 0, or ``expires_in`` not
                a valid token lifetime, or a credential is empty or blank, or ``port`` is
                no port (:class:`~plainid_async.ConfigurationError`, a ``ValueError``, for
                those).
            TypeError: ``ssl_context`` is not an :class:`ssl.SSLContext`.
        """
        check_text("client_id", client_id)
        check_text("client_secret", client_secret)
        stripped = path_prefix.strip("/")
        prefix = f"/{stripped}" if stripped else ""
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"path_prefix {path_prefix!r} must be a plain path such as '/api'")
        self.client_id: str = client_id
        self.expires_in = expires_in
        self.latency = latency
        self.token_type: str = "Bearer"  # noqa: S105 - a token type, not a password
        self.hang: bool = False
        self.on_token_request: TokenRequestHook | None = None
        self.clock: Callable[[], float] = clock
        self.token_requests: list[TokenRequest] = []
        self.resource_requests: list[ResourceRequest] = []
        self.max_records: int = check_count("max_records", max_records)
        self._host = host
        self._port = check_port("port", port)
        self._prefix = prefix
        self._ssl_context = (
            None
            if ssl_context is None
            else check_instance("ssl_context", ssl_context, ssl.SSLContext, "an ssl.SSLContext")
        )
        self._clients: dict[str, str] = {client_id: client_secret}
        self._tokens: dict[str, _Issued] = {}
        self._revoked: set[str] = set()
        self._scripted: collections.deque[FakeResponse] = collections.deque()
        self._outage: FakeResponse | None = None
        self._windows: list[_Window] = []
        self._websockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._shutdown: asyncio.Event | None = None
        self._base_url: URL | None = None
        self._closed = False

    # -- knobs checked by the library's own rules ------------------------------------------

    @property
    def expires_in(self) -> float:
        """Lifetime of the tokens it issues, in seconds; an int is answered as an int.

        Any value the library accepts as ``expires_in``; set another and it raises
        :class:`~plainid_async.ConfigurationError` (a ``ValueError``). To answer an invalid
        lifetime, script it: ``fail_next(FakeResponse(body={..., "expires_in": -1}))``.
        """
        return self._expires_in

    @expires_in.setter
    def expires_in(self, value: float) -> None:
        problem = lifetime_problem(value)
        if problem is not None:
            raise ConfigurationError(f"expires_in={value!r} {problem}")
        self._expires_in = value

    @property
    def latency(self) -> float:
        """Seconds to wait before answering any token request (a number >= 0)."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = check_seconds("latency", value, allow_zero=True)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the server.

        Returns:
            The running fake.
        """
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.close()

    async def start(self) -> None:
        """Start listening; :attr:`base_url` is known afterwards.

        Raises:
            RuntimeError: If the fake was already started (a fake runs once).
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("FakePlainID was already started; create a new one")
        self._shutdown = asyncio.Event()
        app = web.Application()
        prefix = self._prefix
        app.router.add_post(f"{prefix}/{TOKEN_PATH}", self._handle_token)
        app.router.add_get(f"{prefix}/ws", self._handle_ws)
        app.router.add_route("*", f"{prefix}/redirect", self._handle_redirect)
        app.router.add_route("*", f"{prefix}/{{tail:.*}}", self._handle_resource)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
            await site.start()
            port = runner.addresses[0][1]
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        scheme = "http" if self._ssl_context is None else "https"
        self._base_url = URL.build(scheme=scheme, host=self._host, port=port, path=prefix)

    async def close(self) -> None:
        """Stop the server: release hanging requests, close websockets, close connections.

        Calling it again, or before :meth:`start`, does nothing. The recorded requests and
        issued tokens stay readable.
        """
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._shutdown is not None:
            self._shutdown.set()
        for ws in list(self._websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        await runner.cleanup()

    @property
    def base_url(self) -> URL:
        """The server's root, ``http(s)://HOST:PORT`` plus ``path_prefix``.

        Raises:
            RuntimeError: If the fake has not been started.
        """
        if self._base_url is None:
            raise RuntimeError("FakePlainID is not running: use 'async with' or await start()")
        return self._base_url

    @property
    def token_url(self) -> URL:
        """The token endpoint, :attr:`base_url` ``/ "api/1.0/api-key/token"``.

        Raises:
            RuntimeError: If the fake has not been started.
        """
        return self.base_url / TOKEN_PATH

    @property
    def client_secret(self) -> str:
        """The current secret of :attr:`client_id`."""
        return self._clients[self.client_id]

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token issued so far, oldest first, valid or not (a copy)."""
        return list(self._tokens)

    def __repr__(self) -> str:
        """Show where the fake listens and what it has seen; never a secret or a token."""
        url = str(self._base_url) if self._base_url is not None else None
        return (
            f"<FakePlainID base_url={url!r} clients={len(self._clients)} "
            f"token_requests={len(self.token_requests)} "
            f"resource_requests={len(self.resource_requests)} "
            f"issued_tokens={len(self._tokens)}>"
        )

    # -- clients and tokens ----------------------------------------------------------------

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Accept another API client (or give an existing one a new secret).

        Args:
            client_id: The client id.
            client_secret: Its secret.

        Raises:
            ValueError: If either is empty or blank.
        """
        check_text("client_id", client_id)
        self._clients[client_id] = check_text("client_secret", client_secret)

    def rotate_secret(self, client_id: str, new_secret: str) -> None:
        """Replace a client's secret, as PlainID's "regenerate secret" does.

        The old secret is rejected (401) from now on; tokens already issued stay valid
        until they expire or are revoked.

        Args:
            client_id: A client the fake knows.
            new_secret: Its new secret.

        Raises:
            KeyError: If the client is unknown.
            ValueError: If the new secret is empty or blank.
        """
        if client_id not in self._clients:
            raise KeyError(client_id)
        self._clients[client_id] = check_text("new_secret", new_secret)

    def is_valid(self, access_token: str) -> bool:
        """Whether a token was issued by this fake and is neither expired nor revoked.

        Args:
            access_token: The bearer token.

        Returns:
            ``True`` if the protected resource would accept it now.
        """
        issued = self._tokens.get(access_token)
        return (
            issued is not None
            and access_token not in self._revoked
            and self.clock() < issued.expires_at
        )

    def client_of(self, access_token: str) -> str | None:
        """The client id a token was issued to.

        Args:
            access_token: The bearer token.

        Returns:
            The client id, or ``None`` if this fake never issued the token.
        """
        issued = self._tokens.get(access_token)
        return None if issued is None else issued.client_id

    def revoke(self, access_token: str) -> None:
        """Make a token invalid at once; unknown tokens are ignored.

        Args:
            access_token: The bearer token.
        """
        if access_token in self._tokens:
            self._revoked.add(access_token)

    def revoke_all(self) -> None:
        """Make every token issued so far invalid; later ones are valid as usual."""
        self._revoked.update(self._tokens)

    # -- failure scripting -----------------------------------------------------------------

    def fail_next(self, *responses: int | FakeResponse) -> None:
        """Queue answers for the next token requests, one each, in order.

        Queued answers are used before anything else (outage, hang, validation) and are
        not validated against the request. Calls add to the end of the queue.

        Args:
            *responses: A status code (answered with a PlainID-style JSON error document
                when >= 400, an empty body otherwise), or a :class:`FakeResponse`.

        Raises:
            ValueError: If a status code is outside 200..599.
        """
        self._scripted.extend(
            item if isinstance(item, FakeResponse) else FakeResponse(status=_check_status(item))
            for item in responses
        )

    def start_outage(self, status: int = 503, *, retry_after: str | None = None) -> None:
        """Answer every token request with ``status`` until :meth:`end_outage`.

        Args:
            status: The status to answer, with a PlainID-style JSON error document.
            retry_after: A ``Retry-After`` header value to send (seconds or an HTTP date).
        """
        self._outage = self._outage_answer(status, retry_after)

    def end_outage(self) -> None:
        """End the current outage and cancel scheduled ones (:meth:`outage_between`)."""
        self._outage = None
        self._windows.clear()

    def outage_between(
        self, start: float, end: float, status: int = 503, *, retry_after: str | None = None
    ) -> None:
        """Schedule an outage: token requests arriving in ``[now + start, now + end)`` fail.

        Times are seconds on :attr:`clock` from the moment of the call.

        Args:
            start: Seconds from now when the outage begins.
            end: Seconds from now when it ends.
            status: The status to answer, with a PlainID-style JSON error document.
            retry_after: A ``Retry-After`` header value to send.

        Raises:
            ValueError: If ``end`` is not after ``start``.
        """
        if not end > start:
            raise ValueError("end must be after start")
        now = self.clock()
        answer = self._outage_answer(status, retry_after)
        self._windows.append(_Window(start=now + start, end=now + end, answer=answer))

    @staticmethod
    def _outage_answer(status: int, retry_after: str | None) -> FakeResponse:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return FakeResponse(status=_check_status(status), headers=headers)

    @property
    def in_outage(self) -> bool:
        """Whether token requests arriving now get an outage answer."""
        return self._current_outage() is not None

    def _current_outage(self) -> FakeResponse | None:
        if self._outage is not None:
            return self._outage
        now = self.clock()
        for window in self._windows:
            if window.start <= now < window.end:
                return window.answer
        return None

    # -- handlers ----------------------------------------------------------------------------

    async def _pause(self, delay: float) -> None:
        """Sleep, but wake up at once when the fake closes."""
        if delay > 0 and self._shutdown is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutdown.wait(), delay)

    def _validate(  # noqa: PLR0911 - one return per documented check, in order
        self, request: web.Request, form: Mapping[str, str], error: str | None
    ) -> _Reject | None:
        """Check a token request as PlainID would; ``None`` means it is acceptable."""
        if "client_id" in request.query or "client_secret" in request.query:
            return _Reject(400, "credentials must be sent in the form body, not the query string")
        if request.content_type != _FORM_TYPE or hdrs.CONTENT_TYPE not in request.headers:
            return _Reject(400, f"the body must be {_FORM_TYPE}")
        if error is not None:
            return _Reject(400, error)
        grant_type = form.get("grant_type")
        if grant_type is None:
            return _Reject(400, "grant_type is required")
        if grant_type != "client_credentials":
            return _Reject(400, "unsupported grant_type: only client_credentials is supported")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not client_id or not secret:
            return _Reject(400, "client_id and client_secret are required")
        expected = self._clients.get(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return _Reject(401, "invalid client credentials")
        return None

    async def _handle_token(self, request: web.Request) -> web.StreamResponse:
        rejection: _Reject | None = None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw, rejection = b"", _Reject(413, "the request body is too large")
        is_form = request.content_type == _FORM_TYPE and hdrs.CONTENT_TYPE in request.headers
        form, form_error = _parse_form(raw) if is_form else ({}, None)
        seen = _describe(request, form, status=0)
        hook = self.on_token_request
        if hook is None:
            return await self._answer_token(request, seen, form_error, rejection, None)
        async with hook(seen) as override:
            return await self._answer_token(request, seen, form_error, rejection, override)

    async def _answer_token(
        self,
        request: web.Request,
        seen: TokenRequest,
        form_error: str | None,
        rejection: _Reject | None,
        override: FakeResponse | None,
    ) -> web.StreamResponse:
        form = seen.form
        if override is not None:
            answer: FakeResponse | None = override
        else:
            answer = self._scripted.popleft() if self._scripted else self._current_outage()
        hanging = answer is None and self.hang
        if answer is None and not hanging and rejection is None:
            rejection = self._validate(request, form, form_error)
        if answer is not None:
            status = answer.status
        elif hanging:
            status = 0
        else:
            status = 200 if rejection is None else rejection.status
        self._record(self.token_requests, attrs.evolve(seen, status=status))
        if hanging:
            if self._shutdown is not None:
                await self._shutdown.wait()
            return _json_error(503, "the fake server is shutting down")
        await self._pause(self.latency + (answer.delay if answer is not None else 0.0))
        if answer is not None:
            return answer._render()  # noqa: SLF001 - FakeResponse is ours
        if rejection is not None:
            return _json_error(rejection.status, rejection.message)
        return self._issue(form["client_id"])

    def _issue(self, client_id: str) -> web.Response:
        token = secrets.token_urlsafe(32)
        lifetime = self.expires_in
        self._tokens[token] = _Issued(client_id=client_id, expires_at=self.clock() + lifetime)
        whole = isinstance(lifetime, int) or lifetime.is_integer()  # finite: the setter checks
        return web.json_response(
            {
                "access_token": token,
                "token_type": self.token_type,
                "expires_in": int(lifetime) if whole else lifetime,
            }
        )

    def _bearer(self, request: web.Request) -> tuple[bool, bool]:
        """Return (an Authorization header was sent, it holds a valid bearer token)."""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is None:
            return False, False
        scheme, _, token = header.strip().partition(" ")
        return True, scheme.lower() == "bearer" and self.is_valid(token.strip())

    @staticmethod
    def _unauthorized() -> web.Response:
        return _json_error(
            401,
            "a valid bearer token is required",
            headers={hdrs.WWW_AUTHENTICATE: _WWW_AUTHENTICATE},
        )

    def _record(self, records: list[_R], record: _R) -> None:
        records.append(record)
        if len(records) > self.max_records + self.max_records // 10:
            del records[: len(records) - self.max_records]

    def _record_resource(
        self, request: web.Request, bearer: tuple[bool, bool], status: int, body: bytes = b""
    ) -> None:
        sent, authorized = bearer
        self._record(
            self.resource_requests,
            ResourceRequest(
                method=request.method,
                path=request.path,
                authorized=authorized,
                status=status,
                authorization_header=sent,
                body=body,
            ),
        )

    async def _handle_resource(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sent, authorized = self._bearer(request)
        misdirected = _is_token_request(request, body)
        status = 404 if misdirected else 200 if authorized else 401
        self._record_resource(request, (sent, authorized), status, body)
        if misdirected:
            # PlainID knows no such path: a wrong base_url must not look like bad credentials.
            return _json_error(404, f"no such path: {request.path}")
        if not authorized:
            return self._unauthorized()
        return web.json_response({"ok": True, "method": request.method, "path": request.path})

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        sent, authorized = self._bearer(request)
        ws = web.WebSocketResponse()
        upgrade = ws.can_prepare(request).ok
        status = 401 if not authorized else 101 if upgrade else 400
        self._record_resource(request, (sent, authorized), status)
        if not authorized:
            return self._unauthorized()
        if not upgrade:
            return _json_error(400, "a websocket upgrade is expected here")
        await ws.prepare(request)
        self._websockets.add(ws)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await ws.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self._websockets.discard(ws)
        return ws

    async def _handle_redirect(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        target = request.query.get("to")
        if target is None:
            return _json_error(400, "the 'to' query parameter is required")
        if not _is_loopback_target(target):
            return _json_error(400, "only loopback redirect targets are allowed")
        raw_status = request.query.get("status", "302")
        if not raw_status.isdigit() or int(raw_status) not in _REDIRECT_STATUSES:
            return _json_error(400, "status must be one of 301, 302, 303, 307, 308")
        return web.Response(status=int(raw_status), headers={hdrs.LOCATION: target})


def _describe(request: web.Request, form: Mapping[str, str], *, status: int) -> TokenRequest:
    """A :class:`TokenRequest` record of ``request``."""
    return TokenRequest(
        client_id=form.get("client_id"),
        grant_type=form.get("grant_type"),
        content_type=request.content_type if hdrs.CONTENT_TYPE in request.headers else "",
        accept=request.headers.get(hdrs.ACCEPT),
        query=request.query_string,
        authorization_header=hdrs.AUTHORIZATION in request.headers,
        status=status,
        form=form,
    )


def _is_token_request(request: web.Request, body: bytes) -> bool:
    """Whether a request to some other path is meant for the token endpoint.

    That is a POST to the token path under another prefix, or a form post with a
    ``grant_type``: what a client with a wrong ``base_url`` sends.
    """
    if request.method != "POST":
        return False
    if request.path.rstrip("/").endswith(f"/{TOKEN_PATH}"):
        return True
    if request.content_type != _FORM_TYPE:
        return False
    form, _ = _parse_form(body)
    return "grant_type" in form


@attrs.frozen
class _Reject:
    """Why a token request is refused: the status and message to answer."""

    status: int
    message: str
