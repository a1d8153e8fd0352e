"""TokenProvider: single-flight fetches, refresh ahead of expiry, loops and lifecycle.

How a call flows: ``get_token`` answers from the cache while the token is FRESH (the hot
path: no await of anything else). A STALE token is answered at once and one background
refresh starts. With no usable token, callers await one shared fetch ("flight") per cache
key per process. A flight runs as a task; callers await it through ``asyncio.shield`` so a
cancelled caller never cancels it for the others.

Nothing here is bound to an event loop: flights remember their loop, callers on another
running loop wait through a thread-safe future, and flights of a closed loop are forgotten.
The HTTP session for token requests lives only as long as one fetch (fetches are rare), so
no session outlives its loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
import attrs

from ._cache import CacheKey, TokenCache, default_cache
from ._endpoint import RetryPolicy, request_token, resolve_endpoint, resolve_proxy
from ._log import LOGGER_NAME
from ._middleware import provider_session
from ._secret import Secret
from ._token import RefreshSchedule, Token, TokenState, schedule_for
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    ProviderClosedError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable, Mapping
    from types import TracebackType

    from yarl import URL

__all__ = ["ProviderStats", "TokenProvider"]

logger = logging.getLogger(LOGGER_NAME)

#: First wait after a failed background refresh, doubled per failure up to the maximum.
BACKGROUND_RETRY_BASE: Final = 1.0
BACKGROUND_RETRY_MAX: Final = 60.0
#: Shortest wait between failed background refreshes, however close the token is to expiry.
BACKGROUND_RETRY_FLOOR: Final = 0.25

ENV_CLIENT_ID: Final = "PLAINID_CLIENT_ID"
ENV_CLIENT_SECRET: Final = "PLAINID_CLIENT_SECRET"  # noqa: S105 (a variable name)
ENV_CLIENT_SECRET_FILE: Final = "PLAINID_CLIENT_SECRET_FILE"  # noqa: S105 (a variable name)
ENV_REGION: Final = "PLAINID_REGION"
ENV_BASE_URL: Final = "PLAINID_BASE_URL"


@attrs.define
class ProviderStats:
    """Counters of what a provider did.

    Attributes:
        token_requests: HTTP requests sent to the token endpoint (retries included).
        tokens_fetched: Fetches that ended with a new token.
        cache_hits: Calls answered from the cache without waiting.
        waits: Calls that had to wait for a fetch (no usable token was cached).
        background_refreshes: Refreshes started ahead of expiry while the token was STALE.
        failures: Fetches that ended in an error (after their retries).
    """

    token_requests: int = 0
    tokens_fetched: int = 0
    cache_hits: int = 0
    waits: int = 0
    background_refreshes: int = 0
    failures: int = 0


@attrs.define(eq=False)
class _Flight:
    """One token fetch in progress, shared by every caller of one cache key."""

    task: asyncio.Task[Token]
    loop: asyncio.AbstractEventLoop
    future: concurrent.futures.Future[Token]
    owner: TokenProvider
    wake: asyncio.Event  # set once callers wait for a background refresh
    started_in_background: bool

    def hurry(self) -> None:
        """Callers now wait for this fetch: cut short the retry backoff it may be sleeping.

        A background refresh backs off at leisure while the cached token is usable; once
        callers wait, the next attempt should not wait out a long step.
        """
        if not self.started_in_background or self.wake.is_set():
            return
        if self.loop is asyncio.get_running_loop():
            self.wake.set()
        else:
            self.loop.call_soon_threadsafe(self.wake.set)

    def usable_from(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a caller on ``loop`` can wait for this flight."""
        if self.task.done():
            return False
        return self.loop is loop or (self.loop.is_running() and not self.loop.is_closed())


@attrs.define
class _Episode:
    """Failures in a row for one cache key: when to try again, whether we warned."""

    failures: int = 0
    failed_at: float = 0.0
    retry_at: float = 0.0


_FlightKey = tuple[int, CacheKey]
_FLIGHTS: dict[_FlightKey, _Flight] = {}
_EPISODES: dict[_FlightKey, _Episode] = {}
_REGISTRY_LOCK = threading.Lock()
_sleep = asyncio.sleep  # tests replace it to see the backoff


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty or blank")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigurationError(f"{name} must not contain control characters")
    return value


def _read_env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value is not None and value.strip() else None


def _secret_or_none(value: str | None) -> Secret | None:
    return None if value is None else Secret(value)


