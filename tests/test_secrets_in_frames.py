"""No frame of a failed token request shows the client secret, not even with locals captured.

Error reporters that capture local variables (Sentry's default ``include_local_variables``,
``traceback.TracebackException(..., capture_locals=True)``, rich and loguru tracebacks) show
the ``repr`` of every local of every frame of every exception in the chain. Each failure
below goes through the whole stack (provider, endpoint client, aiohttp) against a real
server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import struct
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any, Self, cast

import _servers
import aiohttp
import attrs
import httpx
import httpx2
import pytest
import redis.asyncio
from _proxy import PROXY_VARIABLES, TinyProxy, child_environ
from _redis_server import RedisServer, redis_binary
from _servers import LoopbackServer
from _tracebacks import chain, sentry_event, with_locals
from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from yarl import URL

from plainid_async import (
    BearerAuthMiddleware,
    ConfigurationError,
    MemoryTokenCache,
    RetryPolicy,
    TokenCache,
    TokenProvider,
    TokenRequestError,
    otel,
)
from plainid_async.httpx import BearerAuth, client
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID, FakeResponse, free_port

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    import trustme

SECRET = 'b64+Secret/Value==-of-the-"client"'


def assert_no_secret_anywhere(error: BaseException) -> None:
    assert "client_id = " in with_locals(error)  # locals were captured: the check means something
    for current in chain(error):
        text = with_locals(current)
        for form in FORMS:
            assert form not in text, f"{form!r} in a frame of {type(current).__name__}"
    event = json.dumps(sentry_event(error), default=repr)
    assert '"vars"' in event  # Sentry captured frame locals (its default)
    for form in FORMS:
        assert form not in event


@pytest.fixture
async def fake() -> AsyncIterator[FakePlainID]:
    async with FakePlainID(client_secret=SECRET) as server:
        yield server


def provider_for(base_url: object, **options: Any) -> TokenProvider:
    return TokenProvider(
        "client-a",
        SECRET,
        base_url=base_url,  # type: ignore[arg-type]
        cache=MemoryTokenCache(),
        retry=RetryPolicy(attempts=2, backoff_base=0.0, backoff_max=0.0),
        **options,
    )


async def failure_of(provider: TokenProvider) -> TokenRequestError:
    async with provider:
        with pytest.raises(TokenRequestError) as info:
            await provider.get_token()
    return info.value


async def test_rejected_secret() -> None:
    async with FakePlainID(client_secret="another-secret-entirely") as fake:
        error = await failure_of(provider_for(fake.base_url))
    assert error.status == 401
    assert_no_secret_anywhere(error)


async def test_unavailable_endpoint(fake: FakePlainID) -> None:
    fake.fail_next(503, 503)
    error = await failure_of(provider_for(fake.base_url))
    assert error.status == 503
    assert_no_secret_anywhere(error)


async def test_timeout(fake: FakePlainID) -> None:
    fake.fail_next(FakeResponse(delay=5.0), FakeResponse(delay=5.0))
    error = await failure_of(provider_for(fake.base_url, timeout=0.2))
    assert isinstance(error.__cause__, TimeoutError)
    assert_no_secret_anywhere(error)


async def test_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await failure_of(provider_for(f"http://127.0.0.1:{port}"))
    assert error.status is None
    assert_no_secret_anywhere(error)


async def test_invalid_json(fake: FakePlainID) -> None:
    fake.fail_next(FakeResponse(body="<html>not json</html>", content_type="text/html"))
    error = await failure_of(provider_for(fake.base_url))
    assert "not JSON" in str(error)
    assert_no_secret_anywhere(error)


def test_bad_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAINID_CLIENT_ID", "a")
    monkeypatch.setenv("PLAINID_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("PLAINID_REGION", "U S")
    with pytest.raises(Exception) as info:  # noqa: PT011 (any error: the frames matter)
        TokenProvider.from_env()
    for current in chain(info.value):
        text = with_locals(current)
        assert all(form not in text for form in FORMS)


@pytest.mark.parametrize(
    "variables",
    [
        {"PLAINID_REGION": "us1"},  # no client id: the resolver itself raises
        {"PLAINID_CLIENT_ID": "a", "PLAINID_REGION": "us1", "PLAINID_BASE_URL": "https://x.io"},
        {"PLAINID_CLIENT_ID": "a", "PLAINID_CLIENT_SECRET_FILE": "/no/such/file"},
    ],
)
def test_settings_from_the_environment_that_fail_hold_no_secret_in_a_frame(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    """Every frame of the resolver's errors, Sentry's event included, is free of the secret."""
    monkeypatch.setenv("PLAINID_CLIENT_SECRET", SECRET)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        TokenProvider.from_env()
    text = with_locals(info.value)
    assert "client_secret = Secret('***')" in text or "env_secret = Secret('***')" in text
    for current in chain(info.value):
        assert all(form not in with_locals(current) for form in FORMS)
    event = json.dumps(sentry_event(info.value), default=repr)
    assert '"vars"' in event
    assert all(form not in event for form in FORMS)


# -- every failure path through every integration ------------------------------------------
#
# The bearer token and the proxy password are secrets too. Each cell below runs one failure
# path through one integration against real servers on 127.0.0.1 (aiohttp.web, tinyproxy,
# redis-server) and searches what the failure leaves behind: the traceback with every
# frame's locals, every exception of the chain (str, repr, args, attributes), Sentry's
# default event, every log record, every provider event, every span and metric point; for
# the command line, its stdout and stderr.

TOKEN = "tok+en/Value==.bearer-0123456789"
PROXY_LOGIN = "proxy-user"
PROXY_PASSWORD = "pr0xy+Pass=word-42"
API_PATH = "api/1.0/things"
#: Time limit of one token request (seconds): a scripted hang at the token endpoint ends there.
CLIENT_TIMEOUT = 0.2
#: Time limit of an API call (seconds), longer than the token requests (two) it may wait for.
API_TIMEOUT = 1.0


def spellings(value: str) -> dict[str, str]:
    """``value`` as a frame, an echo, an encoder or an HTTP header may hold it."""
    return {
        "plain": value,
        "form-encoded": urllib.parse.quote_plus(value),
        "url-encoded": urllib.parse.quote(value, safe=""),
        "json-escaped": json.dumps(value)[1:-1],
        "base64": base64.b64encode(value.encode()).decode("ascii"),
    }


SECRETS: dict[str, dict[str, str]] = {
    "client secret": spellings(SECRET),
    "bearer token": spellings(TOKEN),
    "proxy password": {
        **spellings(PROXY_PASSWORD),
        "basic credentials": base64.b64encode(f"{PROXY_LOGIN}:{PROXY_PASSWORD}".encode()).decode(),
    },
}


#: Every spelling of the client secret a frame, an echo or an encoder may hold.
FORMS = tuple(SECRETS["client secret"].values())


def leaks_in(text: str) -> list[str]:
    """Which secret, in which spelling, ``text`` holds."""
    return [
        f"{name} ({form})"
        for name, forms in SECRETS.items()
        for form, value in forms.items()
        if value in text
    ]


def reset_connection(request: web.BaseRequest) -> None:
    """Send half a status line and headers, then reset the connection (RST, not FIN)."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Len")
    transport.abort()


