"""Proxies (``_proxy.py``): the settings, and token requests through a real forward proxy
(tinyproxy on 127.0.0.1): ``proxy=``, ``trust_env=``, a session's proxy, 407.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from _providers import make_provider
from _proxy import GOOD, PROXY_VARIABLES, TinyProxy, TokenServer
from _servers import client_tls, server_tls
from _tracebacks import everything_reported, failure_of, raised_by, with_locals
from yarl import URL

from plainid_async import (
    ConfigurationError,
    InvalidCredentialsError,
    MemoryTokenCache,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenProvider,
)
from plainid_async._proxy import proxy_from_env, resolve_proxy
from plainid_async.testing import FakePlainID, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    import trustme

SECRET = "pr0xy-test-client-secret"
PROXY_PASSWORD = "pr0xy-Pa55-never-shown"


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    async with TokenServer() as running:
        yield running


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    running = TinyProxy(tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    running = TinyProxy(tmp_path, login="proxyuser", password=PROXY_PASSWORD)
    running.start()
    yield running
    running.stop()


def provider_for(base_url: URL, **options: Any) -> TokenProvider:
    options.setdefault("retry", RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0))
    return make_provider(base_url, client_id="client-p", client_secret=SECRET, **options)


async def token_of(provider: TokenProvider) -> str:
    async with provider:
        return (await provider.get_token()).access_token


async def test_token_request_goes_through_the_proxy_given(
    server: TokenServer, proxy: TinyProxy
) -> None:
    assert await token_of(provider_for(server.base_url, proxy=proxy.url)) == GOOD["access_token"]
    assert server.via_proxy == [True]


async def test_proxy_variables_are_ignored_by_default(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await token_of(provider_for(server.base_url))
    assert server.via_proxy == [False]


async def test_trust_env_takes_the_proxy_from_the_environment(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await token_of(provider_for(server.base_url, trust_env=True))
    assert server.via_proxy == [True]


async def test_trust_env_honours_no_proxy(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    await token_of(provider_for(server.base_url, trust_env=True))
    assert server.via_proxy == [False]


async def test_from_env_takes_proxy_and_trust_env(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {
        "PLAINID_CLIENT_ID": "client-p",
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_BASE_URL": str(server.base_url),
    }
    await token_of(TokenProvider.from_env(environ, proxy=proxy.url, cache=MemoryTokenCache()))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await token_of(TokenProvider.from_env(environ, trust_env=True, cache=MemoryTokenCache()))
    assert server.via_proxy == [True, True]


async def test_netrc_never_lands_in_the_token_requests_authorization(
    server: TokenServer, proxy: TinyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-Pa55\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await token_of(provider_for(server.base_url, trust_env=True))
    await token_of(provider_for(server.base_url, trust_env=True, proxy=None))
    async with aiohttp.ClientSession(trust_env=True) as theirs:  # aiohttp's would read it
        await token_of(provider_for(server.base_url, session=theirs))
    assert server.via_proxy == [True, True, True]
    for headers in server.headers:
        assert "authorization" not in headers
        assert "proxy-authorization" not in headers


async def test_407_is_a_typed_error_sent_once_that_asks_for_proxy_credentials(
    server: TokenServer, auth_proxy: TinyProxy
) -> None:
    provider = provider_for(server.base_url, proxy=auth_proxy.url)
    async with provider:
        with pytest.raises(TokenEndpointUnavailableError) as info:
            await provider.get_token()
    assert info.value.status == 407
    assert info.value.retryable is False
    assert "wants credentials" in str(info.value)
    assert "check region" not in str(info.value)
    assert provider.stats.token_requests == 1
    assert server.headers == []


async def test_proxy_credentials_work_and_never_show(
    server: TokenServer, auth_proxy: TinyProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    provider = provider_for(server.base_url, proxy=auth_proxy.url_with_credentials)
    assert PROXY_PASSWORD not in repr(provider)
    assert await token_of(provider) == GOOD["access_token"]
    assert server.via_proxy == [True]
    assert "proxy-authorization" not in server.headers[0]  # the proxy took it, not the server
    assert PROXY_PASSWORD not in caplog.text


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[TokenServer]:
    async with TokenServer(server_tls(ca)) as running:
        yield running


async def test_https_token_url_tunnels_through_the_proxy(
    tls_server: TokenServer, auth_proxy: TinyProxy, ca: trustme.CA
) -> None:
    provider = provider_for(
        tls_server.base_url, proxy=auth_proxy.url_with_credentials, ssl=client_tls(ca)
    )
    assert await token_of(provider) == GOOD["access_token"]
    assert len(tls_server.headers) == 1
    assert "authorization" not in tls_server.headers[0]


async def test_407_to_a_tunnel_is_the_same_typed_error(
    tls_server: TokenServer, auth_proxy: TinyProxy, ca: trustme.CA
) -> None:
    provider = provider_for(tls_server.base_url, proxy=auth_proxy.url, ssl=client_tls(ca))
    async with provider:
        with pytest.raises(TokenEndpointUnavailableError) as info:
            await provider.get_token()
    assert info.value.status == 407
    assert info.value.retryable is False
    assert "wants credentials" in str(info.value)
    assert provider.stats.token_requests == 1


async def test_wrong_proxy_credentials_say_so_without_showing_them(
    tls_server: TokenServer,
    auth_proxy: TinyProxy,
    ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    wrong = f"http://proxyuser:wrong-{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    provider = provider_for(tls_server.base_url, proxy=wrong, ssl=client_tls(ca))
    async with provider:
        with pytest.raises(TokenEndpointUnavailableError) as info:
            await provider.get_token()
    assert info.value.status in {401, 407}  # tinyproxy answers wrong credentials with 401
    assert info.value.retryable is False
    assert "refused the credentials" in str(info.value)
    assert provider.stats.token_requests == 1
    for text in (str(info.value), repr(info.value), caplog.text, repr(provider)):
        assert PROXY_PASSWORD not in text


@pytest.mark.parametrize(
    "proxy", ["socks5://127.0.0.1:1080", "127.0.0.1:3128", "http://u:pr0xy-Pa55@/", 3128]
)
def test_invalid_proxy_is_a_configuration_error(proxy: object) -> None:
    with pytest.raises(ConfigurationError, match="proxy") as info:
        TokenProvider("id", SECRET, region="us1", proxy=proxy)  # type: ignore[arg-type]
    assert "pr0xy-Pa55" not in str(info.value)


def test_trust_env_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="trust_env"):
        TokenProvider("id", SECRET, region="us1", trust_env="yes")  # type: ignore[arg-type]


async def test_a_session_made_with_trust_env_takes_the_environments_proxy(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with aiohttp.ClientSession(trust_env=True) as theirs:
        await token_of(provider_for(server.base_url, session=theirs))
    async with aiohttp.ClientSession() as plain:
        await token_of(provider_for(server.base_url, session=plain))
    assert server.via_proxy == [True, False]


async def test_a_raise_for_status_session_gets_bad_credentials_without_retries() -> None:
    async with FakePlainID(client_secret="the-real-secret") as fake:
        async with aiohttp.ClientSession(
            raise_for_status=True, headers={"Content-Type": "application/json"}
        ) as theirs:
            provider = provider_for(fake.base_url, session=theirs)
            async with provider:
                with pytest.raises(InvalidCredentialsError):
                    await provider.get_token()
        assert len(fake.token_requests) == 1
        assert fake.token_requests[0].content_type == "application/x-www-form-urlencoded"


# -- proxy settings: resolve_proxy and proxy_from_env, no I/O -----------------------------


def test_proxy_credentials_are_split_off_and_never_shown() -> None:
    proxy = resolve_proxy("http://user:pa55-word@proxy.internal:3128")
    assert proxy is not None
    assert proxy.url == URL("http://proxy.internal:3128")
    assert proxy.login == "user"
    assert proxy.password is not None
    assert proxy.password.reveal() == "pa55-word"
    assert "pa55-word" not in repr(proxy)
    assert "user" not in repr(proxy)


@pytest.mark.parametrize(
    "value",
    [
        "proxy.internal:3128",
        "socks5://u:pa55-word@proxy.internal:1080",
        "http://u:pa55-word@proxy.internal:3128/path",
        "http://u:pa55-word@proxy.internal:3128/?q=1",
        "http://u:pa55-word@",
        "",
        42,
    ],
)
def test_invalid_proxy_is_a_configuration_error_without_its_password(value: object) -> None:
    with pytest.raises(ConfigurationError, match="proxy") as info:
        resolve_proxy(value)
    assert "pa55-word" not in str(info.value)


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:1"}, "https://api.us1.plainid.io/t", "http://p:1"),
        ({"https_proxy": "http://p:1"}, "https://api.us1.plainid.io/t", "http://p:1"),
        ({"https_proxy": "http://p:1", "HTTPS_PROXY": "http://q:2"}, "https://a.io/", "http://p:1"),
        ({"HTTP_PROXY": "http://p:1"}, "https://api.us1.plainid.io/t", None),
        ({"HTTP_PROXY": "http://p:1"}, "http://127.0.0.1:8080/t", "http://p:1"),
        ({"HTTPS_PROXY": "p:1"}, "https://a.io/", "http://p:1"),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "plainid.io"},
            "https://api.us1.plainid.io/",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://p:1", "no_proxy": ".plainid.io"},
            "https://api.us1.plainid.io/",
            None,
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.io, *"}, "https://a.io/", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "plainid.io.evil"},
            "https://plainid.io/",
            "http://p:1",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "id.io"}, "https://plainid.io/", "http://p:1"),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1"}, "http://127.0.0.1:9/t", None),
        ({}, "https://a.io/", None),
        ({"HTTPS_PROXY": " "}, "https://a.io/", None),
    ],
)
def test_proxy_from_the_environment_as_curl_reads_it(
    environ: dict[str, str], url: str, expected: str | None
) -> None:
    proxy = proxy_from_env(URL(url), environ)
    assert (None if proxy is None else str(proxy.url)) == expected


def test_bad_proxy_variable_names_the_variable_not_the_password() -> None:
    with pytest.raises(ConfigurationError, match="HTTPS_PROXY") as info:
        proxy_from_env(URL("https://a.io/"), {"HTTPS_PROXY": "ftp://u:pa55-word@p:1"})
    assert "pa55-word" not in str(info.value)


# -- nothing of the proxy's credentials in a frame or the chain (issue 21) ------------------

LOGIN = "proxyuser"


def forms_of_credentials(password: str) -> list[str]:
    """The proxy password as a frame, a header or a URL may hold it."""
    basic = base64.b64encode(f"{LOGIN}:{password}".encode()).decode("ascii")
    return [password, urllib.parse.quote(password, safe=""), basic]


async def failure_of_provider(provider: TokenProvider) -> BaseException:
    async with provider:
        return await failure_of(provider.get_token())


async def test_a_refused_tunnel_chains_a_cause_without_the_proxy_credentials(
    tls_server: TokenServer, auth_proxy: TinyProxy, ca: trustme.CA
) -> None:
    wrong = f"wrong-{PROXY_PASSWORD}"
    proxy_url = f"http://{LOGIN}:{wrong}@127.0.0.1:{auth_proxy.port}"
    error = await failure_of_provider(
        provider_for(tls_server.base_url, proxy=proxy_url, ssl=client_tls(ca))
    )
    assert isinstance(error, TokenEndpointUnavailableError)
    cause = error.__cause__
    assert isinstance(cause, aiohttp.ClientHttpProxyError)  # still what aiohttp said
    assert cause.status in {401, 407}
    assert "Proxy-Authorization" not in repr(cause)
    assert cause.__traceback__ is None  # aiohttp's frames hold the header in their locals
    reported = everything_reported(error)
    for form in forms_of_credentials(wrong):
        assert form not in reported


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_proxy_that_is_down_leaves_its_credentials_in_no_frame(
    server: TokenServer, tls_server: TokenServer, ca: trustme.CA, scheme: str
) -> None:
    target = server if scheme == "http" else tls_server
    proxy_url = f"http://{LOGIN}:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    error = await failure_of_provider(
        provider_for(target.base_url, proxy=proxy_url, ssl=client_tls(ca))
    )
    assert isinstance(error, TokenEndpointUnavailableError)
    assert isinstance(error.__cause__, aiohttp.ClientProxyConnectionError)
    reported = everything_reported(error)
    for form in forms_of_credentials(PROXY_PASSWORD):
        assert form not in reported


BAD_PROXY = f"socks5://{LOGIN}:{PROXY_PASSWORD}@127.0.0.1:1080"


def test_a_bad_proxy_url_leaves_its_credentials_in_no_frame() -> None:
    error = raised_by(lambda: resolve_proxy(BAD_PROXY, "--proxy"))
    assert isinstance(error, ConfigurationError)
    assert "resolve_proxy" in with_locals(error)
    reported = everything_reported(error)
    for form in forms_of_credentials(PROXY_PASSWORD):
        assert form not in reported


def test_a_bad_proxy_variable_leaves_neither_it_nor_the_environment_in_a_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", BAD_PROXY)
    monkeypatch.setenv("PLAINID_CLIENT_SECRET", SECRET)  # os.environ's repr would show it
    error = raised_by(lambda: proxy_from_env(URL("https://api.us1.plainid.io/t")))
    assert isinstance(error, ConfigurationError)
    assert "HTTPS_PROXY=" in str(error)
    assert "proxy_from_env" in with_locals(error)
    reported = everything_reported(error)
    for form in [*forms_of_credentials(PROXY_PASSWORD), SECRET]:
        assert form not in reported


async def test_a_sessions_bad_proxy_leaves_its_credentials_in_no_frame(
    server: TokenServer,
) -> None:
    async with aiohttp.ClientSession(proxy=BAD_PROXY) as theirs:
        error = await failure_of_provider(provider_for(server.base_url, session=theirs))
    assert isinstance(error, ConfigurationError)
    assert "choose_proxy" in with_locals(error)
    reported = everything_reported(error)
    for form in forms_of_credentials(PROXY_PASSWORD):
        assert form not in reported


# -- messages name where the proxy setting came from (issue 21) -----------------------------


# tinyproxy answers wrong credentials on a forwarded http request with a 401 of its own (and
# WWW-Authenticate), which reads as the token endpoint's 401: only squid-like 407s are told
# apart there, so wrong credentials are tried on the tunnel (https) only.
@pytest.mark.parametrize(
    ("scheme", "credentials"),
    [("http", False), ("https", False), ("https", True)],
    ids=["http-none", "https-none", "https-wrong"],
)
@pytest.mark.parametrize("given_as", ["argument", "variable", "session"])
async def test_a_proxy_that_wants_credentials_says_where_to_give_them(  # noqa: PLR0917 (the cases)
    server: TokenServer,
    tls_server: TokenServer,
    auth_proxy: TinyProxy,
    ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
    credentials: bool,
    given_as: str,
) -> None:
    target = server if scheme == "http" else tls_server
    proxy_url = (
        f"http://{LOGIN}:wrong-{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
        if credentials
        else auth_proxy.url
    )
    variable = f"{scheme.upper()}_PROXY"
    options: dict[str, Any] = {"ssl": client_tls(ca)}
    if given_as == "argument":
        options["proxy"] = proxy_url
    elif given_as == "variable":
        monkeypatch.setenv(variable, proxy_url)
        options["trust_env"] = True
    async with aiohttp.ClientSession(proxy=proxy_url if given_as == "session" else None) as theirs:
        if given_as == "session":
            options["session"] = theirs
        error = await failure_of_provider(provider_for(target.base_url, **options))
    assert isinstance(error, TokenEndpointUnavailableError)
    assert error.status in {401, 407}
    message = str(error)
    where = {"argument": "proxy=", "variable": variable, "session": "the session's proxy="}
    if credentials:
        assert "refused the credentials given in " + where[given_as] in message
    else:
        assert f"give them in {where[given_as]} as http://USER:PASSWORD@HOST:PORT" in message
    if given_as != "argument":
        assert "in proxy=" not in message
    assert PROXY_PASSWORD not in message


def test_a_bad_proxy_variable_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://u:pr0xy-Pa55@127.0.0.1:1080")
    provider = provider_for(URL("https://api.us1.plainid.io"), trust_env=True)
    with pytest.raises(ConfigurationError, match=r"^HTTPS_PROXY='socks5://127\.0\.0\.1:1080'"):
        asyncio.run(token_of(provider))


# -- a session's proxy, proxy auth and trust_env apply to token requests (issue 22) ---------


async def test_a_sessions_proxy_carries_the_token_request(
    server: TokenServer, proxy: TinyProxy
) -> None:
    async with aiohttp.ClientSession(proxy=proxy.url) as theirs:
        assert await token_of(provider_for(server.base_url, session=theirs)) == GOOD["access_token"]
    assert server.via_proxy == [True]


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("credentials_in", ["url", "proxy_auth"])
async def test_a_sessions_proxy_credentials_are_sent_to_the_proxy(  # noqa: PLR0917 (the cases)
    server: TokenServer,
    tls_server: TokenServer,
    auth_proxy: TinyProxy,
    ca: trustme.CA,
    scheme: str,
    credentials_in: str,
) -> None:
    target = server if scheme == "http" else tls_server
    if credentials_in == "url":
        theirs = aiohttp.ClientSession(proxy=auth_proxy.url_with_credentials)
    else:
        # Newer aiohttp deprecates BasicAuth and proxy_auth; the lowest aiohttp we allow
        # (3.12.2) does not warn: either way the session must carry the credentials.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = aiohttp.ClientSession(
                proxy=auth_proxy.url, proxy_auth=aiohttp.BasicAuth(LOGIN, PROXY_PASSWORD)
            )
    async with theirs:
        provider = provider_for(target.base_url, session=theirs, ssl=client_tls(ca))
        assert PROXY_PASSWORD not in repr(provider)
        assert await token_of(provider) == GOOD["access_token"]
    assert len(target.headers) == 1
    assert "proxy-authorization" not in target.headers[0]  # the proxy took it
    if scheme == "http":  # a tunnel's end sees no Via; the https-wrong case above shows it
        assert target.via_proxy == [True]


async def test_the_proxy_given_to_the_provider_wins_over_the_sessions(
    server: TokenServer, proxy: TinyProxy
) -> None:
    async with aiohttp.ClientSession(proxy=f"http://127.0.0.1:{free_port()}") as theirs:
        provider = provider_for(server.base_url, session=theirs, proxy=proxy.url)
        assert await token_of(provider) == GOOD["access_token"]
    assert server.via_proxy == [True]


async def test_a_sessions_proxy_wins_over_the_environments(
    server: TokenServer, proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    async with aiohttp.ClientSession(proxy=proxy.url, trust_env=True) as theirs:
        provider = provider_for(server.base_url, session=theirs, trust_env=True)
        assert await token_of(provider) == GOOD["access_token"]
    assert server.via_proxy == [True]


async def test_a_sessions_proxy_brings_none_of_its_other_settings(
    server: TokenServer, proxy: TinyProxy
) -> None:
    async with aiohttp.ClientSession(
        proxy=proxy.url,
        headers={"Content-Type": "application/json", "X-Theirs": "1"},
        cookies={"theirs": "1"},
        raise_for_status=True,
    ) as theirs:
        assert await token_of(provider_for(server.base_url, session=theirs)) == GOOD["access_token"]
    assert server.via_proxy == [True]
    [headers] = server.headers
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert "x-theirs" not in headers
    assert "cookie" not in headers


async def test_a_sessions_invalid_proxy_is_a_configuration_error_naming_it(
    server: TokenServer,
) -> None:
    async with aiohttp.ClientSession(proxy="socks5://u:pr0xy-Pa55@127.0.0.1:1080") as theirs:
        provider = provider_for(server.base_url, session=theirs)
        with pytest.raises(ConfigurationError, match=r"^the session's proxy=") as info:
            await token_of(provider)
    assert "pr0xy-Pa55" not in str(info.value)
    assert server.headers == []


GOOD_PROXY_WITH_PASSWORD = f"http://{LOGIN}:{PROXY_PASSWORD}@127.0.0.1:3128"
ENVIRON = {
    "PLAINID_CLIENT_ID": "id",
    "PLAINID_CLIENT_SECRET": SECRET,
    "PLAINID_REGION": "us1",
}


@pytest.mark.parametrize(
    ("build", "frame"),
    [
        pytest.param(
            lambda: TokenProvider("id", SECRET, region="us1", proxy=BAD_PROXY),
            "__init__",
            id="constructor-bad-proxy",
        ),
        pytest.param(
            lambda: TokenProvider("id", SECRET, region="US 1", proxy=GOOD_PROXY_WITH_PASSWORD),
            "__init__",
            id="constructor-good-proxy-bad-region",
        ),
        pytest.param(
            lambda: TokenProvider.from_env(ENVIRON, proxy=BAD_PROXY),
            "from_env",
            id="from-env-bad-proxy",
        ),
        pytest.param(
            lambda: TokenProvider.from_env({}, proxy=GOOD_PROXY_WITH_PASSWORD),
            "from_env",
            id="from-env-good-proxy-missing-variables",
        ),
        pytest.param(
            lambda: TokenProvider.from_env(
                {**ENVIRON, "PLAINID_REGION": "US 1"}, proxy=GOOD_PROXY_WITH_PASSWORD
            ),
            "from_env",
            id="from-env-good-proxy-bad-region",
        ),
        pytest.param(
            lambda: TokenProvider.from_env(
                {**ENVIRON, "PLAINID_BASE_URL": "https://pap.example"},
                proxy=GOOD_PROXY_WITH_PASSWORD,
            ),
            "from_env",
            id="from-env-good-proxy-region-and-base-url",
        ),
    ],
)
def test_a_provider_that_fails_to_build_keeps_proxy_credentials_and_secret_in_no_frame(
    build: Callable[[], object], frame: str
) -> None:
    """Neither the proxy's credentials nor the secret of an ``environ`` given to ``from_env``."""
    error = raised_by(build)
    assert isinstance(error, ConfigurationError)
    # The provider's own frame is in the traceback, with its locals ...
    assert f", in {frame}\n" in with_locals(error)
    # ... and no frame holds the proxy URL or its credentials, in any form.
    reported = everything_reported(error)
    for form in [*forms_of_credentials(PROXY_PASSWORD), SECRET]:
        assert form not in reported
