"""What every deployed service does per request: get a token, call the PlainID API with it.

The settings come from the environment (``TokenProvider.from_env``); ``PLAINID_API_URL`` is
the API to call, ``REDIS_URL`` (when set) the Redis every process shares its token through.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import aiohttp

import plainid_async as pa

if TYPE_CHECKING:
    from plainid_async import TokenCache

#: The library's records, WARNING and above, on stderr, where the tests look for them.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")


def redis_cache() -> TokenCache | None:
    """A ``RedisTokenCache`` on ``REDIS_URL`` or ``SENTINELS``; ``None`` (memory) without."""
    url = os.environ.get("REDIS_URL")
    sentinels = os.environ.get("SENTINELS")
    if not url and not sentinels:
        return None
    from plainid_async.redis import RedisTokenCache  # noqa: PLC0415 (only with Redis)

    if sentinels:  # "host:port,host:port,...": a master_for client of the "mymaster" service
        from redis.asyncio.sentinel import Sentinel  # noqa: PLC0415

        addresses = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in sentinels.split(","))]
        return RedisTokenCache(Sentinel(addresses, socket_timeout=1.0).master_for("mymaster"))

    from_url = getattr(RedisTokenCache, "from_url", None)
    if url and from_url is not None:  # 0.3: a client per event loop, fork-safe
        cache: TokenCache = from_url(url)
        return cache
    import redis.asyncio  # noqa: PLC0415

    return RedisTokenCache(redis.asyncio.Redis.from_url(str(url)))


def make_provider(cache: TokenCache | None = None) -> pa.TokenProvider:
    """The provider, from the environment; the Redis cache when ``REDIS_URL`` is set."""
    return pa.TokenProvider.from_env(cache=cache if cache is not None else redis_cache())


async def call_api(
    provider: pa.TokenProvider, session: aiohttp.ClientSession | None = None
) -> dict[str, int]:
    """One API call with a token from ``provider``: ``{"api": status, "pid": ...}``."""
    token = await provider.get_token()
    url = f"{os.environ['PLAINID_API_URL']}/v1/resources"
    headers = {"Authorization": f"Bearer {token.access_token}"}
    if session is None:
        async with aiohttp.ClientSession() as own, own.get(url, headers=headers) as answer:
            return {"api": answer.status, "pid": os.getpid()}
    async with session.get(url, headers=headers) as answer:
        return {"api": answer.status, "pid": os.getpid()}