class Stage:
    """PlainID on 127.0.0.1: its token endpoint and one API path, each told how to fail.

    A mode is ``"ok"``, ``"reset"``, ``"timeout"`` (hangs until the client gives up),
    ``"invalid-json"``, ``"malformed-200"`` (a real token with a bad ``token_type``), or an
    HTTP status; the token endpoint also knows ``"ok-then-500"``. Error answers echo what
    the client sent (the form with the client secret, the Authorization header), as a
    careless server does.
    """

    def __init__(
        self,
        token: str = "ok",  # noqa: S107 (a mode, not a password)
        api: str = "ok",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.token = token
        self.api = api
        self.ssl_context = ssl_context
        self.forms: list[bytes] = []
        self.authorizations: list[str | None] = []
        self.base_url = URL()
        self._server: LoopbackServer | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/1.0/api-key/token", self._token)
        app.router.add_get(f"/{API_PATH}", self._api)
        # A hanging handler is cancelled when its client goes away or the stage stops.
        server = LoopbackServer(app, ssl_context=self.ssl_context, handler_cancellation=True)
        self.base_url = await server.start()
        self._server = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    async def _token(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.forms.append(body)
        mode = self.token
        if mode == "ok-then-500":
            mode = "ok" if len(self.forms) == 1 else "500"
        if mode == "ok":
            return web.json_response(
                {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}
            )
        return await self._fail(request, mode, echo=body.decode())

    async def _api(self, request: web.Request) -> web.StreamResponse:
        sent = request.headers.get("Authorization")
        self.authorizations.append(sent)
        if self.api == "ok":
            return web.json_response({"ok": True})
        return await self._fail(request, self.api, echo=sent or "")

    @staticmethod
    async def _fail(request: web.Request, mode: str, *, echo: str) -> web.StreamResponse:
        if mode == "reset":
            reset_connection(request)
            return web.Response()  # never sent: the connection is gone
        if mode == "timeout":
            await asyncio.Event().wait()
        if mode == "invalid-json":
            return web.Response(text="<html>Service unavailable</html>", content_type="text/html")
        if mode == "malformed-200":
            return web.json_response({"access_token": TOKEN, "token_type": "mac", "expires_in": 60})
        status = int(mode)
        headers = {"Retry-After": "0"} if status == 429 else {}
        said = {"error": "invalid_client", "error_description": f"refused: {echo}"}
        return web.json_response(said, status=status, headers=headers)


@attrs.define
class Witness:
    """What a failure leaves behind, gathered while it happens."""

    events: list[object] = attrs.Factory(list)
    spans: InMemorySpanExporter = attrs.Factory(InMemorySpanExporter)
    metrics: InMemoryMetricReader = attrs.Factory(InMemoryMetricReader)

    def texts(self, records: list[logging.LogRecord]) -> dict[str, str]:
        """Where -> everything found there, as text."""
        found = {
            "log records": "\n".join(record_text(r) for r in records),
            "events": "\n".join(f"{e!r} {attrs.asdict(e)!r}" for e in self.events),  # type: ignore[arg-type]
            "spans": "\n".join(span.to_json() for span in self.spans.get_finished_spans()),
        }
        data = self.metrics.get_metrics_data()
        found["metrics"] = "" if data is None else data.to_json()
        return found


def record_text(record: logging.LogRecord) -> str:
    text = f"{record.name} {record.levelname} {record.getMessage()} {record.__dict__!r}"
    if record.exc_info and record.exc_info[1] is not None:
        text += with_locals(record.exc_info[1])
    return text


@pytest.fixture
def witness() -> Iterator[Witness]:
    seen = Witness()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(seen.spans))
    meter_provider = MeterProvider(metric_readers=[seen.metrics])
    otel.instrument(meter_provider=meter_provider, tracer_provider=tracer_provider)
    try:
        yield seen
    finally:
        otel.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def exception_texts(error: BaseException) -> dict[str, str]:
    """Each exception of the chain as str, repr, args and attributes; the whole traceback
    with locals; Sentry's default event."""
    found = {
        "traceback with locals": with_locals(error),
        "Sentry event": json.dumps(sentry_event(error), default=repr),
    }
    for i, current in enumerate(chain(error)):
        found[f"exception {i} ({type(current).__name__})"] = (
            f"{current!s}\n{current!r}\n{current.args!r}\n{getattr(current, '__dict__', {})!r}"
            f"\n{getattr(current, '__notes__', '')!r}"
        )
    # Locals were captured, so a clean result means something.
    assert " = " in found["traceback with locals"]
    assert '"vars"' in found["Sentry event"]
    return found


def assert_nothing_leaked(texts: dict[str, str]) -> None:
    leaked = {where: found for where, text in texts.items() if (found := leaks_in(text))}
    assert not leaked, f"secrets found: {leaked}"


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    return _servers.server_tls(ca)


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    return _servers.client_tls(ca)


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """tinyproxy wanting credentials; PROXY_PASSWORD is not the right password."""
    proxy = TinyProxy(tmp_path_factory.mktemp("proxy"), login=PROXY_LOGIN, password="the-right-1")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def matrix_provider(
    base_url: URL,
    witness: Witness,
    *,
    cache: TokenCache | None = None,
    proxy_port: int | None = None,
    proxy_credentials: bool = False,
    timeout: float = CLIENT_TIMEOUT,
    **options: Any,
) -> TokenProvider:
    """The provider of a cell; a proxy URL with the password is built here, in a frame that
    ends before any request, as a user builds it from their settings."""
    if proxy_port is not None:
        credentials = f"{PROXY_LOGIN}:{PROXY_PASSWORD}@" if proxy_credentials else ""
        options["proxy"] = f"http://{credentials}127.0.0.1:{proxy_port}"
    return TokenProvider(
        "client-a",
        SECRET,
        base_url=base_url,
        cache=MemoryTokenCache() if cache is None else cache,
        timeout=timeout,
        retry=RetryPolicy(attempts=2, backoff_base=0.0, backoff_max=0.0),
        on_event=witness.events.append,
        **options,
    )


# One API call per integration, the way a user writes it: errors raised, bodies parsed.


async def via_middleware(provider: TokenProvider, url: URL) -> None:
    async with (
        aiohttp.ClientSession(
            middlewares=(BearerAuthMiddleware(provider),),
            raise_for_status=True,
            timeout=aiohttp.ClientTimeout(total=API_TIMEOUT),
        ) as session,
        session.get(url / API_PATH) as response,
    ):
        await response.json()


async def via_session(provider: TokenProvider, _url: URL) -> None:
    async with (
        provider.session(
            raise_for_status=True, timeout=aiohttp.ClientTimeout(total=API_TIMEOUT)
        ) as session,
        session.get(API_PATH) as response,
    ):
        await response.json()


async def via_httpx_auth(provider: TokenProvider, url: URL) -> None:
    async with httpx.AsyncClient(auth=BearerAuth(provider), timeout=API_TIMEOUT) as api:
        response = await api.get(str(url / API_PATH))
        response.raise_for_status()
        response.json()


async def via_httpx2_auth(provider: TokenProvider, url: URL) -> None:
    auth = cast("httpx2.Auth", BearerAuth(provider))  # an httpx.Auth to type checkers
    async with httpx2.AsyncClient(auth=auth, timeout=API_TIMEOUT) as api:
        response = await api.get(str(url / API_PATH))
        response.raise_for_status()
        response.json()


async def via_httpx_client(provider: TokenProvider, _url: URL) -> None:
    async with client(provider, timeout=API_TIMEOUT) as api:
        response = await api.get(API_PATH)
        response.raise_for_status()
        response.json()


async def via_get_token(provider: TokenProvider, _url: URL) -> None:
    await provider.get_token()


API_CALLS: dict[str, Callable[[TokenProvider, URL], Awaitable[None]]] = {
    "middleware": via_middleware,
    "session": via_session,
    "httpx-auth": via_httpx_auth,
    "httpx2-auth": via_httpx2_auth,
    "httpx-client": via_httpx_client,  # client(): an httpx2 client, as both are installed
}

TOKEN_PATHS = (
    "refused",
    "reset",
    "timeout",
    "401",
    "403",
    "407",
    "407-credentials",
    "429",
    "500",
    "invalid-json",
    "malformed-200",
    "tls",
)


def token_mode(path: str) -> str:
    """How the token endpoint answers on a token-endpoint ``path`` (the proxy answers 407)."""
    return "ok" if path in {"refused", "tls", "407", "407-credentials"} else path


API_PATHS = ("refused", "reset", "timeout", "401", "403", "429", "500", "invalid-json", "tls")


@pytest.mark.parametrize("path", TOKEN_PATHS)
@pytest.mark.parametrize("integration", [*API_CALLS, "redis"])
async def test_no_secret_leaves_a_failed_token_request(  # noqa: PLR0917 (fixtures)
    integration: str,
    path: str,
    witness: Witness,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    """Every token-endpoint failure, through every integration: no secret in any trace."""
    caplog.set_level(logging.DEBUG)
    options: dict[str, Any] = {}
    tls = path in {"tls", "407", "407-credentials"}
    if path in {"407", "407-credentials"}:
        proxy: TinyProxy = request.getfixturevalue("auth_proxy")
        options |= {
            "proxy_port": proxy.port,
            "proxy_credentials": path == "407-credentials",
            "ssl": client_tls,
        }
    connection = None
    if integration == "redis":
        port = request.getfixturevalue("redis_server").port
        connection = redis.asyncio.Redis(host="127.0.0.1", port=port)
        options["cache"] = RedisTokenCache(connection, timeout=0.3, retry_interval=0.05)
    call = API_CALLS.get(integration, via_get_token)
    async with Stage(token=token_mode(path), ssl_context=server_tls if tls else None) as stage:
        url = stage.base_url
        if path == "refused":
            await stage.stop()
        try:
            async with matrix_provider(url, witness, **options) as provider:
                with pytest.raises(TokenRequestError) as info:
                    await call(provider, url)
        finally:
            if connection is not None:
                await connection.aclose()
    texts = exception_texts(info.value) | witness.texts(caplog.records)
    # The failed fetch was logged, reported as events and traced: the search means something.
    assert all(texts[where] for where in ("log records", "events", "spans", "metrics"))
    assert_nothing_leaked(texts)


@pytest.mark.parametrize("path", API_PATHS)
@pytest.mark.parametrize("integration", API_CALLS)
async def test_no_secret_leaves_a_failed_api_call(  # noqa: PLR0917 (fixtures)
    integration: str,
    path: str,
    witness: Witness,
    caplog: pytest.LogCaptureFixture,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    """Every API failure with the token on the request, through every integration.

    A 401 makes the integration fetch a new token, and that fetch fails: the rejected
    token is still in play when the error rises.
    """
    caplog.set_level(logging.DEBUG)
    tls = path == "tls"
    api = "ok" if path in {"refused", "tls"} else path
    token = "ok-then-500" if path == "401" else "ok"
    async with Stage(token=token, api=api, ssl_context=server_tls if tls else None) as stage:
        url = stage.base_url
        # The provider trusts the stage's CA; the API clients do not (the tls path).
        async with matrix_provider(url, witness, ssl=client_tls if tls else None) as provider:
            await provider.get_token()  # the token is live before the call fails
            if path == "refused":
                await stage.stop()
            with pytest.raises(Exception) as info:  # noqa: PT011 (each path its own error)
                await API_CALLS[integration](provider, url)
        if path not in {"refused", "tls"}:
            assert stage.authorizations[0] == f"Bearer {TOKEN}"  # the token was sent
    texts = exception_texts(info.value) | witness.texts(caplog.records)
    assert_nothing_leaked(texts)


@pytest.mark.parametrize("path", ["redis-down", "redis-noperm"])
async def test_no_secret_leaves_a_redis_failure(
    path: str,
    witness: Witness,
    caplog: pytest.LogCaptureFixture,
    redis_server: RedisServer,
) -> None:
    """Redis down or refusing a command: the call succeeds, and the logs hold no secret."""
    caplog.set_level(logging.DEBUG)
    admin = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    if path == "redis-down":
        connection = redis.asyncio.Redis(host="127.0.0.1", port=free_port())
    else:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "narrow", "reset", "on", ">pw", "~plainid:*", "+get", "+set"
        )
        connection = redis.asyncio.Redis(
            host="127.0.0.1", port=redis_server.port, username="narrow", password="pw"
        )
    try:
        cache = RedisTokenCache(connection, timeout=0.3, retry_interval=0.05)
        # Redis down can cost the fetch a 0.3 s timeout on load and another on store: a
        # time budget of its own, not the short one of the endpoint cells (0.65 s).
        async with (
            Stage() as stage,
            matrix_provider(stage.base_url, witness, cache=cache, timeout=5.0) as p,
        ):
            token = await p.get_token()
            # A background refresh goes through the fleet lock too.
            await p.get_token(force_refresh=True)
    finally:
        await connection.aclose()
        await admin.aclose()
    assert token.access_token == TOKEN
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # the failure was seen
    assert_nothing_leaked(witness.texts(caplog.records))


@pytest.mark.parametrize("path", TOKEN_PATHS)
async def test_the_command_line_prints_no_secret(
    path: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    ca: trustme.CA,
    server_tls: ssl.SSLContext,
) -> None:
    """``plainid-async token -vv`` on every token-endpoint failure: no secret on any output."""
    env = child_environ()
    env["PLAINID_CLIENT_SECRET"] = SECRET
    arguments = ["--client-id", "client-a", "--timeout", "2", "--attempts", "2", "-vv"]
    tls = path in {"tls", "407", "407-credentials"}
    if path in {"407", "407-credentials"}:
        proxy: TinyProxy = request.getfixturevalue("auth_proxy")
        credentials = f"{PROXY_LOGIN}:{PROXY_PASSWORD}@" if path == "407-credentials" else ""
        arguments += ["--proxy", f"http://{credentials}127.0.0.1:{proxy.port}"]
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        env["SSL_CERT_FILE"] = str(bundle)  # the default SSL context reads it
    async with Stage(token=token_mode(path), ssl_context=server_tls if tls else None) as stage:
        if path == "refused":
            await stage.stop()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "plainid_async",
            "token",
            "--base-url",
            str(stage.base_url),
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        # A bound that turns a hang into a failure, not a timed assertion.
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0
    assert stderr  # it said what went wrong
    assert_nothing_leaked({"stdout": stdout.decode(), "stderr": stderr.decode()})
