"""The refresher's kept-alive sessions, against real loopback servers (HTTPS, tinyproxy).

Connections are counted by a TCP relay in front of the token endpoint (each is one TLS
handshake with the server behind it), and told apart at the server by their peer port.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from _providers import make_provider
from _proxy import PROXY_VARIABLES, TinyProxy, child_environ
from _servers import ConnectionCounter, LoopbackServer, client_tls, server_tls
from aiohttp import web

import plainid_async as pa
from plainid_async._refresher import run_in_refresher
from plainid_async._sessions import SESSIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import trustme
    from yarl import URL

SECRET = "sessions-test-secret"
PROXY_PASSWORD = "sessions-Pr0xy-pass"


class Endpoint:
    """A token endpoint noting, per token request, the client id and the peer's port."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append((str(form["client_id"]), peer[1] if peer else -1))
        body = {"access_token": f"t{len(self.requests)}", "token_type": "Bearer", "expires_in": 600}
        return web.json_response(body)

    def ports_of(self, client_id: str) -> set[int]:
        """The connections (peer ports) that carried ``client_id``'s token requests."""
        return {port for client, port in self.requests if client == client_id}


@pytest.fixture
async def endpoint() -> Endpoint:
    return Endpoint()


@pytest.fixture
async def https(endpoint: Endpoint, ca: trustme.CA) -> AsyncIterator[URL]:
    app = web.Application()
    app.router.add_post("/api/1.0/api-key/token", endpoint.token)
    async with LoopbackServer(app, ssl_context=server_tls(ca)) as server:
        yield server.url


@pytest.fixture
async def relay(https: URL) -> AsyncIterator[ConnectionCounter]:
    async with ConnectionCounter(https) as counter:
        yield counter


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def provider(base_url: URL, client_id: str, **options: object) -> pa.TokenProvider:
    return make_provider(base_url, client_id=client_id, client_secret=SECRET, **options)


async def open_sessions_settled() -> int:
    """The open kept sessions, once those of providers already unreachable are let go.

    Providers an earlier test left unclosed and unreachable would otherwise be collected
    (their sessions closed) in the middle of a test, and change the count under it.
    """
    gc.collect()
    # The collector's callbacks close those sessions on the refresher's loop: once a no-op
    # scheduled after them is done, they are gone.
    await asyncio.wrap_future(run_in_refresher(asyncio.sleep(0)))
    return SESSIONS.open_sessions()


async def refresh(p: pa.TokenProvider, times: int) -> None:
    for _ in range(times):
        await p.get_token(force_refresh=True)


async def test_refreshes_reuse_one_tls_connection_closed_with_the_provider(
    relay: ConnectionCounter, endpoint: Endpoint, ca: trustme.CA
) -> None:
    before = await open_sessions_settled()
    async with provider(relay.url, "a", ssl=client_tls(ca)) as p:
        await p.get_token()
        await refresh(p, 4)
        assert len(endpoint.requests) == 5
        assert relay.opened == 1  # five token requests, one connection, one TLS handshake
        assert SESSIONS.open_sessions() == before + 1
        assert relay.client_closed == 0
    await relay.wait_closed(1)  # the server sees the client close it
    assert SESSIONS.open_sessions() == before


async def test_a_session_closes_with_the_last_provider_that_used_it(
    relay: ConnectionCounter, endpoint: Endpoint, ca: trustme.CA
) -> None:
    context = client_tls(ca)
    first, second = provider(relay.url, "a", ssl=context), provider(relay.url, "b", ssl=context)
    async with second:
        async with first:
            await refresh(first, 2)
            await refresh(second, 2)
        # The first closed: the second's refreshes still take the same connection.
        await refresh(second, 2)
        assert relay.opened == 1
        assert len(endpoint.ports_of("a") | endpoint.ports_of("b")) == 1
        assert relay.client_closed == 0
    await relay.wait_closed(1)
    # A provider that comes later makes a new session, so a new connection.
    async with provider(relay.url, "c", ssl=context) as third:
        await third.get_token()
    assert relay.opened == 2
    await relay.wait_closed(2)


async def test_a_provider_collected_without_closing_lets_go_of_its_session(
    relay: ConnectionCounter, ca: trustme.CA
) -> None:
    before = await open_sessions_settled()
    forgotten = provider(relay.url, "a", ssl=client_tls(ca))
    await refresh(forgotten, 2)
    assert SESSIONS.open_sessions() == before + 1
    del forgotten
    # The refresher may still be finishing the last fetch (its callbacks hold the
    # provider): once a no-op it runs next is done, only the provider's own cycle is left.
    await asyncio.wrap_future(run_in_refresher(asyncio.sleep(0)))
    gc.collect()
    await relay.wait_closed(1)
    assert SESSIONS.open_sessions() == before
    assert relay.opened == 1


