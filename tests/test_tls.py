"""TLS: FakePlainID over https with trustme certificates.

Certificates are verified by default; a private CA works through ``ssl=`` or a session passed
in; an untrusted, expired, misnamed or missing certificate fails at once (not retried) with a
typed error that says so. DEBUG logs, errors and reprs never show the secret or a token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
import ssl
from typing import TYPE_CHECKING

import aiohttp
import pytest
import trustme
from _providers import make_provider as shared_make_provider
from _reliability import LoopWatch, Redaction, record, watch_redaction
from _servers import client_tls

import plainid_async as pa
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

CALLERS = 20
SECRET = "tls-S3CRET-" + secrets.token_hex(8)
POLICY = pa.RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.02, deadline=10.0)


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
def redaction(caplog: pytest.LogCaptureFixture) -> Iterator[Redaction]:
    yield from watch_redaction(caplog, SECRET)


@pytest.fixture
async def https_fake(ca: trustme.CA) -> AsyncIterator[FakePlainID]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    async with FakePlainID(
        client_id="cid", client_secret=SECRET, ssl_context=server_context(cert)
    ) as fake:
        yield fake


#: A provider for a base URL with this module's client, secret, retry policy and timeout.
make_provider = functools.partial(
    shared_make_provider, client_id="cid", client_secret=SECRET, retry=POLICY, timeout=5.0
)


async def callers(provider: pa.TokenProvider) -> list[pa.Token | BaseException]:
    return await asyncio.gather(
        *(provider.get_token() for _ in range(CALLERS)), return_exceptions=True
    )


def shared(results: list[pa.Token | BaseException]) -> pa.Token | BaseException:
    """The one object every caller got."""
    distinct = {id(r): r for r in results}
    assert len(distinct) == 1, results[:3]
    return results[0]


async def test_certificate_of_a_private_ca_is_refused_by_default(
    https_fake: FakePlainID, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with make_provider(https_fake.base_url) as provider:
        error = shared(await callers(provider))
        redaction.objects.append(provider)
    assert isinstance(error, pa.TokenEndpointUnavailableError)
    redaction.errors.append(error)
    assert "certificate" in str(error)
    assert "127.0.0.1" in str(error)
    assert error.retryable is False
    assert isinstance(error.__cause__, aiohttp.ClientConnectorCertificateError)
    assert provider.stats.token_requests == 1  # not retried
    assert https_fake.token_requests == []  # the secret never left the handshake
    record(
        "TLS: private-CA certificate, default trust store",
        load=f"{CALLERS} concurrent callers",
        faults="certificate not trusted",
        requests=CALLERS,
        token_requests=1,
        failures=CALLERS,
        outcome="one attempt; every caller: the same TokenEndpointUnavailableError (certificate)",
        wrong_tokens=0,
    )


async def test_private_ca_through_ssl_context(
    https_fake: FakePlainID, ca: trustme.CA, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    context = client_tls(ca)
    async with make_provider(https_fake.base_url, ssl=context) as provider:
        token = shared(await callers(provider))
        assert isinstance(token, pa.Token)
        assert https_fake.is_valid(token.access_token)
        # API calls through provider.session() over the same TLS trust.
        connector = aiohttp.TCPConnector(ssl=context)
        async with provider.session(connector=connector) as session:
            statuses = []
            for _ in range(10):
                async with session.get("/api/1.0/resource") as response:
                    statuses.append(response.status)
        assert statuses == [200] * 10
        assert all(r.authorized for r in https_fake.resource_requests)
        redaction.objects += [provider, token, https_fake]
    redaction.tokens.update(https_fake.issued_tokens)
    record(
        "TLS: private CA through ssl=",
        load=f"{CALLERS} concurrent callers, then 10 API calls through provider.session()",
        faults="none (private CA)",
        requests=CALLERS + 10,
        token_requests=len(https_fake.token_requests),
        failures=0,
        outcome="token fetched once; every API call 200 with a valid token",
        wrong_tokens=0,
    )


async def test_private_ca_through_a_session_passed_in(
    https_fake: FakePlainID, ca: trustme.CA, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    connector = aiohttp.TCPConnector(ssl=client_tls(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with make_provider(https_fake.base_url, session=session) as provider:
            token = shared(await callers(provider))
            assert isinstance(token, pa.Token)
            assert https_fake.is_valid(token.access_token)
            redaction.objects += [provider, token]
        assert not session.closed
    redaction.tokens.update(https_fake.issued_tokens)


def _days(n: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=n)


BAD_CERTS: dict[str, Callable[[trustme.CA, trustme.CA], trustme.LeafCert]] = {
    "expired": lambda ca, _other: ca.issue_cert(
        "127.0.0.1", not_before=_days(-30), not_after=_days(-1)
    ),
    "not yet valid": lambda ca, _other: ca.issue_cert(
        "127.0.0.1", not_before=_days(10), not_after=_days(30)
    ),
    "for another host name": lambda ca, _other: ca.issue_cert("pap.example.com"),
    "from another CA": lambda _ca, other: other.issue_cert("127.0.0.1"),
}


@pytest.mark.parametrize("kind", list(BAD_CERTS))
async def test_untrusted_certificate_fails_at_once_with_a_typed_error(
    kind: str,
    ca: trustme.CA,
    other_ca: trustme.CA,
    redaction: Redaction,
    loop_watch: LoopWatch,
) -> None:
    cert = BAD_CERTS[kind](ca, other_ca)
    async with FakePlainID(
        client_id="cid", client_secret=SECRET, ssl_context=server_context(cert)
    ) as fake:
        # The client trusts `ca` (the private CA), yet this certificate must still fail.
        async with make_provider(fake.base_url, ssl=client_tls(ca)) as provider:
            error = shared(await callers(provider))
            redaction.objects.append(provider)
        assert fake.token_requests == []
    assert isinstance(error, pa.TokenEndpointUnavailableError)
    redaction.errors.append(error)
    assert "certificate" in str(error)
    assert error.retryable is False
    assert provider.stats.token_requests == 1
    record(
        f"TLS: certificate {kind}",
        load=f"{CALLERS} concurrent callers",
        faults=f"server certificate {kind}",
        requests=CALLERS,
        token_requests=1,
        failures=CALLERS,
        outcome="one attempt; every caller: the same TokenEndpointUnavailableError (certificate)",
        wrong_tokens=0,
    )


async def test_https_to_a_plain_http_server_is_a_typed_tls_error(
    redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with FakePlainID(client_id="cid", client_secret=SECRET) as fake:
        url = fake.base_url.with_scheme("https")
        async with make_provider(url) as provider:
            error = shared(await callers(provider))
            redaction.objects.append(provider)
        assert fake.token_requests == []
    assert isinstance(error, pa.TokenEndpointUnavailableError)
    redaction.errors.append(error)
    assert "TLS" in str(error)
    assert error.retryable is False
    assert provider.stats.token_requests == 1


async def test_plain_http_to_an_https_server_is_unavailable(
    https_fake: FakePlainID, redaction: Redaction, loop_watch: LoopWatch
) -> None:
    async with make_provider(https_fake.base_url.with_scheme("http")) as provider:
        error = shared(await callers(provider))
        redaction.objects.append(provider)
    assert isinstance(error, pa.TokenEndpointUnavailableError)
    redaction.errors.append(error)
    assert https_fake.token_requests == []
    assert provider.stats.token_requests == POLICY.attempts
