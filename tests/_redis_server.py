"""A real redis-server for tests: 127.0.0.1, a free port, no persistence, killed after use."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
from typing import TYPE_CHECKING, Any

from _programs import require_program, wait_started

from plainid_async.testing import FakePlainID, TokenRequest, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

#: When set (CI sets it), a missing redis-server fails the Redis tests instead of skipping.
REQUIRE_ENV = "PLAINID_REQUIRE_REDIS"


def redis_binary() -> str:
    """Return the redis-server path, or skip (fail under ``PLAINID_REQUIRE_REDIS``)."""
    return require_program("redis-server", package="redis-server", require_env=REQUIRE_ENV)


class RedisServer:
    """One redis-server process that can be stopped, restarted on the same port, and paused."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 (a fixed binary found on PATH, fixed args)
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_started(
            self.process,
            self.ping,
            what=f"redis-server on port {self.port}",
            timeout=timeout,
            stop=self.stop,
        )

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, like a crash)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server: connections stay open, commands get no answer."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class ThreadedFake:
    """FakePlainID served from its own thread and loop, for callers that make loops per call.

    ``asyncio.run`` per request (or per job, in several threads) closes the caller's loop
    after each call, so the fake cannot live on it.
    """

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake = FakePlainID(**options)
        self.fake.on_token_request = self._seen
        self._arrived = threading.Condition()
        self._count = 0

    @contextlib.asynccontextmanager
    async def _seen(self, _request: TokenRequest) -> AsyncIterator[None]:
        with self._arrived:
            self._count += 1
            self._arrived.notify_all()
        yield None

    def wait_for_requests(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` token requests have reached the fake (from any thread)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._count >= count, timeout):
                raise TimeoutError(f"{count} token requests did not arrive in {timeout:g} s")

    def __enter__(self) -> FakePlainID:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def connected_clients(port: int) -> int:
    """How many client connections the redis-server on ``port`` has, this one excluded."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"CLIENT LIST\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        header, body = data.split(b"\r\n", 1)
        size = int(header[1:])  # a bulk string: $SIZE, then SIZE bytes and CRLF
        while len(body) < size + 2:
            body += sock.recv(65536)
    return sum(1 for line in body.splitlines() if line.startswith(b"id=")) - 1
