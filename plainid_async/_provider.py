"""TokenProvider: single-flight fetches, refresh ahead of expiry, loops and lifecycle.

How a call flows: ``get_token`` answers from the provider's hot slot while the token is
FRESH (no await of anything else, one identity check against the cache's state for the
key). A STALE token is answered at once and one background refresh starts. With no usable
token, callers wait for one shared fetch ("flight") per cache key per process, each for at
most its own provider's time budget.

Flights, failure streaks, cool-downs and the 401 guard live in the cache's per-key state
(:class:`~plainid_async._cache.KeyStates`), never in module globals. With a loop-free cache
(the memory cache) and no ``session=``, fetches run on the refresher's own loop
(:mod:`plainid_async._refresher`), so a refresh outlives the loop that started it. With a
``session=`` or a loop-bound cache (Redis), they run on the caller's loop, and callers on
other loops start or join another fetch as soon as that loop stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import time
import weakref
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import aiohttp
import attrs

from ._cache import CacheKey, Flight, KeyState, TokenCache, default_cache, key_states_of
from ._checks import (
    check_bool,
    check_instance,
    check_mapping,
    check_seconds,
    check_session_loop,
    check_ssl,
    check_text,
)
from ._endpoint import RetryPolicy, request_token, resolve_endpoint
from ._events import BUS, EventKind, FetchReason, Listener, TokenEvent, emit, log_level
from ._log import LOGGER_NAME
from ._middleware import provider_session
from ._proxy import resolve_proxy
from ._refresher import is_refresher_loop, refresher_loop
from ._secret import Secret
from ._settings import ENV_BASE_URL, ENV_CLIENT_ID, ENV_REGION, Settings
from ._token import RefreshSchedule, Token, TokenState, schedule_for
from ._wire import shown_text
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    ProviderClosedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType

    from yarl import URL

    from ._cache import KeyStates

__all__ = ["HealthReport", "ProviderStats", "TokenProvider"]

logger = logging.getLogger(LOGGER_NAME)

#: The longest cool-down after failed fetches with no usable token, and the longest wait
#: between failed background refreshes (seconds).
COOLDOWN_MAX: Final = 30.0
#: The n-th failed fetch in a row waits backoff step n + this (the fetch itself used the
#: first steps between its attempts): with the default policy 0.5-1 s, 1-2 s, 2-4 s, ... 30 s.
COOLDOWN_STEP_OFFSET: Final = 2
#: Shortest wait between failed background refreshes, however close the token is to expiry.
BACKGROUND_RETRY_FLOOR: Final = 0.25
#: The first 401 guard interval (seconds); it doubles on repeats, up to GUARD_MAX.
GUARD_BASE: Final = 5.0
GUARD_MAX: Final = 60.0
#: A waiter's budget beyond its provider's own worst case, so a fetch it runs itself
#: reports its own error rather than the waiter's timeout.
WAIT_GRACE: Final = 0.25
#: How often a caller waiting on a fetch of another, loop-bound loop checks that loop runs.
ORPHAN_POLL: Final = 0.05

_COLD_STATE: Final = KeyState()
_NO_TOKEN: Final = Token("-", "Bearer", 1.0, 0.0, 0.0)  # never served: its refresh_at is -inf
_COLD: Final[tuple[Token, float, KeyState]] = (_NO_TOKEN, -math.inf, _COLD_STATE)


_sleep = asyncio.sleep  # the hurried backoff's sleep; tests replace it to see the steps


class _OrphanedError(Exception):
    """The loop running a flight stopped or closed: start or join another fetch."""


@attrs.define
class ProviderStats:
    """Counters of what a provider did, counted from its event stream (see :class:`TokenEvent`).

    Lookups are counted by the provider that answered the call; fetches by the provider
    that started them (providers with the same credentials share fetches).

    Attributes:
        token_requests: HTTP requests sent to the token endpoint, retries included.
        tokens_fetched: Fetches that ended with a new token from the token endpoint.
        cache_hits: ``get_token()`` calls answered from the cache without waiting (FRESH or
            STALE tokens).
        stale_hits: Of those, the calls answered with a STALE token, while a background
            refresh ran or was due.
        waits: ``get_token()`` calls that waited for a fetch (no usable token was cached).
        background_refreshes: Fetches started ahead of expiry, in the background, because
            the cached token was STALE; a failed one tried again later counts again.
        forced_refreshes: Fetches started by ``get_token(force_refresh=True)``.
        unauthorized_refreshes: Fetches started after the API answered 401 to the cached
            token (:meth:`TokenProvider.report_unauthorized`).
        retries: HTTP attempts that failed and were retried within a fetch.
        failures: Fetches that ended in an error, after their retries, and waiting calls
            that gave up after their provider's time budget.
        cooldown_rejections: Calls that failed at once, without a token request, inside a
            cool-down after failed fetches.
        unauthorized_held: 401s from the API inside the 401 guard: the token was kept and
            the caller got the 401.
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
    unauthorized_held: int = 0


