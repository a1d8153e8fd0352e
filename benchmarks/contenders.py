"""The contenders: plainid-async and the OAuth2 clients users would pick instead.

Each contender builds a :class:`Client` (``get(path) -> status``, ``aclose()``) against a
:class:`Target` (the FakePlainID process). Peers are imported lazily, so this module imports
without the ``bench`` dependency group; :func:`available` says which ones can run.

How each one decides to refresh (read from its source, versions in docs/benchmarks.md):

* plainid-async: FRESH/STALE/EXPIRED. The background refresh window opens at min(half the
  lifetime, 1 h) before expiry (minus up to 10 % jitter); callers keep the cached token while
  one shared task refreshes; a token is not handed out with less than min(30 s, a tenth of
  its lifetime) left. One fetch per cache key per process (single flight).
  ``plainid-async (httpx)`` is the tuned provider with ``plainid_async.httpx.client()``
  (``BearerAuth``) instead of the aiohttp middleware, compared with the httpx floor.
* Authlib ``AsyncOAuth2Client``: before every request, under one ``anyio.Lock``,
  ``token.is_expired(leeway)`` (``leeway=60`` s by default; ``expires_at`` is
  ``int(time.time()) + int(expires_in)``); if expired, the request waits while the token is
  fetched under the lock, so every concurrent request waits too. It never fetches the first
  token itself: ``request()`` raises ``MissingTokenError`` until ``fetch_token()`` ran, so the
  harness does what a caller must, ``if client.token is None: await client.fetch_token()``
  (without a lock of the caller's own: concurrent first requests each fetch).
* httpx-auth ``OAuth2ClientCredentials``: a synchronous ``httpx.Auth`` flow; a process-wide
  ``TokenMemoryCache`` guarded by ``threading.Lock``; a token is expired ``early_expiry``
  (30 s by default) before its expiry and is then fetched with a *synchronous*
  ``httpx.Client`` inside the event loop, which blocks the whole loop for the fetch. It sends
  the client credentials with HTTP Basic only; PlainID wants them in the form body, so the
  harness subclasses it: credentials in the form body, no Basic header.
* aiohttp-oauth2-client ``OAuth2Middleware`` with ``ClientCredentialsGrant``: an
  ``asyncio.Lock``; before every request ``token.is_expired()`` with a fixed 30 s early expiry
  (no option: the 1 s variant subclasses the grant to pass ``early_expiry=1``); an expired
  token is fetched under the lock, so every request waits.
* Static floors: one token fetched at setup and set as a default ``Authorization`` header of
  a plain aiohttp / httpx client. The least any auth layer can cost.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp

import plainid_async as pa

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: The protected resource every contender calls (any path but the token endpoint).
RESOURCE_PATH: Final = "/api/1.0/bench"
TOKEN_PATH: Final = "/api/1.0/api-key/token"  # noqa: S105 (a path)
#: Per-request limit for every HTTP client, so a pool queue never fails a run on its own
#: (httpx's default pool timeout is 5 s, aiohttp's total timeout 300 s).
HTTP_TIMEOUT: Final = 30.0
#: The early-expiry margin the peers get in their second run.
PEER_MARGIN: Final = 1

#: plainid-async for 4-6 s test tokens: retries scaled to the lifetime. The defaults
#: (4 attempts, backoff 0.25 s doubling to 8 s, 30 s deadline) suit real tokens of an hour or
#: a day. A caller that finds the token too close to expiry waits for the refresh in flight,
#: and the refresh may be sleeping between attempts: backoff_max bounds that wait, so it is
#: kept below the 0.6 s guard band of a 6 s token (a tenth of its lifetime).
TUNED_RETRY: Final = pa.RetryPolicy(
    attempts=50, backoff_base=0.05, backoff_max=0.1, max_retry_after=1.0, deadline=3.0
)
TUNED_TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class Target:
    """Where the FakePlainID process listens, and the credentials to use."""

    base_url: str
    client_id: str
    client_secret: str

    @property
    def token_url(self) -> str:
        return self.base_url.rstrip("/") + TOKEN_PATH


class Client(Protocol):
    """One contender's HTTP client, configured for the target."""

    async def get(self, path: str) -> int:
        """Send a GET, read the body, return the HTTP status the caller sees."""
        ...

    async def aclose(self) -> None:
        """Close everything the client opened."""
        ...

    def stats(self) -> dict[str, int] | None:
        """Counters of the auth layer, when it keeps any."""
        ...


@dataclass(frozen=True)
class Contender:
    """A library in one configuration."""

    name: str
    variant: str
    http: str  # "aiohttp" or "httpx": the floor it is compared with
    requires: tuple[str, ...]
    make: Callable[[Target], Awaitable[Client]]
    floor: bool = False
    margin: bool = False  # True when this is the peer's 1 s early-expiry run

    @property
    def label(self) -> str:
        return f"{self.name} ({self.variant})"

    def available(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


def _aiohttp_timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=HTTP_TIMEOUT)


