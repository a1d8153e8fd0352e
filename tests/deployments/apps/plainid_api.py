"""The "PlainID API" the deployed services call, on 127.0.0.1.

``python plainid_api.py FAKE_BASE_URL PORT``: every path but ``/stats`` is an API call that
answers 200 when its bearer token is one the fake issued and still accepts (asked of the
fake's protected resource), 401 otherwise. ``/stats`` answers the tallies as JSON.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

COUNTS = web.AppKey("counts", dict[str, int])
FAKE = web.AppKey("fake", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def call(request: web.Request) -> web.Response:
    """An API call: 200 for a token the fake accepts, else 401."""
    app = request.app
    headers = {}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    async with app[SESSION].get(f"{app[FAKE]}/api/check", headers=headers) as answer:
        accepted = answer.status == 200
    app[COUNTS]["ok" if accepted else "rejected"] += 1
    if accepted:
        return web.json_response({"ok": True})
    return web.json_response({"ok": False}, status=401)


async def stats(request: web.Request) -> web.Response:
    """The tallies: ``{"ok": ..., "rejected": ...}``."""
    return web.json_response(request.app[COUNTS])


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield


def main() -> None:
    """Serve until SIGTERM."""
    fake, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app[COUNTS] = {"ok": 0, "rejected": 0}
    app[FAKE] = fake.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_get("/stats", stats)
    app.router.add_route("*", "/{path:.*}", call)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
