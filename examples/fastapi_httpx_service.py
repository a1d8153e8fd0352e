"""A FastAPI service that calls PlainID's Management API with httpx, through plainid-async.

The same service as fastapi_service.py, with an ``httpx.AsyncClient`` instead of an aiohttp
session: the lifespan opens one TokenProvider and one client from
``plainid_async.httpx.client()`` for the whole application and hands the client to the
endpoints through the lifespan state (``request.state.plainid``); both are closed at shutdown.

Needs the ``examples`` dependency group and the ``httpx`` extra (``pip install --group examples
'.[httpx]'``: FastAPI, uvicorn, httpx). Run it against the real PlainID:

    export PLAINID_CLIENT_ID=... PLAINID_CLIENT_SECRET=... PLAINID_REGION=us1
    export PLAINID_ENV_ID=...        # the PlainID environment whose policies to list
    python examples/fastapi_httpx_service.py
    curl http://127.0.0.1:8000/policies

With no PLAINID_CLIENT_ID set it starts FakePlainID on 127.0.0.1 and uses that instead (and
says so, on stderr and as ``"fake_plainid": true`` in every answer), so it
works offline. ``--self-test`` starts the service on a free port, calls it, and exits.
``HOST`` and ``PORT`` choose where it listens (default 127.0.0.1:8000).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, TypedDict

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request

import plainid_async as pa
from plainid_async.httpx import client
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


# Said on stderr when the service starts on the fake, and in every /policies answer
# ("fake_plainid"): made-up data must never pass for a tenant's.
FAKE_WARNING = (
    "WARNING: PLAINID_CLIENT_ID is not set: serving a FAKE PlainID on 127.0.0.1 "
    "(plainid_async.testing.FakePlainID); every answer is made up, none is your tenant's"
)


class State(TypedDict):
    """What the lifespan hands to every request (``request.state``)."""

    plainid: httpx.AsyncClient
    provider: pa.TokenProvider
    fake: bool


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
    """Open the provider and the PlainID client at startup; close both at shutdown."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("PLAINID_CLIENT_ID"):
            provider = pa.TokenProvider.from_env()
        else:  # offline: play PlainID ourselves, and say so
            print(FAKE_WARNING, file=sys.stderr)
            fake = await stack.enter_async_context(FakePlainID())
            provider = pa.TokenProvider(
                client_id=fake.client_id, client_secret=fake.client_secret, base_url=fake.base_url
            )
        await stack.enter_async_context(provider)
        plainid = await stack.enter_async_context(client(provider, timeout=10))
        offline = not os.environ.get("PLAINID_CLIENT_ID")
        yield {"plainid": plainid, "provider": provider, "fake": offline}


app = FastAPI(lifespan=lifespan)


@app.get("/policies")
async def list_policies(request: Request) -> dict[str, Any]:
    """Call PlainID's policy API with the shared client and relay its answer."""
    plainid: httpx.AsyncClient = request.state.plainid
    env_id = os.environ.get("PLAINID_ENV_ID", "demo-env")
    try:
        response = await plainid.get(f"policy-mgmt/1.0/policies/{env_id}")
    except pa.TokenRequestError as exc:  # no token: PlainID's token endpoint said no or is down
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return {
        "fake_plainid": request.state.fake,
        "plainid_status": response.status_code,
        "body": response.json(),
    }


@app.get("/health")
async def health(request: Request) -> dict[str, int]:
    """Show the provider's counters: token requests, cache hits, background refreshes."""
    stats = request.state.provider.stats
    return {
        "token_requests": stats.token_requests,
        "cache_hits": stats.cache_hits,
        "background_refreshes": stats.background_refreshes,
        "failures": stats.failures,
    }


async def self_test() -> None:
    """Serve on a free loopback port, call /policies concurrently, check one token was fetched."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # startup failed: raise why
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as caller:

            async def call() -> int:
                response = await caller.get("/policies")
                payload = response.json()
                if response.status_code != 200:
                    raise SystemExit(f"self-test failed: {response.status_code} {payload}")
                return int(payload["plainid_status"])

            statuses = await asyncio.gather(*(call() for _ in range(10)))
            if statuses != [200] * 10:
                raise SystemExit(f"self-test failed: PlainID answered {statuses}")
            stats = (await caller.get("/health")).json()
        if stats["token_requests"] != 1:  # ten calls, one token request
            raise SystemExit(f"self-test failed: {stats}")
        print(f"self-test passed: 10 calls to PlainID, {stats['token_requests']} token request")
    finally:
        server.should_exit = True
        await serving


def main() -> None:
    """Run the service, or the self-test with ``--self-test``."""
    if "--self-test" in sys.argv[1:]:
        asyncio.run(self_test())
        return
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=host, port=port)


if __name__ == "__main__":
    main()