_STARTED_BY: Final = {
    FetchReason.REFRESH: "background_refreshes",
    FetchReason.FORCED: "forced_refreshes",
    FetchReason.UNAUTHORIZED: "unauthorized_refreshes",
}


def _count(  # noqa: C901 (one branch per kind)
    stats: ProviderStats, kind: EventKind, flight: Flight | None
) -> None:
    """Count one event in ``stats``: the one rule from the event stream to the counters."""
    if kind is EventKind.HIT:
        stats.cache_hits += 1
    elif kind is EventKind.STALE:
        stats.cache_hits += 1
        stats.stale_hits += 1
    elif kind is EventKind.WAIT:
        stats.waits += 1
    elif kind is EventKind.COOLDOWN:
        stats.cooldown_rejections += 1
    elif kind is EventKind.FETCH_STARTED and flight is not None:
        field = _STARTED_BY.get(_REASONS[flight.reason])
        if field is not None:
            setattr(stats, field, getattr(stats, field) + 1)
    elif kind is EventKind.ATTEMPT_FAILED:
        stats.retries += 1
    elif kind is EventKind.FETCH_SUCCEEDED:
        if flight is not None and flight.attempts:
            stats.tokens_fetched += 1
    elif kind is EventKind.FETCH_FAILED or kind is EventKind.GAVE_UP:
        stats.failures += 1
    elif kind is EventKind.UNAUTHORIZED_HELD:
        stats.unauthorized_held += 1


#: The event stream's reason for each of the core's reasons ("expired" is a cold fetch:
#: no usable token was cached).
_REASONS: Final = {
    "cold": FetchReason.COLD,
    "expired": FetchReason.COLD,
    "refresh": FetchReason.REFRESH,
    "forced": FetchReason.FORCED,
    "unauthorized": FetchReason.UNAUTHORIZED,
}


@attrs.frozen(kw_only=True)
class HealthReport:
    """Where a provider's token stands, from :meth:`TokenProvider.health`.

    Attributes:
        state: FRESH, STALE or EXPIRED for the token cached for the provider's
            credentials, or ``None`` when none is cached.
        expires_in: Seconds until that token expires (0 once expired), or ``None``.
        refresh_in: Seconds until its refresh window opens (0 once open), or ``None``.
        failures: Fetches for these credentials that failed in a row, whichever provider
            ran them; 0 after a success.
        last_error: The error of the latest of those failed fetches (redacted, one line),
            or ``None`` when the latest fetch succeeded.
        last_success: Wall-clock time (seconds since the epoch) of the latest successful
            fetch for these credentials in this process, or ``None``.
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


#: How a misused ``token`` argument is told what it must be.
_A_TOKEN: Final = "a plainid_async.Token, as get_token() returned it"  # noqa: S105 (words)

#: Open providers, so a subscriber that arrives can empty their hot slots (see _cool_all).
_PROVIDERS: weakref.WeakSet[TokenProvider] = weakref.WeakSet()


def _cool_all() -> None:
    """Empty every provider's hot slot: from now on their lookups are emitted."""
    for provider in list(_PROVIDERS):
        provider._hot = _COLD  # noqa: SLF001 (the provider module's own class)


BUS.watchers.append(_cool_all)


def _wrap_secret(client_secret: object) -> Secret:
    if isinstance(client_secret, Secret):
        check_text("client_secret", client_secret.reveal())
        return client_secret
    return Secret(check_text("client_secret", client_secret))


