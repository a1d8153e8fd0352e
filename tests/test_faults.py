"""Fault injection: the token endpoint misbehaves on a real loopback socket.

Each scenario sends CALLERS concurrent ``get_token`` calls through a TokenProvider against a
server that hangs, drops the connection, trickles or truncates its body, answers 5xx, 429 or
HTML, redirects, or is not there at all. Every caller must get the token or the one typed error
of the shared fetch; DEBUG logs, errors and reprs must never show the secret or a token; no
task, socket or loop error may be left behind. Figures are recorded with ``_reliability.record``.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import secrets
import time
from typing import TYPE_CHECKING, Self

import aiohttp
import pytest
from _providers import make_provider as shared_make_provider
from _reliability import (
    LoopWatch,
    RawServer,
    Redaction,
    good_body,
    http_response,
    record,
    watch_redaction,
)
from _servers import LoopbackServer
from aiohttp import web

import plainid_async as pa
from plainid_async.testing import FakePlainID, FakeResponse, free_port, running_fetches

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

CALLERS = 50
SECRET = "fault-S3CRET-" + secrets.token_hex(8)
# Quick retries, a short per-attempt timeout; backoff_base large enough that a backoff delay
# is never mistaken for a Retry-After of 0, and max_retry_after small so caps show quickly.
POLICY = pa.RetryPolicy(
    attempts=3, backoff_base=0.2, backoff_max=0.2, max_retry_after=0.5, deadline=10.0
)
TIMEOUT = 0.4
MAX_MESSAGE = 600


@pytest.fixture
def redaction(caplog: pytest.LogCaptureFixture) -> Iterator[Redaction]:
    yield from watch_redaction(caplog, SECRET)


#: A provider for a base URL with this module's client, secret, retry policy and timeout.
make_provider = functools.partial(
    shared_make_provider, client_id="cid", client_secret=SECRET, retry=POLICY, timeout=TIMEOUT
)


async def callers(
    provider: pa.TokenProvider, n: int = CALLERS, *, afresh: bool = False
) -> list[pa.Token | BaseException]:
    """``n`` concurrent get_token() calls; with ``afresh``, the first one forces a refresh.

    A round after a failed one would meet the cool-down; a forced call starts afresh and
    the others join its fetch.
    """
    calls = [provider.get_token(force_refresh=afresh and i == 0) for i in range(n)]
    return await asyncio.gather(*calls, return_exceptions=True)


def one_shared_error(
    results: list[pa.Token | BaseException], kind: type[pa.TokenRequestError]
) -> pa.TokenRequestError:
    """Every caller got the same exception object, of type ``kind``."""
    errors = {id(r): r for r in results if isinstance(r, BaseException)}
    assert len(errors) == 1, results[:3]
    [error] = errors.values()
    assert type(error) is kind, repr(error)
    assert len([r for r in results if r is error]) == len(results)
    assert isinstance(error, pa.TokenRequestError)
    return error


def one_shared_token(results: list[pa.Token | BaseException]) -> pa.Token:
    tokens = {id(r): r for r in results}
    assert len(tokens) == 1, results[:3]
    [token] = tokens.values()
    assert isinstance(token, pa.Token), repr(token)
    return token


def clean_message(error: BaseException) -> None:
    """A library error message is one bounded line: no server-sent control characters."""
    message = str(error)
    assert len(message) <= MAX_MESSAGE, message
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in message), message


def delays_logged(redaction: Redaction) -> list[float]:
    """The delays of "retrying in … s" log records, in order."""
    return [
        float(r.args[-1])  # type: ignore[index, arg-type]
        for r in redaction.records()
        if r.name == "plainid_async" and "retrying in" in str(r.msg)
    ]


# -- hangs and timeouts --------------------------------------------------------------------


async def test_hanging_endpoint_times_out_with_a_clear_error(
    redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        fake.hang = True
        async with make_provider(fake.base_url) as provider:
            results = await callers(provider)
            redaction.objects += [provider, fake]
        error = one_shared_error(results, pa.TokenEndpointUnavailableError)
        redaction.errors.append(error)
        assert "timed out after 0.4 s" in str(error)
        assert "gave up after 3 attempts" in str(error)
        assert isinstance(error.__cause__, TimeoutError)
        assert error.status is None
        assert error.retryable is True
        assert [r.status for r in fake.token_requests] == [0, 0, 0]
        clean_message(error)
    record(
        "token endpoint hangs",
        load=f"{CALLERS} concurrent callers",
        faults="no answer; 0.4 s per-attempt timeout, 3 attempts",
        requests=CALLERS,
        token_requests=len(fake.token_requests),
        failures=CALLERS,
        outcome="every caller: the same TokenEndpointUnavailableError (timed out)",
        wrong_tokens=0,
    )


async def test_hang_during_a_background_refresh_blocks_no_caller(
    redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        async with make_provider(fake.base_url) as provider:
            first = await provider.get_token()
            # The same token, now 40 s from expiry of a 100 s lifetime: STALE, not EXPIRED.
            stale = pa.Token(
                access_token=first.access_token,
                token_type="Bearer",
                expires_in=100.0,
                expires_at=time.time() + 40,
                expires_at_monotonic=time.monotonic() + 40,
            )
            await provider.cache.store(provider.cache_key, stale)
            fake.hang = True
            results = await callers(provider)
            [flight] = [f for f in running_fetches() if f.owner is provider]
            assert not flight.done()  # the refresh still hangs; nobody waited for it
            assert all(r is stale for r in results)
            assert all(fake.is_valid(r.access_token) for r in results if isinstance(r, pa.Token))
            fake.hang = False
            await asyncio.gather(flight.wait(), return_exceptions=True)
            redaction.objects += [provider, stale, fake]
        redaction.tokens.update(fake.issued_tokens)
    record(
        "refresh hangs while a STALE token is cached",
        load=f"{CALLERS} concurrent callers",
        faults="background refresh never answered",
        requests=CALLERS,
        token_requests=len(fake.token_requests),
        failures=0,
        outcome="every caller served the cached token at once",
        wrong_tokens=0,
    )


# -- broken connections and bodies (raw sockets) -------------------------------------------


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """Headers, then a body one byte at a time, far slower than the timeout."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n")
    for _ in range(90):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _silence_after_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3)


