"""An aiohttp.web service that calls PlainID's Management API through plainid-async.

One TokenProvider and one authenticated session live as long as the application (a cleanup
context opens them at startup and closes them at shutdown); every handler uses the session,
and the token is fetched once, refreshed in the background, and sent only to PlainID.

Run it against the real PlainID:

    export PLAINID_CLIENT_ID=... PLAINID_CLIENT_SECRET=... PLAINID_REGION=us1
    export PLAINID_ENV_ID=...        # the PlainID environment whose policies to list
    python examples/aiohttp_service.py
    curl http://127.0.0.1:8080/policies

With no PLAINID_CLIENT_ID set it starts FakePlainID on 127.0.0.1 and uses that instead (and
says so, on stderr and as ``"fake_plainid": true`` in every answer), so it
works offline. ``--self-test`` starts the service on a free port, calls it, and exits.
``HOST`` and ``PORT`` choose where it listens (default 127.0.0.1:8080).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

import plainid_async as pa
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# Said on stderr when the service starts on the fake, and in every /policies answer
# ("fake_plainid"): made-up data must never pass for a tenant's.
FAKE_WARNING = (
    "WARNING: PLAINID_CLIENT_ID is not set: serving a FAKE PlainID on 127.0.0.1 "
    "(plainid_async.testing.FakePlainID); every answer is made up, none is your tenant's"
)

PLAINID = web.AppKey("plainid", aiohttp.ClientSession)
PROVIDER = web.AppKey("provider", pa.TokenProvider)
FAKE = web.AppKey("fake", bool)


async def plainid_context(app: web.Application) -> AsyncIterator[None]:
    """Open the provider and the PlainID session at startup; close both at shutdown."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("PLAINID_CLIENT_ID"):
            provider = pa.TokenProvider.from_env()
        else:  # offline: play PlainID ourselves, and say so
            print(FAKE_WARNING, file=sys.stderr)
            fake = await stack.enter_async_context(FakePlainID())
            provider = pa.TokenProvider(
                client_id=fake.client_id, client_secret=fake.client_secret, base_url=fake.base_url
            )
        app[FAKE] = not os.environ.get("PLAINID_CLIENT_ID")
        app[PROVIDER] = await stack.enter_async_context(provider)
        app[PLAINID] = await stack.enter_async_context(provider.session())
        yield


async def list_policies(request: web.Request) -> web.Response:
    """Call PlainID's policy API with the shared session and relay its answer."""
    env_id = os.environ.get("PLAINID_ENV_ID", "demo-env")
    try:
        async with request.app[PLAINID].get(f"policy-mgmt/1.0/policies/{env_id}") as response:
            body = await response.json(content_type=None)
            return web.json_response(
                {
                    "fake_plainid": request.app[FAKE],
                    "plainid_status": response.status,
                    "body": body,
                }
            )
    except pa.TokenRequestError as exc:  # no token: PlainID's token endpoint said no or is down
        return web.json_response({"error": str(exc)}, status=503)


async def health(request: web.Request) -> web.Response:
    """Show the provider's counters: token requests, cache hits, background refreshes."""
    stats = request.app[PROVIDER].stats
    return web.json_response(
        {
            "token_requests": stats.token_requests,
            "cache_hits": stats.cache_hits,
            "background_refreshes": stats.background_refreshes,
            "failures": stats.failures,
        }
    )


def create_app() -> web.Application:
    """Build the application."""
    app = web.Application()
    app.cleanup_ctx.append(plainid_context)
    app.router.add_get("/policies", list_policies)
    app.router.add_get("/health", health)
    return app


async def self_test() -> None:
    """Serve on a free loopback port, call /policies concurrently, check one token was fetched."""
    app = create_app()
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:

            async def call() -> int:
                async with client.get("/policies") as response:
                    payload = await response.json()
                    if response.status != 200:
                        raise SystemExit(f"self-test failed: {response.status} {payload}")
                    if payload["fake_plainid"] is not True:  # offline: it must say so
                        raise SystemExit(f"self-test failed: fake not flagged in {payload}")
                    return int(payload["plainid_status"])

            statuses = await asyncio.gather(*(call() for _ in range(10)))
            if statuses != [200] * 10:
                raise SystemExit(f"self-test failed: PlainID answered {statuses}")
            async with client.get("/health") as response:
                stats = await response.json()
        if stats["token_requests"] != 1:  # ten calls, one token request
            raise SystemExit(f"self-test failed: {stats}")
        print(f"self-test passed: 10 calls to PlainID, {stats['token_requests']} token request")
    finally:
        await runner.cleanup()


def main() -> None:
    """Run the service, or the self-test with ``--self-test``."""
    if "--self-test" in sys.argv[1:]:
        asyncio.run(self_test())
        return
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    web.run_app(create_app(), host=host, port=port)


if __name__ == "__main__":
    main()
