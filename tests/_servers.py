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
    "ConnectionCounter",
    "LoopbackServer",
    "client_tls",
    "connection_handlers",
    "connections_closed",
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


class ConnectionCounter:
    """A TCP relay on 127.0.0.1 in front of ``target``, counting the connections through it.

    Clients connect to ``url`` (same scheme as ``target``; TLS passes through untouched,
    so each connection is one TLS handshake with the server behind). ``opened`` counts
    the connections, ``client_closed`` those the client closed (the server saw its EOF);
    :meth:`wait_closed` waits for that count.
    """

    def __init__(self, target: URL) -> None:
        """Relay to ``target`` (a loopback URL with a port) once started."""
        self.target = target
        self.url = URL()
        self.opened = 0
        self.client_closed = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._relays.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            async with self._changed:
                self.opened += 1
                self._changed.notify_all()
            up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
            to_server = asyncio.create_task(self._pump(reader, up_writer))
            to_client = asyncio.create_task(self._pump(up_reader, writer))
            done, _ = await asyncio.wait({to_server, to_client}, return_when="FIRST_COMPLETED")
            by_client = to_server in done
            for pump in (to_server, to_client):
                pump.cancel()
            await asyncio.gather(to_server, to_client, return_exceptions=True)
            for stream in (writer, up_writer):
                stream.close()
                with contextlib.suppress(OSError):
                    await stream.wait_closed()
            if by_client:
                async with self._changed:
                    self.client_closed += 1
                    self._changed.notify_all()
        finally:
            self._relays.discard(task)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    async def wait_closed(self, count: int, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s) until clients have closed ``count`` connections."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.client_closed >= count)

    async def __aenter__(self) -> Self:
        """Start relaying."""
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = self.target.with_port(port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop relaying and end the open relays."""
        assert self._server is not None
        self._server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()


def connection_handlers() -> set[asyncio.Task[Any]]:
    """The running loop's aiohttp server tasks that each serve one client connection.

    One lives as long as its connection: a client that keeps connections alive (the
    refresher's sessions do) keeps it until the client closes the connection.
    """
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "RequestHandler.start"
    }


async def connections_closed(timeout: float = 10.0) -> set[asyncio.Task[Any]]:
    """Wait for the server side of every connection on this loop to end; return the rest.

    A server's connection ends once its client closed the connection (the server reads
    the end of the stream on its next turn): this waits for those ends, at most
    ``timeout`` seconds, and returns the handlers still serving a connection some client
    keeps open.
    """
    handlers = connection_handlers()
    if handlers:
        await asyncio.wait(handlers, timeout=timeout)
    return {task for task in handlers if not task.done()}


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
