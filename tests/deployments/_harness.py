"""The processes the deployment tests start, on 127.0.0.1, and what they count.

* :class:`FakeServer`: ``python -m plainid_async fake-server`` in its own process; its log
  lines count the token requests.
* :class:`ApiServer`: the "PlainID API" the services call (``apps/plainid_api.py``): it checks
  each bearer token against the fake and counts the calls it accepted and rejected.
* :class:`Service`: the deployment under test (gunicorn, uvicorn, Celery, ...), its output kept
  in a file so the test can look for WARNING lines and tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

HERE = Path(__file__).parent
APPS = HERE / "apps"
ROOT = HERE.parent.parent
#: When set (CI sets it), a missing program or package of this suite fails instead of skipping.
REQUIRE_ENV = "PLAINID_REQUIRE_DEPLOY"
#: The fake's credentials (``fake-server`` serves these).
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret"
#: Token lifetime for the tests that run across refreshes (seconds): long enough for a
#: process to start, short enough for a few refreshes in a test of ~10 s.
LIFETIME = 4.0


def require_module(name: str) -> None:
    """Skip the test when ``name`` cannot be imported (fail under ``PLAINID_REQUIRE_DEPLOY``)."""
    try:
        __import__(name)
    except ImportError:
        reason = f"{name} is not installed (pip install --group deploy)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}, and {REQUIRE_ENV} is set")
        pytest.skip(reason)


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(ready: Callable[[], bool], *, what: str, timeout: float = 30.0) -> None:
    """Poll ``ready()`` until it is true; raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


