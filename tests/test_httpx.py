"""plainid_async.httpx: BearerAuth and client(), against real aiohttp servers on 127.0.0.1.

The same cases as the aiohttp middleware's tests (tests/test_middleware.py), through
``httpx.AsyncClient``; ``httpx.MockTransport`` only for the unit tests at the end. Every test
that builds a client runs with httpx and with httpx2 (the ``lib`` fixture); ``client()``
picks httpx2 when both are installed, httpx when it is alone (checked in a subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import httpx2
import pytest
from _providers import make_provider
from _servers import client_tls, server_tls
from yarl import URL

from plainid_async import (
    ConfigurationError,
    InvalidCredentialsError,
    MemoryTokenCache,
    RetryPolicy,
    Token,
    TokenState,
)
from plainid_async import TokenProvider as _TokenProvider
from plainid_async.httpx import BearerAuth, client
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import httpx
    import trustme


#: What client() opens when both libraries are installed (docs/httpx.md says so).
picked = httpx2


@pytest.fixture(params=["httpx", "httpx2"])
def lib(request: pytest.FixtureRequest) -> Any:
    """The library under test: httpx or httpx2, the same API under another import name."""
    return importlib.import_module(request.param)


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakePlainID]:
    """Another origin: it records whether any Authorization header reached it."""
    async with FakePlainID(client_id="other", client_secret="other-secret") as server:
        yield server


@pytest.fixture
async def provider(fake: FakePlainID) -> AsyncIterator[_TokenProvider]:
    async with make_provider(fake) as tokens:
        yield tokens


@pytest.fixture
async def http(provider: _TokenProvider, lib: Any) -> AsyncIterator[httpx.AsyncClient]:
    """What client() opens, with the library under test."""
    auth = BearerAuth(provider)
    async with lib.AsyncClient(auth=auth, base_url=str(provider.api_url), timeout=10) as api:
        yield api


def sent_any_authorization(server: FakePlainID) -> list[bool]:
    return [r.authorization_header for r in server.resource_requests]


# -- origin scoping --------------------------------------------------------------------------


async def test_token_sent_to_the_api_origin(fake: FakePlainID, http: httpx.AsyncClient) -> None:
    response = await http.get("api/1.0/policies")
    assert response.status_code == 200
    [seen] = fake.resource_requests
    assert seen.authorized
    assert seen.path == "/api/1.0/policies"
    assert len(fake.token_requests) == 1


async def test_no_token_for_another_origin(
    fake: FakePlainID, elsewhere: FakePlainID, http: httpx.AsyncClient
) -> None:
    response = await http.get(str(elsewhere.base_url / "x"))
    assert response.status_code == 401
    assert sent_any_authorization(elsewhere) == [False]
    assert fake.token_requests == []


async def test_extra_origin_gets_the_token(
    lib: Any, fake: FakePlainID, elsewhere: FakePlainID, provider: _TokenProvider
) -> None:
    auth = BearerAuth(provider, origins=[str(elsewhere.base_url)])
    async with lib.AsyncClient(auth=auth, timeout=10) as api:
        assert (await api.get(str(fake.base_url / "y"))).status_code == 200
        # The other origin gets the token (and rejects it: it did not issue it).
        assert (await api.get(str(elsewhere.base_url / "x"))).status_code == 401
    assert [r.authorized for r in fake.resource_requests] == [True]
    assert sent_any_authorization(elsewhere) == [True, True]  # with the one retry


async def test_redirect_from_the_api_to_another_origin_carries_no_token(
    fake: FakePlainID, elsewhere: FakePlainID, http: httpx.AsyncClient
) -> None:
    target = str(elsewhere.base_url / "landing")
    response = await http.get("redirect", params={"to": target}, follow_redirects=True)
    assert response.status_code == 401  # the other origin's answer to a request without token
    assert sent_any_authorization(elsewhere) == [False]
    assert len(fake.token_requests) == 1  # the first hop got the token
    assert [r.url.host for r in response.history] == ["127.0.0.1"]


async def test_request_reaching_the_api_through_another_origin_carries_no_token(
    fake: FakePlainID, elsewhere: FakePlainID, http: httpx.AsyncClient
) -> None:
    target = str(fake.base_url / "api/1.0/x")
    response = await http.get(
        str(elsewhere.base_url / "redirect"), params={"to": target}, follow_redirects=True
    )
    assert response.status_code == 401
    assert sent_any_authorization(fake) == [False]
    assert fake.token_requests == []  # the first hop was not the API: no token was fetched


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_within_the_origin_keeps_the_token(
    fake: FakePlainID, http: httpx.AsyncClient, status: int
) -> None:
    target = str(fake.base_url / "api/1.0/after")
    response = await http.post(
        "redirect",
        params={"to": target, "status": status},
        content=b"payload",
        follow_redirects=True,
    )
    assert response.status_code == 200
    [seen] = fake.resource_requests
    assert seen.authorized
    assert seen.path == "/api/1.0/after"
    # 307 and 308 send the body again; 301, 302 and 303 turn the POST into a GET.
    assert (seen.method, seen.body) == (
        ("POST", b"payload") if status in {307, 308} else ("GET", b"")
    )


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_elsewhere_carries_no_token_whatever_the_status(
    elsewhere: FakePlainID, http: httpx.AsyncClient, status: int
) -> None:
    target = str(elsewhere.base_url / "landing")
    await http.get("redirect", params={"to": target, "status": status}, follow_redirects=True)
    assert sent_any_authorization(elsewhere) == [False]


async def test_http_to_https_on_the_same_host_is_another_origin(
    lib: Any, fake: FakePlainID, http: httpx.AsyncClient, ca: trustme.CA
) -> None:
    """An upgrade to another port is another origin: httpx drops the token, as aiohttp does."""
    server_ssl = server_tls(ca)
    client_ssl = client_tls(ca)
    async with FakePlainID(ssl_context=server_ssl) as secure:
        assert secure.base_url.scheme == "https"
        assert secure.base_url.host == fake.base_url.host
        auth = http.auth
        async with lib.AsyncClient(auth=auth, verify=client_ssl, timeout=10) as api:
            target = str(secure.base_url / "api/1.0/x")
            response = await api.get(
                str(fake.base_url / "redirect"), params={"to": target}, follow_redirects=True
            )
        assert response.status_code == 401
        assert sent_any_authorization(secure) == [False]


# -- the caller's Authorization ----------------------------------------------------------------


async def test_explicit_authorization_header_is_left_alone(
    fake: FakePlainID, http: httpx.AsyncClient
) -> None:
    response = await http.get("api/1.0/x", headers={"Authorization": "Bearer mine"})
    assert response.status_code == 401
    assert fake.token_requests == []  # no token fetched, no 401 retry
    [seen] = fake.resource_requests
    assert seen.authorization_header
    assert not seen.authorized


async def test_client_default_authorization_is_left_alone(
    fake: FakePlainID, provider: _TokenProvider
) -> None:
    async with client(provider, headers={"Authorization": "Basic dXNlcjpwdw=="}) as api:
        assert (await api.get("api/1.0/x")).status_code == 401
    assert sent_any_authorization(fake) == [True]
    assert fake.token_requests == []


# -- 401: report the token, refresh, retry once --------------------------------------------------


async def test_fifty_concurrent_401s_cause_one_refresh(
    fake: FakePlainID, provider: _TokenProvider, http: httpx.AsyncClient
) -> None:
    first = await provider.get_token()
    fake.revoke(first.access_token)
    responses = await asyncio.gather(*(http.get(f"api/1.0/item/{i}") for i in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert len(fake.token_requests) == 2  # the revoked token, and exactly one refresh
    assert [r.authorized for r in fake.resource_requests].count(False) == 50
    assert (await provider.get_token()).access_token == fake.issued_tokens[1]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: {"content": b"raw bytes"}, id="bytes"),
        pytest.param(lambda: {"content": "text"}, id="str"),
        pytest.param(lambda: {"json": {"a": [1, 2]}}, id="json"),
        pytest.param(lambda: {"data": {"a": "1", "b": "2"}}, id="form"),
        pytest.param(dict, id="no-body"),
    ],
)
async def test_replayable_bodies_are_retried(
    fake: FakePlainID,
    provider: _TokenProvider,
    http: httpx.AsyncClient,
    body: Callable[[], dict[str, Any]],
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    response = await http.post("api/1.0/upload", **body())
    assert response.status_code == 200
    first, second = fake.resource_requests
    assert (first.authorized, second.authorized) == (False, True)
    assert first.body == second.body
    assert len(fake.token_requests) == 2
    assert [r.status_code for r in response.history] == [401]


async def stream() -> AsyncIterator[bytes]:
    yield b"streamed "
    yield b"body"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: {"content": stream()}, id="async-iterator"),
        pytest.param(lambda: {"files": {"f": b"file content"}}, id="multipart"),
    ],
)
async def test_streamed_body_is_never_sent_again(
    fake: FakePlainID,
    provider: _TokenProvider,
    http: httpx.AsyncClient,
    body: Callable[[], dict[str, Any]],
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    response = await http.post("api/1.0/upload", **body())
    assert response.status_code == 401
    [seen] = fake.resource_requests
    assert seen.body
    # The rejected token was dropped all the same: the next request gets a fresh one at once.
    assert (await http.get("api/1.0/x")).status_code == 200
    assert [r.authorized for r in fake.resource_requests] == [False, True]
    assert len(fake.token_requests) == 2


async def test_second_401_goes_to_the_caller(
    lib: Any, fake: FakePlainID, elsewhere: FakePlainID, provider: _TokenProvider
) -> None:
    auth = BearerAuth(provider, origins=[str(elsewhere.base_url)])
    async with lib.AsyncClient(auth=auth, timeout=10) as api:
        response = await api.get(str(elsewhere.base_url / "x"))
    assert response.status_code == 401
    assert response.json()["status"] == 401  # the caller can read the last answer
    assert sent_any_authorization(elsewhere) == [True, True]
    assert len(fake.token_requests) == 2  # the first token was dropped, a second fetched


async def test_401_from_another_origin_is_not_retried(
    fake: FakePlainID, elsewhere: FakePlainID, http: httpx.AsyncClient
) -> None:
    assert (await http.get(str(elsewhere.base_url / "x"))).status_code == 401
    assert len(elsewhere.resource_requests) == 1
    assert fake.token_requests == []


async def test_401_after_a_redirect_elsewhere_does_not_drop_the_token(
    fake: FakePlainID, elsewhere: FakePlainID, provider: _TokenProvider, http: httpx.AsyncClient
) -> None:
    """The 401 came from a hop the token never reached: the token was not rejected."""
    token = await provider.get_token()
    target = str(elsewhere.base_url / "x")
    response = await http.get("redirect", params={"to": target}, follow_redirects=True)
    assert response.status_code == 401
    assert len(elsewhere.resource_requests) == 1  # not retried
    assert await provider.get_token() is token
    assert len(fake.token_requests) == 1


async def test_retry_disabled_returns_the_401(
    lib: Any, fake: FakePlainID, provider: _TokenProvider
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    auth = BearerAuth(provider, retry_on_401=False)
    async with lib.AsyncClient(auth=auth) as api:
        assert (await api.get(str(fake.base_url / "x"))).status_code == 401
    assert len(fake.resource_requests) == 1
    assert await provider.get_token() is token  # not dropped either


@attrs.define
class Guarded:
    """A provider whose 401 guard holds: report_unauthorized() says a retry is not worth it."""

    inner: _TokenProvider
    reported: list[Token] = attrs.Factory(list)

    @property
    def api_url(self) -> URL:
        return self.inner.api_url

    async def get_token(self) -> Token:
        return await self.inner.get_token()

    def report_unauthorized(self, token: Token) -> bool:
        self.reported.append(token)
        return False


async def test_guard_that_holds_returns_the_401(
    lib: Any, fake: FakePlainID, provider: _TokenProvider
) -> None:
    token = await provider.get_token()
    fake.revoke(token.access_token)
    guarded = Guarded(provider)
    async with lib.AsyncClient(auth=BearerAuth(guarded)) as api:
        assert (await api.get(str(fake.base_url / "x"))).status_code == 401
    assert guarded.reported == [token]
    assert len(fake.resource_requests) == 1


async def test_failing_token_request_fails_the_call(fake: FakePlainID) -> None:
    async with make_provider(fake, client_secret="wrong") as tokens, client(tokens) as api:
        with pytest.raises(InvalidCredentialsError):
            await api.get("api/1.0/x")
    assert fake.resource_requests == []


# -- load: a cold start and an outage -------------------------------------------------------------


async def test_a_thousand_concurrent_cold_requests_make_one_token_request() -> None:
    # Ten clients of 100 requests each: httpx's connection pool slows down quadratically with
    # the requests queued on one client, which would make this test about httpx.
    async with (
        FakePlainID(latency=0.05) as fake,
        make_provider(fake) as provider,
        contextlib.AsyncExitStack() as stack,
        asyncio.timeout(120),
    ):
        clients = [await stack.enter_async_context(client(provider)) for _ in range(10)]
        calls = (clients[i % 10].get("api/1.0/x", timeout=60) for i in range(1000))
        responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 1000
    assert len(fake.token_requests) == 1
    assert provider.stats.waits == 1000  # every one of them arrived before the token did
    assert all(r.authorized for r in fake.resource_requests)


async def test_outage_in_the_refresh_window_fails_no_request(fake: FakePlainID) -> None:
    retry = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, deadline=2.0)
    async with make_provider(fake, retry=retry) as provider, client(provider) as api:
        issued = await provider.get_token()
        # The same token, now inside its refresh window (40 s of 100 s left): STALE.
        stale = attrs.evolve(
            issued,
            expires_in=100.0,
            expires_at=issued.expires_at - issued.expires_in + 40,
            expires_at_monotonic=issued.expires_at_monotonic - issued.expires_in + 40,
        )
        await provider.cache.store(provider.cache_key, stale)
        assert provider.token_state() is TokenState.STALE
        fake.start_outage(503)
        responses = await asyncio.gather(*(api.get(f"api/1.0/{i}") for i in range(200)))
        assert [r.status_code for r in responses] == [200] * 200
        assert all(r.authorized for r in fake.resource_requests)
        assert fake.token_requests[-1].status == 503  # the background refresh did fail
        assert provider.stats.background_refreshes == 1


# -- client() -------------------------------------------------------------------------------------


async def test_client_defaults(provider: _TokenProvider) -> None:
    async with client(provider) as api:
        assert isinstance(cast("object", api), picked.AsyncClient)
        assert api.build_request("GET", "x").url == picked.URL(f"{provider.api_url}/x")
        assert isinstance(api.auth, BearerAuth)
        assert api.auth.provider is provider
        assert api.auth.origins == (provider.api_url.origin(),)


async def test_client_passes_options_through(provider: _TokenProvider) -> None:
    transport: Any = picked.AsyncHTTPTransport(retries=1)
    other_path = f"{provider.api_url.origin()}/other/"  # another origin is refused
    async with client(
        provider,
        headers={"X-Trace": "1"},
        timeout=5,
        transport=transport,
        base_url=other_path,
    ) as api:
        assert api.headers["X-Trace"] == "1"
        assert api.timeout == picked.Timeout(5)
        assert api._transport is transport
        assert api.base_url == picked.URL(other_path)


def test_client_refuses_auth(provider: _TokenProvider) -> None:
    with pytest.raises(ConfigurationError, match="BearerAuth"):
        client(provider, auth=("user", "pw"))


async def test_client_with_a_path_prefix() -> None:
    async with (
        FakePlainID(path_prefix="/plainid") as fake,
        make_provider(fake) as provider,
        client(provider) as api,
    ):
        # httpx appends both forms to the base URL's path.
        assert (await api.get("api/1.0/x")).status_code == 200
        assert (await api.get("/api/1.0/y")).status_code == 200
    assert [r.path for r in fake.resource_requests] == ["/plainid/api/1.0/x", "/plainid/api/1.0/y"]
    assert all(r.authorized for r in fake.resource_requests)


def test_repr_shows_origins_not_tokens(provider: _TokenProvider) -> None:
    auth = BearerAuth(provider, origins=["https://pap.example.com"])
    assert repr(auth) == (
        f"<BearerAuth origins=('{provider.api_url}', 'https://pap.example.com') retry_on_401=True>"
    )


async def test_one_provider_serves_aiohttp_and_httpx_with_one_token(
    fake: FakePlainID, provider: _TokenProvider
) -> None:
    async with provider.session() as aio, client(provider) as api:
        async with aio.get("api/1.0/a") as response:
            assert response.status == 200
        assert (await api.get("api/1.0/b")).status_code == 200
    assert len(fake.token_requests) == 1
    assert all(r.authorized for r in fake.resource_requests)


# -- sync clients and a missing httpx ----------------------------------------------------------


def test_sync_client_is_refused_before_anything_is_sent(lib: Any, provider: _TokenProvider) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        response: httpx.Response = lib.Response(200)
        return response

    transport = lib.MockTransport(handler)
    with (
        lib.Client(auth=BearerAuth(provider), transport=transport) as sync,
        pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient") as info,
    ):
        sync.get(str(provider.api_url / "x"))
    assert sent == []
    assert isinstance(info.value, ValueError)


def run_without(*modules: str) -> str:
    """What plainid_async.httpx gives in a fresh interpreter without ``modules``."""
    code = (
        f"import sys\nfor name in {modules!r}: sys.modules[name] = None\n"
        "try:\n    from plainid_async.httpx import BearerAuth, client\n"
        "except ImportError as exc:\n    print(exc)\n"
        "else:\n    import plainid_async as pa\n"
        "    provider = pa.TokenProvider('id', 'secret', region='us1')\n"
        "    print(type(client(provider)).__module__.split('.')[0])\n"
    )
    return subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_import_without_httpx_or_httpx2_names_both_extras() -> None:
    output = run_without("httpx", "httpx2")
    assert "plainid-async[httpx]" in output
    assert "plainid-async[httpx2]" in output


@pytest.mark.parametrize(
    ("missing", "opened"), [("httpx2", "httpx"), ("httpx", "httpx2"), ("nothing", "httpx2")]
)
def test_client_opens_httpx2_when_installed_else_httpx(missing: str, opened: str) -> None:
    assert run_without(missing) == opened


# -- unit tests on httpx.MockTransport: httpx's own redirect rule -------------------------------


@pytest.mark.parametrize(
    ("location", "kept"),
    [
        ("https://localhost/next", True),  # http://h -> https://h on default ports: kept
        ("https://localhost:8443/next", False),  # another port
        ("https://127.0.0.1/next", False),  # another host
        ("http://localhost:81/next", False),
    ],
)
async def test_httpx_keeps_the_header_only_on_a_same_host_https_upgrade(
    lib: Any, location: str, kept: bool
) -> None:
    """What BearerAuth relies on, pinned: a change in httpx's rule fails here."""
    provider = _TokenProvider("id", "secret", base_url="http://localhost", cache=MemoryTokenCache())
    token = Token.issued("seeded", expires_in=3600)
    await provider.cache.store(provider.cache_key, token)
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        status, headers = (
            (302, {"Location": location}) if request.url.path == "/start" else (200, {})
        )
        response: httpx.Response = lib.Response(status, headers=headers)
        return response

    transport = lib.MockTransport(handler)
    async with lib.AsyncClient(
        auth=BearerAuth(provider),
        base_url=str(provider.api_url),
        transport=transport,
        follow_redirects=True,
    ) as api:
        assert (await api.get("start")).status_code == 200
    assert seen == [
        ("http://localhost/start", token.authorization),
        (location, token.authorization if kept else None),
    ]


