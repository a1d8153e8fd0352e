"""Flights: one token fetch per cache key per process, shared by every caller of that key.

:class:`Flight` is one fetch in progress; :class:`Fetcher` starts, runs and ends a
provider's flights and makes callers wait for them, each within its own budget. Every fetch
takes the same path whatever the cache (:meth:`Fetcher.start`): it runs on the refresher's
loop (:mod:`plainid_async._refresher`), so it outlives the loop that started it, unless
the fetch must run on a given loop: the loop of a ``session=`` passed in, or the caller's
loop for a cache that declares itself bound to it (``loop_bound = True``, see
:class:`~plainid_async._cache.LoopBoundCache`). Callers on other loops then start or join
another fetch as soon as that loop stops.

The failure policy (cool-down, background retry cap, retry delay, waiter budget) is
decided in :mod:`plainid_async._policy`; the per-key record keeps its outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import random
import time
from time import monotonic
from typing import TYPE_CHECKING, Final

import aiohttp
import attrs

from ._events import EventKind, FetchReason, backlog, until_heard
from ._log import LOGGER_NAME
from ._policy import (
    cooldown_delay,
    cooldown_left,
    probe_only,
    retry_delay,
    wait_budget,
    window_left,
)
from ._refresher import is_refresher_loop, refresher_loop
from ._sessions import SESSIONS
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    ProviderClosedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

    from yarl import URL

    from ._cache import CacheKey, KeyState, KeyStates, TokenCache
    from ._endpoint import RetryPolicy
    from ._policy import FailureDecision
    from ._proxy import Proxy
    from ._stats import Reporter
    from ._token import RefreshSchedule, Token

__all__ = ["ORPHAN_POLL", "Fetcher", "Flight"]

logger = logging.getLogger(LOGGER_NAME)

#: How often a caller waiting on a fetch of another, loop-bound loop checks that loop runs.
ORPHAN_POLL: Final = 0.05

_FETCH_IDS = itertools.count(1)
#: Fetches that replace a token still served (replace, never drop).
_REPLACING: Final = frozenset({FetchReason.FORCED, FetchReason.UNAUTHORIZED})


def _retrieved(future: asyncio.Future[Token]) -> None:
    """Mark a future's exception as retrieved (nobody waits for it any more)."""
    if not future.cancelled():
        future.exception()


class _OrphanedError(Exception):
    """The loop running a flight stopped or closed: start or join another fetch."""


@attrs.define(eq=False)
class Flight:
    """One token fetch in progress for one cache key, shared by every caller of that key.

    Read-only for users: tests see flights through ``running_fetches()`` and a cache's
    ``key_states.flights()``.

    Attributes:
        key: The cache key the fetch is for.
        reason: Why it started.
        future: Completes with the token or the error, from any thread.
        loop: The event loop running the fetch.
        id: Number of the fetch in this process (its events' ``fetch_id``).
        attempts: HTTP requests it sent so far.
    """

    key: CacheKey = attrs.field(repr=False)
    reason: FetchReason
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
    #: The token it replaces (a forced or 401 refresh), dropped if the endpoint says the
    #: credentials are invalid.
    replacing: Token | None = attrs.field(default=None, repr=False)
    #: The transport of the provider that started it (see Fetcher.transport).
    transport: int = attrs.field(default=0, repr=False)
    #: When its next attempt goes (monotonic) while it waits out a server's Retry-After,
    #: and the error that set that window.
    not_before: float = attrs.field(default=0.0, repr=False)
    window_error: TokenRequestError | None = attrs.field(default=None, repr=False)
    #: Done once its provider's listener and the subscribers heard how it ended.
    heard: tuple[concurrent.futures.Future[None], ...] = attrs.field(default=(), repr=False)

    def attempt(self) -> None:
        """An HTTP attempt starts."""
        self.attempts += 1
        self.attempt_started = time.monotonic()

    @property
    def background(self) -> bool:
        """Whether it started as a background refresh (a usable token was cached)."""
        return self.reason is FetchReason.REFRESH

    def done(self) -> bool:
        """Whether the fetch has finished."""
        return self.future.done()

    async def wait(self) -> Token:
        """Wait for the fetch, and for its listeners to hear how it ended, from any loop.

        A cancelled waiter never cancels it.

        Returns:
            The token it fetched.

        Raises:
            TokenRequestError: The fetch failed.
            asyncio.CancelledError: The fetch was cancelled (its provider closed).
        """
        try:
            return await asyncio.shield(asyncio.wrap_future(self.future))
        finally:
            if self.future.done():
                await until_heard(self.heard)

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


