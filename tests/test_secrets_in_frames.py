"""No frame of a failed token request shows the client secret, not even with locals captured.

Error reporters that capture local variables (Sentry's default ``include_local_variables``,
``traceback.TracebackException(..., capture_locals=True)``, rich and loguru tracebacks) show
the ``repr`` of every local of every frame of every exception in the chain. Each failure
below goes through the whole stack (provider, endpoint client, aiohttp) against a real
server on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import traceback
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

from plainid_async import (
    ConfigurationError,
    MemoryTokenCache,
    RetryPolicy,
    TokenProvider,
    TokenRequestError,
)
from plainid_async.testing import FakePlainID, FakeResponse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sentry_sdk.envelope import Envelope

SECRET = "b64+Secret/Value==-of-the-client"
#: Every spelling a frame, an echo or an encoder may hold.
FORMS = (
    SECRET,
    urllib.parse.quote_plus(SECRET),
    urllib.parse.quote(SECRET, safe=""),
    json.dumps(SECRET)[1:-1],
)


class NoNetwork(Transport):
    """A Sentry transport that keeps envelopes in memory and sends nothing."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def sentry_event(error: BaseException) -> dict[str, Any]:
    """The event Sentry's SDK builds for ``error`` with its default options, in-process."""
    events: list[dict[str, Any]] = []

    def keep(event: Any, _hint: Any) -> None:
        events.append(event)

    client = sentry_sdk.Client(
        dsn="http://public@127.0.0.1:9/1",  # never contacted: the transport keeps events
        transport=NoNetwork,
        before_send=keep,
        default_integrations=False,  # no global patching of the test process
    )
    try:
        with sentry_sdk.isolation_scope() as scope:
            scope.set_client(client)
            scope.capture_exception(error)
    finally:
        client.close()
    [event] = events
    return event


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def with_locals(error: BaseException) -> str:
    report = traceback.TracebackException(
        type(error), error, error.__traceback__, capture_locals=True
    )
    return "".join(report.format())


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
