"""The origin and URL rules (plainid_async._origins), checked once for both integrations.

Every case runs through the aiohttp ``BearerAuthMiddleware`` and the httpx ``BearerAuth``
alike, so the two can never disagree on which request gets the token or which
configuration is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import attrs
import pytest
from yarl import URL

from plainid_async import BearerAuthMiddleware, ConfigurationError, MemoryTokenCache, Token
from plainid_async import TokenProvider as _TokenProvider
from plainid_async._origins import check_http_url, host_port
from plainid_async.httpx import BearerAuth

if TYPE_CHECKING:
    from collections.abc import Callable


@attrs.frozen
class Integration:
    """One integration: how to build it, and how to ask whether a URL gets the token."""

    name: str
    build: Callable[..., Any]
    allows: Callable[[Any, str], bool]


INTEGRATIONS = [
    Integration("aiohttp", BearerAuthMiddleware, lambda m, url: m.allows(URL(url))),
    Integration("httpx", BearerAuth, lambda a, url: a.allows(url)),
]


@pytest.fixture(params=INTEGRATIONS, ids=lambda i: i.name)
def integration(request: pytest.FixtureRequest) -> Integration:
    return cast("Integration", request.param)


def us1() -> _TokenProvider:
    return _TokenProvider("id", "secret", region="us1", cache=MemoryTokenCache())


def local(port: int = 8080) -> _TokenProvider:
    return _TokenProvider(
        "id", "secret", base_url=f"http://127.0.0.1:{port}/prefix", cache=MemoryTokenCache()
    )


# -- which requests get the token ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.us1.plainid.io/api/1.0/x", True),
        ("https://API.us1.plainid.io:443/x", True),  # case and the default port written out
        ("https://api.us1.plainid.io", True),
        ("wss://api.us1.plainid.io/ws", True),  # a WebSocket handshake shares the origin
        ("http://api.us1.plainid.io/x", False),  # another scheme is another origin
        ("ws://api.us1.plainid.io/x", False),
        ("https://api.us1.plainid.io:8443/x", False),  # another port
        ("https://api.us1.plainid.io.evil.example/x", False),
        ("https://evil.example/api.us1.plainid.io", False),
        ("https://api.eu1.plainid.io/x", False),
        ("https://api.us1.plainid.io./x", True),  # a fully qualified name: the same host
    ],
)
def test_only_the_api_origin_gets_the_token(
    integration: Integration, url: str, allowed: bool
) -> None:
    assert integration.allows(integration.build(us1()), url) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/prefix/x", True),
        ("http://127.0.0.1:8080/elsewhere", True),  # the origin, not the path prefix
        ("ws://127.0.0.1:8080/ws", True),
        ("https://127.0.0.1:8080/x", False),
        ("http://127.0.0.1:8081/x", False),
        ("http://127.0.0.1/x", False),
        ("http://localhost:8080/x", False),  # another name for the host is another origin
    ],
)
def test_loopback_api_origin(integration: Integration, url: str, allowed: bool) -> None:
    assert integration.allows(integration.build(local()), url) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://pap.example.com/x", True),
        ("https://PAP.example.com:443/x", True),
        ("http://[::1]:9000/x", True),
        ("http://[0:0:0:0:0:0:0:1]:9000/x", True),  # IPv6 written out in full
        ("http://[::1]:9001/x", False),
        ("https://xn--bcher-kva.example/x", True),
        ("https://bücher.example/x", True),  # IDNA: the same host as its punycode
        ("https://pap.example.com:8443/x", False),
    ],
)
def test_extra_origins(integration: Integration, url: str, allowed: bool) -> None:
    origins = ["https://pap.example.com", "http://[::1]:9000", "https://bücher.example"]
    built = integration.build(us1(), origins=origins)
    assert integration.allows(built, url) is allowed
    assert integration.allows(built, "https://api.us1.plainid.io/x")


def test_origins_are_listed_with_the_api_origin_first(integration: Integration) -> None:
    built = integration.build(local(), origins=[URL("https://pap.example.com:8443/")])
    assert built.origins == (URL("http://127.0.0.1:8080"), URL("https://pap.example.com:8443"))


@pytest.mark.parametrize(
    "origins",
    [
        ["https://pap.example.com"],
        ["https://pap.example.com/"],
        [URL("https://pap.example.com:8443")],
        ["http://localhost:8080", "http://127.0.0.2:1", "http://[::1]:9"],
        (),
        None,
        iter(["https://a.example", "https://b.example"]),
    ],
)
def test_valid_origins(integration: Integration, origins: Any) -> None:
    integration.build(us1(), origins=origins)


@pytest.mark.parametrize(
    ("origins", "message"),
    [
        (["http://pap.example.com"], "must use https"),
        (["http://10.0.0.1"], "must use https"),
        (["https://pap.example.com/api"], "origin only"),
        (["https://pap.example.com?x=1"], "query or fragment"),
        (["https://pap.example.com/#f"], "query or fragment"),
        (["pap.example.com"], "absolute"),
        (["/relative"], "absolute"),
        (["ftp://pap.example.com"], "absolute"),
        (["ws://localhost"], "absolute"),
        (["https://user:pw@pap.example.com"], "credentials"),
        (["https://user:pw@"], "origins"),  # yarl cannot split it: shown without the userinfo
        ("https://pap.example.com", "a list"),
        (URL("https://pap.example.com"), "a list"),
        ([42], r"origins\[0\] must be a string or yarl.URL"),
        (["https://ok.example", 42], r"origins\[1\]"),
        (42, "iterable"),
    ],
)
def test_invalid_origins_are_refused(integration: Integration, origins: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        integration.build(us1(), origins=origins)
    assert isinstance(info.value, ValueError)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("value", [1, None, "yes"])
def test_retry_on_401_must_be_a_bool(integration: Integration, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="retry_on_401"):
        integration.build(us1(), retry_on_401=value)


# -- the provider: a TokenProvider or anything with its three members --------------------------


@attrs.define
class Double:
    """A test double with what the integrations call, and nothing else."""

    api_url: URL = attrs.field(factory=lambda: URL("http://127.0.0.1:9"))
    reported: list[Token] = attrs.Factory(list)

    async def get_token(self) -> Token:
        return Token.issued("double", expires_in=60)

    def report_unauthorized(self, token: Token) -> bool:
        self.reported.append(token)
        return True


def test_a_test_double_is_a_provider(integration: Integration) -> None:
    double = Double()
    built = integration.build(double)
    assert built.provider is double
    assert integration.allows(built, "http://127.0.0.1:9/x")


class NoReport:
    """Has api_url and get_token(), but no report_unauthorized()."""

    api_url = URL("http://127.0.0.1:9")

    async def get_token(self) -> Token:
        return Token.issued("x", expires_in=60)


class NotCallable(NoReport):
    report_unauthorized = True


@pytest.mark.parametrize(
    ("provider", "missing"),
    [
        (object(), "api_url, get_token(), report_unauthorized()"),
        ("https://api.us1.plainid.io", "api_url, get_token(), report_unauthorized()"),
        (NoReport(), "report_unauthorized()"),
        (NotCallable(), "report_unauthorized()"),
    ],
)
def test_provider_without_the_members_is_refused(
    integration: Integration, provider: object, missing: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        integration.build(provider)
    assert str(info.value).endswith(f"has no {missing}")
    assert "plainid_async.TokenProvider" in str(info.value)


@pytest.mark.parametrize(
    ("api_url", "message"),
    [
        ("https://api.example.com", "must be a yarl.URL"),
        (URL("http://api.example.com"), "must use https"),
        (URL("/relative"), "absolute"),
    ],
)
def test_provider_api_url_follows_the_url_rules(
    integration: Integration, api_url: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        integration.build(Double(api_url=api_url))


# -- the URL rules shared with base_url ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "must be a string or yarl.URL"),
        ("http://pap.example.com", "must use https"),
        ("https://user:pw@pap.example.com", "must not carry credentials"),
        ("https://pap.example.com?x=1", "must not have a query or fragment"),
        ("https://pap.example.com#f", "must not have a query or fragment"),
        ("mailto:a@b.example", "absolute http"),
        ("https://user:pw@", "is not a valid URL"),
    ],
)
def test_url_rules_name_the_parameter(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        check_http_url(value, "some_url")
    assert str(info.value).startswith("some_url")
    assert "pw" not in str(info.value)


def test_url_rules_keep_the_path() -> None:
    assert check_http_url("https://pap.example.com/a/b", "x") == URL("https://pap.example.com/a/b")
    assert check_http_url("http://[::1]:8/", "x").port == 8


@pytest.mark.parametrize(
    "url",
    [
        "https://api.us1.plainid.io/x",
        "https://api.us1.plainid.io:8443/x",
        "http://127.0.0.1:8080/x",
        "http://[::1]:9/x",
        "http://[0:0::1]/x",
        "https://bücher.example/x",
        "wss://h.example:443/x",
        "https://h.example./x",
    ],
)
def test_host_port_writes_what_yarl_writes(url: str) -> None:
    """The httpx side keys its check exactly as the aiohttp side does."""
    import httpx  # noqa: PLC0415

    parsed = httpx.URL(url)
    assert host_port(parsed.raw_host.decode(), parsed.port) == URL(url).host_port_subcomponent