def _wait_budget(retry: RetryPolicy, timeout: float) -> float:
    """The longest a caller waits for a token: its own policy's worst case, plus a grace."""
    backoffs = sum(retry.backoff(step, 1.0) for step in range(1, retry.attempts))
    return min(retry.deadline, retry.attempts * timeout + backoffs) + WAIT_GRACE


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
        on_event: Called with each :class:`~plainid_async.TokenEvent` of this provider
            (lookups it answered, fetches it started, 401s it was told of, evictions of its
            key), synchronously, in the thread and event loop that made the decision: keep
            it short. An exception in it is logged once and never fails a call. While it is
            set, lookups skip the hot path (they build an event each).

    Raises:
        ConfigurationError: A parameter is missing or invalid; the message names it.
    """

    __slots__ = (
        "__weakref__",
        "_api_url",
        "_budget",
        "_cache",
        "_client_id",
        "_client_secret",
        "_closed",
        "_cooldown_policy",
        "_hits",
        "_hot",
        "_key",
        "_listener",
        "_proxy",
        "_refresh_margin",
        "_retry",
        "_sched",
        "_session",
        "_ssl",
        "_states",
        "_stats",
        "_timeout",
        "_token_url",
        "_trust_env",
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
        on_event: Callable[[TokenEvent], object] | None = None,
    ) -> None:
        """Validate the configuration; do no I/O."""
        self._client_secret = _wrap_secret(client_secret)
        # From here on no frame holds the secret in a plain local (tracebacks with locals).
        del client_secret
        self._client_id = check_text("client_id", client_id)
        self._proxy = resolve_proxy(proxy)
        self._trust_env = check_bool("trust_env", trust_env)
        endpoint = resolve_endpoint(region=region, base_url=base_url)
        self._api_url = endpoint.api_url
        self._token_url = endpoint.token_url
        self._refresh_margin = (
            None
            if refresh_margin is None
            else check_seconds("refresh_margin", refresh_margin, allow_zero=True)
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
        self._timeout = check_seconds("timeout", timeout, allow_zero=False)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a plainid_async.RetryPolicy")
        self._retry = RetryPolicy() if retry is None else retry
        self._ssl = check_ssl("ssl", ssl)
        if on_event is not None and not callable(on_event):
            raise ConfigurationError(f"on_event must be a callable, not {type(on_event).__name__}")
        self._listener = None if on_event is None else Listener(on_event)
        self._key = CacheKey.for_credentials(str(self._token_url), client_id, self._client_secret)
        # Flights, failure streaks, cool-downs and the 401 guard: owned by the cache.
        self._states: KeyStates = key_states_of(self._cache)
        self._states.attach(self._key, self._listener)
        # (token, refresh_at, key state) of the FRESH token this provider last handed out;
        # _COLD when there is none (a tuple that never matches: no None check on the hot path).
        self._hot: tuple[Token, float, KeyState] = _COLD
        self._hits = 0  # hot-path hits not yet added to stats.cache_hits
        # The schedule drawn for the last token looked at (its jitter is drawn once).
        self._sched: tuple[Token, RefreshSchedule] | None = None
        self._budget = _wait_budget(self._retry, self._timeout)
        self._cooldown_policy = attrs.evolve(self._retry, backoff_max=COOLDOWN_MAX)
        self._closed = False
        self._stats = ProviderStats()
        _PROVIDERS.add(self)

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
            proxy: As for the constructor.
            trust_env: As for the constructor.
            on_event: As for the constructor.

        Raises:
            ConfigurationError: A variable is missing, blank or invalid; the message names
                it, and names every missing variable at once.
        """  # noqa: D205 (the summary names four variables and needs two lines)
        settings = Settings.from_environ(
            None if environ is None else check_mapping("environ", environ)
        )
        try:
            return cls(
                settings.client_id,
                settings.client_secret,
                region=settings.region,
                base_url=settings.base_url,
                refresh_margin=refresh_margin,
                cache=cache,
                session=session,
                timeout=timeout,
                retry=retry,
                ssl=ssl,
                proxy=proxy,
                trust_env=trust_env,
                on_event=on_event,
            )
        except ConfigurationError as exc:
            source = ENV_REGION if settings.region is not None else ENV_BASE_URL
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

    @property
    def stats(self) -> ProviderStats:
        """Counters of what this provider did (the same object every time)."""
        hits, self._hits = self._hits, 0
        self._stats.cache_hits += hits
        return self._stats

    def __repr__(self) -> str:
        """Show the client id and API URL; never the secret or a token."""
        # getattr: tracebacks with locals show a provider whose __init__ raised, half made.
        state = "closed" if getattr(self, "_closed", False) else "open"
        client_id, api_url = getattr(self, "_client_id", None), getattr(self, "_api_url", None)
        return f"<TokenProvider client_id={client_id!r} api_url='{api_url}' {state}>"

    # -- tokens ------------------------------------------------------------------------

    # force_refresh is not keyword-only: CPython fills a keyword-only default from a dict
    # on every call, which cost 15 % of the hot path's floor (bench_get_token.py). Pass it
    # by keyword all the same.
    async def get_token(self, force_refresh: bool = False) -> Token:  # noqa: FBT001, FBT002
        """Return a valid access token.

        FRESH: returned at once. STALE: returned at once, and one background refresh starts.
        None usable: waits for the one shared fetch, at most this provider's time budget.
        Inside a cool-down after failed fetches, fails at once with the last error.

        Args:
            force_refresh: Drop the cached token (if it is still the one cached when this
                call starts) and wait for a new one, ignoring any cool-down. Concurrent
                forced calls share one fetch.

        Returns:
            The token.

        Raises:
            TokenRequestError: No token could be obtained (a subclass says why).
            ProviderClosedError: The provider is closed.
            ConfigurationError: ``force_refresh`` is not a bool, or the ``session=`` passed
                in was created on another event loop than this call's.
        """
        token, refresh_at, state = self._hot
        # The state holds the very token only while the cache does: a discarded, evicted or
        # replaced token fails this check, and close() empties the slot.
        # `is False`, not `not`: a truthy or falsy stand-in goes the slow way, which refuses it.
        if monotonic() < refresh_at and state.token is token and force_refresh is False:
            self._hits += 1
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
        return self._schedule(token).state(monotonic())

    def health(self) -> HealthReport:
        """Report where this provider's token stands, for readiness probes and dashboards.

        Does no I/O and starts nothing; cheap enough to call on every probe. The failure
        streak and the last error are the cache's own record of this key (the same one the
        cool-down works from), so every provider with these credentials reports the same.

        Returns:
            The report: the cached token's state and timings, failed fetches in a row,
            the latest error (redacted) and success, and where the token is served from.
        """
        key = self._key
        token = self._cache.get(key)
        state = expires_in = refresh_in = None
        source: Literal["memory", "redis", "none"] = "none"
        if token is not None:
            now = monotonic()
            schedule = self._schedule(token)
            state = schedule.state(now)
            expires_in = max(0.0, token.expires_at_monotonic - now)
            refresh_in = max(0.0, schedule.refresh_at - now)
            source = "redis" if getattr(self._cache, "source", None) == "redis" else "memory"
        record = self._states.get(key)
        error = None if record is None else record.last_error
        return HealthReport(
            state=state,
            expires_in=expires_in,
            refresh_in=refresh_in,
            failures=0 if record is None else record.failures,
            last_error=None if error is None else self._describe(error),
            last_success=None if record is None else record.last_success,
            source=source,
        )

    def invalidate(self, token: Token) -> bool:
        """Drop ``token`` if it is still the cached one, so the next call fetches anew.

        Compare-and-drop: when many requests see a 401 for the same token, the first
        invalidates it and the rest do nothing, so one refresh follows.

        Args:
            token: The token that was rejected.

        Returns:
            Whether it was dropped.

        Raises:
            TypeError: ``token`` is not a :class:`~plainid_async.Token`.
        """
        return self._discard(self._key, check_instance("token", token, Token, _A_TOKEN))

    def report_unauthorized(self, token: Token) -> bool:
        """Report that PlainID's API answered 401 to a request that carried ``token``.

        The integrations (:class:`~plainid_async.BearerAuthMiddleware`, the httpx
        ``BearerAuth``) call this; so can your own code that sends the token some other way.

        The 401 guard: the first 401 for the cached token drops it (also from a shared
        cache) and opens a guard interval of 5 s; a 401 for the same key inside it drops
        nothing and asks for no token. A 401 soon after an interval ends doubles the next
        one, up to 60 s. A 401 for a token that is no longer the cached one changes
        nothing (a retry gets the current token).

        Args:
            token: The token the API rejected.

        Returns:
            Whether a retry with a token from :meth:`get_token` is worth it: ``False``
            while the guard holds (return the 401 to the caller).

        Raises:
            TypeError: ``token`` is not a :class:`~plainid_async.Token`.
        """
        check_instance("token", token, Token, _A_TOKEN)
        key = self._key
        with self._states.lock:
            if self._cache.get(key) is not token:
                return True
            state = self._states.state(key)
            now = monotonic()
            held = state.guard_until - now
            if held <= 0:
                previous = _guard_interval(state.guard_step)
                repeat = state.guard_step > 0 and now < state.guard_until + previous
                state.guard_step = state.guard_step + 1 if repeat else 1
                state.guard_until = now + _guard_interval(state.guard_step)
        if held > 0:
            self._emit(EventKind.UNAUTHORIZED_HELD, key, retry_in=held)
            return False
        if self._discard(key, token):
            state.unauthorized = True  # the next fetch for this key is one because of this 401
        return True

    def rotate_secret(self, client_secret: str | Secret) -> None:
        """Use a new client secret from now on, without failing calls in flight.

        The next call fetches a token with the new secret, with no cool-down or 401 guard
        carried over; a fetch still running with the old secret that is rejected is retried
        with the new one.

        Raises:
            ConfigurationError: The new secret is empty or blank.
        """
        self._client_secret = _wrap_secret(client_secret)
        del client_secret  # no plain local holds it from here on
        old = self._key
        self._key = CacheKey.for_credentials(
            str(self._token_url), self._client_id, self._client_secret
        )
        self._hot = _COLD
        if not self._closed and self._key != old:
            _start_afresh(self._states.attach(self._key, self._listener))
            self._states.release(old, self._listener)
        logger.info("client secret of client %s replaced", self._client_id)

    async def _get_token_slow(self, *, force_refresh: bool) -> Token:
        self._check_open()
        check_bool("force_refresh", force_refresh)
        if self._session is not None:
            check_session_loop("session", self._session)
        key = self._key
        reason = "forced" if force_refresh else "cold"
        replacing: Token | None = None
        if force_refresh:
            replacing = self._cache.get(key)
            if replacing is not None:
                self._discard(key, replacing)
            _start_afresh(self._states.state(key))
        while True:
            self._check_open()
            state = self._states.state(key)
            token = self._cache.get(key)
            if token is not None and not force_refresh:
                schedule = self._schedule(token)
                now = monotonic()
                if now < schedule.usable_until:
                    return self._serve(key, state, token, schedule, now)
                replacing, reason = token, "expired"
            try:
                return await self._wait(key, replacing, reason)
            except InvalidCredentialsError:
                if self._key == key:
                    raise
                # The secret was rotated while this fetch ran: try with the new one.
                key, force_refresh = self._key, False

    def _serve(
        self, key: CacheKey, state: KeyState, token: Token, schedule: RefreshSchedule, now: float
    ) -> Token:
        """Hand out a usable token: refresh a STALE one, keep a FRESH one in the hot slot."""
        if now >= schedule.refresh_at:
            self._refresh_in_background(state, token, schedule, now)
            self._emit(EventKind.STALE, key, token=token)
        elif self._listener is None and not BUS.listeners:
            self._hot = (token, schedule.refresh_at, state)
            # close() ran in another thread meanwhile, or a subscriber came (it emptied
            # the hot slots before this one was filled).
            if self._closed or BUS.listeners:
                self._hot = _COLD
            self._stats.cache_hits += 1
        else:
            # Someone listens: no hot slot, so every lookup comes here and is emitted.
            self._emit(EventKind.HIT, key, token=token)
        return token

    def _schedule(self, token: Token) -> RefreshSchedule:
        """The token's schedule for this provider, drawn once per token (jitter)."""
        sched = self._sched
        if sched is not None and sched[0] is token:
            return sched[1]
        schedule = schedule_for(token, refresh_margin=self._refresh_margin, jitter=random.random())  # noqa: S311 (jitter, not crypto)
        self._sched = (token, schedule)
        return schedule

    def _usable(self, token: Token | None) -> bool:
        return token is not None and monotonic() < self._schedule(token).usable_until

    def _discard(self, key: CacheKey, token: Token) -> bool:
        dropped = self._cache.discard(key, token)
        if dropped:
            logger.debug("token of client %s dropped from the cache", self._client_id)
        return dropped

    # -- the event stream --------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        key: CacheKey,
        *,
        flight: Flight | None = None,
        token: Token | None = None,
        error: BaseException | None = None,
        retry_in: float | None = None,
        failures: int | None = None,
        cached: bool | None = None,
    ) -> None:
        """Put one decision on the event stream: count it in stats, then log and tell listeners.

        The event's fields are worked out only when the log writes a record for it or
        someone listens (this provider's ``on_event`` or a process-wide subscriber): with
        neither, this costs a counter and a look at the logger's level.
        """
        _count(self._stats, kind, flight)
        listener = self._listener
        own = () if listener is None else (listener,)
        if not own and not BUS.listeners and not log_level(kind, failures):
            return
        expires_in = expires_at = None
        if token is not None:
            expires_in, expires_at = token.expires_in, token.expires_at
        if flight is None and error is None:  # a lookup or the 401 guard: few fields
            emit(
                kind,
                key.client_id,
                own=own,
                retry_in=retry_in,
                expires_in=expires_in,
                expires_at=expires_at,
            )
            return
        now = monotonic()
        status = text = error_type = None
        if error is not None:
            error_type = type(error).__name__
            text = self._describe(error)
            if isinstance(error, TokenRequestError):
                status = error.status
        elif kind is EventKind.FETCH_SUCCEEDED and flight is not None and flight.attempts:
            status = 200
        reason = fetch_id = attempts = duration = None
        if flight is not None:
            reason, fetch_id = _REASONS[flight.reason], flight.id
            if kind is EventKind.ATTEMPT_FAILED:
                attempts, duration = flight.attempts, now - flight.attempt_started
            elif kind is not EventKind.FETCH_STARTED:
                attempts, duration = flight.attempts, now - flight.started
        emit(
            kind,
            key.client_id,
            own=own,
            reason=reason,
            fetch_id=fetch_id,
            attempts=attempts,
            status=status,
            error=text,
            error_type=error_type,
            duration=duration,
            retry_in=retry_in,
            expires_in=expires_in,
            expires_at=expires_at,
            failures=failures,
            cached=cached,
        )

    @staticmethod
    def _describe(error: BaseException) -> str:
        """An error as events and health show it: redacted, one line, bounded."""
        if isinstance(error, TokenRequestError):
            return shown_text(str(error))  # redacted where it was made (_wire)
        return type(error).__name__

    # -- flights -----------------------------------------------------------------------

    def _refresh_in_background(
        self, state: KeyState, token: Token, schedule: RefreshSchedule, now: float
    ) -> None:
        if state.flight is not None:
            return
        if state.failures:
            # Back off after a failure, but never so long that an endpoint that recovers
            # while the token is still usable is asked too late: wait at most half the
            # usable time that was left at the failure (and at least a floor).
            left = schedule.usable_until - state.failed_at
            cap = state.failed_at + max(left / 2, BACKGROUND_RETRY_FLOOR)
            if now < min(state.retry_at, cap):
                return
        self._flight(self._key, state, token, "refresh")

    def _fetch_loop(self) -> asyncio.AbstractEventLoop:
        """Where a fetch runs: the refresher, unless the session or the cache is loop-bound."""
        if self._session is None and getattr(self._cache, "loop_bound", True) is False:
            return refresher_loop()
        return asyncio.get_running_loop()

    def _flight(
        self,
        key: CacheKey,
        state: KeyState,
        replacing: Token | None,
        reason: str,
        *,
        full_budget: bool = False,
    ) -> Flight:
        """Return the flight for ``key``, starting one if none runs."""
        with self._states.lock:
            flight = state.flight
            if flight is not None and not flight.done():
                return flight
            loop = self._fetch_loop()
            if state.unauthorized and reason in ("cold", "expired"):
                reason = "unauthorized"
            state.unauthorized = False
            future: concurrent.futures.Future[Token] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            flight = Flight(key=key, reason=reason, future=future, loop=loop, owner=self)
            state.flight = flight
            # After a cool-down, one attempt probes the endpoint: the failure streak already
            # spent a full retry budget, and each cool-down step costs one request.
            probe = not full_budget and reason in ("cold", "expired") and state.cooldown_until > 0
        self._emit(EventKind.FETCH_STARTED, key, flight=flight)
        coro = self._fetch(flight, replacing, probe=probe)

        def start() -> None:
            task = loop.create_task(coro, name=f"plainid-async token fetch {key.client_id}")
            flight.task = task
            task.add_done_callback(lambda done: self._flight_done(flight, state, done))

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            start()
        else:
            loop.call_soon_threadsafe(start)
        return flight

    async def _wait(self, key: CacheKey, replacing: Token | None, reason: str) -> Token:
        deadline = monotonic() + self._budget
        second_chance = True
        skip_cooldown = reason == "forced"
        first = True  # one lookup event per call: WAIT, or COOLDOWN
        while True:
            self._check_open()
            state = self._states.state(key)
            if not skip_cooldown:
                self._check_cooldown(key, state, emit=first)
            if first:
                first = False
                self._emit(EventKind.WAIT, key)
            flight = self._flight(key, state, replacing, reason, full_budget=skip_cooldown)
            flight.hurry()
            try:
                token = await self._await_flight(flight, state, deadline)
            except TokenRequestError as error:
                # A background refresh may have spent most of its attempts before anyone
                # waited for it: when it fails, waiting callers get one fetch of their own
                # with the full retry budget before they see an error.
                if not (error.retryable and flight.background and second_chance):
                    raise
                second_chance = False
                skip_cooldown = True
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # The flight itself was cancelled (its provider closed), not this caller:
                # start or join another.
            except _OrphanedError:
                pass
            else:
                self._check_open()  # closed while it waited for another provider's fetch
                return token

    def _check_cooldown(self, key: CacheKey, state: KeyState, *, emit: bool) -> None:
        """Inside a cool-down with no fetch running, fail at once with the last error."""
        last, now = state.last_error, monotonic()
        if state.flight is None and last is not None and now < state.cooldown_until:
            if emit:
                retry_in = state.cooldown_until - now
                self._emit(EventKind.COOLDOWN, key, error=last, retry_in=retry_in)
            raise _cooling_down(last)

    async def _await_flight(self, flight: Flight, state: KeyState, deadline: float) -> Token:
        waiting = asyncio.wrap_future(flight.future)
        # A flight on a loop-bound loop other than ours dies silently if that loop stops:
        # look at it every ORPHAN_POLL seconds.
        loop = flight.loop
        watch = loop is not asyncio.get_running_loop() and not is_refresher_loop(loop)
        while True:
            if flight.future.done():
                # The budget bounds waiting for a fetch, not taking its result: a loop busy
                # past the deadline runs this waiter's timeout and its wake-up together.
                return await asyncio.shield(waiting)
            left = deadline - monotonic()
            if left <= 0:
                error = TokenEndpointUnavailableError(
                    f"no token for client {flight.key.client_id} within {self._budget:g} s, "
                    "this provider's time budget (a fetch for these credentials is still "
                    "running)"
                )
                self._emit(EventKind.GAVE_UP, flight.key, flight=flight, error=error)
                raise error
            try:
                async with asyncio.timeout(min(left, ORPHAN_POLL) if watch else left):
                    return await asyncio.shield(waiting)
            except TimeoutError:
                if watch and (flight.loop.is_closed() or not flight.loop.is_running()):
                    with self._states.lock:
                        if state.flight is flight:
                            state.flight = None
                    logger.debug(
                        "the loop running a token fetch for client %s stopped; fetching anew",
                        flight.key.client_id,
                    )
                    raise _OrphanedError from None

    async def _fetch(self, flight: Flight, replacing: Token | None, *, probe: bool) -> Token:
        flight.wake = asyncio.Event()
        if flight.hurried:
            flight.wake.set()
        key = flight.key
        async with self._cache.fetch_lock(key):
            # Another process (shared cache) may have fetched while we waited for the lock.
            shared = await self._cache.load(key)
            fresh = shared is not None and monotonic() < self._schedule(shared).refresh_at
            if shared is not None and fresh and shared != replacing:
                return shared
            retry = attrs.evolve(self._retry, attempts=1) if probe else self._retry
            token = await self._request(flight, retry)
            await self._cache.store(key, token)
            return token

    async def _request(self, flight: Flight, retry: RetryPolicy) -> Token:
        key, wake = flight.key, flight.wake
        assert wake is not None  # noqa: S101 (set by _fetch before it calls here)

        def count() -> None:
            flight.attempt()
            self._stats.token_requests += 1

        def retrying(error: TokenRequestError, delay: float) -> None:
            self._emit(EventKind.ATTEMPT_FAILED, key, flight=flight, error=error, retry_in=delay)

        hurried = 0  # backoff steps since callers came waiting

        async def backoff(delay: float) -> None:
            # Sleep between attempts. Once callers wait (see Flight.hurry), the sleep under
            # way ends, the next attempt goes at once, and the backoff starts over from its
            # first step: they are not held by a long step chosen while nobody waited.
            nonlocal hurried
            if not wake.is_set():
                # Not asyncio.wait_for: on Python 3.11 it drops a cancel (close()) that
                # lands as the wait ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
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
                retry=retry,
                ssl=self._ssl,
                proxy=self._proxy,
                trust_env=self._trust_env,
                on_attempt=count,
                on_retry=retrying,
                sleep=backoff,
            )

        if self._session is not None:
            return await send(self._session)
        async with aiohttp.ClientSession(trust_env=False) as session:
            return await send(session)

    def _flight_done(self, flight: Flight, state: KeyState, task: asyncio.Task[Token]) -> None:
        # The state is settled before the future, so a waiter that wakes up and calls
        # again already sees the cool-down (or the new token).
        error: BaseException | None = None
        if not task.cancelled():
            error = task.exception()  # also marks it retrieved: no "never retrieved" warning
        key = flight.key
        ended = 0  # the failure streak a success ends
        retry_in: float | None = None
        usable = cooling = False
        with self._states.lock:
            if state.flight is flight:
                state.flight = None
            if task.cancelled():
                pass
            elif error is None:
                ended = state.failures
                _start_afresh(state)
                state.last_success = time.time()
            else:
                retry_in, usable, cooling = self._failed(flight, state, error)
                ended = state.failures
        # Listeners hear of it outside the lock, before any waiter gets the outcome.
        if task.cancelled():
            self._emit(EventKind.FETCH_CANCELLED, key, flight=flight)
            flight.future.set_exception(asyncio.CancelledError())
        elif error is None:
            token = task.result()
            self._emit(EventKind.FETCH_SUCCEEDED, key, flight=flight, token=token, failures=ended)
            flight.future.set_result(token)
        else:
            assert error is not None  # noqa: S101 (neither cancelled nor a result)
            self._emit(
                EventKind.FETCH_FAILED,
                key,
                flight=flight,
                error=error,
                retry_in=retry_in,
                failures=ended,
                cached=usable,
            )
            if cooling:
                self._emit(
                    EventKind.COOLDOWN_STARTED,
                    key,
                    flight=flight,
                    error=error,
                    retry_in=retry_in,
                    failures=ended,
                )
            flight.future.set_exception(error)
        self._states.forget_if_idle(key)

    def _failed(
        self, flight: Flight, state: KeyState, error: BaseException
    ) -> tuple[float | None, bool, bool]:
        """Remember a failed fetch: the streak, and when to try again.

        Returns:
            Seconds until the next fetch may start (``None``: at once), whether a usable
            token is still cached (it keeps being served), and whether a cool-down started.
        """
        key = flight.key
        state.failures += 1
        state.last_error = error
        now = monotonic()
        retry_after = error.retry_after if isinstance(error, TokenRequestError) else None
        delay = self._cooldown_delay(state.failures, retry_after)
        state.failed_at, state.retry_at = now, now + delay
        cached = self._cache.get(key)
        if cached is not None and self._usable(cached):
            # As _refresh_in_background waits: its backoff, cut short near expiry.
            left = self._schedule(cached).usable_until - now
            return min(delay, max(left / 2, BACKGROUND_RETRY_FLOOR)), True, False
        if isinstance(error, TokenRequestError):
            state.cooldown_until = now + delay
            return delay, False, True
        return None, False, False

    def _cooldown_delay(self, failures: int, retry_after: float | None) -> float:
        """Seconds before the next fetch after ``failures`` failed fetches in a row.

        The retry policy's own backoff (one rule for retries, cool-downs and the Redis lock
        poll), continued past the steps the fetch used, at least ``Retry-After``, and at
        most COOLDOWN_MAX.
        """
        jitter = random.random()  # noqa: S311 (jitter, not crypto)
        delay = self._cooldown_policy.backoff(failures + COOLDOWN_STEP_OFFSET, jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._retry.max_retry_after))
        return min(delay, COOLDOWN_MAX)

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
        """Cancel this provider's fetches and let go of its cache entry. Idempotent.

        The provider creates no long-lived HTTP session (each fetch uses a short-lived one),
        and never closes a session passed in. Using the provider afterwards raises
        :class:`~plainid_async.ProviderClosedError`, from the hot path too.
        """
        if self._closed:
            return
        self._closed = True
        self._hot = _COLD
        mine = [f for f in self._states.flights() if f.owner is self and not f.done()]
        for flight in mine:
            flight.cancel()
        self._states.release(self._key, self._listener)
        _PROVIDERS.discard(self)
        here = asyncio.get_running_loop()
        waits = [
            asyncio.wrap_future(f.future) for f in mine if f.loop is here or f.loop.is_running()
        ]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waits, return_exceptions=True)

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


def _start_afresh(state: KeyState) -> None:
    """Forget a key's failures: no streak, no cool-down, no background backoff."""
    state.failures = 0
    state.last_error = None
    state.retry_at = state.cooldown_until = state.failed_at = 0.0


def _guard_interval(step: int) -> float:
    """The 401 guard interval after ``step`` guarded 401s in a row (0: none)."""
    if step <= 0:
        return 0.0
    return min(GUARD_MAX, GUARD_BASE * 2.0 ** min(step - 1, 16))


def _cooling_down(last: BaseException) -> BaseException:
    """The error a call inside a cool-down gets: the failed fetch's own error object.

    Like every waiter of that fetch, the caller gets the very same exception (with a fresh
    traceback, as asyncio does for a shared future), so the number of distinct errors
    callers see is the number of failed fetches.
    """
    return last.with_traceback(None)
