"""Where tokens live between requests: the cache key, the TokenCache protocol, the memory cache.

The provider talks to a cache only through :class:`TokenCache`, so a shared backend (Redis)
plugs in without touching the provider. A cache stores :class:`~plainid_async.Token` values,
whose wall-clock ``expires_at`` is what crosses process boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import attrs

from ._events import EventKind, Listener, emit
from ._secret import Secret
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Iterator
    from contextlib import AbstractAsyncContextManager

    from ._token import Token

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "CacheKey",
    "Flight",
    "KeyState",
    "KeyStates",
    "MemoryTokenCache",
    "TokenCache",
    "default_cache",
    "key_states_of",
    "running_fetches",
]

_FINGERPRINT_LABEL = b"plainid-async/v1/cache-key"


def _as_secret(value: Secret | str) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


@attrs.frozen(cache_hash=True)
class CacheKey:
    """Identifies one set of credentials at one token endpoint.

    Equality and hashing use ``token_url``, ``client_id`` and ``fingerprint``. The
    fingerprint is an HMAC keyed by the secret, so it is the same in every process (a shared
    cache can use it) yet reveals nothing about the secret. ``client_secret`` is carried for
    caches that derive encryption keys from it; it never shows in ``repr``.

    Attributes:
        token_url: The token endpoint URL (so the region or base URL).
        client_id: The API client id.
        fingerprint: Hex HMAC-SHA256 of the token URL and client id, keyed by a hash of
            the secret.
        client_secret: The secret, wrapped (excluded from repr, equality and hashing).
    """

    token_url: str
    client_id: str
    fingerprint: str
    client_secret: Secret = attrs.field(repr=False, eq=False, converter=_as_secret)

    @classmethod
    def for_credentials(
        cls, token_url: str, client_id: str, client_secret: Secret | str
    ) -> CacheKey:
        """Build the key for these credentials at this token endpoint."""
        secret = _as_secret(client_secret)
        message = b"\0".join((_FINGERPRINT_LABEL, token_url.encode(), client_id.encode()))
        # HMAC pads short keys with zero bytes and hashes long ones, so "s" and "s\0" would
        # share a key; a fixed-size key derived from the secret keeps every secret distinct.
        key = hashlib.sha256(_FINGERPRINT_LABEL + b"\0" + secret.reveal().encode()).digest()
        fingerprint = hmac.new(key, message, hashlib.sha256).hexdigest()
        return cls(token_url, client_id, fingerprint, secret)

    def digest(self) -> str:
        """A stable opaque name for this key, safe to show or to use in a shared store."""
        material = b"\0".join(
            (self.token_url.encode(), self.client_id.encode(), self.fingerprint.encode())
        )
        return hashlib.sha256(material).hexdigest()


@runtime_checkable
class TokenCache(Protocol):
    """What the provider needs from a token cache.

    ``get`` and ``discard`` are synchronous and must not do I/O: they are the hot path and
    the in-process layer. ``load``, ``store`` and ``fetch_lock`` may do I/O against a shared
    store. A shared cache keeps a local layer in front of its store, so ``get`` answers from
    memory.
    """

    def get(self, key: CacheKey) -> Token | None:
        """Return the token held in this process for ``key``, without I/O."""

    async def load(self, key: CacheKey) -> Token | None:
        """Return the newest token for ``key``, reading the shared store if there is one.

        A token passed to :meth:`discard` must not be returned again.
        """

    async def store(self, key: CacheKey, token: Token) -> None:
        """Keep ``token`` as the current token for ``key`` (locally and in any shared store)."""

    def discard(self, key: CacheKey, token: Token) -> bool:
        """Drop ``token`` if it is still the current token for ``key``.

        Returns:
            Whether it was dropped; ``False`` when another token has replaced it already.
        """

    def fetch_lock(self, key: CacheKey) -> AbstractAsyncContextManager[object]:
        """Hold this while fetching a token for ``key``.

        The provider already lets one fetch per key run at a time in a process; a shared
        cache returns a lock across processes here, so one process fetches for the fleet.
        The provider calls :meth:`load` again once it holds the lock.
        """


_NO_LOCK: contextlib.nullcontext[None] = contextlib.nullcontext()

#: Keys a memory cache holds by default before it evicts the least recently used.
DEFAULT_MAX_ENTRIES = 10_000
#: How many of the least recently used keys one store looks at to drop dead ones.
_SWEEP_PER_STORE = 2
#: How many keys with a fetch running eviction passes over before it gives up for now.
_EVICT_SKIP = 8


_FETCH_IDS = itertools.count(1)


@attrs.define(eq=False)
class Flight:
    """One token fetch in progress for one cache key, shared by every caller of that key.

    Read-only for users: tests see flights through ``running_fetches()`` and a cache's
    ``key_states.flights()``.

    Attributes:
        key: The cache key the fetch is for.
        reason: Why it started: ``"cold"`` (nothing cached), ``"refresh"`` (a background
            refresh of a STALE token), ``"expired"``, ``"forced"`` or ``"unauthorized"``.
        future: Completes with the token or the error, from any thread.
        loop: The event loop running the fetch.
        id: Number of the fetch in this process (its events' ``fetch_id``).
        attempts: HTTP requests it sent so far.
    """

    key: CacheKey = attrs.field(repr=False)
    reason: str
    future: concurrent.futures.Future[Token] = attrs.field(repr=False)
    loop: asyncio.AbstractEventLoop = attrs.field(repr=False)
    owner: object = attrs.field(repr=False)
    wake: asyncio.Event | None = attrs.field(default=None, repr=False)
    task: asyncio.Task[Token] | None = attrs.field(default=None, repr=False)
    hurried: bool = False
    id: int = attrs.field(factory=lambda: next(_FETCH_IDS))
    started: float = attrs.field(factory=time.monotonic, repr=False)
    attempts: int = 0
    attempt_started: float = attrs.field(default=0.0, repr=False)

    def attempt(self) -> None:
        """An HTTP attempt starts."""
        self.attempts += 1
        self.attempt_started = time.monotonic()

    @property
    def background(self) -> bool:
        """Whether it started as a background refresh (a usable token was cached)."""
        return self.reason == "refresh"

    def done(self) -> bool:
        """Whether the fetch has finished."""
        return self.future.done()

    async def wait(self) -> Token:
        """Wait for the fetch from any event loop; a cancelled waiter never cancels it.

        Returns:
            The token it fetched.

        Raises:
            TokenRequestError: The fetch failed.
            asyncio.CancelledError: The fetch was cancelled (its provider closed).
        """
        return await asyncio.shield(asyncio.wrap_future(self.future))

    def hurry(self) -> None:
        """Callers now wait for this fetch: cut short any retry backoff it is sleeping."""
        if self.hurried or not self.background:
            return
        self.hurried = True
        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing sleeps there
            self.loop.call_soon_threadsafe(self._wake_up)

    def cancel(self) -> None:
        """Cancel the fetch (its waiters then start or join another)."""

        def cancel_task() -> None:
            if self.task is not None:
                self.task.cancel()

        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs there
            self.loop.call_soon_threadsafe(cancel_task)

    def _wake_up(self) -> None:
        if self.wake is not None:
            self.wake.set()


@attrs.define(eq=False)
class KeyState:
    """What a cache remembers about one key besides the token: its fetch and its failures.

    Read-only for users (see :meth:`KeyStates.get`).

    Attributes:
        token: The token held for the key in this process (memory and Redis caches keep it
            here), or ``None``.
        flight: The fetch in progress, or ``None``.
        failures: Failed fetches in a row.
        last_error: The error of the last failed fetch, while ``failures`` > 0.
        failed_at: Monotonic time of the last failure.
        retry_at: Monotonic time before which no background refresh starts again.
        cooldown_until: Monotonic time before which, with no usable token, calls fail at once
            with ``last_error`` and no token request.
        guard_until: Monotonic time before which a 401 from the API does not replace the
            token (the 401 guard).
        guard_step: 401 guard intervals in a row (each doubles the next).
        unauthorized: A 401 dropped the token: the next fetch is for reason "unauthorized".
        last_success: Wall-clock time of the last successful fetch, or ``None``.
        providers: Open providers using this key.
        listeners: The ``on_event`` listeners of those providers (for evictions).
        rejected: Token ids a shared cache was told are bad, with when they expire.
    """

    token: Token | None = attrs.field(default=None, repr=False)
    token_id: str | None = attrs.field(default=None, repr=False)
    flight: Flight | None = None
    failures: int = 0
    last_error: BaseException | None = None
    failed_at: float = 0.0
    retry_at: float = 0.0
    cooldown_until: float = 0.0
    guard_until: float = 0.0
    guard_step: int = 0
    unauthorized: bool = False
    last_success: float | None = None
    providers: int = 0
    listeners: tuple[Listener, ...] = attrs.field(default=(), repr=False)
    rejected: dict[str, float] | None = attrs.field(default=None, repr=False)

    def idle(self, now: float) -> bool:
        """Whether nothing here is worth keeping: no provider, no fetch, no live token."""
        return (
            self.providers <= 0
            and self.flight is None
            and (self.token is None or self.token.expires_at_monotonic <= now)
        )


_ALL_TABLES: weakref.WeakSet[KeyStates] = weakref.WeakSet()


@attrs.define(eq=False, weakref_slot=True)
class KeyStates:
    """Per-key state of one cache: tokens, flights, failure streaks, cool-downs, 401 guard.

    Bounded by live keys: a key is dropped when no open provider uses it, no fetch runs for
    it and its token has expired (checked when a provider closes and, a few keys at a time,
    on every store), and beyond ``max_entries`` the least recently used key goes first.
    "Used" means a token stored or looked up outside the hot path; every key in use has its
    token refreshed (stored) at least once per lifetime.

    Args:
        max_entries: The most keys held.
    """

    max_entries: int = DEFAULT_MAX_ENTRIES
    _states: OrderedDict[CacheKey, KeyState] = attrs.field(factory=OrderedDict, repr=False)
    _lock: threading.RLock = attrs.field(factory=threading.RLock, repr=False)
    evictions: int = 0

    def __attrs_post_init__(self) -> None:
        """Check the bound; register the table for :func:`running_fetches`."""
        value = self.max_entries
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"max_entries={value!r} must be an integer >= 1")
        with _SIDE_LOCK:
            _ALL_TABLES.add(self)

    @property
    def lock(self) -> threading.RLock:
        """The lock that guards every state of this table (reentrant)."""
        return self._lock

    def get(self, key: CacheKey) -> KeyState | None:
        """The state of ``key``, if any, without creating it or marking it used."""
        return self._states.get(key)

    def state(self, key: CacheKey) -> KeyState:
        """The state of ``key``, created if needed, marked most recently used."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = KeyState()
                self._evict()
            else:
                self._states.move_to_end(key)
            return state

    def set_token(self, key: CacheKey, token: Token, token_id: str | None = None) -> None:
        """Hold ``token`` for ``key``; drop a few dead keys; evict beyond the bound."""
        now = time.monotonic()
        with self._lock:
            state = self.state(key)
            state.token, state.token_id = token, token_id
            self._sweep(now)

    def drop_token(self, key: CacheKey, token: Token | None = None) -> bool:
        """Drop the token of ``key`` (only if it is ``token``, when given)."""
        with self._lock:
            state = self._states.get(key)
            if state is None or state.token is None:
                return False
            if token is not None and state.token is not token:
                return False
            state.token = state.token_id = None
            return True

    def attach(self, key: CacheKey, listener: Listener | None = None) -> KeyState:
        """Count one more open provider using ``key`` (and keep its ``on_event``)."""
        with self._lock:
            state = self.state(key)
            state.providers += 1
            if listener is not None:
                state.listeners = (*state.listeners, listener)
            return state

    def release(self, key: CacheKey, listener: Listener | None = None) -> None:
        """Count one provider fewer; forget the key if nothing else keeps it."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            state.providers -= 1
            if listener is not None:
                state.listeners = tuple(x for x in state.listeners if x is not listener)
            self.forget_if_idle(key)

    def forget_if_idle(self, key: CacheKey) -> None:
        """Forget ``key`` if no provider, fetch or live token keeps it."""
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.idle(time.monotonic()):
                del self._states[key]

    def flights(self) -> list[Flight]:
        """The fetches in progress, for tests and health checks."""
        with self._lock:
            return [s.flight for s in self._states.values() if s.flight is not None]

    def clear(self) -> None:
        """Forget every key (tokens, streaks, cool-downs); running fetches go on."""
        with self._lock:
            for state in self._states.values():
                state.token = state.token_id = None
            self._states.clear()

    def __len__(self) -> int:
        """The number of keys held."""
        return len(self._states)

    def __iter__(self) -> Iterator[CacheKey]:
        """The keys held, least recently used first (a snapshot)."""
        with self._lock:
            return iter(list(self._states))

    def _sweep(self, now: float) -> None:
        # Amortised O(1): look at the few least recently used keys only.
        for key in list(itertools.islice(self._states, _SWEEP_PER_STORE)):
            if self._states[key].idle(now):
                del self._states[key]

    def _evict(self) -> None:
        skipped = 0
        while len(self._states) > self.max_entries and skipped < _EVICT_SKIP:
            key, state = next(iter(self._states.items()))
            if state.flight is not None:
                # Keep a key whose fetch runs (its callers would start a second one).
                self._states.move_to_end(key)
                skipped += 1
                continue
            del self._states[key]
            # A provider still holding this token must not serve it: its hot path checks
            # that the state still holds the very token it cached.
            token, state.token, state.token_id = state.token, None, None
            self.evictions += 1
            # To the log, the key's providers and the subscribers.
            emit(
                EventKind.EVICTED,
                key.client_id,
                own=state.listeners,
                expires_in=None if token is None else token.expires_in,
                expires_at=None if token is None else token.expires_at,
            )


_SIDE_TABLES: weakref.WeakKeyDictionary[object, KeyStates] = weakref.WeakKeyDictionary()
_SIDE_LOCK = threading.Lock()


def running_fetches() -> list[Flight]:
    """Every token fetch in progress in this process, whatever its cache.

    For tests: a test that ends with one still running leaks it (see
    ``plainid_async.testing.running_fetches``).
    """
    with _SIDE_LOCK:
        tables = list(_ALL_TABLES)
    return [flight for table in tables for flight in table.flights() if not flight.done()]


def key_states_of(cache: TokenCache) -> KeyStates:
    """The per-key state table of ``cache``.

    Memory and Redis caches own one (their ``key_states`` attribute). A cache of your own
    without that attribute gets one from a side table that lives as long as the cache.
    """
    own = getattr(cache, "key_states", None)
    if isinstance(own, KeyStates):
        return own
    with _SIDE_LOCK:
        try:
            table = _SIDE_TABLES.get(cache)
            if table is None:
                table = _SIDE_TABLES[cache] = KeyStates()
        except TypeError:  # not weak-referenceable: one table per call site's provider
            return KeyStates()
        return table


class MemoryTokenCache:
    """A token cache in this process's memory. The default cache is one shared instance.

    Thread-safe. Holds at most ``max_entries`` keys: beyond that the least recently used key
    is evicted (its next call simply fetches again). ``store`` is O(1) amortised.

    Args:
        max_entries: The most keys held (default 10,000).

    Raises:
        ConfigurationError: ``max_entries`` is not a positive integer.
    """

    __slots__ = ("key_states",)

    #: False, as nothing here belongs to an event loop. Fetches for this cache run on the
    #: refresher's own loop and outlive the caller's loop.
    loop_bound: Final = False

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        """Create an empty cache."""
        #: Tokens, flights, failure streaks, cool-downs and 401 guards, per key.
        self.key_states: Final = KeyStates(max_entries)

    @property
    def max_entries(self) -> int:
        """The most keys held."""
        return self.key_states.max_entries

    def __repr__(self) -> str:
        """Show the size; never a token."""
        return f"<MemoryTokenCache keys={len(self.key_states)} max_entries={self.max_entries}>"

    def get(self, key: CacheKey) -> Token | None:
        """Return the token held for ``key``."""
        state = self.key_states.get(key)
        return None if state is None else state.token

    async def load(self, key: CacheKey) -> Token | None:
        """Return the token held for ``key`` (there is no shared store)."""
        return self.get(key)

    async def store(self, key: CacheKey, token: Token) -> None:
        """Keep ``token`` for ``key``."""
        self.key_states.set_token(key, token)

    def discard(self, key: CacheKey, token: Token) -> bool:
        """Drop ``token`` if it is still the one held for ``key``."""
        return self.key_states.drop_token(key, token)

    def fetch_lock(self, key: CacheKey) -> AbstractAsyncContextManager[object]:  # noqa: ARG002
        """No lock is needed within one process: the provider runs one fetch per key."""
        return _NO_LOCK

    def clear(self) -> None:
        """Drop every token and every key's memory of failures (for tests)."""
        self.key_states.clear()

    def __len__(self) -> int:
        """The number of tokens held."""
        states = self.key_states
        return sum(1 for key in states if (state := states.get(key)) and state.token)


_DEFAULT_CACHE = MemoryTokenCache()


def default_cache() -> MemoryTokenCache:
    """The process-wide memory cache that providers use unless given another."""
    return _DEFAULT_CACHE
