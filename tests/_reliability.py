"""Shared tools of the reliability tests: figures, redaction checks, leak watches, servers.

Each reliability scenario records its figures with :func:`record`: they are printed (see them
with ``pytest -s``) and, when ``PLAINID_RELIABILITY_OUT`` names a file, appended to it as one
JSON object a line. ``docs/reliability.md`` is written from that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import attrs

from plainid_async.testing import FakePlainID, FakeResponse, TokenRequest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

    import pytest

OUT_ENV = "PLAINID_RELIABILITY_OUT"


def record(scenario: str, **figures: Any) -> dict[str, Any]:
    """Print a scenario's figures and append them to ``$PLAINID_RELIABILITY_OUT`` if set."""
    entry = {"scenario": scenario, **figures}
    line = json.dumps(entry, sort_keys=False, default=str)
    print(f"RELIABILITY {line}")  # noqa: T201 (figures are meant to be read with -s)
    out = os.environ.get(OUT_ENV)
    if out:
        with open(out, "a", encoding="utf-8") as handle:  # noqa: PTH123 (one line, one call)
            handle.write(line + "\n")
    return entry


# -- redaction -----------------------------------------------------------------------------


def _exception_text(error: BaseException) -> list[str]:
    parts: list[str] = []
    seen: set[int] = set()
    chain: BaseException | None = error
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        parts += [str(chain), repr(chain), repr(chain.args)]
        parts += traceback.format_exception_only(type(chain), chain)
        chain = chain.__cause__ or chain.__context__
    return parts


@attrs.define
class Redaction:
    """Collects everything the library said and checks no secret or token is in it.

    Log records come from ``caplog`` (every logger, DEBUG, every test phase); exceptions,
    objects and other texts (loop exception handler contexts, CLI output) are added by the
    test, and so are the secrets and tokens to look for.
    """

    caplog: pytest.LogCaptureFixture
    secrets: set[str] = attrs.Factory(set)
    tokens: set[str] = attrs.Factory(set)
    errors: list[BaseException] = attrs.Factory(list)
    objects: list[object] = attrs.Factory(list)
    texts: list[str] = attrs.Factory(list)

    def records(self) -> list[logging.LogRecord]:
        """Every log record of the test so far, setup and call included."""
        seen = [*self.caplog.get_records("setup"), *self.caplog.get_records("call")]
        return seen + [r for r in self.caplog.records if r not in seen]

    def said(self) -> str:
        """Every message, argument, traceback, repr and str seen so far, as one text."""
        formatter = logging.Formatter()
        parts: list[str] = list(self.texts)
        for item in self.records():
            parts += [item.getMessage(), repr(item.args), repr(item.msg)]
            if item.exc_info:
                parts.append(formatter.formatException(item.exc_info))
        for error in self.errors:
            parts += _exception_text(error)
        for obj in self.objects:
            parts += [repr(obj), str(obj)]
        return "\n".join(parts)

    def check(self) -> int:
        """Assert no secret and no token appears anywhere; return the number of log records."""
        assert self.secrets, "a redaction check needs the secrets to look for"
        text = self.said()
        for secret in self.secrets:
            assert secret not in text, "a client secret leaked"
        for token in self.tokens:
            assert token not in text, "an access token leaked"
        return len(self.records())


def watch_redaction(caplog: pytest.LogCaptureFixture, *secrets: str) -> Iterator[Redaction]:
    """A redaction fixture's body: DEBUG logs, then the check once the test is over."""
    caplog.set_level(logging.DEBUG)
    watch = Redaction(caplog, secrets=set(secrets))
    yield watch
    watch.check()


# -- leaks ---------------------------------------------------------------------------------


def open_fds() -> int:
    """The number of file descriptors this process holds open."""
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except FileNotFoundError:  # pragma: no cover - not Linux
        return -1


@attrs.define
class LoopWatch:
    """Records what the loop's exception handler receives, and the tasks alive at the start.

    "Task exception was never retrieved", "Unclosed client session" and unclosed connectors
    all go through the loop's exception handler: any context recorded here is a failure.
    """

    loop: asyncio.AbstractEventLoop
    baseline: set[asyncio.Task[Any]]
    contexts: list[dict[str, Any]] = attrs.Factory(list)
    fds: int = 0
    _previous: Any = None

    @classmethod
    def start(cls) -> Self:
        """Install the handler on the running loop and note the baseline."""
        loop = asyncio.get_running_loop()
        gc.collect()
        watch = cls(loop, set(asyncio.all_tasks()), fds=open_fds())
        watch._previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: watch.contexts.append(context))
        return watch

    def leaked_tasks(self) -> set[asyncio.Task[Any]]:
        """Tasks alive now that were not alive at the start."""
        return set(asyncio.all_tasks()) - self.baseline - {asyncio.current_task()}

    async def finish(self) -> dict[str, Any]:
        """Collect garbage, restore the handler and return what was seen."""
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        self.loop.set_exception_handler(self._previous)
        return {
            "leaked_tasks": len(self.leaked_tasks()),
            "loop_errors": len(self.contexts),
            "fd_delta": open_fds() - self.fds,
        }

    def texts(self) -> list[str]:
        """The recorded contexts as text, for the redaction check."""
        return [repr(context) for context in self.contexts]


