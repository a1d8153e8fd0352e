"""TokenProvider: configuration, the hot path and the public verbs.

How a call flows: ``get_token`` answers from the provider's hot slot while the token is
FRESH (no await of anything else, one identity check against the cache's record for the
key). A STALE token is answered at once and one background refresh starts. With no usable
token, callers wait for one shared fetch ("flight") per cache key per process, each for at
most its own provider's time budget.

Each verb is a few calls into the rooms behind it: the per-key record and the caches
(:mod:`plainid_async._cache`), the failure policy (:mod:`plainid_async._policy`), flights
(:mod:`plainid_async._flight`), stats and health (:mod:`plainid_async._stats`) and the
event stream (:mod:`plainid_async._events`). ``docs/architecture.md`` draws the map.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import weakref
from collections.abc import Iterable
from contextvars import ContextVar
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp

from ._cache import (
    CacheKey,
    KeyState,
    TokenCache,
    default_cache,
    is_loop_bound,
    key_states_of,
    serves_shared,
)
from ._checks import (
    check_bool,
    check_instance,
    check_mapping,
    check_seconds,
    check_ssl,
    check_text,
)
from ._endpoint import RetryPolicy, request_token, resolve_endpoint
from ._events import BUS, EventKind, FetchReason, Listener, TokenEvent
from ._flight import Fetcher
from ._log import LOGGER_NAME
from ._policy import RevocationWatch, looks_revoked
from ._proxy import resolve_proxy
from ._secret import Secret, SecretFile
from ._sessions import SESSIONS
from ._settings import ENV_BASE_URL, ENV_CLIENT_ID, ENV_REGION, Settings
from ._stats import HealthReport, ProviderStats, Reporter, health_report
from ._token import RefreshSchedule, Token, TokenState, schedule_for
from .exceptions import ConfigurationError, InvalidCredentialsError, TokenRequestError

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from yarl import URL

    from ._cache import KeyStates

__all__ = ["HealthReport", "ProviderStats", "TokenProvider"]

logger = logging.getLogger(LOGGER_NAME)

#: After report_unauthorized(token) in this task: (key, token) whose replacement the
#: task's next get_token() waits for (the retry of the request that got the 401).
_AFTER_401: ContextVar[tuple[CacheKey, Token] | None] = ContextVar(
    "plainid_async_after_401", default=None
)

_COLD_STATE: Final = KeyState()
_NO_TOKEN: Final = Token("-", "Bearer", 1.0, 0.0, 0.0)  # never served: its refresh_at is -inf
_COLD: Final[tuple[Token, float, KeyState]] = (_NO_TOKEN, -math.inf, _COLD_STATE)


#: How a misused ``token`` argument is told what it must be.
_A_TOKEN: Final = "a plainid_async.Token, as get_token() returned it"  # noqa: S105 (words)

#: Open providers, so a subscriber that arrives can empty their hot slots (see _cool_all).
_PROVIDERS: weakref.WeakSet[TokenProvider] = weakref.WeakSet()


def _cool_all() -> None:
    """Empty every provider's hot slot: from now on their lookups are emitted."""
    for provider in list(_PROVIDERS):
        provider._hot = _COLD  # noqa: SLF001 (the provider module's own class)


BUS.watchers.append(_cool_all)

_closed_lock = threading.Lock()
_closed_fresh_hits = 0  # fresh_hits() of the providers that were closed


def _fresh_hits_of(provider: TokenProvider) -> int:
    stats = provider.stats
    return stats.cache_hits - stats.stale_hits


def fresh_hits() -> int:
    """Lookups answered with a FRESH token by this process's providers so far.

    Read from each open provider's stats (the hot path counts in memory), plus those of the
    providers closed so far: what :mod:`plainid_async.otel` reports as ``hit`` lookups
    without hearing a ``HIT`` event per call.
    """
    with _closed_lock:  # a provider that closes meanwhile is counted once, open or closed
        return _closed_fresh_hits + sum(_fresh_hits_of(p) for p in list(_PROVIDERS))