RAW_FAULTS: dict[
    str,
    tuple[bytes | Callable[[asyncio.StreamWriter], Awaitable[None]], type[pa.TokenRequestError]],
] = {
    "closed before answering": (b"", pa.TokenEndpointUnavailableError),
    "closed mid-headers": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Trace: abc\r\nX-Ha",
        pa.TokenEndpointUnavailableError,
    ),
    # Regression: aiohttp's error text quoted every header received, so this made a 1.6 MB
    # error message and WARNING line.
    "closed after 800 KB of headers": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(100))
        + b"X-Ha",
        pa.TokenEndpointUnavailableError,
    ),
    "closed mid-body (Content-Length)": (
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            b'{"access_token": "abc'
        ),
        pa.TokenEndpointUnavailableError,
    ),
    "closed mid-body (chunked)": (
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n40\r\n{"access_token": "abc'
        ),
        pa.TokenEndpointUnavailableError,
    ),
    "not HTTP at all": (
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\x01\x02\r\nInjected: log line\r\n",
        pa.TokenEndpointUnavailableError,
    ),
    "oversized header": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        pa.TokenEndpointUnavailableError,
    ),
    "body trickles slower than the timeout": (_trickle, pa.TokenEndpointUnavailableError),
    "silence after the headers": (_silence_after_headers, pa.TokenEndpointUnavailableError),
    "complete but truncated JSON": (
        http_response(b'{"access_token": "abc", "token_type": "Bea'),
        pa.InvalidTokenResponseError,
    ),
    "HTML with status 200": (
        http_response(
            b"<html><body><h1>Service temporarily unavailable</h1></body></html>",
            headers=[("Content-Type", "text/html")],
        ),
        pa.InvalidTokenResponseError,
    ),
}