def _wrap_secret(client_secret: object) -> Secret:
    if isinstance(client_secret, Secret):
        _check_text("client_secret", client_secret.reveal())
        return client_secret
    return Secret(_check_text("client_secret", client_secret))


def strip_one_newline(text: str) -> str:
    """Drop one trailing line break (LF or CRLF), as editors and ``echo`` add one."""
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text


def read_secret_file(path: str | os.PathLike[str], *, source: str) -> str:
    """Read a client secret from a file, such as a mounted Kubernetes or Docker secret.

    Args:
        path: The file.
        source: What named the file, for messages (an environment variable or a flag).

    Returns:
        The secret, without one trailing newline.

    Raises:
        ConfigurationError: The file cannot be read or holds no secret; the message names
            ``source`` and the path, never the content.
    """
    try:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123 (str and PathLike alike)
            secret = strip_one_newline(file.read())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConfigurationError(f"cannot read {source} {os.fspath(path)!r}: {reason}") from None
    if not secret.strip():
        raise ConfigurationError(f"{source} {os.fspath(path)!r} is empty")
    return secret


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name}={value!r} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name}={value!r} must be a finite number {bound}")
    return seconds


class TokenProvider:
    """Gets, caches and refreshes PlainID access tokens for one API client.

    Construct it anywhere (no I/O, no event loop needed), share it, and call
    :meth:`get_token` as often as you like: concurrent callers share one token request,
    tokens are refreshed in the background before they expire, and a short outage of the
    token endpoint fails no call while the cached token is still valid.

    Args:
        client_id: The PlainID API client id.
        client_secret: The PlainID API client secret. Never logged or shown.
        region: The PlainID region, e.g. ``"us1"``; the API is then
            ``https://api.{region}.plainid.io``.
        base_url: Instead of ``region``, the base URL of a customer-hosted deployment
            (https, or http for loopback hosts). A path prefix is kept.
        refresh_margin: Seconds before expiry at which the background refresh window opens.
            Default: min(half the lifetime, 1 h), less a small random jitter. Capped at half
            the lifetime.
        cache: Where tokens are kept. Default: the process-wide memory cache, so providers
            with the same credentials share one token.
        session: An :class:`aiohttp.ClientSession` for token requests (its middlewares are
            bypassed). Never closed by the provider. Default: a short-lived session per fetch.
        timeout: Time limit of one token request attempt, seconds.
        retry: Retry policy for token requests (attempts, backoff, deadline).
        ssl: TLS verification for token requests, as aiohttp's ``ssl=``: an
            :class:`ssl.SSLContext` for a private CA, or ``None`` for the default trust store.
        proxy: An HTTP proxy for token requests, such as ``"http://proxy.internal:3128"``
            (credentials as ``http://user:password@host:port``; they never show).
        trust_env: Without ``proxy``, take the proxy for token requests from
            ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``. ``~/.netrc`` is never read.
            A ``session`` created with ``trust_env=True`` counts as ``True`` here.

    Raises:
        ConfigurationError: A parameter is missing or invalid; the message names it.
    """

    __slots__ = (
        "_api_url",
        "_cache",
        "_client_id",
        "_client_secret",
        "_closed",
        "_hot",
        "_key",
        "_proxy",
        "_refresh_margin",
        "_retry",
        "_session",
        "_ssl",
        "_timeout",
        "_token_url",
        "_trust_env",
        "stats",
    )

    def __init__(
        self,
        client_id: str,
        client_secret: str | Secret,
        *,
        region: str | None = None,
        base_url: str | URL | None = None,
        refresh_margin: float | None = None,
        cache: TokenCache | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        ssl: ssl.SSLContext | bool | None = None,
        proxy: str | URL | None = None,
        trust_env: bool = False,
    ) -> None:
        """Validate the configuration; do no I/O."""
        self._client_secret = _wrap_secret(client_secret)
        # From here on no frame holds the secret in a plain local (tracebacks with locals).
        del client_secret
        self._client_id = _check_text("client_id", client_id)
        self._proxy = resolve_proxy(proxy)
        if not isinstance(trust_env, bool):
            raise ConfigurationError(f"trust_env must be a bool, not {type(trust_env).__name__}")
        self._trust_env = trust_env
        endpoint = resolve_endpoint(region=region, base_url=base_url)
        self._api_url = endpoint.api_url
        self._token_url = endpoint.token_url
        self._refresh_margin = (
            None
            if refresh_margin is None
            else _check_seconds("refresh_margin", refresh_margin, allow_zero=True)
        )
        if cache is not None and not isinstance(cache, TokenCache):
            raise ConfigurationError("cache must implement plainid_async.TokenCache")
        self._cache: TokenCache = default_cache() if cache is None else cache
        if session is not None:
            if not isinstance(session, aiohttp.ClientSession):
                raise ConfigurationError("session must be an aiohttp.ClientSession")
            # aiohttp would add these to the token request: the credentials go in the form
            # body only, never as HTTP Basic or beside another Authorization header.
            if session.auth is not None or "Authorization" in session.headers:
                raise ConfigurationError(
                    "session must not carry auth= or a default Authorization header: "
                    "token requests send the credentials in the form body only"
                )
        self._session = session
        self._timeout = _check_seconds("timeout", timeout, allow_zero=False)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a plainid_async.RetryPolicy")
        self._retry = RetryPolicy() if retry is None else retry
        self._ssl = ssl
        self._key = CacheKey.for_credentials(str(self._token_url), client_id, self._client_secret)
        # (token, refresh_at, usable_until) of the token this provider last handed out.
        self._hot: tuple[Token, float, float] | None = None
        self._closed = False
        self.stats = ProviderStats()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        refresh_margin: float | None = None,
        cache: TokenCache | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        ssl: ssl.SSLContext | bool | None = None,
        proxy: str | URL | None = None,
        trust_env: bool = False,
    ) -> TokenProvider:
        """Build a provider from ``PLAINID_CLIENT_ID``, ``PLAINID_CLIENT_SECRET`` and one of
        ``PLAINID_REGION`` / ``PLAINID_BASE_URL``.

        Instead of ``PLAINID_CLIENT_SECRET``, ``PLAINID_CLIENT_SECRET_FILE`` may name a file
        that holds the secret (a mounted Kubernetes or Docker secret; one trailing newline is
        dropped).

        Args:
            environ: Where to read the variables; defaults to :data:`os.environ`.
            refresh_margin: As for the constructor.
            cache: As for the constructor.
            session: As for the constructor.
            timeout: As for the constructor.
            retry: As for the constructor.
            ssl: As for the constructor.
            proxy: As for the constructor.
            trust_env: As for the constructor.

        Raises:
            ConfigurationError: A variable is missing, blank or invalid; the message names it.
        """  # noqa: D205 (the summary names four variables and needs two lines)
        # No local of this frame holds the environment or the secret in plain text once
        # they are read: a traceback with locals (Sentry's default) would show them.
        env = os.environ if environ is None else environ
        client_id, region, base_url = (
            _read_env(env, name) for name in (ENV_CLIENT_ID, ENV_REGION, ENV_BASE_URL)
        )
        client_secret = _secret_or_none(_read_env(env, ENV_CLIENT_SECRET))
        secret_file = _read_env(env, ENV_CLIENT_SECRET_FILE)
        del env, environ
        if client_secret is not None and secret_file is not None:
            raise ConfigurationError(
                f"set only one of {ENV_CLIENT_SECRET} and {ENV_CLIENT_SECRET_FILE}"
            )
        if secret_file is not None:
            client_secret = Secret(read_secret_file(secret_file, source=ENV_CLIENT_SECRET_FILE))
        if client_id is None:
            raise ConfigurationError(f"environment variable {ENV_CLIENT_ID} is not set")
        if client_secret is None:
            raise ConfigurationError(
                f"environment variable {ENV_CLIENT_SECRET} (or {ENV_CLIENT_SECRET_FILE}) is not set"
            )
        if (region is None) == (base_url is None):
            raise ConfigurationError(f"set exactly one of {ENV_REGION} and {ENV_BASE_URL}")
        try:
            return cls(
                client_id,
                client_secret,
                region=region,
                base_url=base_url,
                refresh_margin=refresh_margin,
                cache=cache,
                session=session,
                timeout=timeout,
                retry=retry,
                ssl=ssl,
                proxy=proxy,
                trust_env=trust_env,
            )
        except ConfigurationError as exc:
            source = ENV_REGION if region is not None else ENV_BASE_URL
            raise ConfigurationError(f"{exc} (from {source} or {ENV_CLIENT_ID})") from None

    # -- public properties -------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The API client id."""
        return self._client_id

    @property
    def api_url(self) -> URL:
        """The API base URL, e.g. ``URL("https://api.us1.plainid.io")``."""
        return self._api_url

    @property
    def token_url(self) -> URL:
        """The token endpoint URL."""
        return self._token_url

    @property
    def cache(self) -> TokenCache:
        """The token cache in use."""
        return self._cache

    @property
    def cache_key(self) -> CacheKey:
        """The cache key of the current credentials."""
        return self._key

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        """Show the client id and API URL; never the secret or a token."""
        # getattr: tracebacks with locals show a provider whose __init__ raised, half made.
        state = "closed" if getattr(self, "_closed", False) else "open"
        client_id, api_url = getattr(self, "_client_id", None), getattr(self, "_api_url", None)
        return f"<TokenProvider client_id={client_id!r} api_url='{api_url}' {state}>"

    # -- tokens ------------------------------------------------------------------------

    async def get_token(self, *, force_refresh: bool = False) -> Token:
        """Return a valid access token.

        FRESH: returned at once. STALE: returned at once, and one background refresh starts.
        None usable: waits for the one shared fetch.

        Args:
            force_refresh: Drop the cached token (if it is still the one cached when this
                call starts) and wait for a new one. Concurrent forced calls share one fetch.

        Returns:
            The token.

        Raises:
            TokenRequestError: No token could be obtained (a subclass says why).
            ProviderClosedError: The provider is closed.
        """
        hot = self._hot
        if hot is not None and not force_refresh:
            token, refresh_at, _ = hot
            if time.monotonic() < refresh_at and self._cache.get(self._key) is token:
                self.stats.cache_hits += 1
                return token
        return await self._get_token_slow(force_refresh=force_refresh)

    def token_state(self) -> TokenState | None:
        """Where the cached token stands now, for health checks and metrics.

        Returns:
            FRESH, STALE or EXPIRED for the token cached in this process for these
            credentials, or ``None`` when there is none. Does no I/O and starts nothing.
        """
        token = self._cache.get(self._key)
        if token is None:
            return None
        _, refresh_at, usable_until = self._schedule(token)
        return RefreshSchedule(refresh_at, usable_until).state(time.monotonic())

    def invalidate(self, token: Token) -> bool:
        """Drop ``token`` if it is still the cached one, so the next call fetches anew.

        Compare-and-drop: when many requests see a 401 for the same token, the first
        invalidates it and the rest do nothing, so one refresh follows.

        Args:
            token: The token that was rejected.

        Returns:
            Whether it was dropped.
        """
        return self._discard(self._key, token)

    def report_unauthorized(self, token: Token) -> bool:
        """Report that PlainID's API answered 401 to a request that carried ``token``.

        The integrations (:class:`~plainid_async.BearerAuthMiddleware`, the httpx
        ``BearerAuth``) call this; so can your own code that sends the token some other way.
        The token is dropped (compare-and-drop, as :meth:`invalidate`).

        Args:
            token: The token the API rejected.

        Returns:
            Whether a retry with a token from :meth:`get_token` is worth it.
        """
        self.invalidate(token)
        return True

    def rotate_secret(self, client_secret: str | Secret) -> None:
        """Use a new client secret from now on, without failing calls in flight.

        The next call fetches a token with the new secret; a fetch still running with the
        old secret that is rejected is retried with the new one.

        Raises:
            ConfigurationError: The new secret is empty or blank.
        """
        self._client_secret = _wrap_secret(client_secret)
        del client_secret  # no plain local holds it from here on
        self._key = CacheKey.for_credentials(
            str(self._token_url), self._client_id, self._client_secret
        )
        self._hot = None
        logger.info("client secret of client %s replaced", self._client_id)

    async def _get_token_slow(self, *, force_refresh: bool) -> Token:
        self._check_open()
        key = self._key
        if force_refresh:
            current = self._cache.get(key)
            if current is not None:
                self._discard(key, current)
        while True:
            token = self._cache.get(key)
            if token is not None:
                _, refresh_at, usable_until = self._schedule(token)
                now = time.monotonic()
                if now < usable_until:
                    if now >= refresh_at:
                        self._refresh_in_background(key, token, usable_until)
                    self.stats.cache_hits += 1
                    return token
            self.stats.waits += 1
            try:
                return await self._wait_for_flight(key, token)
            except InvalidCredentialsError:
                if self._key == key:
                    raise
                # The secret was rotated while this fetch ran: try with the new one.
                key = self._key

    def _schedule(self, token: Token) -> tuple[Token, float, float]:
        hot = self._hot
        if hot is not None and hot[0] is token:
            return hot
        schedule = schedule_for(token, refresh_margin=self._refresh_margin, jitter=random.random())  # noqa: S311 (jitter, not crypto)
        entry = (token, schedule.refresh_at, schedule.usable_until)
        self._hot = entry
        return entry

    def _discard(self, key: CacheKey, token: Token) -> bool:
        dropped = self._cache.discard(key, token)
        if dropped:
            logger.debug("token of client %s dropped from the cache", self._client_id)
        return dropped

    # -- flights -----------------------------------------------------------------------

    def _refresh_in_background(self, key: CacheKey, token: Token, usable_until: float) -> None:
        episode = _EPISODES.get((id(self._cache), key))
        if episode is not None:
            # Back off after a failure, but never so long that an endpoint that recovers
            # while the token is still usable is asked too late: wait at most half the
            # usable time that was left at the failure (and at least a floor).
            left = usable_until - episode.failed_at
            cap = episode.failed_at + max(left / 2, BACKGROUND_RETRY_FLOOR)
            if time.monotonic() < min(episode.retry_at, cap):
                return
        self._flight(key, token, background=True)

    def _flight(self, key: CacheKey, replacing: Token | None, *, background: bool) -> _Flight:
        """Return the flight for ``key``, starting one if none is usable from this loop."""
        loop = asyncio.get_running_loop()
        flight_key = (id(self._cache), key)
        with _REGISTRY_LOCK:
            flight = _FLIGHTS.get(flight_key)
            if flight is not None and flight.usable_from(loop):
                return flight
            future: concurrent.futures.Future[Token] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            wake = asyncio.Event()
            task = loop.create_task(
                self._fetch(key, replacing, wake),
                name=f"plainid-async token fetch {key.client_id}",
            )
            flight = _Flight(
                task=task,
                loop=loop,
                future=future,
                owner=self,
                wake=wake,
                started_in_background=background,
            )
            _FLIGHTS[flight_key] = flight
        if background:
            self.stats.background_refreshes += 1
            logger.debug("background refresh started for client %s", key.client_id)
        task.add_done_callback(lambda done: self._flight_done(flight_key, flight, done))
        return flight

    async def _wait_for_flight(self, key: CacheKey, replacing: Token | None) -> Token:
        second_chance = True
        while True:
            self._check_open()
            flight = self._flight(key, replacing, background=False)
            flight.hurry()
            try:
                if flight.loop is asyncio.get_running_loop():
                    return await asyncio.shield(flight.task)
                return await asyncio.shield(asyncio.wrap_future(flight.future))
            except TokenRequestError as error:
                # A background refresh may have spent most of its attempts before anyone
                # waited for it: when it fails, waiting callers get one fetch of their own
                # with the full retry budget before they see an error.
                if not (error.retryable and flight.started_in_background and second_chance):
                    raise
                second_chance = False
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # The flight itself was cancelled (its provider closed or its loop ended),
                # not this caller: start or join another.

    async def _fetch(self, key: CacheKey, replacing: Token | None, wake: asyncio.Event) -> Token:
        async with self._cache.fetch_lock(key):
            # Another process (shared cache) may have fetched while we waited for the lock.
            shared = await self._cache.load(key)
            if shared is not None and shared != replacing:
                _, refresh_at, _ = self._schedule(shared)
                if time.monotonic() < refresh_at:
                    return shared
            token = await self._request(key, wake)
            await self._cache.store(key, token)
            self.stats.tokens_fetched += 1
            logger.info(
                "token fetched for client %s from %s (expires in %g s)",
                key.client_id,
                self._token_url,
                token.expires_in,
            )
            return token

    async def _request(self, key: CacheKey, wake: asyncio.Event) -> Token:
        def count() -> None:
            self.stats.token_requests += 1

        hurried = 0  # backoff steps since callers came waiting

        async def backoff(delay: float) -> None:
            # Sleep between attempts. Once callers wait (see _Flight.hurry), the sleep under
            # way ends, the next attempt goes at once, and the backoff starts over from its
            # first step: they are not held by a long step chosen while nobody waited.
            nonlocal hurried
            if not wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                if wake.is_set():
                    hurried = 1
                return
            if hurried:
                jitter = random.random()  # noqa: S311 (jitter, not crypto)
                await _sleep(min(delay, self._retry.backoff(hurried, jitter)))
            hurried += 1

        async def send(session: aiohttp.ClientSession) -> Token:
            return await request_token(
                session,
                self._token_url,
                client_id=key.client_id,
                client_secret=key.client_secret,
                timeout=self._timeout,
                retry=self._retry,
                ssl=self._ssl,
                proxy=self._proxy,
                # A session the caller made with trust_env=True asked for the env's proxy.
                trust_env=self._trust_env or (self._session is not None and session.trust_env),
                on_attempt=count,
                sleep=backoff,
            )

        if self._session is not None:
            return await send(self._session)
        async with aiohttp.ClientSession(trust_env=False) as session:
            return await send(session)

    def _flight_done(
        self, flight_key: _FlightKey, flight: _Flight, task: asyncio.Task[Token]
    ) -> None:
        with _REGISTRY_LOCK:
            if _FLIGHTS.get(flight_key) is flight:
                del _FLIGHTS[flight_key]
        if task.cancelled():
            flight.future.set_exception(asyncio.CancelledError())
            return
        error = task.exception()  # also marks it retrieved: no "never retrieved" warning
        if error is None:
            flight.future.set_result(task.result())
            episode = _EPISODES.pop(flight_key, None)
            if episode is not None:
                logger.info(
                    "token endpoint recovered for client %s after %d failed fetches",
                    flight_key[1].client_id,
                    episode.failures,
                )
            return
        flight.future.set_exception(error)
        self.stats.failures += 1
        episode = _EPISODES.setdefault(flight_key, _Episode())
        episode.failures += 1
        delay = min(
            BACKGROUND_RETRY_MAX, BACKGROUND_RETRY_BASE * 2.0 ** min(episode.failures - 1, 16)
        )
        episode.failed_at = time.monotonic()
        episode.retry_at = episode.failed_at + delay * (0.5 + random.random() / 2)  # noqa: S311
        if episode.failures == 1:
            logger.warning(
                "token fetch for client %s failed: %s; retrying with backoff (a cached "
                "token that is still valid keeps being served)",
                flight_key[1].client_id,
                error if isinstance(error, TokenRequestError) else type(error).__name__,
            )
        else:
            logger.debug(
                "token fetch for client %s failed again (%d in a row): %s",
                flight_key[1].client_id,
                episode.failures,
                error if isinstance(error, TokenRequestError) else type(error).__name__,
            )

    # -- aiohttp -----------------------------------------------------------------------

    def session(
        self,
        *,
        origins: Iterable[str | URL] | None = None,
        **kwargs: Any,  # noqa: ANN401 (aiohttp.ClientSession options)
    ) -> aiohttp.ClientSession:
        """Open an :class:`aiohttp.ClientSession` that calls PlainID's APIs with this provider.

        ``base_url`` defaults to :attr:`api_url` and a
        :class:`~plainid_async.BearerAuthMiddleware` comes first in the middleware chain;
        other keyword arguments (``middlewares``, ``headers``, ``timeout``, ``connector``, …)
        go to :class:`aiohttp.ClientSession`.

        Args:
            origins: More origins that get the token, as for the middleware.
            **kwargs: Options of :class:`aiohttp.ClientSession`.

        Returns:
            The session; close it (``async with``) when done.

        Raises:
            ConfigurationError: ``origins`` is invalid, or ``base_url`` is on an origin that
                gets no token.
        """
        return provider_session(self, origins=origins, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderClosedError("this TokenProvider is closed")

    async def close(self) -> None:
        """Cancel this provider's background work. Idempotent.

        The provider creates no long-lived HTTP session (each fetch uses a short-lived one),
        and never closes a session passed in. Using the provider afterwards raises
        :class:`~plainid_async.ProviderClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        self._hot = None
        loop = asyncio.get_running_loop()
        with _REGISTRY_LOCK:
            mine = [f for f in _FLIGHTS.values() if f.owner is self and not f.task.done()]
        local = []
        for flight in mine:
            if flight.loop is loop:
                flight.task.cancel()
                local.append(flight.task)
            elif flight.loop.is_running():
                flight.loop.call_soon_threadsafe(flight.task.cancel)
        if local:
            await asyncio.gather(*local, return_exceptions=True)

    async def __aenter__(self) -> Self:
        """Return the provider, checking it is open."""
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the provider."""
        await self.close()
