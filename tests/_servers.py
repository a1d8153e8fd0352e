"""The one way the tests serve an aiohttp app on loopback, the TLS contexts for it, and a
FakePlainID on a thread of its own (for callers that run ``asyncio.run``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web
from yarl import URL

from plainid_async.testing import FakePlainID, running_fetches

if TYPE_CHECKING:
    from collections.abc import Iterator

    import trustme

__all__ = [
    "LoopbackServer",
    "client_tls",
    "fake_in_thread",
    "requests_seen",
    "server_tls",
    "settle",
]


class LoopbackServer:
    """An ``aiohttp.web.Application`` served on 127.0.0.1 at a free port (``port=0``).

    ``async with LoopbackServer(app) as server:`` serves it and ``server.url`` is its root
    (``https`` with an ``ssl_context``); leaving the block, or ``close()``, stops it.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        **runner_options: Any,
    ) -> None:
        """Serve ``app`` on ``host`` (loopback) once started; AppRunner takes ``runner_options``."""
        self.app = app
        self.ssl_context = ssl_context
        self.host = host
        self.url = URL()
        runner_options.setdefault("access_log", None)
        self._runner = web.AppRunner(app, **runner_options)

    async def start(self) -> URL:
        """Start serving and return the root URL."""
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        port = self._runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = URL.build(scheme=scheme, host=self.host, port=port)
        return self.url

    async def close(self) -> None:
        """Stop serving (closes the open connections)."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        """Start serving."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop serving."""
        await self.close()


def server_tls(ca: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server context with a certificate for ``host`` issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (and verifies certificates and names)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def requests_seen(fake: FakePlainID, count: int = 1) -> None:
    """Wait until ``fake`` has received ``count`` token requests."""
    while len(fake.token_requests) < count:  # noqa: ASYNC110 (polling the fake is the point)
        await asyncio.sleep(0.005)


async def settle() -> None:
    """Wait for every token fetch in flight to finish."""
    await asyncio.gather(*(f.wait() for f in running_fetches()), return_exceptions=True)


@contextlib.contextmanager
def fake_in_thread(**options: Any) -> Iterator[FakePlainID]:
    """A FakePlainID served by its own thread and loop, for callers that run asyncio.run."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakePlainID(**options)
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
