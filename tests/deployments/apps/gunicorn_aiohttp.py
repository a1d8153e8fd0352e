"""An aiohttp service under gunicorn's ``aiohttp.GunicornWebWorker``, a module-level provider.

``gunicorn gunicorn_aiohttp:app --worker-class aiohttp.GunicornWebWorker --workers 4
[--preload]``; with ``WARM_IN_MASTER=1`` (and ``--preload``) the module fetches a token while
gunicorn imports it, in the master, before it forks the workers.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from deployments.apps.service import call_api, make_provider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

PROVIDER = make_provider()
SESSION = web.AppKey("session", aiohttp.ClientSession)

if os.environ.get("WARM_IN_MASTER"):
    asyncio.run(PROVIDER.get_token())


async def handle_call(request: web.Request) -> web.Response:
    """Get a token, call the API, answer what it said."""
    return web.json_response(await call_api(PROVIDER, request.app[SESSION]))


async def _resources(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        yield
    await PROVIDER.close()


async def app() -> web.Application:
    """The application (gunicorn's aiohttp worker calls this factory in each worker)."""
    application = web.Application()
    application.cleanup_ctx.append(_resources)
    application.router.add_get("/call", handle_call)
    return application