@pytest.mark.parametrize("fault", list(RAW_FAULTS))
async def test_broken_answer_fails_every_caller_with_one_typed_error_then_recovers(
    fault: str, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    behaviour, kind = RAW_FAULTS[fault]
    access = "raw-" + secrets.token_urlsafe(24)
    redaction.tokens.add(access)
    retried = kind is pa.TokenEndpointUnavailableError
    async with RawServer([behaviour] * POLICY.attempts, http_response(good_body(access))) as server:
        async with make_provider(server.base_url) as provider:
            results = await callers(provider)
            error = one_shared_error(results, kind)
            redaction.errors.append(error)
            clean_message(error)
            assert SECRET not in str(error)
            assert error.retryable is retried
            if retried:
                assert error.__cause__ is not None
                assert provider.stats.token_requests == POLICY.attempts
            else:
                assert provider.stats.token_requests == 1
            # One more broken answer, then a good one: retried callers all get the token.
            server.script = [behaviour] if retried else []
            before = server.connections
            recovered = await callers(provider, afresh=True)
            token = one_shared_token(recovered)
            assert token.access_token == access
            redaction.objects += [provider, token]
            requests_made = provider.stats.token_requests
        assert server.connections - before == (2 if retried else 1)
    record(
        f"token endpoint: {fault}",
        load=f"{CALLERS} concurrent callers, twice",
        faults=f"{fault}"
        + (f" x{POLICY.attempts}, then x1 before a good answer" if retried else ""),
        requests=2 * CALLERS,
        token_requests=requests_made,
        failures=CALLERS,
        outcome=f"first round: one shared {kind.__name__}; second round: the token",
        wrong_tokens=0,
    )


async def test_connection_refused(redaction: Redaction, loop_watch: LoopWatch) -> None:
    async with make_provider(f"http://127.0.0.1:{free_port()}") as provider:
        results = await callers(provider)
        redaction.objects.append(provider)
    error = one_shared_error(results, pa.TokenEndpointUnavailableError)
    redaction.errors.append(error)
    assert isinstance(error.__cause__, aiohttp.ClientConnectionError)
    assert error.retryable is True
    assert provider.stats.token_requests == POLICY.attempts
    clean_message(error)
    record(
        "connection refused (unused loopback port)",
        load=f"{CALLERS} concurrent callers",
        faults="nothing listens",
        requests=CALLERS,
        token_requests=provider.stats.token_requests,
        failures=CALLERS,
        outcome="every caller: the same TokenEndpointUnavailableError",
        wrong_tokens=0,
    )


# -- error statuses and pages --------------------------------------------------------------

HTML = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

RETRIED = {
    "500 JSON": FakeResponse(status=500),
    "502 HTML page": FakeResponse(status=502, body=HTML, content_type="text/html"),
    "503 empty body": FakeResponse(status=503, body=b"", content_type=""),
    "504 plain text": FakeResponse(
        status=504, body="upstream timed out", content_type="text/plain"
    ),
    "408": FakeResponse(status=408),
    "429 without Retry-After": FakeResponse(status=429),
    "503 slower than the timeout": FakeResponse(status=503, delay=2.0),
}


@pytest.mark.parametrize("name", list(RETRIED))
async def test_transient_status_is_retried_then_reported(
    name: str, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    answer = RETRIED[name]
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        async with make_provider(fake.base_url) as provider:
            fake.fail_next(*[answer] * POLICY.attempts)
            error = one_shared_error(await callers(provider), pa.TokenEndpointUnavailableError)
            redaction.errors.append(error)
            assert error.retryable is True
            assert error.status == (None if answer.delay else answer.status)
            assert "<" not in str(error)  # an HTML page is never quoted
            clean_message(error)
            fake.fail_next(answer)
            token = one_shared_token(await callers(provider, afresh=True))
            assert fake.is_valid(token.access_token)
            redaction.objects += [provider, token, fake]
        redaction.tokens.update(fake.issued_tokens)
        assert len(fake.token_requests) == POLICY.attempts + 2
    record(
        f"token endpoint answers {name}",
        load=f"{CALLERS} concurrent callers, twice",
        faults=f"{name} x{POLICY.attempts}, then x1 before a good answer",
        requests=2 * CALLERS,
        token_requests=len(fake.token_requests),
        failures=CALLERS,
        outcome="first round: one shared TokenEndpointUnavailableError; second: the token",
        wrong_tokens=0,
    )


NOT_RETRIED: dict[str, tuple[FakeResponse, type[pa.TokenRequestError]]] = {
    "401 HTML page": (
        FakeResponse(status=401, body="<html>Unauthorized</html>", content_type="text/html"),
        pa.InvalidCredentialsError,
    ),
    "403 JSON quoting the secret": (
        FakeResponse(status=403, body={"message": f"client secret {SECRET} is disabled"}),
        pa.InvalidCredentialsError,
    ),
    "404 HTML page (wrong base_url)": (
        FakeResponse(status=404, body="<html>Not Found</html>", content_type="text/html"),
        pa.TokenEndpointUnavailableError,
    ),
    "200 HTML page": (
        FakeResponse(status=200, body=HTML, content_type="text/html"),
        pa.InvalidTokenResponseError,
    ),
    "200 JSON null": (FakeResponse(status=200, body="null"), pa.InvalidTokenResponseError),
    "200 one megabyte": (
        FakeResponse(status=200, body=b"{" + b" " * 1_000_000 + b"}"),
        pa.InvalidTokenResponseError,
    ),
    "204 no content": (FakeResponse(status=204, body=b""), pa.InvalidTokenResponseError),
}


@pytest.mark.parametrize("name", list(NOT_RETRIED))
async def test_permanent_failure_is_reported_after_one_request(
    name: str, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    answer, kind = NOT_RETRIED[name]
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        async with make_provider(fake.base_url) as provider:
            fake.fail_next(answer)
            error = one_shared_error(await callers(provider), kind)
            redaction.errors.append(error)
            redaction.objects += [provider, fake]
            assert error.retryable is False
            assert "<" not in str(error)
            clean_message(error)
        assert len(fake.token_requests) == 1
    record(
        f"token endpoint answers {name}",
        load=f"{CALLERS} concurrent callers",
        faults=name,
        requests=CALLERS,
        token_requests=1,
        failures=CALLERS,
        outcome=f"one request; every caller: the same {kind.__name__}",
        wrong_tokens=0,
    )


# -- Retry-After ---------------------------------------------------------------------------


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


RETRY_AFTER: dict[str, tuple[Callable[[], str], Callable[[float], bool]]] = {
    # name: (header value, check on the delay waited); cap 0.5 s, backoff 0.1 to 0.2 s
    "seconds, 0": (lambda: "0", lambda d: d == 0.0),
    "seconds, huge": (lambda: "9" * 30, lambda d: d == POLICY.max_retry_after),
    "HTTP date in the past": (lambda: _http_date(-3600), lambda d: d == 0.0),
    "HTTP date in an hour": (lambda: _http_date(3600), lambda d: d == POLICY.max_retry_after),
    "HTTP date in year 9999": (
        lambda: "Fri, 31 Dec 9999 23:59:59 GMT",
        lambda d: d == POLICY.max_retry_after,
    ),
    "garbage": (lambda: "soon, please", lambda d: 0.1 <= d <= 0.2),
    "negative": (lambda: "-5", lambda d: 0.1 <= d <= 0.2),
    "fractional": (lambda: "0.5", lambda d: 0.1 <= d <= 0.2),
    "header injection attempt": (lambda: "1, 2; x=y", lambda d: 0.1 <= d <= 0.2),
}


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("name", list(RETRY_AFTER))
async def test_retry_after_is_honoured_capped_or_ignored(
    name: str, status: int, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    value, expected = RETRY_AFTER[name]
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        async with make_provider(fake.base_url) as provider:
            fake.fail_next(FakeResponse(status=status, headers={"Retry-After": value()}))
            token = one_shared_token(await callers(provider, afresh=True))
            assert fake.is_valid(token.access_token)
            redaction.objects += [provider, token]
        redaction.tokens.update(fake.issued_tokens)
    [delay] = delays_logged(redaction)
    assert expected(delay), delay
    record(
        f"{status} with Retry-After: {name}",
        load=f"{CALLERS} concurrent callers",
        faults=f"{status} once, Retry-After {name}",
        requests=CALLERS,
        token_requests=len(fake.token_requests),
        failures=0,
        outcome=f"waited {delay:.2f} s, then every caller got the token",
        wrong_tokens=0,
    )


async def test_retry_after_beyond_the_deadline_gives_up_without_sleeping(
    redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        # The default policy: cap 60 s, deadline 30 s. Waiting an hour is never right.
        async with make_provider(fake.base_url, retry=pa.RetryPolicy()) as provider:
            fake.fail_next(FakeResponse(status=429, headers={"Retry-After": "3600"}))
            error = one_shared_error(await callers(provider), pa.TokenEndpointUnavailableError)
            redaction.errors.append(error)
        assert error.status == 429
        assert len(fake.token_requests) == 1
        assert delays_logged(redaction) == []


# -- redirects -----------------------------------------------------------------------------


class Thief:
    """Another origin on loopback that records every request it gets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.url = ""
        self._server: LoopbackServer | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.json_response(
            {"access_token": "stolen-token-value", "token_type": "Bearer", "expires_in": 60}
        )

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = LoopbackServer(app)
        self.url = str(await self._server.start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("target", ["another origin", "the same origin"])
async def test_redirect_never_reposts_the_secret(
    status: int, target: str, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with Thief() as thief, FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        location = (
            f"{thief.url}/api/1.0/api-key/token"
            if target == "another origin"
            else str(fake.token_url)
        )
        fake.fail_next(FakeResponse(status=status, headers={"Location": location}))
        async with make_provider(fake.base_url) as provider:
            error = one_shared_error(await callers(provider), pa.TokenEndpointUnavailableError)
            redaction.errors.append(error)
            redaction.objects.append(provider)
        assert error.status == status
        assert error.retryable is False
        assert "redirect" in str(error)
        assert thief.bodies == []
        assert len(fake.token_requests) == 1
    record(
        f"token endpoint redirects ({status}) to {target}",
        load=f"{CALLERS} concurrent callers",
        faults=f"{status} Location: {target}",
        requests=CALLERS,
        token_requests=1,
        failures=CALLERS,
        outcome="not followed: secret posted once, to the token URL only",
        wrong_tokens=0,
    )


# -- the session passed in -----------------------------------------------------------------


async def test_a_closed_session_passed_in_is_a_typed_error(
    redaction: Redaction, loop_watch: LoopWatch
) -> None:
    # Regression: aiohttp's bare RuntimeError("Session is closed") reached every caller.
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        session = aiohttp.ClientSession()
        await session.close()
        async with make_provider(fake.base_url, session=session) as provider:
            error = one_shared_error(await callers(provider), pa.TokenEndpointUnavailableError)
            redaction.errors.append(error)
        assert "session" in str(error)
        assert error.retryable is False
        assert fake.token_requests == []
