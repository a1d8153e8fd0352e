"""A real forward proxy for tests: tinyproxy on 127.0.0.1, a free port, killed after use."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import TYPE_CHECKING, Self

from _programs import require_program, wait_started
from _servers import LoopbackServer
from aiohttp import web
from yarl import URL

from plainid_async.testing import free_port

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

#: What TokenServer answers.
GOOD = {"access_token": "tok-via-proxy", "token_type": "Bearer", "expires_in": 600}

#: When set (CI sets it), a missing tinyproxy fails the proxy tests instead of skipping.
REQUIRE_ENV = "PLAINID_REQUIRE_TINYPROXY"
#: Proxy variables of the environment the tests run in: none may leak into a test.
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
#: Switches a child Python inherits that make it write to stderr on its own: asyncio's debug
#: mode logs every step slower than 0.1 s ("Executing <Task ...> took 0.129 seconds").
DEBUG_VARIABLES = ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")


def child_environ() -> dict[str, str]:
    """The environment for a child process whose output a test checks.

    The machine's own, less its proxy variables (the library honours them: they must not
    steer a test) and the debug switches above (a suite run under them must not see their
    lines in a child's stderr, which tests hold to be empty or one exact line).
    """
    dropped = {*PROXY_VARIABLES, *DEBUG_VARIABLES}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def tinyproxy_binary() -> str:
    """Return the tinyproxy path, or skip (fail under ``PLAINID_REQUIRE_TINYPROXY``)."""
    return require_program("tinyproxy", package="tinyproxy", require_env=REQUIRE_ENV)


class TinyProxy:
    """One tinyproxy process; with ``login``/``password`` it demands Basic credentials (407)."""

    def __init__(
        self, directory: Path, *, login: str | None = None, password: str | None = None
    ) -> None:
        self.binary = tinyproxy_binary()
        self.directory = directory
        self.port = free_port()
        self.login = login
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        return f"http://{self.login}:{self.password}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            "MaxClients 50",
            "LogLevel Warning",
            f'LogFile "{self.directory / "tinyproxy.log"}"',
            f'PidFile "{self.directory / "tinyproxy.pid"}"',
        ]
        if self.login is not None:
            lines.append(f"BasicAuth {self.login} {self.password}")
        config = self.directory / f"tinyproxy-{self.port}.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(  # noqa: S603 (a fixed binary found on PATH, fixed args)
            [self.binary, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_started(
            self.process,
            self._listening,
            what=f"tinyproxy on port {self.port}",
            timeout=timeout,
            stop=self.stop,
        )

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)


class TokenServer:
    """A token endpoint on 127.0.0.1 that records the headers of each request it gets."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.headers: list[dict[str, str]] = []
        self._server: LoopbackServer | None = None
        self.base_url = URL()

    async def _token(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response(GOOD)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/1.0/api-key/token", self._token)
        self._server = LoopbackServer(app, ssl_context=self.ssl_context)
        self.base_url = await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()

    @property
    def via_proxy(self) -> list[bool]:
        """Per request, whether tinyproxy forwarded it (it adds a Via header)."""
        return ["tinyproxy" in h.get("via", "") for h in self.headers]
