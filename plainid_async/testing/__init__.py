"""Test helpers for code that uses PlainID tokens.

:class:`FakePlainID` runs a real aiohttp server on loopback that answers PlainID's token
endpoint (``POST {base}/api/1.0/api-key/token``) as documented, and serves a protected
resource that only accepts the tokens it issued. Knobs script lifetimes, latency, outages,
hangs, malformed answers and secret rotation; every request is recorded::

    from plainid_async.testing import FakePlainID, FakeResponse

    async def test_retries_after_an_outage() -> None:
        async with FakePlainID(expires_in=60) as fake:
            fake.fail_next(503, FakeResponse(status=429, headers={"Retry-After": "0"}))
            ...  # point your code at fake.base_url with fake.client_id / fake.client_secret
            assert [r.status for r in fake.token_requests] == [503, 429, 200]
"""

from plainid_async._cache import Flight, running_fetches
from plainid_async.testing._fake import (
    TOKEN_PATH,
    FakePlainID,
    FakeResponse,
    ResourceRequest,
    TokenRequest,
    TokenRequestHook,
    free_port,
)

__all__ = [
    "TOKEN_PATH",
    "FakePlainID",
    "FakeResponse",
    "Flight",
    "ResourceRequest",
    "TokenRequest",
    "TokenRequestHook",
    "free_port",
    "running_fetches",
]
