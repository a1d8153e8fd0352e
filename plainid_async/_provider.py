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
import itertools
import logging
import math
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import aiohttp
import attrs

from ._cache import CacheKey, TokenCache, default_cache
from ._endpoint import RetryPolicy, _clean_text, request_token, resolve_endpoint
from ._events import BUS, EventKind, FetchReason, Listener, TokenEvent, publish
from ._token import RefreshSchedule, Token, TokenState, schedule_for
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    ProviderClosedError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from yarl import URL

__all__ = ["HealthReport", "ProviderStats", "TokenProvider"]

logger = logging.getLogger("plainid_async")

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


_HIT: Final = EventKind.HIT
_STALE: Final = EventKind.STALE
_WAIT: Final = EventKind.WAIT
_COOLDOWN: Final = EventKind.COOLDOWN


@attrs.define
class ProviderStats:
    """Counters of what a provider did, fed by its event stream (see :class:`TokenEvent`).

    Lookups are counted by the provider that answered the call; fetches by the provider
    that started them (providers with the same credentials share fetches).

    Attributes:
        token_requests: HTTP requests sent to the token endpoint, retries included; counted
            when their fetch ends.
        tokens_fetched: Fetches that ended with a new token from the token endpoint.
        cache_hits: ``get_token()`` calls answered from the cache without waiting (FRESH or
            STALE tokens).
        stale_hits: Of those, the calls answered with a STALE token, while a background
            refresh ran or was due.
        waits: ``get_token()`` calls that waited for a fetch (no usable token was cached).
        background_refreshes: Fetches started ahead of expiry, in the background, because
            the cached token was STALE.
        forced_refreshes: Fetches started by ``get_token(force_refresh=True)``.
        unauthorized_refreshes: Fetches started after the API answered 401 to the cached
            token (:meth:`TokenProvider.report_unauthorized`).
        retries: HTTP attempts that failed and were retried.
        failures: Fetches that ended in an error, after their retries.
        cooldown_rejections: Calls that failed at once, without a token request, during a
            failure cool-down.
    """

    token_requests: int = 0
    tokens_fetched: int = 0
    cache_hits: int = 0
    stale_hits: int = 0
    waits: int = 0
    background_refreshes: int = 0
    forced_refreshes: int = 0
    unauthorized_refreshes: int = 0
    retries: int = 0
    failures: int = 0
    cooldown_rejections: int = 0

    def count_lookup(self, kind: EventKind) -> None:
        """Count one lookup event (HIT, STALE, WAIT or COOLDOWN) by its kind alone.

        Lookups are the hot path: their event object is built only for listeners.
        """
        if kind is _HIT:
            self.cache_hits += 1
        elif kind is _STALE:
            self.cache_hits += 1
            self.stale_hits += 1
        elif kind is _WAIT:
            self.waits += 1
        elif kind is _COOLDOWN:
            self.cooldown_rejections += 1

    def count(self, event: TokenEvent) -> None:
        """Count one event of any other kind."""
        kind = event.kind
        if kind is EventKind.FETCH_STARTED:
            if event.reason is FetchReason.REFRESH:
                self.background_refreshes += 1
            elif event.reason is FetchReason.FORCED:
                self.forced_refreshes += 1
            elif event.reason is FetchReason.UNAUTHORIZED:
                self.unauthorized_refreshes += 1
        elif kind is EventKind.ATTEMPT_FAILED:
            self.retries += 1
        elif kind is EventKind.FETCH_SUCCEEDED:
            self.token_requests += event.attempts or 0
            if event.attempts:
                self.tokens_fetched += 1
        elif kind is EventKind.FETCH_FAILED:
            self.token_requests += event.attempts or 0
            self.failures += 1
        elif kind is EventKind.FETCH_CANCELLED:
            self.token_requests += event.attempts or 0


