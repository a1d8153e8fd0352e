"""The one way the tests serve an aiohttp app on loopback, and the TLS contexts for it."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    import trustme

__all__ = ["LoopbackServer", "client_tls", "server_tls"]


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
