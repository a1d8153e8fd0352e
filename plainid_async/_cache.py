"""Where tokens live between requests: the cache key, the TokenCache protocol, the memory cache.

The provider talks to a cache only through :class:`TokenCache`, so a shared backend (Redis)
plugs in without touching the provider. A cache stores :class:`~plainid_async.Token` values,
whose wall-clock ``expires_at`` is what crosses process boundaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import attrs

from ._events import EventKind, Listener, emit
from ._flight import Flight
from ._policy import NO_FAILURES, FailureDecision, Failures, Guard, after_failure, on_unauthorized
from ._secret import Secret
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from ._token import Token

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "CacheKey",
    "Flight",
    "KeyState",
    "KeyStates",
    "KeyStatesCache",
    "LoopBoundCache",
    "MemoryTokenCache",
    "SourceCache",
    "TokenCache",
    "default_cache",
    "is_loop_bound",
    "key_states_of",
    "running_fetches",
    "serves_shared",
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

    Optional capabilities the provider uses when a cache has them, each declared by its own
    protocol below: ``key_states`` (``KeyStatesCache``: the cache owns the per-key
    records), ``loop_bound`` (``LoopBoundCache``: fetches must run on the caller's
    loop) and ``source`` (``SourceCache``: what :meth:`TokenProvider.health` reports).
    ``load``, ``store`` and ``fetch_lock`` are called from the loop the fetch runs on: the
    refresher's (a thread of its own), unless the cache is loop-bound.
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


# -- optional capabilities: what the provider uses when a cache has it -----------------------


@runtime_checkable
class KeyStatesCache(Protocol):
    """A cache that owns its per-key records (flights, failures, 401 guard) and shares them
    with every provider using it. A cache without it gets a side table (see
    :func:`key_states_of`).
    """  # noqa: D205 (a definition)

    @property
    def key_states(self) -> KeyStates:
        """The cache's per-key records."""


@runtime_checkable
class LoopBoundCache(Protocol):
    """A cache that says whether it must be used from the loop that calls ``get_token``.

    ``loop_bound = True``: fetches for it run on the caller's loop (and die with it). A cache
    without this attribute, or with ``False``, is used from the refresher's loop, where
    fetches outlive the caller's loop.
    """

    @property
    def loop_bound(self) -> bool:
        """Whether the cache is bound to the caller's event loop."""


@runtime_checkable
class SourceCache(Protocol):
    """A cache that says where it serves tokens from now (``"redis"`` or ``"memory"``)."""

    @property
    def source(self) -> str:
        """``"redis"`` while the shared store answers, else ``"memory"``."""


def is_loop_bound(cache: TokenCache) -> bool:
    """Whether fetches for ``cache`` must run on the caller's loop (see :class:`LoopBoundCache`)."""
    return isinstance(cache, LoopBoundCache) and cache.loop_bound is True


def serves_shared(cache: TokenCache) -> bool:
    """Whether ``cache`` serves from a shared store that answers now (see :class:`SourceCache`)."""
    return isinstance(cache, SourceCache) and cache.source == "redis"


_NO_LOCK: contextlib.nullcontext[None] = contextlib.nullcontext()

#: Keys a memory cache holds by default before it evicts the least recently used.
DEFAULT_MAX_ENTRIES = 10_000
#: How many of the least recently used keys one store looks at to drop dead ones.
_SWEEP_PER_STORE = 2
#: How many keys with a fetch running eviction passes over before it gives up for now.
_EVICT_SKIP = 8


_NO_GUARD: Final = Guard()