@attrs.define(eq=False, kw_only=True)
class Fetcher:
    """Runs the fetches of one provider: start, wait, request, end.

    Args:
        owner: The provider (each flight names the provider that started it).
        cache: The provider's cache.
        states: The cache's per-key records.
        reporter: Where decisions go (stats, log, listeners).
        schedule: The provider's refresh schedule of a token.
        request: The token request (``request_token``), given its session and options.
        session: A ``session=`` passed to the provider, or ``None``.
        loop_bound: Whether the cache must be used from the caller's loop.
        retry: The provider's retry policy.
        timeout: Time limit of one attempt, seconds.
    """

    owner: object
    cache: TokenCache
    states: KeyStates
    reporter: Reporter
    schedule: Callable[[Token], RefreshSchedule]
    request: Callable[..., Awaitable[Token]]
    session: aiohttp.ClientSession | None
    loop_bound: bool
    retry: RetryPolicy
    timeout: float
    token_url: URL
    ssl: ssl.SSLContext | bool | None
    proxy: Proxy | None
    trust_env: bool
    budget: float = attrs.field(init=False)
    #: Which transport token requests take (proxy, TLS, session): a failure of another
    #: transport's fetch never fails this provider's calls.
    transport: int = attrs.field(init=False)
    closed: bool = attrs.field(default=False, init=False)
    #: Waits between attempts; tests pass their own to see the steps.
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep

    def __attrs_post_init__(self) -> None:
        """Work out the waiter budget."""
        self.budget = wait_budget(self.retry, self.timeout)
        proxy = None if self.proxy is None else (str(self.proxy.url), self.proxy.login)
        ssl = self.ssl if self.ssl is None or isinstance(self.ssl, bool) else id(self.ssl)
        session = None if self.session is None else id(self.session)
        self.transport = hash((proxy, ssl, session, self.trust_env))

    def check_open(self) -> None:
        """Raise :class:`~plainid_async.ProviderClosedError` once the provider closed."""
        if self.closed:
            raise ProviderClosedError("this TokenProvider is closed")

    # -- starting ------------------------------------------------------------------------

    def refresh_in_background(
        self,
        key: CacheKey,
        state: KeyState,
        token: Token,
        reason: FetchReason = FetchReason.REFRESH,
    ) -> None:
        """Start one background refresh of ``token``, unless one runs or must wait.

        ``reason`` is REFRESH for a STALE token, UNAUTHORIZED for one the API answered 401
        to: either keeps being served until the new one is in hand.
        """
        if state.flight is not None:
            return
        with self.states.lock:
            record = state.record
        if record.count and self.states.clock() < min(record.retry_at, record.retry_by):
            return
        self.start(key, state, token, reason)

    def loop_for_fetch(self) -> asyncio.AbstractEventLoop:
        """Where a fetch runs: the refresher, unless the session or the cache is loop-bound.

        Raises:
            ConfigurationError: ``session=`` belongs to a loop that is closed or not
                running, so no fetch can use it.
        """
        session = self.session
        if session is not None:
            # aiohttp keeps the session's loop private and deprecates its public property.
            loop: asyncio.AbstractEventLoop | None = getattr(session, "_loop", None)
            if loop is None or loop.is_closed() or not loop.is_running():
                raise ConfigurationError(
                    "session= belongs to an event loop that is closed or not running: make "
                    "the aiohttp.ClientSession on the loop that calls get_token(), or pass "
                    "no session= (the provider then makes its own)"
                )
            return loop
        if self.loop_bound:
            return asyncio.get_running_loop()
        return refresher_loop()

    def start(
        self,
        key: CacheKey,
        state: KeyState,
        replacing: Token | None,
        reason: FetchReason,
        *,
        full_budget: bool = False,
    ) -> Flight:
        """Return the flight for ``key``, starting one if none runs."""
        with self.states.lock:
            flight = state.flight
            if flight is not None and not flight.done():
                return flight
            loop = self.loop_for_fetch()
            future: concurrent.futures.Future[Token] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            flight = Flight(
                key=key,
                reason=reason,
                future=future,
                loop=loop,
                owner=self.owner,
                replacing=replacing if reason in _REPLACING else None,
                transport=self.transport,
            )
            state.begin(flight)
            probe = probe_only(state.record, reason, full_budget=full_budget)
        self.reporter.emit(EventKind.FETCH_STARTED, key, flight=flight)
        coro = self._fetch(flight, replacing, probe=probe)

        def run() -> None:
            task = loop.create_task(coro, name=f"plainid-async token fetch {key.client_id}")
            flight.task = task
            task.add_done_callback(lambda done: self._done(flight, state, done))

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            run()
        else:
            loop.call_soon_threadsafe(run)
        return flight

    # -- waiting -------------------------------------------------------------------------

    async def wait(  # noqa: C901 (one loop: join or start, wait, and each way it ends)
        self, key: CacheKey, replacing: Token | None, reason: FetchReason
    ) -> Token:
        """Wait for a token for ``key``: join the flight or start one, within the budget."""
        deadline = monotonic() + self.budget
        second_chance = foreign_chance = True
        skip_cooldown = reason is FetchReason.FORCED
        first = True  # one lookup event per call: WAIT, or COOLDOWN
        while True:
            self.check_open()
            state = self.states.state(key)
            if not skip_cooldown:
                self._check_cooldown(key, state, emit=first)
                await self._wait_out_window(state, deadline)
            if first:
                first = False
                self.reporter.emit(EventKind.WAIT, key)
            flight = self.start(key, state, replacing, reason, full_budget=skip_cooldown)
            flight.hurry()
            window_error = flight.window_error
            if window_error is not None and flight.not_before > deadline:
                # The fetch waits out a Retry-After past this caller's budget: fail now,
                # with the error that set the window, rather than at the budget's end.
                raise window_error.with_traceback(None)
            try:
                token = await self._await(flight, state, deadline)
            except TokenRequestError as error:
                # A fetch over another transport (proxy, TLS, session) failed: its failure
                # may be that transport's, so this caller tries once over its own.
                if flight.transport != self.transport and foreign_chance:
                    foreign_chance = False
                    skip_cooldown = True
                    continue
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
                self.check_open()  # closed while it waited for another provider's fetch
                if monotonic() < self.schedule(token).usable_until:
                    return token
                # The fetch ended in time, but this waiter woke too late (its loop or its
                # process was busy or frozen): never hand out a token it cannot use.
                replacing, skip_cooldown = token, True

    def _check_cooldown(self, key: CacheKey, state: KeyState, *, emit: bool) -> None:
        """Inside a cool-down with no fetch running, fail at once with the last error."""
        with self.states.lock:
            record, running = state.record, state.flight is not None
        left = cooldown_left(record, self.states.clock(), self.transport)
        if running or left <= 0 or record.last_error is None:
            return
        if emit:
            self.reporter.emit(EventKind.COOLDOWN, key, error=record.last_error, retry_in=left)
        # The failed fetch's own error object (with a fresh traceback, as asyncio does for a
        # shared future), so the number of distinct errors callers see is the number of
        # failed fetches.
        raise record.last_error.with_traceback(None)

    async def _wait_out_window(self, state: KeyState, deadline: float) -> None:
        """Inside a server's Retry-After window with no fetch running: wait it out within
        the budget, or fail now with the error that set it.
        """  # noqa: D205 (two cases)
        with self.states.lock:
            record, running = state.record, state.flight is not None
        left = window_left(record, self.states.clock(), self.transport)
        if running or left <= 0 or record.last_error is None:
            return
        if monotonic() + left > deadline:
            raise record.last_error.with_traceback(None)
        await asyncio.sleep(left)

    async def _await(self, flight: Flight, state: KeyState, deadline: float) -> Token:
        waiting = asyncio.wrap_future(flight.future)
        try:
            return await self._await_on(waiting, flight, state, deadline)
        finally:
            if not waiting.done():
                # This caller leaves first (its own timeout, a cancel): whatever the fetch
                # ends with is nobody's to read here, so no "never retrieved" record.
                waiting.add_done_callback(_retrieved)
            else:
                # The fetch's events reach the listeners (on their own threads) before its
                # outcome reaches the caller, within the caller's budget. flight.heard was
                # taken as the fetch ended: events queued since are not this caller's to wait
                # for.
                await until_heard(flight.heard, deadline - monotonic())

    async def _await_on(
        self, waiting: asyncio.Future[Token], flight: Flight, state: KeyState, deadline: float
    ) -> Token:
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
                    f"no token for client {flight.key.client_id} within {self.budget:g} s, "
                    "this provider's time budget (a fetch for these credentials is still "
                    "running)"
                )
                self.reporter.emit(EventKind.GAVE_UP, flight.key, flight=flight, error=error)
                raise error
            try:
                async with asyncio.timeout(min(left, ORPHAN_POLL) if watch else left):
                    return await asyncio.shield(waiting)
            except TimeoutError:
                if watch and (flight.loop.is_closed() or not flight.loop.is_running()):
                    with self.states.lock:
                        state.orphan(flight)
                    logger.debug(
                        "the loop running a token fetch for client %s stopped; fetching anew",
                        flight.key.client_id,
                    )
                    raise _OrphanedError from None

    # -- running -------------------------------------------------------------------------

    async def _fetch(self, flight: Flight, replacing: Token | None, *, probe: bool) -> Token:
        flight.wake = asyncio.Event()
        if flight.hurried:
            flight.wake.set()
        key = flight.key
        async with self.cache.fetch_lock(key):
            # Another process (shared cache) may have fetched while we waited for the lock.
            shared = await self.cache.load(key)
            fresh = shared is not None and monotonic() < self.schedule(shared).refresh_at
            if shared is not None and fresh and shared != replacing:
                return shared
            retry = attrs.evolve(self.retry, attempts=1) if probe else self.retry
            token = await self._request(flight, retry)
            dead = self._arrived_dead(key, token)
            if dead is not None and retry.attempts > 1:
                # Most likely the process was frozen while the answer was on its way (Lambda
                # between invocations, SIGSTOP): the endpoint is fine, so ask once more, now.
                self.reporter.emit(
                    EventKind.ATTEMPT_FAILED, key, flight=flight, error=dead, retry_in=0.0
                )
                token = await self._request(flight, retry)
                dead = self._arrived_dead(key, token)
            if dead is not None:
                # Never hand out or keep a token this process's clock says is unusable.
                raise dead
            await self.cache.store(key, token)
            return token

    def _arrived_dead(self, key: CacheKey, token: Token) -> TokenEndpointUnavailableError | None:
        """The error for ``token`` if it arrived unusable by this process's clock, else None."""
        if self.schedule(token).usable_until - monotonic() > 0:
            return None
        return TokenEndpointUnavailableError(
            f"the token for client {key.client_id} arrived expired by this "
            f"process's clock ({token.remaining():.2f} s left of its "
            f"{token.expires_in:g} s); not used"
        )

    async def _request(self, flight: Flight, retry: RetryPolicy) -> Token:
        key, wake = flight.key, flight.wake
        assert wake is not None  # noqa: S101 (set by _fetch before it calls here)
        failed: list[TokenRequestError] = []  # the attempt the next sleep follows
        hurried: int | None = None  # backoff steps since callers came waiting

        def count() -> None:
            flight.attempt()
            self.reporter.stats.token_requests += 1

        def retrying(error: TokenRequestError, _planned: float) -> None:
            failed[:] = [error]

        async def backoff(planned: float) -> None:
            # The delay is decided here, once (retry_delay), and the event reports it.
            # Once callers wait (see Flight.hurry), the next attempt goes at once and the
            # backoff starts over from its first step.
            nonlocal hurried
            if hurried is None and wake.is_set():
                hurried = 0
            jitter = random.random()  # noqa: S311 (jitter, not crypto)
            error = failed[0] if failed else None
            retry_after = None if error is None else error.retry_after
            delay = retry_delay(planned, hurried, self.retry, jitter, retry_after=retry_after)
            self.reporter.emit(
                EventKind.ATTEMPT_FAILED, key, flight=flight, error=error, retry_in=delay
            )
            if retry_after is not None:
                # The server's window: nobody who comes waiting shortens it.
                flight.window_error, flight.not_before = error, monotonic() + delay
                try:
                    await self.sleep(delay)
                finally:
                    flight.window_error = None
                return
            if hurried is not None:
                hurried += 1
                if delay > 0:
                    await self.sleep(delay)
                return
            # Not asyncio.wait_for: on Python 3.11 it drops a cancel (close()) that lands
            # as the wait ends. Callers who come waiting cut this sleep short.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
            if wake.is_set():
                hurried = 1

        async def send(session: aiohttp.ClientSession) -> Token:
            return await self.request(
                session,
                self.token_url,
                client_id=key.client_id,
                client_secret=key.client_secret,
                timeout=self.timeout,
                retry=retry,
                ssl=self.ssl,
                proxy=self.proxy,
                trust_env=self.trust_env,
                on_attempt=count,
                on_retry=retrying,
                sleep=backoff,
            )

        async with self._session() as session:
            return await send(session)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A fetch's session: ``session=``, the refresher's kept-alive one, or its own."""
        if self.session is not None:
            yield self.session
        elif is_refresher_loop(asyncio.get_running_loop()):
            # Kept alive across refreshes: the next one reuses this one's TLS connection.
            transport = (str(self.token_url.origin()), self.ssl, self.proxy, self.trust_env)
            yield SESSIONS.session(transport, self.owner)
        else:
            async with aiohttp.ClientSession(trust_env=False) as session:
                yield session

    # -- ending --------------------------------------------------------------------------

    def _done(self, flight: Flight, state: KeyState, task: asyncio.Task[Token]) -> None:
        # The record is settled before the future, so a waiter that wakes up and calls
        # again already sees the cool-down (or the new token).
        error: BaseException | None = None
        if not task.cancelled():
            error = task.exception()  # also marks it retrieved: no "never retrieved" warning
        key = flight.key
        ended = 0  # the failure streak a success ends, or the streak with this failure
        decision = None
        with self.states.lock:
            state.end(flight)
            if task.cancelled():
                pass
            elif error is None:
                ended = state.succeeded(time.time())
            else:
                decision = self._failed(key, state, error)
                ended = state.failures
        # Listeners hear of it outside the lock, before any waiter gets the outcome.
        emit = self.reporter.emit
        if task.cancelled():
            emit(EventKind.FETCH_CANCELLED, key, flight=flight)
            flight.heard = backlog(self.reporter.listener)
            flight.future.set_exception(asyncio.CancelledError())
        elif error is None:
            token = task.result()
            emit(EventKind.FETCH_SUCCEEDED, key, flight=flight, token=token, failures=ended)
            flight.heard = backlog(self.reporter.listener)
            flight.future.set_result(token)
        else:
            assert decision is not None  # noqa: S101 (a failure was recorded above)
            emit(
                EventKind.FETCH_FAILED,
                key,
                flight=flight,
                error=error,
                retry_in=decision.retry_in,
                failures=ended,
                cached=decision.cached,
            )
            if decision.cooling:
                emit(
                    EventKind.COOLDOWN_STARTED,
                    key,
                    flight=flight,
                    error=error,
                    retry_in=decision.retry_in,
                    failures=ended,
                )
            if isinstance(error, InvalidCredentialsError) and flight.replacing is not None:
                # Replace, never drop, unless the endpoint says the credentials are invalid.
                self.cache.discard(key, flight.replacing)
            flight.heard = backlog(self.reporter.listener)
            flight.future.set_exception(error)
        self.states.forget_if_idle(key)

    def _failed(self, key: CacheKey, state: KeyState, error: BaseException) -> FailureDecision:
        """Record a failed fetch in the key's record; the policy decides what follows."""
        retry_after = error.retry_after if isinstance(error, TokenRequestError) else None
        jitter = random.random()  # noqa: S311 (jitter, not crypto)
        delay = cooldown_delay(self.retry, state.failures + 1, retry_after, jitter)
        cached = self.cache.get(key)
        usable_left = None
        if cached is not None:
            left = self.schedule(cached).usable_until - monotonic()
            usable_left = left if left > 0 else None
        return state.failed(
            self.states.clock(),
            error,
            delay=delay,
            usable_left=usable_left,
            transport=self.transport,
        )

    # -- closing -------------------------------------------------------------------------

    def cancel(self) -> list[Flight]:
        """The provider closes: refuse new calls, cancel its fetches, and return them."""
        self.closed = True
        mine = [
            f for f in self.states.flights(orphans=True) if f.owner is self.owner and not f.done()
        ]
        for flight in mine:
            flight.cancel()
        return mine

    @staticmethod
    async def settle(flights: list[Flight]) -> None:
        """Wait (at most 5 s) for cancelled ``flights`` whose loop still runs to end."""
        here = asyncio.get_running_loop()
        waits = [f.wait() for f in flights if f.loop is here or f.loop.is_running()]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waits, return_exceptions=True)