def _event_kinds(value: object, on_event: object) -> frozenset[EventKind] | None:
    """``event_kinds=`` checked: ``None`` (every kind) or some :class:`EventKind` members."""
    if value is None:
        return None
    if on_event is None:
        raise ConfigurationError("event_kinds is for on_event: pass on_event too")
    if isinstance(value, (str, bytes, EventKind)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"event_kinds must be an iterable of EventKind members, not {type(value).__name__}"
        )
    kinds = frozenset(value)
    strangers = sorted(repr(kind) for kind in kinds if not isinstance(kind, EventKind))
    if strangers:
        raise ConfigurationError(
            f"event_kinds must hold EventKind members only, not {strangers[0]}"
        )
    return kinds


def _wrap_secret(client_secret: object) -> Secret:
    if isinstance(client_secret, Secret):
        check_text("client_secret", client_secret.reveal())
        return client_secret
    return Secret(check_text("client_secret", client_secret))


class TokenProvider:
    """Gets, caches and refreshes PlainID access tokens for one API client.

    Construct it anywhere (no I/O, no event loop needed), share it, and call
    :meth:`get_token` as often as you like: concurrent callers share one token request,
    tokens are refreshed in the background before they expire, and a short outage of the
    token endpoint fails no call while the cached token is still valid.

    Args:
        client_id: The PlainID API client id.
        client_secret: The PlainID API client secret. Never logged or shown.
        client_secret_file: Instead of ``client_secret``, a file holding it (a mounted
            Kubernetes or Docker secret; one trailing newline is dropped), read now. It is
            re-read when the token endpoint rejects the secret and when the file changes
            (checked at most every 5 s, when a token is due, never on the hot path), and the
            new secret is used without a restart.
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
            key), one at a time, in order: on the caller's loop for a decision made there,
            on a worker thread of its own for one made where fetches run (a fetch's end),
            so it never delays a fetch. A call that waited for a fetch returns once it had
            the fetch's events (within the time budget): keep it short. An exception in it
            is logged once and never fails a call. While it hears ``HIT``, lookups skip the
            hot path (they build an event each).
        event_kinds: The :class:`~plainid_async.EventKind` members ``on_event`` hears;
            default: every kind. Without ``HIT``, a cached lookup stays on the hot path and
            builds no event.

    Raises:
        ConfigurationError: A parameter is missing or invalid; the message names it.
    """

    __slots__ = (
        "__weakref__",
        "_api_url",
        "_attached",
        "_cache",
        "_client_id",
        "_client_secret",
        "_closed",
        "_fetcher",
        "_hits",
        "_hot",
        "_key",
        "_listener",
        "_refresh_margin",
        "_reporter",
        "_sched",
        "_secret_file",
        "_states",
        "_token_url",
        "_watch",
    )

    def __init__(
        self,
        client_id: str,
        client_secret: str | Secret | None = None,
        *,
        client_secret_file: str | os.PathLike[str] | None = None,
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
        event_kinds: Iterable[EventKind] | None = None,
    ) -> None:
        """Validate the configuration; do no network I/O (``client_secret_file`` is read)."""
        if (client_secret is None) == (client_secret_file is None):
            raise ConfigurationError("give exactly one of client_secret and client_secret_file")
        self._secret_file = (
            None
            if client_secret_file is None
            else SecretFile(client_secret_file, source="client_secret_file")
        )
        self._client_secret = (
            _wrap_secret(client_secret) if self._secret_file is None else self._secret_file.secret
        )
        # From here on no frame holds the secret in a plain local (tracebacks with locals).
        del client_secret
        self._client_id = check_text("client_id", client_id)
        try:
            proxy_url = resolve_proxy(proxy)
        finally:
            # The URL may carry the proxy's credentials: like the secret, it is in no frame of
            # a traceback from here on, whether this check or a later one raises.
            del proxy
        trust_env = check_bool("trust_env", trust_env)
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
        timeout = check_seconds("timeout", timeout, allow_zero=False)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a plainid_async.RetryPolicy")
        if on_event is not None and not callable(on_event):
            raise ConfigurationError(f"on_event must be a callable, not {type(on_event).__name__}")
        kinds = _event_kinds(event_kinds, on_event)
        self._listener = None if on_event is None else Listener(on_event, kinds)
        self._reporter = Reporter(self._listener)
        self._key = CacheKey.for_credentials(str(self._token_url), client_id, self._client_secret)
        # Flights, failure streaks, cool-downs and the 401 guard: owned by the cache.
        self._states: KeyStates = key_states_of(self._cache)
        self._fetcher = Fetcher(
            owner=self,
            cache=self._cache,
            states=self._states,
            reporter=self._reporter,
            schedule=self._schedule,
            request=request_token,
            session=session,
            loop_bound=is_loop_bound(self._cache),
            retry=RetryPolicy() if retry is None else retry,
            timeout=timeout,
            token_url=self._token_url,
            ssl=check_ssl("ssl", ssl),
            proxy=proxy_url,
            trust_env=trust_env,
        )
        self._attached = self._states.attach(self._key, self._listener)
        # (token, refresh_at, key state) of the FRESH token this provider last handed out;
        # _COLD when there is none (a tuple that never matches: no None check on the hot path).
        self._hot: tuple[Token, float, KeyState] = _COLD
        self._hits = 0  # hot-path hits not yet added to stats.cache_hits
        # The schedule drawn for the last token looked at (its jitter is drawn once).
        self._sched: tuple[Token, RefreshSchedule] | None = None
        self._closed = False
        # What this provider saw of the 401s of the cached token (see _revoked).
        self._watch = RevocationWatch()
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
        event_kinds: Iterable[EventKind] | None = None,
    ) -> TokenProvider:
        """Build a provider from ``PLAINID_CLIENT_ID``, ``PLAINID_CLIENT_SECRET`` and one of
        ``PLAINID_REGION`` / ``PLAINID_BASE_URL``.

        Instead of ``PLAINID_CLIENT_SECRET``, ``PLAINID_CLIENT_SECRET_FILE`` may name a file
        that holds the secret (a mounted Kubernetes or Docker secret; one trailing newline is
        dropped): the provider re-reads it as it does a ``client_secret_file``.

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
            event_kinds: As for the constructor.

        Raises:
            ConfigurationError: A variable is missing, blank or invalid; the message names
                it, and names every missing variable at once.
        """  # noqa: D205 (the summary names four variables and needs two lines)
        # A proxy URL may carry credentials, and environ the secret: this frame lets go of
        # both before a raise leaves, as the constructor does (see the finally below).
        try:
            settings = Settings.from_environ(
                None if environ is None else check_mapping("environ", environ)
            )
            try:
                return cls(
                    settings.client_id,
                    None if settings.client_secret_file else settings.client_secret,
                    client_secret_file=settings.client_secret_file,
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
                    event_kinds=event_kinds,
                )
            except ConfigurationError as exc:
                source = ENV_REGION if settings.region is not None else ENV_BASE_URL
                raise ConfigurationError(f"{exc} (from {source} or {ENV_CLIENT_ID})") from None
        finally:
            del proxy, environ

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
        stats = self._reporter.stats
        stats.cache_hits += hits
        return stats

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
            force_refresh: Start a replacement of the cached token and wait for the new
                one, ignoring any cool-down. Concurrent forced calls share one fetch.
                Replace, never drop: other calls keep getting the cached token until the
                new one is in hand, and keep it if the fetch fails (unless the endpoint
                says the credentials are invalid).

        Returns:
            The token.

        Raises:
            TokenRequestError: No token could be obtained (a subclass says why).
            ProviderClosedError: The provider is closed.
            ConfigurationError: ``force_refresh`` is not a bool, or a ``session=`` passed
                in belongs to an event loop that is closed or not running.
        """
        token, refresh_at, state = self._hot
        # The state holds the very token only while the cache does: a discarded, evicted or
        # replaced token fails this check, and close() empties the slot.
        # `is False`, not `not`: a truthy or falsy stand-in goes the slow way, which refuses it.
        if monotonic() < refresh_at and state.token is token and force_refresh is False:
            self._hits += 1
            return token
        return await self._get_token_slow(force_refresh=force_refresh)

    def _hot_token(self) -> Token | None:
        """What :meth:`get_token` would return from its hot path, counted alike; else ``None``.

        For the integrations (``plainid_async._source.hot_lookup``), which call it on every
        request: a plain call costs them a fraction of creating and awaiting a coroutine.
        ``None`` wherever ``get_token()`` would go the slow way; the caller then awaits it.
        The same lines as the start of :meth:`get_token` (kept inline there: a call would
        double its cost); ``tests/test_middleware.py`` checks that both answer alike.
        """
        token, refresh_at, state = self._hot
        if monotonic() < refresh_at and state.token is token:
            self._hits += 1
            return token
        return None

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
        key, token = self._key, self._cache.get(self._key)
        schedule = None if token is None else self._schedule(token)
        record = self._states.get(key)
        return health_report(token, schedule, record, shared=serves_shared(self._cache))

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

        Replace, never drop: the first 401 for the cached token starts its replacement and
        opens a 401 guard interval of 5 s; the token keeps being served to other calls until
        the new one is in hand, and the next :meth:`get_token` of the task that reported it
        waits for the new one (or, if the token endpoint fails, gets the old token back, so
        the caller gets the API's response, never the endpoint's outage). Further 401s for
        that token while it is replaced do the same. A 401 for a newer token inside the
        guard drops nothing and asks for no token; a 401 soon after an interval ends doubles
        the next one, up to 60 s. A 401 for a token that is no longer the cached one changes
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
            revoked = self._revoked(token)
            held = 0.0 if state.suspected is token else state.guarded(self._states.clock())
            if held > 0 and revoked:
                held = 0.0  # a token that worked now fails every call: a real revocation
            if held <= 0:
                state.suspect(token)
        if held > 0:
            self._reporter.emit(EventKind.UNAUTHORIZED_HELD, key, retry_in=held)
            return False
        # This provider's hot slot may hold it: the next call of this task goes the slow
        # way, which waits for the replacement (see _get_token_slow).
        self._hot = _COLD
        _AFTER_401.set((key, token))
        return True

    def _revoked(self, token: Token) -> bool:
        """Whether a 401 for ``token`` looks like a revocation (see ``looks_revoked``)."""
        stats = self._reporter.stats
        calls = stats.cache_hits + self._hits + stats.waits + stats.cooldown_rejections
        self._watch, revoked = looks_revoked(self._watch, token, calls)
        return revoked

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
            self._attached = self._states.attach(self._key, self._listener)
            self._attached.start_afresh()
            self._states.release(old, self._listener)
        logger.info("client secret of client %s replaced", self._client_id)

    async def _get_token_slow(self, *, force_refresh: bool) -> Token:
        self._fetcher.check_open()
        check_bool("force_refresh", force_refresh)
        self._reread_secret(rejected=False)
        key = self._key
        rejected = _AFTER_401.get()
        if rejected is not None:
            _AFTER_401.set(None)
            if rejected[0] == key and self._cache.get(key) is rejected[1]:
                return await self._replace(key, rejected[1], FetchReason.UNAUTHORIZED)
        if force_refresh:
            self._states.state(key).start_afresh()  # a forced fetch ignores any cool-down
            current = self._cache.get(key)
            if current is not None and monotonic() >= self._schedule(current).usable_until:
                self._discard(key, current)  # nothing to keep serving: not usable any more
                current = None
            return await self._replace(key, current, FetchReason.FORCED)
        while True:
            self._fetcher.check_open()
            state = self._attached_state(key)
            token = self._cache.get(key)
            replacing = None
            if token is not None:
                schedule = self._schedule(token)
                now = monotonic()
                if now < schedule.usable_until:
                    return self._serve(key, state, token, schedule, now)
                replacing = token
            try:
                return await self._fetcher.wait(key, replacing, FetchReason.COLD)
            except InvalidCredentialsError:
                if self._key == key and not self._reread_secret(rejected=True):
                    raise
                # The secret was rotated while this fetch ran: try with the new one.
                key = self._key

    async def _replace(self, key: CacheKey, old: Token | None, reason: FetchReason) -> Token:
        """Wait for a token replacing ``old``, which other calls keep getting meanwhile.

        After a 401, a failed replacement gives ``old`` back while it is usable, so the
        caller's retry gets the API's answer rather than the endpoint's outage. A forced
        refresh raises the failure. Either way ``old`` stays cached, unless the endpoint
        said the credentials are invalid (the fetch then dropped it).
        """
        try:
            return await self._fetcher.wait(key, old, reason)
        except InvalidCredentialsError:
            if self._key == key and not self._reread_secret(rejected=True):
                raise
            return await self._get_token_slow(force_refresh=False)  # rotated meanwhile
        except TokenRequestError:
            if (
                reason is FetchReason.UNAUTHORIZED
                and old is not None
                and self._cache.get(key) is old
                and monotonic() < self._schedule(old).usable_until
            ):
                return old
            raise

    def _attached_state(self, key: CacheKey) -> KeyState:
        """The key's record, counting this provider in it again if LRU eviction dropped it.

        So a record an open provider uses keeps its failure memory (see KeyStates._evict).
        """
        state = self._states.state(key)
        if state is not self._attached and key == self._key and not self._closed:
            self._attached = self._states.attach(key, self._listener)
            return self._attached
        return state

    def _reread_secret(self, *, rejected: bool) -> bool:
        """Take a new secret from ``client_secret_file`` if it holds one; whether it did.

        The file is re-read at once when the endpoint ``rejected`` the secret, else only when
        ``stat`` shows a change, at most every few seconds (never on the hot path).
        """
        source = self._secret_file
        if source is None:
            return False
        new = source.reload() if rejected else source.poll()
        if new is None:
            return False
        self.rotate_secret(new)
        return True

    def _serve(
        self, key: CacheKey, state: KeyState, token: Token, schedule: RefreshSchedule, now: float
    ) -> Token:
        """Hand out a usable token: refresh a STALE one, keep a FRESH one in the hot slot."""
        if state.suspected is token:
            # The API answered 401 to it: serve it until its replacement is in hand.
            self._fetcher.refresh_in_background(key, state, token, FetchReason.UNAUTHORIZED)
            self._reporter.emit(EventKind.STALE, key, token=token)
        elif now >= schedule.refresh_at:
            if self._reread_secret(rejected=False):
                return token  # a new secret, a new key: the next call fetches with it
            self._fetcher.refresh_in_background(key, state, token)
            self._reporter.emit(EventKind.STALE, key, token=token)
        elif self._reporter.quiet():
            self._hot = (token, schedule.refresh_at, state)
            # close() ran in another thread meanwhile, or a subscriber came (it emptied
            # the hot slots before this one was filled).
            if self._closed or not self._reporter.quiet():
                self._hot = _COLD
            self._reporter.stats.cache_hits += 1
        else:
            # Someone listens: no hot slot, so every lookup comes here and is emitted.
            self._reporter.emit(EventKind.HIT, key, token=token)
        return token

    def _schedule(self, token: Token) -> RefreshSchedule:
        """The token's schedule for this provider, drawn once per token (jitter)."""
        sched = self._sched
        if sched is not None and sched[0] is token:
            return sched[1]
        jitter = random.random()  # noqa: S311 (jitter, not crypto)
        schedule = schedule_for(token, refresh_margin=self._refresh_margin, jitter=jitter)
        self._sched = (token, schedule)
        return schedule

    def _discard(self, key: CacheKey, token: Token) -> bool:
        dropped = self._cache.discard(key, token)
        if dropped:
            logger.debug("token of client %s dropped from the cache", self._client_id)
        return dropped

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
        # Imported here: the middleware module knows the provider only by type, and the
        # provider needs it only for this verb, so neither module imports the other.
        from ._middleware import provider_session  # noqa: PLC0415

        return provider_session(self, origins=origins, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel this provider's fetches and let go of its cache entry. Idempotent.

        Without ``session=``, fetches on the refresher share one HTTP session per transport,
        kept alive across refreshes; the last provider that used it closes it here (see
        ``plainid_async._sessions``). A session passed in is never closed. Using the
        provider afterwards raises :class:`~plainid_async.ProviderClosedError`, from the
        hot path too.
        """
        if self._closed:
            return
        self._closed = True
        self._hot = _COLD
        mine = self._fetcher.cancel()
        self._states.release(self._key, self._listener)
        global _closed_fresh_hits  # noqa: PLW0603 (the closed providers' hits, behind the lock)
        with _closed_lock:
            _PROVIDERS.discard(self)
            _closed_fresh_hits += _fresh_hits_of(self)
        await self._fetcher.settle(mine)
        await SESSIONS.release(self)

    async def __aenter__(self) -> Self:
        """Return the provider, checking it is open."""
        self._fetcher.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the provider."""
        await self.close()