class KeyState:
    """What a cache remembers about one key: its token, its fetch, its failures, its guard.

    Three concerns, each changed only through this record's own methods: storage
    (:meth:`hold`, :meth:`drop`, :meth:`reject`), the flight slot (:meth:`begin`,
    :meth:`end`) and the failure policy's records (:meth:`failed`, :meth:`succeeded`,
    :meth:`guarded`, :meth:`start_afresh`), whose rules are pure functions in
    :mod:`plainid_async._policy`. Callers hold the table's lock (:attr:`KeyStates.lock`)
    around a change that must be atomic with a read. Read-only for everyone else: assigning
    an attribute raises :class:`AttributeError`.

    Attributes:
        token: The token held for the key in this process (memory and Redis caches keep it
            here), or ``None``. A plain slot: the provider's hot path reads it on every call.
        token_id: A shared cache's id of that token, or ``None``.
        flight: The fetch in progress, or ``None``.
        orphans: Fetches whose loop stopped before they ended (see :meth:`orphan`).
        record: The failure record (streak, last error, backoff, cool-down).
        guard: The 401 guard.
        last_success: Wall-clock time of the last successful fetch, or ``None``.
        providers: Open providers using this key.
        listeners: The ``on_event`` listeners of those providers (for evictions).
    """

    __slots__ = (
        "_flight",
        "_guard",
        "_last_success",
        "_listeners",
        "_orphans",
        "_providers",
        "_record",
        "_rejected",
        "_suspect",
        "_token_id",
        "token",
    )

    token: Token | None

    def __init__(self) -> None:
        """An empty record: no token, no fetch, no failure, no guard, no provider."""
        object.__setattr__(self, "token", None)
        self._token_id: str | None = None
        self._flight: Flight | None = None
        self._orphans: tuple[Flight, ...] = ()
        self._record: Failures = NO_FAILURES
        self._guard: Guard = _NO_GUARD
        self._suspect: Token | None = None
        self._last_success: float | None = None
        self._providers = 0
        self._listeners: tuple[Listener, ...] = ()
        self._rejected: dict[str, float] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse assignments from outside: the record changes through its methods."""
        if not name.startswith("_"):
            raise AttributeError(f"KeyState.{name} changes only through the record's methods")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        """The fetch, the streak and the providers; never the token."""
        return (
            f"<KeyState token={'held' if self.token is not None else None} "
            f"flight={self._flight!r} failures={self._record.count} "
            f"providers={self._providers}>"
        )

    # -- reading -------------------------------------------------------------------------

    @property
    def token_id(self) -> str | None:
        """A shared cache's id of the token held, or ``None``."""
        return self._token_id

    @property
    def flight(self) -> Flight | None:
        """The fetch in progress, or ``None``."""
        return self._flight

    @property
    def orphans(self) -> tuple[Flight, ...]:
        """Fetches whose loop stopped before they ended, until they end (see :meth:`orphan`)."""
        return self._orphans

    @property
    def record(self) -> Failures:
        """The failure record (immutable; replaced by :meth:`failed` and :meth:`succeeded`)."""
        return self._record

    @property
    def failures(self) -> int:
        """Failed fetches in a row."""
        return self._record.count

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last failed fetch, while :attr:`failures` > 0."""
        return self._record.last_error

    @property
    def cooldown_until(self) -> float:
        """Monotonic time before which, with no usable token, calls fail at once."""
        return self._record.cooldown_until

    @property
    def guard(self) -> Guard:
        """The 401 guard."""
        return self._guard

    @property
    def last_success(self) -> float | None:
        """Wall-clock time of the last successful fetch, or ``None``."""
        return self._last_success

    @property
    def providers(self) -> int:
        """Open providers using this key."""
        return self._providers

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The ``on_event`` listeners of the providers using this key."""
        return self._listeners

    def is_rejected(self, token_id: str) -> bool:
        """Whether a shared cache was told the token with this id is bad."""
        return token_id in (self._rejected or {})

    def idle(self, now: float) -> bool:
        """Whether nothing here is worth keeping: no provider, no fetch, no live token, no
        failure memory still in force.
        """  # noqa: D205 (a list of four)
        token = self.token
        return (
            self._providers <= 0
            and self._flight is None
            and (token is None or token.expires_at_monotonic <= now)
        )

    # -- storage -------------------------------------------------------------------------

    def hold(self, token: Token, token_id: str | None = None) -> None:
        """Hold ``token`` (with a shared cache's id of it) as the key's token."""
        object.__setattr__(self, "token", token)
        self._token_id = token_id
        if self._suspect is not token:
            self._suspect = None

    def drop(self, token: Token | None = None) -> bool:
        """Drop the token (only if it is ``token``, when given); whether one was dropped."""
        if self.token is None or (token is not None and self.token is not token):
            return False
        object.__setattr__(self, "token", None)
        self._token_id = self._suspect = None
        return True

    def drop_id(self, token_id: str) -> bool:
        """Drop the token if a shared cache's id of it is ``token_id``; whether it was."""
        if self.token is None or self._token_id != token_id:
            return False
        object.__setattr__(self, "token", None)
        self._token_id = self._suspect = None
        return True

    def reject(self, token_id: str, until: float, now: float) -> bool:
        """Remember that the token with this id is bad, until monotonic ``until``.

        Returns:
            Whether it is newly rejected (expired rejections are forgotten here).
        """
        rejected = self._rejected
        if rejected is None:
            rejected = self._rejected = {}
        first = token_id not in rejected
        for old in [t for t, expiry in rejected.items() if expiry <= now]:
            del rejected[old]
        rejected[token_id] = max(until, now)
        return first

    # -- the flight slot -----------------------------------------------------------------

    def begin(self, flight: Flight) -> None:
        """``flight`` is now the key's fetch in progress."""
        self._flight = flight

    def forget_flight(self) -> None:
        """Forget the fetches without ending them (a forked child's inheritance)."""
        self._flight = None
        self._orphans = ()

    def end(self, flight: Flight) -> bool:
        """``flight`` ended; whether it was the key's fetch (not an orphan, nor another's)."""
        if self._flight is not flight:
            if any(orphan is flight for orphan in self._orphans):
                self._orphans = tuple(f for f in self._orphans if f is not flight)
            return False
        self._flight = None
        return True

    def orphan(self, flight: Flight) -> bool:
        """``flight``'s loop stopped before it ended: the key's slot is free for a new fetch.

        The flight is kept among the :attr:`orphans` until it ends: if its loop runs again,
        it goes on there, and its provider's ``close()`` must still find it to cancel it.

        Returns:
            Whether it was the key's fetch (else another waiter orphaned it first).
        """
        if self._flight is not flight:
            return False
        self._flight = None
        self._orphans = (*self._orphans, flight)
        return True

    # -- the failure policy's records ------------------------------------------------------

    def failed(
        self,
        now: float,
        error: BaseException,
        *,
        delay: float,
        usable_left: float | None,
        transport: int | None = None,
    ) -> FailureDecision:
        """Record a failed fetch (see :func:`plainid_async._policy.after_failure`)."""
        decision = after_failure(
            self._record, now, error, delay=delay, usable_left=usable_left, transport=transport
        )
        self._record = decision.record
        return decision

    def succeeded(self, wall_now: float) -> int:
        """Record a successful fetch at wall-clock ``wall_now``; the streak it ends."""
        ended = self._record.count
        self._record = NO_FAILURES
        self._last_success = wall_now
        return ended

    def start_afresh(self) -> None:
        """Forget the failures: no streak, no cool-down, no background backoff."""
        self._record = NO_FAILURES

    def guarded(self, now: float) -> float:
        """A 401 from the API at ``now``: seconds the guard still holds (0: it opened now).

        See :func:`plainid_async._policy.on_unauthorized`.
        """
        self._guard, held = on_unauthorized(self._guard, now)
        return held

    @property
    def suspected(self) -> Token | None:
        """The held token the API answered 401 to, while it is being replaced, or ``None``."""
        return self._suspect

    def suspect(self, token: Token) -> None:
        """The API answered 401 to ``token``: it is replaced, and served until then."""
        self._suspect = token

    # -- bookkeeping -----------------------------------------------------------------------

    def attach(self, listener: Listener | None) -> None:
        """One more open provider uses the key (with its ``on_event``, if any)."""
        self._providers += 1
        if listener is not None:
            self._listeners = (*self._listeners, listener)

    def detach(self, listener: Listener | None) -> None:
        """One open provider fewer uses the key."""
        self._providers -= 1
        if listener is not None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)


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
    #: The failure policy's clock (monotonic seconds): cool-downs, backoffs and the 401
    #: guard are recorded and read on it. A test passes a fake to skip a wait.
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False, kw_only=True)
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
                self._evict(key)
            else:
                self._states.move_to_end(key)
            return state

    def set_token(self, key: CacheKey, token: Token, token_id: str | None = None) -> None:
        """Hold ``token`` for ``key``; drop a few dead keys; evict beyond the bound."""
        now = time.monotonic()
        with self._lock:
            self.state(key).hold(token, token_id)
            self._sweep(now)

    def drop_token(self, key: CacheKey, token: Token | None = None) -> bool:
        """Drop the token of ``key`` (only if it is ``token``, when given)."""
        with self._lock:
            state = self._states.get(key)
            return state is not None and state.drop(token)

    def attach(self, key: CacheKey, listener: Listener | None = None) -> KeyState:
        """Count one more open provider using ``key`` (and keep its ``on_event``)."""
        with self._lock:
            state = self.state(key)
            state.attach(listener)
            return state

    def release(self, key: CacheKey, listener: Listener | None = None) -> None:
        """Count one provider fewer; forget the key if nothing else keeps it."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            state.detach(listener)
            self.forget_if_idle(key)

    def forget_if_idle(self, key: CacheKey) -> None:
        """Forget ``key`` if no provider, fetch or live token keeps it."""
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.idle(time.monotonic()):
                del self._states[key]

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        for state in self._states.values():
            state.forget_flight()

    def flights(self, *, orphans: bool = False) -> list[Flight]:
        """The fetches in progress, for tests and health checks.

        Args:
            orphans: Also list the fetches whose loop stopped before they ended
                (:attr:`KeyState.orphans`), for their providers to cancel.
        """
        with self._lock:
            running = [s.flight for s in self._states.values() if s.flight is not None]
            if orphans:
                running += [f for s in self._states.values() for f in s.orphans]
            return running

    def clear(self) -> None:
        """Forget every key (tokens, streaks, cool-downs); running fetches go on."""
        with self._lock:
            for state in self._states.values():
                state.drop()
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

    def _evict(self, new: CacheKey) -> None:
        skipped = 0
        while len(self._states) > self.max_entries and skipped < _EVICT_SKIP:
            key, state = next(iter(self._states.items()))
            if key == new:  # every older key is kept: never the one just made
                break
            if state.flight is not None or (state.providers > 0 and state.failures > 0):
                # Keep a key whose fetch runs (its callers would start a second one), and
                # the failure memory of a key an open provider uses (its calls would each
                # fetch again instead of honouring the cool-down). The bound is then
                # exceeded for a while: those keys are few and small.
                self._states.move_to_end(key)
                skipped += 1
                continue
            del self._states[key]
            # A provider still holding this token must not serve it: its hot path checks
            # that the state still holds the very token it cached.
            token = state.token
            state.drop()
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
_SIDE_LOCK = threading.RLock()  # key_states_of makes a table (which registers) under it


def _forget_after_fork() -> None:
    """In a forked child: no inherited flight, no inherited lock.

    A flight of the parent runs on a thread the child does not have, so it never ends:
    every key forgets it and the child's first call fetches for itself. Locks another
    thread of the parent held at the fork would never be released: they are made anew.
    Tokens, failure records and 401 guards stay (they are facts about the credentials).
    """
    global _SIDE_LOCK  # noqa: PLW0603 (the child's own lock, as refresher_loop does)
    _SIDE_LOCK = threading.RLock()
    for table in list(_ALL_TABLES):
        table._after_fork()  # noqa: SLF001 (this module's own class)


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
    if isinstance(cache, KeyStatesCache) and isinstance(cache.key_states, KeyStates):
        return cache.key_states
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


os.register_at_fork(after_in_child=_forget_after_fork)
