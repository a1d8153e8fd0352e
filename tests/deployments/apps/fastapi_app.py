"""A FastAPI service whose lifespan creates the provider (``uvicorn fastapi_app:app``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import aiohttp
from fastapi import FastAPI, Request

from deployments.apps.service import call_api, make_provider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One provider and one HTTP session per worker process, closed at shutdown."""
    async with make_provider() as provider, aiohttp.ClientSession() as session:
        app.state.provider = provider
        app.state.session = session
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/call")
async def handle_call(request: Request) -> dict[str, int]:
    """Get a token, call the API, answer what it said."""
    return await call_api(request.app.state.provider, request.app.state.session)