async def _aiohttp_get(session: aiohttp.ClientSession, path: str) -> int:
    async with session.get(path) as response:
        await response.read()
        return response.status


async def fetch_static_token(target: Target) -> str:
    """Fetch one token directly, for the static floors."""
    form = {
        "grant_type": "client_credentials",
        "client_id": target.client_id,
        "client_secret": target.client_secret,
    }
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(target.token_url, data=form) as response,
    ):
        response.raise_for_status()
        body = await response.json()
    return str(body["access_token"])


# -- plainid-async ---------------------------------------------------------------------------


class _PlainID:
    def __init__(self, provider: pa.TokenProvider) -> None:
        self.provider = provider
        self.session = provider.session(timeout=_aiohttp_timeout())

    async def get(self, path: str) -> int:
        return await _aiohttp_get(self.session, path)

    async def aclose(self) -> None:
        await self.session.close()
        await self.provider.close()

    def stats(self) -> dict[str, int]:
        s = self.provider.stats
        return {
            "token_requests": s.token_requests,
            "tokens_fetched": s.tokens_fetched,
            "background_refreshes": s.background_refreshes,
            "waits": s.waits,
            "failures": s.failures,
        }


def _tuned_provider(target: Target) -> pa.TokenProvider:
    return pa.TokenProvider(
        target.client_id,
        target.client_secret,
        base_url=target.base_url,
        timeout=TUNED_TIMEOUT,
        retry=TUNED_RETRY,
    )


async def make_plainid_tuned(target: Target) -> Client:
    return _PlainID(_tuned_provider(target))


class _PlainIDHttpx(_PlainID):
    """The same provider, its tokens sent by ``plainid_async.httpx.client()``."""

    def __init__(self, provider: pa.TokenProvider) -> None:
        from plainid_async.httpx import client  # noqa: PLC0415 (httpx may be missing)

        self.provider = provider
        self.client = client(provider, timeout=HTTP_TIMEOUT)

    async def get(self, path: str) -> int:
        response = await self.client.get(path)
        return int(response.status_code)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.provider.close()


async def make_plainid_httpx(target: Target) -> Client:
    return _PlainIDHttpx(_tuned_provider(target))


async def make_plainid_defaults(target: Target) -> Client:
    provider = pa.TokenProvider(target.client_id, target.client_secret, base_url=target.base_url)
    return _PlainID(provider)


# -- Authlib on httpx --------------------------------------------------------------------------


def _import_authlib() -> Any:  # noqa: ANN401 (untyped library)
    with warnings.catch_warnings():
        # Authlib warns on import that plain httpx (not "httpx2") is deprecated, and its
        # deprecate module installs an "always" filter for that warning when imported: import
        # it first, then silence the warning for the import that follows.
        import authlib.deprecate  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415

        warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
        from authlib.integrations.httpx_client import (  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415
            AsyncOAuth2Client,
        )
    return AsyncOAuth2Client


class _Authlib:
    def __init__(self, client: Any) -> None:  # noqa: ANN401 (untyped library)
        self.client = client

    async def get(self, path: str) -> int:
        # request() raises MissingTokenError until a first token was fetched explicitly.
        if self.client.token is None:
            await self.client.fetch_token()
        response = await self.client.get(path)
        return int(response.status_code)

    async def aclose(self) -> None:
        await self.client.aclose()

    def stats(self) -> None:
        return None


def _authlib_factory(leeway: int | None) -> Callable[[Target], Awaitable[Client]]:
    async def make(target: Target) -> Client:
        client_class = _import_authlib()
        extra = {} if leeway is None else {"leeway": leeway}
        client = client_class(
            client_id=target.client_id,
            client_secret=target.client_secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 (a method name)
            token_endpoint=target.token_url,
            grant_type="client_credentials",
            base_url=target.base_url,
            timeout=HTTP_TIMEOUT,
            **extra,
        )
        return _Authlib(client)

    return make


# -- httpx-auth ----------------------------------------------------------------------------


class _Httpx:
    def __init__(self, client: Any) -> None:  # noqa: ANN401 (httpx may be missing)
        self.client = client

    async def get(self, path: str) -> int:
        response = await self.client.get(path)
        return int(response.status_code)

    async def aclose(self) -> None:
        await self.client.aclose()

    def stats(self) -> None:
        return None


def _httpx_auth_factory(early_expiry: float | None) -> Callable[[Target], Awaitable[Client]]:
    async def make(target: Target) -> Client:
        import httpx  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        import httpx_auth  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

        class FormCredentials(httpx_auth.OAuth2ClientCredentials):  # type: ignore[misc, unused-ignore]
            """Client credentials in the form body, as PlainID wants, not HTTP Basic."""

            def __init__(self, **kwargs: Any) -> None:  # noqa: ANN401
                super().__init__(**kwargs)
                self.data.update(client_id=self.client_id, client_secret=self.client_secret)

            def _configure_client(self, client: httpx.Client) -> None:
                client.timeout = self.timeout

        extra = {} if early_expiry is None else {"early_expiry": early_expiry}
        auth = FormCredentials(
            token_url=target.token_url,
            client_id=target.client_id,
            client_secret=target.client_secret,
            **extra,
        )
        client = httpx.AsyncClient(base_url=target.base_url, auth=auth, timeout=HTTP_TIMEOUT)
        return _Httpx(client)

    return make


