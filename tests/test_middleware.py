"""BearerAuthMiddleware and provider_session, against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import TYPE_CHECKING, Any, Self, cast

import aiohttp
import attrs
import pytest
from _providers import make_provider, token_with
from _servers import LoopbackServer
from aiohttp import hdrs, web
from yarl import URL

from plainid_async import (
    ConfigurationError,
    InvalidCredentialsError,
    MemoryTokenCache,
    ProviderClosedError,
    Token,
)
from plainid_async import TokenProvider as _TokenProvider
from plainid_async._cache import key_states_of
from plainid_async._events import EventKind
from plainid_async._middleware import BearerAuthMiddleware, _can_replay, provider_session
from plainid_async._source import hot_lookup
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType


# -- servers -------------------------------------------------------------------------------


@attrs.frozen
class Seen:
    """One request as a test server saw it."""

    method: str
    path: str
    authorization: str | None
    body: bytes


class Server:
    """A small aiohttp.web server on 127.0.0.1 that records requests and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.seen: list[Seen] = []
        self._server: LoopbackServer | None = None
        self.url = URL()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.path, request.headers.get(hdrs.AUTHORIZATION), body)
        )
        return web.json_response({"seen": len(self.seen)}, status=self.status)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = LoopbackServer(app)
        self.url = await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()


@pytest.fixture
async def other() -> AsyncIterator[Server]:
    async with Server() as server:
        yield server


@pytest.fixture
async def provider(fake: FakePlainID) -> AsyncIterator[_TokenProvider]:
    async with make_provider(fake) as tokens:
        yield tokens


@pytest.fixture
async def session(provider: _TokenProvider) -> AsyncIterator[aiohttp.ClientSession]:
    async with provider.session() as client:
        yield client


async def status_of(response: Awaitable[ClientResponse]) -> int:
    async with await response as resp:
        await resp.read()
        return resp.status


# -- origin scoping ------------------------------------------------------------------------