async def test_flow_asks_for_a_token_only_for_allowed_origins(lib: Any) -> None:
    calls: list[str] = []

    @attrs.define
    class Counting:
        api_url: URL = attrs.field(factory=lambda: URL("https://api.us1.plainid.io"))

        async def get_token(self) -> Token:
            calls.append("get_token")
            return Token.issued("t", expires_in=60)

        def report_unauthorized(self, token: Token) -> bool:  # noqa: ARG002
            return True

    transport = lib.MockTransport(lambda request: lib.Response(200, json=dict(request.headers)))
    async with lib.AsyncClient(auth=BearerAuth(Counting()), transport=transport) as api:
        other = (await api.get("https://other.example/x")).json()
        mine = (await api.get("https://api.us1.plainid.io/x")).json()
    assert "authorization" not in other
    assert mine["authorization"] == "Bearer t"
    assert calls == ["get_token"]
    assert json.dumps(other)  # a plain JSON echo, nothing else


class _RecordingFinder:
    """A ``sys.meta_path`` finder that records the modules Python had to look for."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:  # noqa: ARG002
        self.looked_up.append(name)


async def test_requests_do_not_search_for_sniffio_each_time(fake: FakePlainID, lib: Any) -> None:
    """httpcore 1.0.x runs ``import sniffio`` for every lock and event it sets up; with
    sniffio missing (anyio >= 4.11 no longer installs it) each one is a failed search of
    sys.path, a few ms per request under concurrency. The ``httpx`` extra installs it.
    """
    finder = _RecordingFinder()
    async with (
        make_provider(fake) as provider,
        lib.AsyncClient(auth=BearerAuth(provider), base_url=str(provider.api_url)) as http,
    ):
        await http.get("/api/1.0/policies")
        sys.meta_path.insert(0, finder)
        try:
            for _ in range(3):
                assert (await http.get("/api/1.0/policies")).status_code == 200
        finally:
            sys.meta_path.remove(finder)
    assert "sniffio" not in finder.looked_up


def test_the_httpx_extra_requires_sniffio() -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    extra = project["project"]["optional-dependencies"]["httpx"]
    assert any(requirement.startswith("sniffio") for requirement in extra)


async def test_each_request_of_a_cached_token_counts_as_one_cache_hit(
    fake: FakePlainID, lib: Any
) -> None:
    async with make_provider(fake) as provider:
        token = await provider.get_token()
        await provider.get_token()  # a cache hit fills the provider's hot slot
        transport = lib.MockTransport(lambda request: lib.Response(200, json=dict(request.headers)))
        async with lib.AsyncClient(auth=BearerAuth(provider), transport=transport) as api:
            hits = provider.stats.cache_hits
            sent = [(await api.get(f"{fake.base_url}/x")).json() for _ in range(3)]
            assert provider.stats.cache_hits == hits + 3
    assert [headers["authorization"] for headers in sent] == [token.authorization] * 3
    assert len(fake.token_requests) == 1