class Process:
    """A child process whose output (stdout and stderr together) goes to a file."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
    ) -> None:
        self.args = list(args)
        self.log_path = log
        environ = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
        environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(ROOT)])
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(env or {})
        self._log = log.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 (fixed programs, fixed arguments)
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=environ,
            cwd=cwd or APPS,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit status."""
        try:
            return self.process.wait(timeout)
        finally:
            self._close()

    def _close(self) -> None:
        """Close what this side holds of the process: its log file and its stdin pipe."""
        self._log.close()
        if self.process.stdin is not None:
            self.process.stdin.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig``, wait for the exit, and return the exit status (SIGKILL on a hang)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
                self._close()
                raise AssertionError(f"{self.args[:3]} did not stop within {timeout:g} s") from None
        self._close()
        return self.process.returncode

    def kill(self) -> None:
        """Kill the whole process group, if anything is left of it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._close()


def problems(output: str) -> list[str]:
    """The lines of a log that a healthy run must not have: WARNING and above, tracebacks."""
    bad = re.compile(
        r"\b(WARNING|ERROR|CRITICAL)\b.*plainid|Traceback|plainid_async.*\b(WARNING|ERROR)\b"
    )
    return [line for line in output.splitlines() if bad.search(line)]


class FakeServer:
    """``python -m plainid_async fake-server`` on a free port."""

    def __init__(self, tmp: Path, *, expires_in: float, latency: float = 0.0) -> None:
        self.expires_in = expires_in
        self.process = Process(
            [
                sys.executable, "-m", "plainid_async", "fake-server",
                "--port", "0", "--expires-in", str(expires_in), "--latency", str(latency),
            ],
            log=tmp / "fake-server.log",
        )  # fmt: skip
        self.base_url = ""

    def start(self) -> Self:
        def started() -> bool:
            match = re.search(r"listening on (http://\S+)", self.process.output())
            if match is None:
                if self.process.process.poll() is not None:
                    raise RuntimeError(f"fake-server exited:\n{self.process.output()}")
                return False
            self.base_url = match.group(1)
            return True

        wait_for(started, what="fake-server start")
        return self

    def token_requests(self, outcome: str = "issued a token") -> int:
        """How many token requests it logged with ``outcome`` (``"HTTP 401"``, ...)."""
        return self.process.output().count(f"-> {outcome}")

    def all_token_requests(self) -> int:
        return len(re.findall(r"^token request \d+:", self.process.output(), re.MULTILINE))

    def settle(self) -> None:
        """Wait until the log has caught up (it is written every 0.2 s)."""
        time.sleep(0.5)

    def stop(self) -> None:
        assert self.process.stop(signal.SIGTERM) == 0, self.process.output()


class ApiServer:
    """The "PlainID API" the services call: accepts a bearer token only if the fake does."""

    def __init__(self, tmp: Path, fake: FakeServer) -> None:
        self.port = free_port()
        self.process = Process(
            [sys.executable, "-m", "deployments.apps.plainid_api", fake.base_url, str(self.port)],
            log=tmp / "api.log",
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        wait_for(lambda: listening(self.port), what="the API server start")
        return self

    def stats(self) -> dict[str, int]:
        """``{"ok": accepted calls, "rejected": calls with a bad or no token}``."""
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:  # noqa: S310
            stats: dict[str, int] = json.load(response)
        return stats

    def stop(self) -> None:
        assert self.process.stop(signal.SIGTERM) == 0, self.process.output()


def uvicorn(port: int, app: str = "deployments.apps.fastapi_app:app", *, workers: int) -> list[str]:
    """The command line of uvicorn serving ``app`` with ``workers`` processes on ``port``."""
    return [
        sys.executable, "-m", "uvicorn", app, "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        "--timeout-graceful-shutdown", "10",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(fake: FakeServer, api: ApiServer, **extra: str) -> dict[str, str]:
    """The environment a service reads its settings from (``TokenProvider.from_env``)."""
    return {
        "PLAINID_CLIENT_ID": CLIENT_ID,
        "PLAINID_CLIENT_SECRET": CLIENT_SECRET,
        "PLAINID_BASE_URL": fake.base_url,
        "PLAINID_API_URL": api.url,
        **extra,
    }


@contextlib.contextmanager
def plainid(
    tmp: Path, *, expires_in: float, latency: float = 0.0
) -> Iterator[tuple[FakeServer, ApiServer]]:
    """A fake token endpoint and the API, stopped (cleanly, checked) at the end."""
    fake = FakeServer(tmp, expires_in=expires_in, latency=latency).start()
    api: ApiServer | None = None
    try:
        api = ApiServer(tmp, fake).start()
        yield fake, api
        api.stop()
        fake.stop()
    finally:
        if api is not None:
            api.process.kill()
        fake.process.kill()


class Load:
    """Calls a service's ``/call`` endpoint from threads and tallies what came back.

    A call that does not answer 200 ``{"api": 200, ...}`` is a failed call.
    """

    def __init__(self, url: str, *, threads: int = 4) -> None:
        self.url = url
        self.threads = threads
        self.ok = 0
        self.failed: list[str] = []
        self.pids: set[int] = set()
        self._lock = threading.Lock()

    def call(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as response:  # noqa: S310
                body = json.load(response)
        except Exception as exc:  # noqa: BLE001 (every failure is tallied)
            with self._lock:
                self.failed.append(repr(exc))
            return
        with self._lock:
            if body.get("api") == 200:
                self.ok += 1
                self.pids.add(int(body["pid"]))
            else:
                self.failed.append(json.dumps(body))

    def run(self, seconds: float, *, pause: float = 0.02) -> None:
        """Call the service steadily from each thread for ``seconds``."""
        deadline = time.monotonic() + seconds

        def worker() -> None:
            while time.monotonic() < deadline:
                self.call()
                time.sleep(pause)

        workers = [threading.Thread(target=worker) for _ in range(self.threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()


def refreshes(seconds: float, expires_in: float) -> int:
    """Token requests one process makes at most, calling steadily for ``seconds``.

    The first fetch, then one per refresh: the refresh window opens after half the lifetime
    (less up to 10 % jitter), so at most every 0.45 lifetimes; one more for slack at the end.
    """
    return 1 + int(seconds / (0.45 * expires_in)) + 1