# -- aiohttp-oauth2-client -----------------------------------------------------------------


class _AiohttpOAuth2:
    def __init__(self, session: aiohttp.ClientSession, grant: Any) -> None:  # noqa: ANN401
        self.session = session
        self.grant = grant

    async def get(self, path: str) -> int:
        return await _aiohttp_get(self.session, path)

    async def aclose(self) -> None:
        await self.session.close()
        await self.grant.close()

    def stats(self) -> None:
        return None


def _aiohttp_oauth2_factory(early_expiry: int | None) -> Callable[[Target], Awaitable[Client]]:
    async def make(target: Target) -> Client:
        from aiohttp_oauth2_client.grant.client_credentials import (  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415
            ClientCredentialsGrant,
        )
        from aiohttp_oauth2_client.middleware import (  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415
            OAuth2Middleware,
        )

        grant_class: Any = ClientCredentialsGrant
        if early_expiry is not None:
            margin = early_expiry

            class EarlyExpiryGrant(ClientCredentialsGrant):  # type: ignore[misc, unused-ignore]
                """The grant with ``is_expired(early_expiry=margin)`` instead of the fixed 30 s."""

                async def ensure_active_token(self) -> None:
                    async with self.lock:
                        if self.token.is_expired(early_expiry=margin):
                            await self.refresh_token()

            grant_class = EarlyExpiryGrant
        grant = grant_class(
            token_url=target.token_url,
            client_id=target.client_id,
            client_secret=target.client_secret,
        )
        session = aiohttp.ClientSession(
            base_url=target.base_url,
            middlewares=(OAuth2Middleware(grant),),
            timeout=_aiohttp_timeout(),
        )
        return _AiohttpOAuth2(session, grant)

    return make


# -- static floors -------------------------------------------------------------------------


class _AiohttpFloor:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def get(self, path: str) -> int:
        return await _aiohttp_get(self.session, path)

    async def aclose(self) -> None:
        await self.session.close()

    def stats(self) -> None:
        return None


async def make_aiohttp_floor(target: Target) -> Client:
    token = await fetch_static_token(target)
    session = aiohttp.ClientSession(
        base_url=target.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=_aiohttp_timeout(),
    )
    return _AiohttpFloor(session)


async def make_httpx_floor(target: Target) -> Client:
    import httpx  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    token = await fetch_static_token(target)
    client = httpx.AsyncClient(
        base_url=target.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT,
    )
    return _Httpx(client)


# -- the line-up -----------------------------------------------------------------------------

PLAINID = "plainid-async"
AUTHLIB = "Authlib"
HTTPX_AUTH = "httpx-auth"
AIOHTTP_OAUTH2 = "aiohttp-oauth2-client"
FLOOR = "static header"

CONTENDERS: Final[tuple[Contender, ...]] = (
    Contender(PLAINID, "tuned", "aiohttp", ("aiohttp",), make_plainid_tuned),
    Contender(PLAINID, "defaults", "aiohttp", ("aiohttp",), make_plainid_defaults),
    Contender(PLAINID, "httpx", "httpx", ("httpx",), make_plainid_httpx),
    Contender(AUTHLIB, "defaults", "httpx", ("authlib", "httpx"), _authlib_factory(None)),
    Contender(
        AUTHLIB,
        "1 s margin",
        "httpx",
        ("authlib", "httpx"),
        _authlib_factory(PEER_MARGIN),
        margin=True,
    ),
    Contender(HTTPX_AUTH, "defaults", "httpx", ("httpx_auth", "httpx"), _httpx_auth_factory(None)),
    Contender(
        HTTPX_AUTH,
        "1 s margin",
        "httpx",
        ("httpx_auth", "httpx"),
        _httpx_auth_factory(PEER_MARGIN),
        margin=True,
    ),
    Contender(
        AIOHTTP_OAUTH2,
        "defaults",
        "aiohttp",
        ("aiohttp_oauth2_client",),
        _aiohttp_oauth2_factory(None),
    ),
    Contender(
        AIOHTTP_OAUTH2,
        "1 s margin",
        "aiohttp",
        ("aiohttp_oauth2_client",),
        _aiohttp_oauth2_factory(PEER_MARGIN),
        margin=True,
    ),
    Contender(FLOOR, "aiohttp", "aiohttp", ("aiohttp",), make_aiohttp_floor, floor=True),
    Contender(FLOOR, "httpx", "httpx", ("httpx",), make_httpx_floor, floor=True),
)


def by_label(label: str) -> Contender:
    for contender in CONTENDERS:
        if contender.label == label:
            return contender
    raise KeyError(label)


def floor_for(contender: Contender) -> Contender:
    return by_label(f"{FLOOR} ({contender.http})")
