"""Property-based tests of the token request end to end, over a real loopback socket.

tests/test_endpoint.py already checks ``parse_token_response`` on arbitrary bytes and JSON
fields and ``parse_retry_after`` on arbitrary text, as pure functions. Here hypothesis drives
a real aiohttp server instead: any status, body, framing (Content-Length, chunked, gzip) and
``Retry-After`` header that goes over the wire gives a token only for a valid 200, otherwise
the documented error for that status, never another exception; the secret is never in the
message; and the wait before a retry is the server's ``Retry-After`` (seconds or HTTP date),
capped, or the backoff when the header cannot be used.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import gzip
import json
import math
import secrets
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from _reliability import record
from _servers import LoopbackServer
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

import plainid_async as pa
from plainid_async._endpoint import TOKEN_PATH, request_token
from plainid_async._secret import Secret
from plainid_async._wire import MAX_BODY_SIZE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "prop-S3CRET-" + secrets.token_hex(8)
CAP = 50.0
# Two attempts; deadline and cap far apart so every wait is visible to the fake sleep.
POLICY = pa.RetryPolicy(
    attempts=2, backoff_base=2.0, backoff_max=2.0, max_retry_after=CAP, deadline=1e9
)
EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@attrs.define
class Script:
    """What the server answers to the next token request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = attrs.Factory(dict)
    chunked: bool = False
    gzip: bool = False


@attrs.define
class Server:
    url: URL
    script: Script
    hits: int = 0


OUTCOMES: collections.Counter[str] = collections.Counter()
WAITS: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    if OUTCOMES:
        record(
            "property: any status, body, framing, Retry-After over the wire",
            load="hypothesis examples, one token request each (two when retried)",
            faults="random status, JSON or binary body, chunked/gzip, Retry-After",
            requests=sum(OUTCOMES.values()),
            failures=sum(n for kind, n in OUTCOMES.items() if kind != "token"),
            outcome=", ".join(f"{kind}: {n}" for kind, n in sorted(OUTCOMES.items())),
            unexpected_exceptions=0,
            wrong_tokens=0,
        )
    if WAITS:
        record(
            "property: Retry-After (seconds, HTTP date, text) over the wire",
            load="hypothesis examples, 429 or 503 then a retry",
            faults="random Retry-After",
            requests=sum(WAITS.values()),
            failures=0,
            outcome=", ".join(f"{kind}: {n}" for kind, n in sorted(WAITS.items())),
            wrong_tokens=0,
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    state = Server(URL(), Script())

    async def token(request: web.Request) -> web.StreamResponse:
        await request.read()
        state.hits += 1
        script = state.script
        body = gzip.compress(script.body) if script.gzip else script.body
        headers = dict(script.headers)
        if script.gzip:
            headers["Content-Encoding"] = "gzip"
        if not script.chunked:
            return web.Response(status=script.status, body=body, headers=headers)
        response = web.StreamResponse(status=script.status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 4096):
            await response.write(body[start : start + 4096])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(f"/{TOKEN_PATH}", token)
    async with LoopbackServer(app) as server:
        state.url = server.url.with_path(f"/{TOKEN_PATH}")
        yield state


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@attrs.define
class Outcome:
    token: pa.Token | None
    error: pa.TokenRequestError | None
    delays: list[float]
    hits: int


async def exchange(server: Server, session: aiohttp.ClientSession, script: Script) -> Outcome:
    server.script = script
    server.hits = 0
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    try:
        token = await request_token(
            session,
            server.url,
            client_id="prop-client",
            client_secret=Secret(SECRET),
            timeout=5.0,
            retry=POLICY,
            sleep=sleep,
            jitter=lambda: 0.0,
        )
    except pa.TokenRequestError as error:
        return Outcome(None, error, delays, server.hits)
    return Outcome(token, None, delays, server.hits)


# -- strategies ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
token_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80
)
lifetimes = (
    st.integers(min_value=-5, max_value=10**9)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{1,9})?\Z")
    | json_scalars
)
token_documents = st.fixed_dictionaries(
    {},
    optional={
        "access_token": token_text | json_scalars,
        "token_type": st.sampled_from(["Bearer", "bearer", "BEARER", "MAC", ""]) | json_scalars,
        "expires_in": lifetimes,
        "message": st.text(max_size=40) | st.just(f"bad secret {SECRET}"),
        "extra": json_scalars,
    },
)