# -- servers -------------------------------------------------------------------------------


class InFlightFake(FakePlainID):
    """FakePlainID that counts the token requests it handles at once, through its public
    ``on_token_request`` hook.

    Per key, as the provider keys its single flight: client id and secret (shown as
    ``client/`` plus a short hash of the secret, so no secret lands in an assertion
    message), and per client id. ``before``, when set, runs first for each token request
    (and may be awaited), so it can script the answer with ``fail_next`` or an outage.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.max_in_flight_per_client: dict[str, int] = {}
        self.before: Callable[[], Awaitable[None] | None] | None = None
        self.on_token_request = self._counted

    def _count(self, name: str, step: int, highs: dict[str, int]) -> None:
        self.in_flight[name] = self.in_flight.get(name, 0) + step
        highs[name] = max(highs.get(name, 0), self.in_flight[name])

    @contextlib.asynccontextmanager
    async def _counted(self, request: TokenRequest) -> AsyncIterator[FakeResponse | None]:
        client, secret = str(request.client_id), str(request.form.get("client_secret"))
        key = f"{client}/{hashlib.sha256(secret.encode()).hexdigest()[:12]}"
        self._count(key, 1, self.max_in_flight)
        self._count(f"client {client}", 1, self.max_in_flight_per_client)
        try:
            if self.before is not None:
                pending = self.before()
                if pending is not None:
                    await pending
            yield None
        finally:
            self.in_flight[key] -= 1
            self.in_flight[f"client {client}"] -= 1


@attrs.define
class RawServer:
    """A TCP server on 127.0.0.1 answering each connection with the next scripted behaviour.

    A behaviour is raw bytes to write before closing, or a coroutine function taking the
    stream writer. Once the script is used up, connections get ``default``.
    """

    script: list[bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]]
    default: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]
    connections: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = attrs.Factory(set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        behaviour = self.script.pop(0) if self.script else self.default
        # Cancelled on __aexit__: end quietly, as asyncio reports a handler that ends
        # cancelled to the loop's exception handler.
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            try:
                with contextlib.suppress(asyncio.IncompleteReadError):
                    await reader.readuntil(b"\r\n\r\n")
                if isinstance(behaviour, bytes):
                    writer.write(behaviour)
                    await writer.drain()
                else:
                    await behaviour(writer)
            finally:
                self._handlers.discard(task)
                writer.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        """The server's root URL."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


def http_response(
    body: bytes,
    *,
    status: str = "200 OK",
    headers: Iterable[tuple[str, str]] = (("Content-Type", "application/json"),),
) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length and ``Connection: close``."""
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def good_body(access_token: str, expires_in: float = 3600) -> bytes:
    """A valid token response body."""
    return json.dumps(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
    ).encode()


class StreamingRedaction(logging.Handler):
    """Checks each log record for secrets and tokens as it is emitted, keeping none.

    For long runs: caplog keeps every record, which would show up as a memory trend. The
    named loggers are set to DEBUG and stop propagating (so pytest's own capture keeps
    nothing either) until :meth:`close`.
    """

    LOGGERS = ("plainid_async", "aiohttp", "asyncio")

    def __init__(self, secrets: set[str], tokens: Callable[[], Iterable[str]]) -> None:
        super().__init__(logging.DEBUG)
        self.secrets = secrets
        self.tokens = tokens
        self.checked = 0
        self.leaks: list[str] = []
        self._formatter = logging.Formatter()
        self._saved: list[tuple[logging.Logger, int, bool]] = []
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.propagate))
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Look for every secret and every token issued so far in the record."""
        text = "\n".join(
            [record.getMessage(), repr(record.args), repr(record.msg)]
            + ([self._formatter.formatException(record.exc_info)] if record.exc_info else [])
        )
        self.checked += 1
        if any(secret in text for secret in self.secrets):
            self.leaks.append(f"secret in a {record.levelname} record of {record.name}")
        if any(token in text for token in self.tokens()):
            self.leaks.append(f"token in a {record.levelname} record of {record.name}")

    def close(self) -> None:
        """Put the loggers back as they were."""
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate
        super().close()
