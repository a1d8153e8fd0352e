"""A FastAPI service that calls PlainID's Management API through plainid-async.

The lifespan opens one TokenProvider and one authenticated aiohttp session for the whole
application and hands the session to the endpoints through the lifespan state and a
``Depends()`` dependency (``plainid: PlainID``); both are closed at shutdown. The same code
works in any Starlette application.

Needs the ``examples`` dependency group (``pip install --group examples``: FastAPI, uvicorn).
Run it against the real PlainID:

    export PLAINID_CLIENT_ID=... PLAINID_CLIENT_SECRET=... PLAINID_REGION=us1
    export PLAINID_ENV_ID=...        # the PlainID environment whose policies to list
    python examples/fastapi_service.py
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
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

import aiohttp
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request

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


class State(TypedDict):
    """What the lifespan hands to every request (``request.state``)."""

    plainid: aiohttp.ClientSession
    provider: pa.TokenProvider
    fake: bool


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
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
        await stack.enter_async_context(provider)
        session = await stack.enter_async_context(provider.session())
        offline = not os.environ.get("PLAINID_CLIENT_ID")
        yield {"plainid": session, "provider": provider, "fake": offline}


app = FastAPI(lifespan=lifespan)


def plainid_session(request: Request) -> aiohttp.ClientSession:
    """The application's PlainID session, as a FastAPI dependency."""
    session: aiohttp.ClientSession = request.state.plainid
    return session


def serving_the_fake(request: Request) -> bool:
    """Whether the session talks to FakePlainID (no credentials set), as a dependency."""
    fake: bool = request.state.fake
    return fake


PlainID = Annotated[aiohttp.ClientSession, Depends(plainid_session)]
ServingTheFake = Annotated[bool, Depends(serving_the_fake)]


@app.get("/policies")
async def list_policies(plainid: PlainID, fake: ServingTheFake) -> dict[str, Any]:
    """Call PlainID's policy API with the shared session and relay its answer."""
    env_id = os.environ.get("PLAINID_ENV_ID", "demo-env")
    try:
        async with plainid.get(f"policy-mgmt/1.0/policies/{env_id}") as response:
            body = await response.json(content_type=None)
            return {"fake_plainid": fake, "plainid_status": response.status, "body": body}
    except pa.TokenRequestError as exc:  # no token: PlainID's token endpoint said no or is down
        raise HTTPException(status_code=503, detail=str(exc)) from exc


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