def _dump(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


valid_documents = st.fixed_dictionaries(
    {
        "access_token": token_text,
        "token_type": st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
        "expires_in": st.integers(min_value=1, max_value=366 * 24 * 3600)
        | st.floats(min_value=0.001, max_value=366 * 24 * 3600)
        | st.integers(min_value=1, max_value=10**6).map(str),
    },
    optional={"scope": st.text(max_size=20), "extra": json_scalars},
)

bodies = (
    valid_documents.map(_dump)
    | token_documents.map(_dump)
    | st.binary(max_size=200)
    | st.just(b"<html><body>Service Unavailable</body></html>")
    | st.just(
        b'{"access_token": "x", "token_type": "Bearer", "expires_in": 60, "p": "'
        + b"x" * MAX_BODY_SIZE
        + b'"}'
    )
)
statuses = st.just(200) | st.sampled_from(
    [201, 204, 301, 302, 307, 308, 400, 401, 403, 404, 405, 408, 409, 418, 429, 500, 501, 502]
)  # fmt: skip
statuses |= st.sampled_from([503, 504, 599])
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def expected_kind(status: int) -> type[pa.TokenRequestError]:
    if status in {400, 401, 403}:
        return pa.InvalidCredentialsError
    if 200 <= status < 300:
        return pa.InvalidTokenResponseError
    return pa.TokenEndpointUnavailableError


def is_retried(status: int) -> bool:
    return status in {408, 429} or 500 <= status < 600


# -- properties ----------------------------------------------------------------------------


@EXAMPLES
@given(
    status=statuses,
    body=bodies,
    retry_after=st.none() | header_text | st.integers(min_value=0, max_value=10**25).map(str),
    chunked=st.booleans(),
    compressed=st.booleans(),
)
async def test_any_answer_gives_a_valid_token_or_the_documented_error(  # noqa: PLR0917 (hypothesis arguments)
    server: Server,
    session: aiohttp.ClientSession,
    status: int,
    body: bytes,
    retry_after: str | None,
    chunked: bool,
    compressed: bool,
) -> None:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if status == 204:  # no body may follow a 204: any framing of one is a broken answer
        body, chunked, compressed = b"", False, False
    script = Script(status, body, headers, chunked, compressed)
    outcome = await exchange(server, session, script)
    kind = "token" if outcome.token is not None else type(outcome.error).__name__
    event(kind)
    OUTCOMES[kind] += 1
    if outcome.token is not None:
        token = outcome.token
        assert status == 200
        document = json.loads(script.body)
        assert token.access_token == document["access_token"]
        assert token.token_type.lower() == "bearer"
        assert math.isfinite(token.expires_in)
        assert 0 < token.expires_in <= 366 * 24 * 3600
        if len(token.access_token) >= 12:  # shorter ones may match digits of the expiry
            assert token.access_token not in repr(token)
            assert token.access_token not in str(token)
        assert outcome.hits == 1
        return
    error = outcome.error
    assert error is not None
    assert type(error) is expected_kind(status)
    assert error.status == status
    assert error.retryable is is_retried(status)
    assert outcome.hits == (POLICY.attempts if is_retried(status) else 1)
    for text in (str(error), repr(error)):
        assert SECRET not in text
        assert len(text) < 1000
        assert not any(ord(c) < 0x20 for c in text)
    if status == 200 and isinstance(error, pa.InvalidTokenResponseError):
        try:
            document = json.loads(script.body)
        except ValueError:
            return
        access = document.get("access_token") if isinstance(document, dict) else None
        if isinstance(access, str) and len(access) >= 8:
            assert access not in str(error)


retry_after_cases = (
    st.integers(min_value=0, max_value=10**25).map(lambda n: ("seconds", n))
    | st.datetimes(
        min_value=dt.datetime(1970, 1, 2),  # noqa: DTZ001 (naive on purpose: sent as GMT)
        max_value=dt.datetime(9999, 12, 30),  # noqa: DTZ001
    ).map(lambda d: ("date", d.replace(tzinfo=dt.UTC, microsecond=0)))
    | header_text.map(lambda t: ("text", t))
)


@EXAMPLES
@given(status=st.sampled_from([429, 503]), case=retry_after_cases)
async def test_the_wait_before_a_retry_is_retry_after_capped_or_the_backoff(
    server: Server, session: aiohttp.ClientSession, status: int, case: tuple[str, Any]
) -> None:
    kind, value = case
    if kind == "seconds":
        header = str(value)
    elif kind == "date":
        header = email.utils.format_datetime(value, usegmt=True)
    else:
        header = value
    before = time.time()
    outcome = await exchange(server, session, Script(status, b"", {"Retry-After": header}))
    after = time.time()
    assert isinstance(outcome.error, pa.TokenEndpointUnavailableError)
    [delay] = outcome.delays
    assert 0.0 <= delay <= CAP
    if delay == CAP:
        WAITS[f"{kind}: capped"] += 1
    elif kind == "text" and delay == POLICY.backoff(1, 0.0):
        WAITS[f"{kind}: ignored (backoff)"] += 1
    else:
        WAITS[f"{kind}: honoured"] += 1
    backoff = POLICY.backoff(1, 0.0)
    if kind == "seconds":
        assert delay == min(float(value), CAP)
    elif kind == "date":
        # Counted from the moment the answer came, somewhere between before and after.
        latest = min(max(0.0, value.timestamp() - before), CAP)
        earliest = min(max(0.0, value.timestamp() - after), CAP)
        assert earliest <= delay <= latest
    elif header.strip().isdigit() and header.strip().isascii():
        assert delay == min(float(header.strip()), CAP)
    elif email.utils.parsedate_tz(header) is None:
        assert delay == backoff  # garbage: the header is ignored
