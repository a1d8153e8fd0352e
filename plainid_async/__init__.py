"""Asyncio PlainID access tokens done right.

Get PlainID access tokens with the OAuth2 client-credentials grant, cache them per client and
region, refresh them in the background before they expire, and send them from aiohttp
sessions through an origin-scoped bearer middleware.
"""

from __future__ import annotations

# The names below are imported on first use, not with the package: `python -m plainid_async
# --version` imports this module first, and aiohttp alone costs ten times a bare interpreter
# start. Type checkers read the imports in the block below (they treat any TYPE_CHECKING as
# true); `typing` itself is not imported, for the same reason.
TYPE_CHECKING = False
if TYPE_CHECKING:
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

#: Where each public name is defined (the module, relative to this package).
_SOURCES = {
    "BearerAuthMiddleware": "_middleware",
    "CacheKey": "_cache",
    "ConfigurationError": "exceptions",
    "EventKind": "_events",
    "FetchReason": "_events",
    "HealthReport": "_provider",
    "InvalidCredentialsError": "exceptions",
    "InvalidTokenResponseError": "exceptions",
    "MemoryTokenCache": "_cache",
    "PlainIDError": "exceptions",
    "ProviderClosedError": "exceptions",
    "ProviderStats": "_provider",
    "RetryPolicy": "_endpoint",
    "Token": "_token",
    "TokenCache": "_cache",
    "TokenEndpointUnavailableError": "exceptions",
    "TokenEvent": "_events",
    "TokenProvider": "_provider",
    "TokenRequestError": "exceptions",
    "TokenState": "_token",
}

_DIST_NAME = "plainid_async"


def _read_version() -> str:
    """The installed version, from this package's own ``*.dist-info/METADATA``.

    ``importlib.metadata`` costs four bare interpreter starts to import, so the first
    ``.dist-info`` of this distribution on ``sys.path`` (the one it would pick too) is read
    directly; only when there is none (an egg, a zip) is ``importlib.metadata`` asked.

    Raises:
        importlib.metadata.PackageNotFoundError: No metadata at all (a source checkout on
            ``sys.path``, never installed). It is an ImportError.
    """
    import os  # noqa: PLC0415 (already loaded by the interpreter: free)
    import sys  # noqa: PLC0415

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")  # noqa: PTH208 (pathlib costs an import)
        except OSError:
            continue
        for name in names:
            dist, _, rest = name.partition("-")
            if rest.endswith(".dist-info") and dist.replace("-", "_").lower() == _DIST_NAME:
                found = _metadata_version(os.path.join(entry or ".", name, "METADATA"))  # noqa: PTH118 (pathlib costs an import)
                if found is not None:
                    return found
    from importlib.metadata import version  # noqa: PLC0415

    return version(_DIST_NAME)


def _metadata_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as metadata:  # noqa: PTH123 (pathlib costs an import)
            for line in metadata:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():
                    return None  # the headers end at the first blank line
    except OSError:
        return None
    return None


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is not None:
        from importlib import import_module  # noqa: PLC0415 (loaded by the interpreter)

        value = getattr(import_module(f".{source}", __name__), name)
        globals()[name] = value  # from now on a plain attribute: no second lookup
        return value
    if name == "__version__":
        return _read_version()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