@attrs.frozen(kw_only=True)
class HealthReport:
    """Where a provider's token stands, from :meth:`TokenProvider.health`.

    Attributes:
        state: FRESH, STALE or EXPIRED for the token cached for the provider's
            credentials, or ``None`` when none is cached.
        expires_in: Seconds until that token expires (0 once expired), or ``None``.
        refresh_in: Seconds until its refresh window opens (0 once open), or ``None``.
        failures: Fetches that failed in a row, the latest included; 0 after a success.
            Like ``last_error`` and ``last_success``, it follows the fetches this provider
            started (providers with the same credentials share fetches).
        last_error: The error of the latest failed fetch (redacted, one line), or
            ``None`` if none failed. A later success does not clear it: ``failures`` says
            whether it is current.
        last_success: Wall-clock time (seconds since the epoch) of the latest successful
            fetch, or ``None``.
        source: Where the token is served from: ``"memory"`` (the memory cache, or a
            Redis cache that cannot reach Redis right now), ``"redis"`` (a Redis cache that
            reaches Redis) or ``"none"`` (no token cached).
    """

    state: TokenState | None
    expires_in: float | None
    refresh_in: float | None
    failures: int
    last_error: str | None
    last_success: float | None
    source: Literal["memory", "redis", "none"]

    @property
    def ready(self) -> bool:
        """Whether a call can be answered from the cache now (the token is FRESH or STALE)."""
        return self.state is TokenState.FRESH or self.state is TokenState.STALE

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready values, with ``ready``; ``state`` as text, e.g. ``"fresh"``."""
        return {
            "ready": self.ready,
            "state": None if self.state is None else self.state.value,
            "expires_in": self.expires_in,
            "refresh_in": self.refresh_in,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_success": self.last_success,
            "source": self.source,
        }


@attrs.define
class _Health:
    """The health record of one provider, fed by its fetch events."""

    failures: int = 0
    last_error: str | None = None
    last_success: float | None = None

    def take(self, event: TokenEvent) -> None:
        if event.kind is EventKind.FETCH_SUCCEEDED:
            self.failures = 0
            self.last_success = event.timestamp
        elif event.kind is EventKind.FETCH_FAILED:
            self.failures = event.failures or self.failures + 1
            self.last_error = event.error


_fetch_ids = itertools.count(1)


@attrs.define(eq=False)
class _Fetch:
    """What the event stream says about one fetch: its number, reason and attempts."""

    key: CacheKey = attrs.field(repr=False)
    reason: FetchReason
    id: int = attrs.field(factory=lambda: next(_fetch_ids))
    started: float = attrs.field(factory=time.monotonic)
    attempts: int = 0
    attempt_started: float = 0.0
    failures: int | None = None  # set when it ends

    def attempt(self) -> None:
        """An HTTP attempt starts."""
        self.attempts += 1
        self.attempt_started = time.monotonic()


@attrs.define(eq=False)
class _Flight:
    """One token fetch in progress, shared by every caller of one cache key."""

    task: asyncio.Task[Token]
    loop: asyncio.AbstractEventLoop
    future: concurrent.futures.Future[Token]
    owner: TokenProvider
    wake: asyncio.Event  # set once callers wait for a background refresh
    started_in_background: bool
    fetch: _Fetch

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
        on_event: Called with each :class:`~plainid_async.TokenEvent` of this provider
            (lookups it answered, fetches it started), synchronously, in the event loop
            that made the decision: keep it short. An exception in it is logged once and
            never fails a call.

    Raises:
        ConfigurationError: A parameter is missing or invalid; the message names it.
    """

    __slots__ = (
        "_api_url",
        "_cache",
        "_client_id",
        "_client_secret",
        "_closed",
        "_health",
        "_hot",
        "_key",
        "_listener",
        "_refresh_margin",
        "_retry",
        "_session",
        "_ssl",
        "_timeout",
        "_token_url",
        "_unauthorized",
        "stats",
    )

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        region: str | None = None,
        base_url: str | URL | None = None,
        refresh_margin: float | None = None,
        cache: TokenCache | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        ssl: ssl.SSLContext | bool | None = None,
        on_event: Callable[[TokenEvent], object] | None = None,
    ) -> None:
        """Validate the configuration; do no I/O."""
        self._client_id = _check_text("client_id", client_id)
        self._client_secret = _check_text("client_secret", client_secret)
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
        self._key = CacheKey.for_credentials(str(self._token_url), client_id, client_secret)
        # (token, refresh_at, usable_until) of the token this provider last handed out.
        self._hot: tuple[Token, float, float] | None = None
        self._closed = False
        if on_event is not None and not callable(on_event):
            raise ConfigurationError(f"on_event must be a callable, not {type(on_event).__name__}")
        self._listener = None if on_event is None else Listener(on_event)
        self._unauthorized: CacheKey | None = None  # the key whose token a 401 dropped
        self._health = _Health()
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
        on_event: Callable[[TokenEvent], object] | None = None,
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
            on_event: As for the constructor.

        Raises:
            ConfigurationError: A variable is missing, blank or invalid; the message names it.
        """  # noqa: D205 (the summary names four variables and needs two lines)
        env = os.environ if environ is None else environ

        def read(name: str) -> str | None:
            value = env.get(name)
            return value if value is not None and value.strip() else None

        client_id, client_secret = read(ENV_CLIENT_ID), read(ENV_CLIENT_SECRET)
        region, base_url = read(ENV_REGION), read(ENV_BASE_URL)
        secret_file = read(ENV_CLIENT_SECRET_FILE)
        if client_secret is not None and secret_file is not None:
            raise ConfigurationError(
                f"set only one of {ENV_CLIENT_SECRET} and {ENV_CLIENT_SECRET_FILE}"
            )
        if secret_file is not None:
            client_secret = read_secret_file(secret_file, source=ENV_CLIENT_SECRET_FILE)
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
                on_event=on_event,
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
        state = "closed" if self._closed else "open"
        return f"<TokenProvider client_id={self._client_id!r} api_url='{self._api_url}' {state}>"

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
                if self._listener is None and not BUS.listeners:
                    # Nobody listens: the HIT event is only counted, inline, because a
                    # method call here would cost a tenth of the hot path.
                    self.stats.cache_hits += 1
                else:
                    self._emit(_HIT, token)
                return token
        return await self._get_token_slow(force_refresh=force_refresh)

    def token_state(self) -> TokenState | None:
        """Where the cached token stands now, for health checks and metrics.

        Returns:
            FRESH, STALE or EXPIRED for the token cached in this process for these
            credentials, or ``None`` when there is none. Does no I/O and starts nothing.
        """
        token = self._cache.get(self._key)
        return None if token is None else self._state_of(token, time.monotonic())

    def health(self) -> HealthReport:
        """Report where this provider's token stands, for readiness probes and dashboards.

        Does no I/O and starts nothing; cheap enough to call on every probe.

        Returns:
            The report: the cached token's state and timings, failed fetches in a row,
            the latest error (redacted) and success, and where the token is served from.
        """
        token = self._cache.get(self._key)
        health = self._health
        state = expires_in = refresh_in = None
        source: Literal["memory", "redis", "none"] = "none"
        if token is not None:
            now = time.monotonic()
            state = self._state_of(token, now)
            _, refresh_at, _ = self._schedule(token)
            expires_in = max(0.0, token.expires_at_monotonic - now)
            refresh_in = max(0.0, refresh_at - now)
            source = "redis" if getattr(self._cache, "source", None) == "redis" else "memory"
        return HealthReport(
            state=state,
            expires_in=expires_in,
            refresh_in=refresh_in,
            failures=health.failures,
            last_error=health.last_error,
            last_success=health.last_success,
            source=source,
        )

    def _state_of(self, token: Token, now: float) -> TokenState:
        _, refresh_at, usable_until = self._schedule(token)
        return RefreshSchedule(refresh_at, usable_until).state(now)

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
        if self.invalidate(token):
            # The next fetch for these credentials is one because of this 401.
            self._unauthorized = self._key
        return True

    def rotate_secret(self, client_secret: str) -> None:
        """Use a new client secret from now on, without failing calls in flight.

        The next call fetches a token with the new secret; a fetch still running with the
        old secret that is rejected is retried with the new one.

        Raises:
            ConfigurationError: The new secret is empty or blank.
        """
        self._client_secret = _check_text("client_secret", client_secret)
        self._key = CacheKey.for_credentials(str(self._token_url), self._client_id, client_secret)
        self._hot = None
        logger.info("client secret of client %s replaced", self._client_id)

    async def _get_token_slow(self, *, force_refresh: bool) -> Token:
        self._check_open()
        key = self._key
        reason = self._reason(key, force_refresh=force_refresh)
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
                    stale = now >= refresh_at
                    if stale:
                        self._refresh_in_background(key, token, usable_until)
                    self._emit(_STALE if stale else _HIT, token)
                    return token
            self._emit(_WAIT)
            try:
                return await self._wait_for_flight(key, token, reason)
            except InvalidCredentialsError:
                if self._key == key:
                    raise
                # The secret was rotated while this fetch ran: try with the new one.
                key = self._key

    def _reason(self, key: CacheKey, *, force_refresh: bool) -> FetchReason:
        """Why a fetch this call may start would run; takes the mark a 401 left."""
        unauthorized, self._unauthorized = self._unauthorized, None
        if force_refresh:
            return FetchReason.FORCED
        return FetchReason.UNAUTHORIZED if unauthorized == key else FetchReason.COLD

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
        self._flight(key, token, FetchReason.REFRESH)

    def _flight(self, key: CacheKey, replacing: Token | None, reason: FetchReason) -> _Flight:
        """Return the flight for ``key``, starting one if none is usable from this loop."""
        background = reason is FetchReason.REFRESH
        loop = asyncio.get_running_loop()
        flight_key = (id(self._cache), key)
        with _REGISTRY_LOCK:
            flight = _FLIGHTS.get(flight_key)
            if flight is not None and flight.usable_from(loop):
                return flight
            future: concurrent.futures.Future[Token] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            wake = asyncio.Event()
            fetch = _Fetch(key, reason)
            task = loop.create_task(
                self._fetch(key, replacing, wake, fetch),
                name=f"plainid-async token fetch {key.client_id}",
            )
            flight = _Flight(
                task=task,
                loop=loop,
                future=future,
                owner=self,
                wake=wake,
                started_in_background=background,
                fetch=fetch,
            )
            _FLIGHTS[flight_key] = flight
        self._emit(EventKind.FETCH_STARTED, fetch=fetch)
        task.add_done_callback(lambda done: self._flight_done(flight_key, flight, done))
        return flight

    async def _wait_for_flight(
        self, key: CacheKey, replacing: Token | None, reason: FetchReason
    ) -> Token:
        second_chance = True
        while True:
            self._check_open()
            flight = self._flight(key, replacing, reason)
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

    async def _fetch(
        self, key: CacheKey, replacing: Token | None, wake: asyncio.Event, fetch: _Fetch
    ) -> Token:
        async with self._cache.fetch_lock(key):
            # Another process (shared cache) may have fetched while we waited for the lock.
            shared = await self._cache.load(key)
            if shared is not None and shared != replacing:
                _, refresh_at, _ = self._schedule(shared)
                if time.monotonic() < refresh_at:
                    return shared
            token = await self._request(key, wake, fetch)
            await self._cache.store(key, token)
            return token

    async def _request(self, key: CacheKey, wake: asyncio.Event, fetch: _Fetch) -> Token:
        def retrying(error: TokenRequestError, delay: float) -> None:
            self._emit(EventKind.ATTEMPT_FAILED, fetch=fetch, error=error, retry_in=delay)

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
                on_attempt=fetch.attempt,
                on_retry=retrying,
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
        fetch = flight.fetch
        if task.cancelled():
            flight.future.set_exception(asyncio.CancelledError())
            self._emit(EventKind.FETCH_CANCELLED, fetch=fetch)
            return
        error = task.exception()  # also marks it retrieved: no "never retrieved" warning
        if error is None:
            token = task.result()
            flight.future.set_result(token)
            episode = _EPISODES.pop(flight_key, None)
            fetch.failures = 0 if episode is None else episode.failures
            self._emit(EventKind.FETCH_SUCCEEDED, token, fetch)
            return
        flight.future.set_exception(error)
        episode = _EPISODES.setdefault(flight_key, _Episode())
        episode.failures += 1
        delay = min(
            BACKGROUND_RETRY_MAX, BACKGROUND_RETRY_BASE * 2.0 ** min(episode.failures - 1, 16)
        )
        episode.failed_at = time.monotonic()
        episode.retry_at = episode.failed_at + delay * (0.5 + random.random() / 2)  # noqa: S311
        fetch.failures = episode.failures
        self._emit(EventKind.FETCH_FAILED, fetch=fetch, error=error)

    # -- the event stream --------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        token: Token | None = None,
        fetch: _Fetch | None = None,
        error: BaseException | None = None,
        retry_in: float | None = None,
    ) -> None:
        """Put one decision on the event stream: stats, health, the log and the listeners.

        A lookup (the hot path) is counted by its kind, and its event object is built only
        when a listener (``on_event`` or a process-wide subscriber) is there to get it.
        """
        if kind is _HIT or kind is _STALE or kind is _WAIT or kind is _COOLDOWN:
            self.stats.count_lookup(kind)
            if self._listener is None and not BUS.listeners:
                return
            event = self._event(kind, token, fetch, error, retry_in)
        else:
            event = self._event(kind, token, fetch, error, retry_in)
            self.stats.count(event)
            self._health.take(event)
        publish(event, self._listener)

    def _event(
        self,
        kind: EventKind,
        token: Token | None,
        fetch: _Fetch | None,
        error: BaseException | None,
        retry_in: float | None,
    ) -> TokenEvent:
        now = time.monotonic()
        status = None
        text = error_type = None
        if error is not None:
            error_type = type(error).__name__
            if isinstance(error, TokenRequestError):
                status = error.status
                secret = self._client_secret if fetch is None else fetch.key.client_secret
                text = _clean_text(str(error), secret)
            else:
                text = error_type
        elif kind is EventKind.FETCH_SUCCEEDED and fetch is not None and fetch.attempts:
            status = 200
        duration = attempts = reason = fetch_id = failures = None
        if fetch is not None:
            reason, fetch_id, failures = fetch.reason, fetch.id, fetch.failures
            if kind is not EventKind.FETCH_STARTED:
                attempts = fetch.attempts
                since = fetch.attempt_started if kind is EventKind.ATTEMPT_FAILED else fetch.started
                duration = now - since
        return TokenEvent(
            kind=kind,
            client_id=self._client_id,
            timestamp=time.time(),
            reason=reason,
            fetch_id=fetch_id,
            attempts=attempts,
            status=status,
            error=text,
            error_type=error_type,
            duration=duration,
            retry_in=retry_in,
            expires_in=None if token is None else token.expires_in,
            expires_at=None if token is None else token.expires_at,
            failures=failures,
        )

    # -- aiohttp -----------------------------------------------------------------------

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:  # noqa: ANN401 (aiohttp.ClientSession options)
        """Open an :class:`aiohttp.ClientSession` that calls PlainID's APIs with this provider.

        ``base_url`` defaults to :attr:`api_url` and a
        :class:`~plainid_async.BearerAuthMiddleware` comes first in the middleware chain;
        other keyword arguments (``middlewares``, ``headers``, ``timeout``, ``connector``, …)
        go to :class:`aiohttp.ClientSession`.

        Returns:
            The session; close it (``async with``) when done.
        """
        from ._middleware import provider_session  # noqa: PLC0415 (the middleware imports us)

        return provider_session(self, **kwargs)

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
