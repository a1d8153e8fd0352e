"""Asyncio PlainID access tokens done right.

Get PlainID access tokens with the OAuth2 client-credentials grant, cache them per client and
region, refresh them in the background before they expire, and send them from aiohttp
sessions through an origin-scoped bearer middleware.
"""

from __future__ import annotations

from ._cache import CacheKey, MemoryTokenCache, TokenCache
from ._endpoint import RetryPolicy
from ._events import EventKind, FetchReason, TokenEvent
from ._middleware import BearerAuthMiddleware
from ._provider import HealthReport, ProviderStats, TokenProvider
from ._token import Token, TokenState
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    InvalidTokenResponseError,
    PlainIDError,
    ProviderClosedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

__all__ = [
    "BearerAuthMiddleware",
    "CacheKey",
    "ConfigurationError",
    "EventKind",
    "FetchReason",
    "HealthReport",
    "InvalidCredentialsError",
    "InvalidTokenResponseError",
    "MemoryTokenCache",
    "PlainIDError",
    "ProviderClosedError",
    "ProviderStats",
    "RetryPolicy",
    "Token",
    "TokenCache",
    "TokenEndpointUnavailableError",
    "TokenEvent",
    "TokenProvider",
    "TokenRequestError",
    "TokenState",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("plainid-async")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