async def test_token_sent_to_the_api_origin(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    assert await status_of(session.get("api/1.0/policies")) == 200
    [seen] = fake.resource_requests
    assert seen.authorized
    assert seen.path == "/api/1.0/policies"
    assert len(fake.token_requests) == 1


async def test_no_token_for_another_origin(
    fake: FakePlainID, other: Server, session: aiohttp.ClientSession
) -> None:
    assert await status_of(session.get(other.url / "x")) == 200
    assert [s.authorization for s in other.seen] == [None]
    assert fake.token_requests == []


async def test_redirect_to_another_origin_carries_no_token(
    fake: FakePlainID, other: Server, session: aiohttp.ClientSession
) -> None:
    target = str(other.url / "landing")
    assert await status_of(session.get("redirect", params={"to": target})) == 200
    assert [s.authorization for s in other.seen] == [None]
    assert len(fake.token_requests) == 1  # the first hop got the token


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_within_the_origin_keeps_the_token(
    fake: FakePlainID, session: aiohttp.ClientSession, status: int
) -> None:
    target = str(fake.base_url / "api/1.0/after")
    answer = await status_of(session.get("redirect", params={"to": target, "status": status}))
    assert answer == 200
    assert [r.authorized for r in fake.resource_requests] == [True]
    assert fake.resource_requests[0].path == "/api/1.0/after"


class Redirector:
    """A server on another loopback port that answers every request with a redirect."""

    def __init__(self, status: int, location: str) -> None:
        self.status = status
        self.location = location
        self.bodies: list[bytes] = []
        self._server: LoopbackServer | None = None
        self.url = URL()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        return web.Response(status=self.status, headers={hdrs.LOCATION: self.location})

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = LoopbackServer(app)
        self.url = await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()


REDIRECTS = [301, 302, 303, 307, 308]


@pytest.mark.parametrize("status", REDIRECTS)
async def test_post_steered_to_the_api_by_a_foreign_redirect_gets_no_token(
    fake: FakePlainID, session: aiohttp.ClientSession, status: int
) -> None:
    api_path = str(fake.base_url / "api/1.0/policies-search/env-1")
    body = b'{"delete": "everything"}'
    async with (
        Redirector(status, api_path) as foreign,
        session.post(foreign.url / "hook", data=body) as resp,
    ):
        assert resp.status == 401  # reached the API, without a token
        assert [r.url.origin() for r in resp.history] == [foreign.url.origin()]
    assert foreign.bodies == [b'{"delete": "everything"}']
    [reached] = fake.resource_requests
    assert reached.authorized is False
    assert fake.token_requests == []  # nobody even asked for a token


@pytest.mark.parametrize("status", REDIRECTS)
async def test_foreign_redirect_chain_through_the_api_gets_no_token_on_any_hop(
    fake: FakePlainID, session: aiohttp.ClientSession, status: int
) -> None:
    # foreign -> api/redirect -> api/x: the second API hop came through a foreign origin too.
    target = str(fake.base_url / "api/1.0/x")
    via_api = fake.base_url.with_path("/redirect").with_query(to=target, status=str(status))
    async with (
        Redirector(status, str(via_api)) as foreign,
        session.post(foreign.url / "hook", data=b"body") as resp,
    ):
        assert resp.status == 401
    assert [r.authorized for r in fake.resource_requests] == [False]


@pytest.mark.parametrize("status", REDIRECTS)
async def test_a_foreign_redirect_of_a_request_with_the_callers_own_header_gets_no_token(
    fake: FakePlainID, session: aiohttp.ClientSession, status: int
) -> None:
    """The caller's own Authorization header for another origin is left alone, and that
    origin's redirect to the API still gets no token (aiohttp drops the caller's header)."""
    async with (
        Redirector(status, str(fake.base_url / "api/1.0/steered")) as foreign,
        session.post(
            foreign.url / "hook", data=b"x", headers={"Authorization": "Basic Y2FsbGVy"}
        ) as resp,
    ):
        assert resp.status == 401
    assert [(r.path, r.authorized) for r in fake.resource_requests] == [("/api/1.0/steered", False)]


async def test_a_new_request_after_a_foreign_redirect_that_was_not_followed_gets_the_token(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    async with Redirector(307, str(fake.base_url / "api/1.0/x")) as foreign:
        async with session.post(foreign.url / "hook", data=b"x", allow_redirects=False) as resp:
            assert resp.status == 307
        assert await status_of(session.get("api/1.0/x")) == 200
    assert [r.authorized for r in fake.resource_requests] == [True]


async def test_concurrent_requests_are_not_steered_by_each_others_redirects(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    async with Redirector(307, str(fake.base_url / "api/1.0/steered")) as foreign:
        statuses = await asyncio.gather(
            *(status_of(session.post(foreign.url / "hook", data=b"x")) for _ in range(5)),
            *(status_of(session.get("api/1.0/direct")) for _ in range(5)),
        )
    assert statuses == [401] * 5 + [200] * 5
    seen = {(r.path, r.authorized) for r in fake.resource_requests}
    assert seen == {("/api/1.0/steered", False), ("/api/1.0/direct", True)}


@pytest.mark.parametrize("first", ["this API's middleware", "the other API's middleware"])
async def test_a_foreign_redirect_withholds_only_the_token_of_the_middleware_it_is_foreign_to(
    fake: FakePlainID, provider: _TokenProvider, first: str
) -> None:
    """Two bearer middlewares in one session, each for its own API, in either order: a
    redirect within the second API keeps the second's token (the first gets none there); a
    redirect from the second API to the first sends the first's token nowhere."""
    async with (
        FakePlainID(client_id="second", client_secret="second-secret") as second,
        make_provider(second) as other,
    ):
        ours, theirs = BearerAuthMiddleware(provider), BearerAuthMiddleware(other)
        chain = (ours, theirs) if first == "this API's middleware" else (theirs, ours)
        within = str(second.base_url / "api/1.0/within")
        into_ours = str(fake.base_url / "api/1.0/steered")
        async with aiohttp.ClientSession(middlewares=chain) as client:
            for target in (within, into_ours):
                via = second.base_url.with_path("/redirect").with_query(to=target, status="307")
                await status_of(client.get(via))
    assert [(r.path, r.authorized) for r in second.resource_requests] == [("/api/1.0/within", True)]
    assert [(r.path, r.authorized) for r in fake.resource_requests] == [("/api/1.0/steered", False)]


async def test_extra_origin_gets_the_token(
    fake: FakePlainID, other: Server, provider: _TokenProvider
) -> None:
    middleware = BearerAuthMiddleware(provider, origins=[str(other.url)])
    async with aiohttp.ClientSession(middlewares=(middleware,)) as client:
        assert await status_of(client.get(other.url / "x")) == 200
        assert await status_of(client.get(fake.base_url / "y")) == 200
    token = fake.issued_tokens[0]
    assert [s.authorization for s in other.seen] == [f"Bearer {token}"]
    assert [r.authorized for r in fake.resource_requests] == [True]
    assert middleware.origins == (fake.base_url.origin(), other.url.origin())


def test_repr_shows_origins_not_tokens() -> None:
    provider = _TokenProvider("id", "secret", region="us1", cache=MemoryTokenCache())
    middleware = BearerAuthMiddleware(provider, origins=["https://pap.example.com"])
    assert repr(middleware) == (
        "<BearerAuthMiddleware origins=('https://api.us1.plainid.io', "
        "'https://pap.example.com') retry_on_401=True>"
    )
    assert middleware.provider is provider


# -- explicit Authorization ------------------------------------------------------------------


async def test_explicit_authorization_header_is_left_alone(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    response = session.get("api/1.0/x", headers={"Authorization": "Bearer mine"})
    assert await status_of(response) == 401
    assert fake.token_requests == []  # no token fetched, no 401 retry
    [seen] = fake.resource_requests
    assert seen.authorization_header
    assert not seen.authorized


async def test_session_default_authorization_is_left_alone(
    fake: FakePlainID, other: Server, provider: _TokenProvider
) -> None:
    middleware = BearerAuthMiddleware(provider, origins=[str(other.url)])
    headers = {"Authorization": "Basic dXNlcjpwdw=="}
    async with aiohttp.ClientSession(middlewares=(middleware,), headers=headers) as client:
        assert await status_of(client.get(other.url / "x")) == 200
    assert [s.authorization for s in other.seen] == ["Basic dXNlcjpwdw=="]
    assert fake.token_requests == []


# -- 401: invalidate, refresh, retry once ----------------------------------------------------


async def test_fifty_concurrent_401s_cause_one_refresh(
    fake: FakePlainID, provider: _TokenProvider, session: aiohttp.ClientSession
) -> None:
    first = await provider.get_token()
    fake.revoke(first.access_token)

    async def call(i: int) -> int:
        return await status_of(session.get(f"api/1.0/item/{i}"))

    statuses = await asyncio.gather(*(call(i) for i in range(50)))
    assert statuses == [200] * 50
    assert len(fake.token_requests) == 2  # the revoked token, and exactly one refresh
    assert provider.stats.tokens_fetched == 2
    rejected = [r for r in fake.resource_requests if not r.authorized]
    accepted = [r for r in fake.resource_requests if r.authorized]
    assert len(rejected) == 50
    assert len(accepted) == 50
    assert (await provider.get_token()).access_token == fake.issued_tokens[1]


async def test_second_401_goes_to_the_caller(fake: FakePlainID, provider: _TokenProvider) -> None:
    async with Server(status=401) as always_401:
        middleware = BearerAuthMiddleware(provider, origins=[str(always_401.url)])
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as client,
            client.get(always_401.url / "x") as resp,
        ):
            assert resp.status == 401
            assert await resp.json() == {"seen": 2}  # the caller can read the last answer
    first, second = fake.issued_tokens
    assert [s.authorization for s in always_401.seen] == [f"Bearer {first}", f"Bearer {second}"]
    assert len(fake.token_requests) == 2


async def test_401_from_another_origin_is_not_retried(
    fake: FakePlainID, provider: _TokenProvider, session: aiohttp.ClientSession
) -> None:
    async with Server(status=401) as elsewhere:
        assert await status_of(session.get(elsewhere.url / "x")) == 401
    assert [s.authorization for s in elsewhere.seen] == [None]
    assert fake.token_requests == []


async def test_retry_disabled_returns_the_401(fake: FakePlainID, provider: _TokenProvider) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    middleware = BearerAuthMiddleware(provider, retry_on_401=False)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as client:
        assert await status_of(client.get(fake.base_url / "x")) == 401
    assert len(fake.resource_requests) == 1
    assert len(fake.token_requests) == 1
    assert await provider.get_token() is token  # not dropped either


async def gen_body() -> AsyncIterator[bytes]:
    yield b"streamed "
    yield b"body"


async def test_streamed_body_is_never_sent_again(
    fake: FakePlainID, provider: _TokenProvider, session: aiohttp.ClientSession
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    assert await status_of(session.post("api/1.0/upload", data=gen_body())) == 401
    [seen] = fake.resource_requests
    assert seen.body == b"streamed body"
    # The rejected token was dropped all the same, so the next request gets a fresh one
    # at once (no 401 first).
    assert await status_of(session.get("api/1.0/x")) == 200
    assert [r.authorized for r in fake.resource_requests] == [False, True]
    assert len(fake.token_requests) == 2


async def test_file_body_is_never_sent_again(
    fake: FakePlainID, provider: _TokenProvider, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    path = tmp_path / "upload.bin"
    path.write_bytes(b"file body")
    with path.open("rb") as file:
        assert await status_of(session.post("api/1.0/upload", data=file)) == 401
    assert [r.body for r in fake.resource_requests] == [b"file body"]
    # the rejected token is replaced (never dropped first): the next call gets a new one
    assert await provider.get_token() != token


def _multipart() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("name", "value")
    form.add_field("file", b"file content", filename="a.bin")
    return form


def _multipart_bytesio() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"in memory"), filename="b.bin")
    return form


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: {"data": b"raw bytes"}, id="bytes"),
        pytest.param(lambda: {"data": bytearray(b"raw bytes")}, id="bytearray"),
        pytest.param(lambda: {"data": "text"}, id="str"),
        pytest.param(lambda: {"json": {"a": [1, 2]}}, id="json"),
        pytest.param(lambda: {"data": {"a": "1", "b": "2"}}, id="form-dict"),
        pytest.param(lambda: {"data": aiohttp.FormData({"a": "1"})}, id="form-urlencoded"),
        pytest.param(lambda: {"data": _multipart()}, id="form-multipart"),
        pytest.param(lambda: {"data": _multipart_bytesio()}, id="form-multipart-bytesio"),
        pytest.param(lambda: {"data": io.BytesIO(b"in memory")}, id="bytesio"),
        pytest.param(lambda: {"data": io.StringIO("in memory")}, id="stringio"),
        pytest.param(dict, id="no-body"),
    ],
)
async def test_replayable_bodies_are_retried(
    fake: FakePlainID,
    provider: _TokenProvider,
    session: aiohttp.ClientSession,
    body: Callable[[], dict[str, Any]],
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    assert await status_of(session.post("api/1.0/upload", **body())) == 200
    first, second = fake.resource_requests
    assert (first.authorized, second.authorized) == (False, True)
    assert first.body == second.body
    assert len(fake.token_requests) == 2


async def test_failing_token_request_fails_the_call(fake: FakePlainID) -> None:
    async with make_provider(fake, client_secret="wrong") as provider, provider.session() as s:
        with pytest.raises(InvalidCredentialsError):
            await s.get("api/1.0/x")
    assert fake.resource_requests == []


# -- WebSocket -------------------------------------------------------------------------------


async def test_ws_connect_carries_the_token(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect("ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
    [seen] = fake.resource_requests
    assert (seen.path, seen.status, seen.authorized) == ("/ws", 101, True)


async def test_ws_connect_with_a_ws_url_carries_the_token(
    fake: FakePlainID, provider: _TokenProvider
) -> None:
    middleware = BearerAuthMiddleware(provider)
    async with (
        aiohttp.ClientSession(middlewares=(middleware,)) as client,
        client.ws_connect(fake.base_url.with_scheme("ws") / "ws") as ws,
    ):
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes() == b"\x00\x01"
    assert [r.authorized for r in fake.resource_requests] == [True]


async def test_ws_connect_elsewhere_carries_no_token(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    async with FakePlainID() as elsewhere:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(elsewhere.base_url / "ws")
        assert info.value.status == 401
        assert [r.authorization_header for r in elsewhere.resource_requests] == [False]
    assert fake.token_requests == []


# -- token requests stay out of the user's middlewares ---------------------------------------


class Recording:
    """A user middleware that records every URL it sees."""

    def __init__(self) -> None:
        self.urls: list[URL] = []
        self.authorization: list[str | None] = []

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        self.urls.append(request.url)
        self.authorization.append(request.headers.get(hdrs.AUTHORIZATION))
        return await handler(request)


async def test_token_requests_skip_the_user_session_middlewares(
    fake: FakePlainID, provider: _TokenProvider
) -> None:
    recording = Recording()
    async with provider.session(middlewares=(recording,)) as client:
        assert await status_of(client.get("api/1.0/x")) == 200
    assert recording.urls == [fake.base_url / "api/1.0/x"]
    assert recording.authorization == [f"Bearer {fake.issued_tokens[0]}"]


async def test_provider_on_the_users_own_session_neither_recurses_nor_deadlocks(
    fake: FakePlainID,
) -> None:
    recording = Recording()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), middlewares=(recording,)
    ) as shared:
        provider = make_provider(fake, session=shared)
        shared._middlewares = (BearerAuthMiddleware(provider), recording)
        async with provider, asyncio.timeout(10):
            first = await provider.get_token()
            fake.revoke(first.access_token)
            # A 401 whose retry fetches a token through the same one-connection session.
            assert await status_of(shared.get(fake.base_url / "api/1.0/x")) == 200
    assert fake.token_url not in recording.urls
    assert recording.urls == [fake.base_url / "api/1.0/x"] * 2
    assert len(fake.token_requests) == 2


# -- provider_session --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"middlewares": None}, {"middlewares": ()}])
async def test_session_defaults(provider: _TokenProvider, kwargs: dict[str, Any]) -> None:
    async with provider.session(**kwargs) as client:
        assert client._base_url == provider.api_url.with_path("/")
        [middleware] = client._middlewares
        assert isinstance(middleware, BearerAuthMiddleware)
        assert middleware.provider is provider


async def test_session_base_url_can_be_turned_off(provider: _TokenProvider) -> None:
    async with provider_session(provider, base_url=None) as client:
        assert client._base_url is None


async def test_session_passes_options_through(provider: _TokenProvider, fake: FakePlainID) -> None:
    recording = Recording()
    timeout = aiohttp.ClientTimeout(total=5)
    connector = aiohttp.TCPConnector(limit=3)
    async with provider_session(
        provider,
        middlewares=[recording],
        headers={"X-Trace": "1"},
        timeout=timeout,
        connector=connector,
        base_url=fake.base_url / "other/",
    ) as client:
        assert client.headers["X-Trace"] == "1"
        assert client.timeout is timeout
        assert client.connector is connector
        assert client._base_url == fake.base_url / "other/"
        first, second = client._middlewares
        assert isinstance(first, BearerAuthMiddleware)
        assert second is recording


async def test_middleware_runs_before_the_users(
    fake: FakePlainID, provider: _TokenProvider
) -> None:
    recording = Recording()
    async with provider.session(middlewares=(recording,), headers={"X-Trace": "1"}) as client:
        assert await status_of(client.get("api/1.0/x")) == 200
    assert recording.authorization == [f"Bearer {fake.issued_tokens[0]}"]


async def test_base_url_with_a_path_prefix() -> None:
    async with (
        FakePlainID(path_prefix="/plainid") as fake,
        make_provider(fake) as provider,
        provider.session() as client,
    ):
        assert str(client._base_url) == f"{fake.base_url}/"
        # Relative paths go under the prefix (RFC 3986 join, as aiohttp does it) ...
        assert await status_of(client.get("api/1.0/x")) == 200
        assert [r.path for r in fake.resource_requests] == ["/plainid/api/1.0/x"]
        # ... a leading slash starts from the host's root: same origin, no prefix.
        assert await status_of(client.get("/api/1.0/x")) == 404
        async with client.ws_connect("ws") as ws:
            await ws.close()
        assert fake.resource_requests[-1].path == "/plainid/ws"


# -- the middleware called directly ------------------------------------------------------------


@attrs.define
class StubResponse:
    status: int
    released: bool = False

    def release(self) -> None:
        self.released = True


class StubHandler:
    """Answers each call with the next status, recording the Authorization header sent."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.sent: list[str | None] = []
        self.responses: list[StubResponse] = []

    async def __call__(self, request: ClientRequest) -> ClientResponse:
        self.sent.append(request.headers.get(hdrs.AUTHORIZATION))
        response = StubResponse(self.statuses.pop(0))
        self.responses.append(response)
        return cast("ClientResponse", response)


def client_request(url: URL, **kwargs: Any) -> ClientRequest:
    return aiohttp.ClientRequest("POST", url, loop=asyncio.get_running_loop(), **kwargs)


async def seeded_provider() -> tuple[_TokenProvider, Token]:
    """A provider whose cache holds a token; its token endpoint is unreachable."""
    provider = _TokenProvider(
        "id", "secret", base_url="http://127.0.0.1:9", cache=MemoryTokenCache()
    )
    token = Token.issued("seeded", expires_in=3600)
    await provider.cache.store(provider.cache_key, token)
    return provider, token


async def test_direct_call_adds_the_token() -> None:
    provider, token = await seeded_provider()
    handler = StubHandler(200)
    response = await BearerAuthMiddleware(provider)(
        client_request(URL("http://127.0.0.1:9/x")), handler
    )
    assert cast("StubResponse", response).status == 200
    assert handler.sent == [token.authorization]


async def test_direct_call_other_origin_untouched() -> None:
    provider, _ = await seeded_provider()
    handler = StubHandler(401)
    request = client_request(URL("http://127.0.0.1:10/x"))
    await BearerAuthMiddleware(provider)(request, handler)
    assert handler.sent == [None]
    assert hdrs.AUTHORIZATION not in request.headers


async def test_direct_call_explicit_header_untouched() -> None:
    provider, _ = await seeded_provider()
    handler = StubHandler(401)
    request = client_request(URL("http://127.0.0.1:9/x"), headers={"authorization": "Token x"})
    await BearerAuthMiddleware(provider)(request, handler)
    assert handler.sent == ["Token x"]


async def test_direct_call_401_releases_invalidates_and_retries(fake: FakePlainID) -> None:
    async with make_provider(fake) as provider:
        first = await provider.get_token()
        handler = StubHandler(401, 200)
        request = client_request(fake.base_url / "x", data=b"payload")
        response = await BearerAuthMiddleware(provider)(request, handler)
        second = await provider.get_token()
    assert second != first
    assert handler.sent == [first.authorization, second.authorization]
    assert [r.released for r in handler.responses] == [True, False]
    assert response is cast("Any", handler.responses[1])


async def test_direct_call_invalidates_only_the_token_it_sent(fake: FakePlainID) -> None:
    async with make_provider(fake) as provider:
        sent = await provider.get_token()
        refreshed: list[Token] = []

        class RacingHandler(StubHandler):
            async def __call__(self, request: ClientRequest) -> ClientResponse:
                if not refreshed:  # another caller refreshes while this request is out
                    refreshed.append(await provider.get_token(force_refresh=True))
                return await super().__call__(request)

        handler = RacingHandler(401, 200)
        await BearerAuthMiddleware(provider)(client_request(fake.base_url / "x"), handler)
        [newer] = refreshed
        # The 401 was for `sent`: `newer` stays cached, is used for the retry, and no third
        # token is fetched.
        assert provider.cache.get(provider.cache_key) is newer
    assert handler.sent == [sent.authorization, newer.authorization]
    assert len(fake.token_requests) == 2


async def test_direct_call_second_401_returned_unreleased(fake: FakePlainID) -> None:
    async with make_provider(fake) as provider:
        handler = StubHandler(401, 401)
        response = await BearerAuthMiddleware(provider)(
            client_request(fake.base_url / "x"), handler
        )
    assert [r.released for r in handler.responses] == [True, False]
    assert response is cast("Any", handler.responses[1])
    assert len(fake.token_requests) == 2


async def agen() -> AsyncIterator[bytes]:
    yield b"x"


def _multipart_generator() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    writer.append_payload(aiohttp.payload.AsyncIterablePayload(agen()))
    return writer


@pytest.mark.parametrize(
    ("data", "replayable"),
    [
        pytest.param(None, True, id="none"),
        pytest.param(b"x", True, id="bytes"),
        pytest.param(memoryview(b"x"), True, id="memoryview"),
        pytest.param("x", True, id="str"),
        pytest.param(io.BytesIO(b"x"), True, id="bytesio"),
        pytest.param(io.StringIO("x"), True, id="stringio"),
        pytest.param({"a": "b"}, True, id="dict-form"),
        pytest.param(aiohttp.JsonPayload({"a": 1}), True, id="json"),
        pytest.param(agen, False, id="async-generator"),
        pytest.param(_multipart_generator, False, id="multipart-generator"),
        pytest.param(_multipart, True, id="multipart-bytes"),
    ],
)
async def test_can_replay(data: Any, replayable: bool) -> None:
    body = data() if callable(data) else data
    request = client_request(URL("http://127.0.0.1:9/x"), data=body)
    assert _can_replay(request.body) is replayable
    await request.close()


async def test_consumed_payload_is_not_replayable() -> None:
    body = aiohttp.BytesIOPayload(io.BytesIO(b"x"))
    body._consumed = True
    assert not _can_replay(body)


async def test_json_replay_is_byte_identical(
    fake: FakePlainID, provider: _TokenProvider, session: aiohttp.ClientSession
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    assert await status_of(session.put("api/1.0/x", json={"k": "v"})) == 200
    assert [json.loads(r.body) for r in fake.resource_requests] == [{"k": "v"}] * 2


# -- provider.session(origins=..., base_url=...) -------------------------------------------


async def test_session_origins_reach_the_middleware(
    fake: FakePlainID, other: Server, provider: _TokenProvider
) -> None:
    async with provider.session(origins=[str(other.url)]) as client:
        assert await status_of(client.get(other.url / "x")) == 200
        assert await status_of(client.get("api/1.0/y")) == 200
    assert [s.authorization for s in other.seen] == [f"Bearer {fake.issued_tokens[0]}"]


async def test_session_base_url_on_an_extra_origin_gets_the_token(
    fake: FakePlainID, other: Server, provider: _TokenProvider
) -> None:
    async with provider.session(base_url=other.url / "v1/", origins=[other.url]) as client:
        assert await status_of(client.get("x")) == 200
    assert [s.authorization for s in other.seen] == [f"Bearer {fake.issued_tokens[0]}"]


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:1/api/", URL("https://example.org/"), "not a url", 42],
    ids=["other-port", "other-host", "garbage", "not-a-string"],
)
def test_session_base_url_on_an_origin_that_gets_no_token_is_a_clear_error(
    provider: _TokenProvider, base_url: object
) -> None:
    with pytest.raises(ConfigurationError, match="base_url") as info:
        provider.session(base_url=base_url)
    assert "origins=" in str(info.value)


def test_session_with_invalid_origins_is_a_configuration_error(provider: _TokenProvider) -> None:
    with pytest.raises(ConfigurationError, match="origins"):
        provider.session(origins="https://pap.example.com")


async def test_encoded_slash_in_the_base_url_prefix_stays_encoded() -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.raw_path.endswith("api-key/token"):
            return web.json_response(
                {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 600}
            )
        seen.append(request.raw_path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with LoopbackServer(app) as server:
        base = f"{server.url}/tenant%2Fa"
        provider = _TokenProvider("id", "secret-x", base_url=base, cache=MemoryTokenCache())
        async with provider, provider.session() as client:
            assert await status_of(client.get("api/1.0/x")) == 200
    assert seen == ["/tenant%2Fa/api/1.0/x"]


# -- the hot path: what each request pays for ---------------------------------------------------


async def test_every_request_of_one_token_carries_the_very_same_header_string() -> None:
    provider, token = await seeded_provider()
    middleware, handler = BearerAuthMiddleware(provider), StubHandler(200, 200, 200)
    for _ in range(3):
        await middleware(client_request(URL("http://127.0.0.1:9/x")), handler)
    # Built once per token, never per request: one object, the token's own.
    assert all(sent is token.authorization for sent in handler.sent)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://127.0.0.1:9",
        "ws://127.0.0.1:9/socket",
        "https://127.0.0.1:9/x",
        "wss://127.0.0.1:9/x",
        "http://127.0.0.1:10/x",
        "http://127.0.0.1/x",
        "http://localhost:9/x",
        "https://api.us1.plainid.io/x",
        "http://api.us1.plainid.io/x",
        "https://API.US1.PLAINID.IO:443/x",
        "https://api.us1.plainid.io:8443/x",
        "https://pap.example.com/x",
        "https://pap.example.com.:443/x",
        "https://evil.example.com/x",
    ],
)
async def test_requests_get_the_token_exactly_where_allows_says(url: str) -> None:
    provider, token = await seeded_provider()
    # The middleware decides inline on every request; allows() asks _origins.is_allowed.
    middleware = BearerAuthMiddleware(
        provider, origins=["https://api.us1.plainid.io", "https://pap.example.com"]
    )
    handler = StubHandler(200)
    await middleware(client_request(URL(url)), handler)
    expected = token.authorization if middleware.allows(URL(url)) else None
    assert handler.sent == [expected]


async def test_a_hot_token_is_counted_as_a_cache_hit_per_request() -> None:
    provider, _ = await seeded_provider()
    middleware, handler = BearerAuthMiddleware(provider), StubHandler(200, 200, 200, 200)
    await middleware(client_request(URL("http://127.0.0.1:9/x")), handler)  # fills the hot slot
    hits = provider.stats.cache_hits
    for _ in range(3):
        await middleware(client_request(URL("http://127.0.0.1:9/x")), handler)
    assert provider.stats.cache_hits == hits + 3


async def test_the_hot_lookup_answers_as_get_token_does(fake: FakePlainID) -> None:
    async with make_provider(fake) as provider:
        hot = hot_lookup(provider)
        assert hot() is None  # nothing cached: get_token() must fetch
        token = await provider.get_token()
        assert await provider.get_token() is token  # a cache hit fills the hot slot
        assert hot() is token
        assert provider.invalidate(token)
        assert hot() is None  # dropped: get_token() fetches a new one
        fresh = await provider.get_token()
        assert fresh != token
        assert await provider.get_token() is fresh
        assert hot() is fresh
        assert provider.report_unauthorized(fresh)
        assert hot() is None  # rejected: the reporting task's next get_token() waits
    assert hot() is None  # closed: get_token() raises


async def test_the_middleware_sends_the_token_get_token_returns_after_each_change(
    fake: FakePlainID,
) -> None:
    """The middleware's hot path (the provider's hot slot) follows every change to it."""
    async with make_provider(fake) as provider:
        middleware, handler = BearerAuthMiddleware(provider), StubHandler(200, 200, 200, 200)

        async def sent() -> str | None:
            await middleware(client_request(fake.base_url / "x"), handler)
            return handler.sent[-1]

        token = await provider.get_token()
        assert await sent() == token.authorization
        assert await sent() == token.authorization  # from the hot slot, filled by now
        assert provider.invalidate(token)
        fresh = await sent()  # dropped: the middleware fetches anew
        assert fresh == (await provider.get_token()).authorization != token.authorization
        assert provider.report_unauthorized(await provider.get_token())
        replacement = await sent()  # rejected: the middleware waits for the replacement
        assert replacement == (await provider.get_token()).authorization != fresh
    with pytest.raises(ProviderClosedError):  # closed: get_token() raises
        await sent()
    assert len(fake.token_requests) == 3


async def test_a_token_past_its_refresh_point_is_never_taken_from_the_hot_slot(
    fake: FakePlainID,
) -> None:
    """Past its refresh point a token never comes from the hot slot: get_token() decides."""
    async with make_provider(fake, cache=MemoryTokenCache()) as provider:
        issued = await provider.get_token()
        # Where the provider stands once its clock passed the token's expiry: the cache
        # holds it, and so does the hot slot, with a refresh point in the past.
        expired = attrs.evolve(
            issued,
            expires_at=issued.expires_at - issued.expires_in - 1,
            expires_at_monotonic=time.monotonic() - 1,
        )
        await provider.cache.store(provider.cache_key, expired)
        state = key_states_of(provider.cache).state(provider.cache_key)
        refresh_at = provider._schedule(expired).refresh_at
        provider._hot = (expired, refresh_at, state)
        handler = StubHandler(200)
        await BearerAuthMiddleware(provider)(client_request(fake.base_url / "x"), handler)
        assert handler.sent == [(await provider.get_token()).authorization]
        assert handler.sent != [expired.authorization]
        assert len(fake.token_requests) == 2  # get_token() fetched anew


async def test_a_stale_token_is_left_to_get_token(fake: FakePlainID) -> None:
    async with make_provider(fake, cache=MemoryTokenCache()) as provider:
        await provider.cache.store(provider.cache_key, token_with(remaining=40, lifetime=100))
        hot = hot_lookup(provider)
        stale = await provider.get_token()  # STALE: served, and a refresh starts
        assert stale.access_token == "preloaded"
        assert hot() is None  # a STALE token never enters the hot slot


async def test_a_provider_whose_lookups_are_heard_has_no_hot_token(fake: FakePlainID) -> None:
    heard: list[object] = []
    async with make_provider(fake, on_event=heard.append) as provider:
        token = await provider.get_token()
        assert hot_lookup(provider)() is None  # HIT events: every lookup goes to get_token()
        handler = StubHandler(200)
        await BearerAuthMiddleware(provider)(client_request(fake.base_url / "x"), handler)
    assert handler.sent == [token.authorization]
    assert [getattr(e, "kind", None) for e in heard].count(EventKind.HIT) >= 1


class OwnLookups(_TokenProvider):
    """A subclass with its own get_token: the integrations must ask it every time."""

    __slots__ = ("asked",)

    async def get_token(self, force_refresh: bool = False) -> Token:
        self.asked = getattr(self, "asked", 0) + 1
        return await super().get_token(force_refresh=force_refresh)


async def test_only_the_librarys_own_get_token_is_bypassed(fake: FakePlainID) -> None:
    async with OwnLookups(
        fake.client_id, fake.client_secret, base_url=fake.base_url, cache=MemoryTokenCache()
    ) as provider:
        middleware = BearerAuthMiddleware(provider)
        handler = StubHandler(200, 200)
        for _ in range(2):
            await middleware(client_request(fake.base_url / "x"), handler)
        assert provider.asked == 2
        assert hot_lookup(provider)() is None