async def test_a_provider_closed_from_another_threads_loop_closes_its_session(
    relay: ConnectionCounter, ca: trustme.CA
) -> None:
    p = provider(relay.url, "a", ssl=client_tls(ca))
    await refresh(p, 2)
    # Closed from a loop of another thread: the session closes on the refresher's loop.
    await asyncio.to_thread(asyncio.run, p.close())
    await relay.wait_closed(1)
    assert relay.opened == 1


async def test_providers_with_different_tls_settings_never_share_a_connection(
    relay: ConnectionCounter, endpoint: Endpoint, ca: trustme.CA
) -> None:
    first = provider(relay.url, "a", ssl=client_tls(ca))
    second = provider(relay.url, "b", ssl=client_tls(ca))  # the same trust, another context
    async with first, second:
        for _ in range(3):
            await refresh(first, 1)
            await refresh(second, 1)
    a, b = endpoint.ports_of("a"), endpoint.ports_of("b")
    assert len(a) == 1
    assert len(b) == 1
    assert a != b
    assert relay.opened == 2
    await relay.wait_closed(2)


async def test_proxy_credentials_of_one_provider_never_carry_anothers_requests(
    https: URL,
    endpoint: Endpoint,
    ca: trustme.CA,
    tmp_path: Path,
    no_proxy_variables: None,
) -> None:
    proxy = TinyProxy(tmp_path, login="proxyuser", password=PROXY_PASSWORD)
    proxy.start()
    try:
        good = f"http://proxyuser:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        wrong = f"http://proxyuser:wrong-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        context = client_tls(ca)
        allowed = provider(https, "a", ssl=context, proxy=good)
        refused = provider(https, "b", ssl=context, proxy=wrong, retry=pa.RetryPolicy(attempts=1))
        async with allowed, refused:
            await refresh(allowed, 3)
            # A tunnel the proxy opened for the right credentials stays open, yet a
            # provider with the wrong ones gets its own CONNECT, and the proxy's refusal.
            with pytest.raises(pa.TokenEndpointUnavailableError) as info:
                await refused.get_token()
            await refresh(allowed, 1)
    finally:
        proxy.stop()
    assert info.value.status in {401, 407}  # tinyproxy answers wrong credentials with 401
    assert endpoint.ports_of("b") == set()
    assert len(endpoint.ports_of("a")) == 1  # four requests through one tunnel


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-W", "error::ResourceWarning", "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_environ(),
    )


AT_EXIT = """
    import asyncio, sys
    import plainid_async as pa

    async def main(base_url, close):
        p = pa.TokenProvider("exit", "s3cret", base_url=base_url)
        await p.get_token()
        await p.get_token(force_refresh=True)
        if close:
            await p.close()

    asyncio.run(main(sys.argv[1], sys.argv[2] == "close"))
"""


@pytest.fixture
async def plain_relay(endpoint: Endpoint) -> AsyncIterator[ConnectionCounter]:
    """A plain-http token endpoint (loopback) behind a relay: subprocesses need no CA."""
    app = web.Application()
    app.router.add_post("/api/1.0/api-key/token", endpoint.token)
    async with LoopbackServer(app) as server, ConnectionCounter(server.url) as counter:
        yield counter


@pytest.mark.parametrize("ending", ["close", "no close"])
async def test_no_unclosed_session_at_interpreter_exit(
    plain_relay: ConnectionCounter, endpoint: Endpoint, ending: str
) -> None:
    done = await asyncio.to_thread(run_script, AT_EXIT, str(plain_relay.url), ending)
    assert done.returncode == 0, done.stderr
    assert "Unclosed" not in done.stderr
    assert done.stderr == ""
    assert len(endpoint.requests) == 2
    assert plain_relay.opened == 1
    await plain_relay.wait_closed(1)  # closed by close(), or at exit


FORK = """
    import asyncio, os, sys, warnings
    import plainid_async as pa

    base_url = sys.argv[1]

    def provider(client_id):
        return pa.TokenProvider(client_id, "s3cret", base_url=base_url)

    async def refresh(p, times):
        for _ in range(times):
            await p.get_token(force_refresh=True)

    parent = provider("parent")
    asyncio.run(refresh(parent, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
        pid = os.fork()
    if pid == 0:
        async def child():
            async with provider("child") as p:
                await refresh(p, 2)
        asyncio.run(child())
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    asyncio.run(refresh(parent, 2))

    async def close():
        await parent.close()

    asyncio.run(close())
    sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_forked_child_makes_its_own_session_and_leaves_the_parents_alone(
    plain_relay: ConnectionCounter, endpoint: Endpoint
) -> None:
    done = await asyncio.to_thread(run_script, FORK, str(plain_relay.url))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    parent, child = endpoint.ports_of("parent"), endpoint.ports_of("child")
    assert len(endpoint.requests) == 6
    # The child made its own connection; the parent's went on over its first one, before
    # and after the child ran and exited.
    assert len(parent) == 1
    assert len(child) == 1
    assert parent != child
    assert plain_relay.opened == 2
    await plain_relay.wait_closed(2)
