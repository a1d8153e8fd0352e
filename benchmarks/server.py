"""FakePlainID in a process of its own, driven over a small control API on loopback.

httpx-auth fetches tokens with a synchronous ``httpx.Client`` inside the event loop: an
in-process server would stall with it, and every contender would share its CPU time with
the server in ways that differ per library. So the benchmark runs FakePlainID (the token
endpoint and the protected resource) here, in a separate Python process, and the harness
talks to it through a second aiohttp app on another loopback port:

* ``POST /fake`` ``{"expires_in", "latency", "client_id", "client_secret"}``: close the
  current fake, start a fresh one (new port, no tokens, empty records), answer its
  ``{"base_url"}``.
* ``POST /outage`` ``{"start", "end", "status"}``: ``FakePlainID.outage_between``.
* ``GET /stats``: what the fake saw: token requests by status, resource requests by status.
* ``POST /quit``: stop.

Run as a script it prints ``CONTROL <url>`` on its first stdout line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp import web

from plainid_async.testing import FakePlainID

HOST = "127.0.0.1"  # loopback only, always
STARTUP_TIMEOUT = 30.0


class _Control:
    def __init__(self) -> None:
        self.fake: FakePlainID | None = None
        self.quit = asyncio.Event()

    async def close_fake(self) -> None:
        if self.fake is not None:
            await self.fake.close()
            self.fake = None

    async def new_fake(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self.close_fake()
        fake = FakePlainID(
            client_id=str(body.get("client_id", "bench-client")),
            client_secret=str(body.get("client_secret", "bench-secret")),
            expires_in=float(body.get("expires_in", 3600)),
            latency=float(body.get("latency", 0.0)),
            host=HOST,
        )
        await fake.start()
        self.fake = fake
        return web.json_response({"base_url": str(fake.base_url)})

    def _require(self) -> FakePlainID:
        if self.fake is None:
            raise web.HTTPConflict(text="no fake running: POST /fake first")
        return self.fake

    async def outage(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._require().outage_between(
            float(body["start"]), float(body["end"]), int(body.get("status", 503))
        )
        return web.json_response({"ok": True})

    async def stats(self, _request: web.Request) -> web.Response:
        fake = self._require()
        tokens = collections.Counter(str(r.status) for r in fake.token_requests)
        resources = collections.Counter(str(r.status) for r in fake.resource_requests)
        return web.json_response(
            {
                "token_requests": len(fake.token_requests),
                "token_statuses": dict(tokens),
                "resource_requests": len(fake.resource_requests),
                "resource_statuses": dict(resources),
            }
        )

    async def stop(self, _request: web.Request) -> web.Response:
        self.quit.set()
        return web.json_response({"ok": True})


async def serve() -> None:
    control = _Control()
    app = web.Application()
    app.router.add_post("/fake", control.new_fake)
    app.router.add_post("/outage", control.outage)
    app.router.add_get("/stats", control.stats)
    app.router.add_post("/quit", control.stop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"CONTROL http://{HOST}:{port}", flush=True)
        await control.quit.wait()
    finally:
        await control.close_fake()
        await runner.cleanup()


class ServerProcess:
    """Start ``server.py`` in a child process; talk to its control API.

    Each control call opens its own short-lived aiohttp session, so one ``ServerProcess``
    serves any number of event loops (the harness, pytest's per-test loops).
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.control_url = ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        process = subprocess.Popen(  # noqa: S603 (our own script, with our own interpreter)
            [sys.executable, str(Path(__file__).resolve())],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._process = process
        assert process.stdout is not None  # noqa: S101 (stdout=PIPE above)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        line = ""
        while time.monotonic() < deadline and not line.startswith("CONTROL "):
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        if not line.startswith("CONTROL "):
            self.stop()
            raise RuntimeError("the benchmark server did not start")
        self.control_url = line.split()[1]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            # Ask politely first; a child that does not answer is terminated.
            import urllib.request  # noqa: PLC0415 (only needed here)

            request = urllib.request.Request(f"{self.control_url}/quit", method="POST")  # noqa: S310 (loopback URL we built)
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:  # noqa: ANN401 (JSON)
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.request(method, f"{self.control_url}{path}", json=body) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def new_fake(
        self,
        *,
        expires_in: float = 3600,
        latency: float = 0.0,
        client_id: str = "bench-client",
        client_secret: str = "bench-secret",  # noqa: S107 (a fake credential)
    ) -> str:
        """Start a fresh fake; return its base URL."""
        body = {
            "expires_in": expires_in,
            "latency": latency,
            "client_id": client_id,
            "client_secret": client_secret,
        }
        answer = await self._call("POST", "/fake", body)
        return str(answer["base_url"])

    async def outage(self, start: float, end: float, status: int = 503) -> None:
        """Make the token endpoint answer ``status`` from ``start`` to ``end`` s from now."""
        await self._call("POST", "/outage", {"start": start, "end": end, "status": status})

    async def stats(self) -> dict[str, Any]:
        """What the current fake saw so far."""
        answer: dict[str, Any] = await self._call("GET", "/stats")
        return answer


if __name__ == "__main__":
    asyncio.run(serve())
