"""The event stream: one immutable event per decision the provider and the caches make.

:attr:`TokenProvider.stats <plainid_async.TokenProvider.stats>`, :mod:`plainid_async.otel`
and the ``plainid_async`` log consume this one stream, so they cannot disagree;
:meth:`TokenProvider.health <plainid_async.TokenProvider.health>` reads the per-key state the
same decisions leave in the cache.

Consumers: the ``plainid_async`` log (:func:`emit` writes each decision's record, the one
place that says what each kind logs and at which level), the ``on_event=`` callable of one
provider, and the process-wide subscribers (:func:`subscribe`, used by
:mod:`plainid_async.otel`). No listener runs on the refresher's thread, where the fetches of
every provider run: an event decided there waits in its listener's queue for that listener's
own worker thread (:class:`Listener`), so a slow listener delays only itself. Each listener
hears the kinds it asked for (every kind by default). No event object is built unless a
listener hears its kind, and no log record unless the logger is enabled for its level; a
provider's hot path looks at nothing of this: while anyone hears ``HIT``, lookups take the
provider's slow path, which emits them (a subscriber that hears ``HIT`` empties every
provider's hot slot through :data:`BUS`'s watchers when it arrives). Lookups are never
logged, so the log needs no such detour. An exception in a listener is logged once per
listener and never reaches the call that emitted the event.

No event carries a secret or a token: only the client id, reasons, counts, HTTP statuses,
durations, expiry times and redacted error text.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._log import LOGGER_NAME
from ._refresher import on_refresher_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "ALL_KINDS",
    "BUS",
    "LOOKUP_KINDS",
    "EventKind",
    "FetchReason",
    "Listener",
    "TokenEvent",
    "backlog",
    "emit",
    "heard",
    "log_level",
    "publish",
    "subscribe",
    "until_heard",
]

logger = logging.getLogger(LOGGER_NAME)


class EventKind(enum.Enum):
    """What was decided. Each kind lists the :class:`TokenEvent` fields it fills in.

    Lookups (one per ``get_token()`` call):

    * ``HIT``: a FRESH token was served from the cache (``expires_in``, ``expires_at``).
    * ``STALE``: a STALE token was served at once, while a background refresh runs or is
      due (``expires_in``, ``expires_at``).
    * ``WAIT``: no usable token was cached; the caller waits for a fetch.
    * ``COOLDOWN``: the call failed at once, without a token request, because a fetch for
      these credentials failed moments ago (``error``, ``retry_in``).

    Fetches (``fetch_id`` and ``reason`` on each; ``duration`` from the start of the fetch):

    * ``FETCH_STARTED``: a fetch started.
    * ``ATTEMPT_FAILED``: one HTTP attempt failed and another follows (``attempts`` so far,
      ``status``, ``error``, ``error_type``, ``retry_in``, ``duration`` of the attempt).
    * ``FETCH_SUCCEEDED``: a new token is cached (``attempts``, ``status``, ``expires_in``,
      ``expires_at``, ``failures``: failed fetches in a row that this one ends). ``attempts``
      is 0 when a shared cache already held a new token.
    * ``FETCH_FAILED``: no token was obtained, retries included (``attempts``, ``status``,
      ``error``, ``error_type``, ``failures``: failed fetches in a row, this one included;
      ``retry_in``: until the next fetch may start, the cool-down or the wait before the
      next background refresh, ``None`` when calls may fetch again at once).
    * ``FETCH_CANCELLED``: the fetch was cancelled (its provider closed or its loop ended).
    * ``GAVE_UP``: a waiting caller gave up after its own provider's time budget, while the
      fetch it waited for goes on for the others (``error``, ``reason``, ``fetch_id``).

    Guards and caches:

    * ``COOLDOWN_STARTED``: after a failed fetch with no usable token, calls fail at once,
      with no token request, for ``retry_in`` seconds (``error``, ``failures``, and the
      ``fetch_id`` and ``reason`` of the failed fetch).
    * ``UNAUTHORIZED_HELD``: the API answered 401 inside the 401 guard (a 401 replaced this
      key's token moments ago): the token is kept, no token is requested, and the caller
      gets the 401 (``retry_in``: until the guard lets go).
    * ``REDIS_FALLBACK_ENTERED``: Redis failed or was too slow; the cache uses this
      process's memory and direct fetches (``error``). ``client_id`` is ``None``.
    * ``REDIS_FALLBACK_LEFT``: Redis answers again. ``client_id`` is ``None``.
    * ``EVICTED``: a memory cache at its ``max_entries`` bound dropped the least recently
      used key; its next call fetches again (``expires_in``, ``expires_at`` of the token it
      held, if any). Goes to the subscribers and to the ``on_event`` of the providers open
      on that key.
    """

    HIT = "hit"
    STALE = "stale"
    WAIT = "wait"
    COOLDOWN = "cooldown"
    FETCH_STARTED = "fetch_started"
    ATTEMPT_FAILED = "attempt_failed"
    FETCH_SUCCEEDED = "fetch_succeeded"
    FETCH_FAILED = "fetch_failed"
    FETCH_CANCELLED = "fetch_cancelled"
    GAVE_UP = "gave_up"
    COOLDOWN_STARTED = "cooldown_started"
    UNAUTHORIZED_HELD = "unauthorized_held"
    REDIS_FALLBACK_ENTERED = "redis_fallback_entered"
    REDIS_FALLBACK_LEFT = "redis_fallback_left"
    EVICTED = "evicted"


#: Every kind: what a listener hears unless it asked for fewer.
ALL_KINDS: Final = frozenset(EventKind)
#: The lookups, one per ``get_token()`` call.
LOOKUP_KINDS: Final = frozenset(
    (EventKind.HIT, EventKind.STALE, EventKind.WAIT, EventKind.COOLDOWN)
)


class FetchReason(enum.Enum):
    """Why a fetch started.

    * ``COLD``: no usable token was cached (none yet, evicted, or too close to expiry).
    * ``REFRESH``: the cached token entered its refresh window; refreshed in the background.
    * ``FORCED``: ``get_token(force_refresh=True)``.
    * ``UNAUTHORIZED``: the API answered 401 to the cached token
      (:meth:`TokenProvider.report_unauthorized <plainid_async.TokenProvider.report_unauthorized>`,
      which the bearer middleware calls).
    """

    COLD = "cold"
    REFRESH = "refresh"
    FORCED = "forced"
    UNAUTHORIZED = "unauthorized"


@attrs.frozen(kw_only=True)
class TokenEvent:
    """One decision of a provider or a cache. Immutable; never holds a secret or a token.

    Fields that do not apply to a kind are ``None`` (see :class:`EventKind`).

    Attributes:
        kind: What was decided.
        client_id: The API client id, or ``None`` for an event of a whole cache.
        timestamp: When, as wall-clock seconds since the epoch.
        reason: Why the fetch started (fetch events).
        fetch_id: Number of the fetch in this process, the same on all its events.
        attempts: HTTP requests sent by the fetch so far.
        status: HTTP status of the last answer of the token endpoint, if there was one.
        error: What went wrong: redacted, one line, bounded.
        error_type: The exception class name, e.g. ``"TokenEndpointUnavailableError"``.
        duration: Seconds: of the fetch so far, or of the failed attempt.
        retry_in: Seconds until the next attempt, or until a guard or cool-down ends.
        expires_in: The token's lifetime as issued, seconds.
        expires_at: The token's wall-clock expiry, seconds since the epoch.
        failures: Failed fetches in a row for these credentials.
    """

    kind: EventKind
    client_id: str | None
    timestamp: float
    reason: FetchReason | None = None
    fetch_id: int | None = None
    attempts: int | None = None
    status: int | None = None
    error: str | None = None
    error_type: str | None = None
    duration: float | None = None
    retry_in: float | None = None
    expires_in: float | None = None
    expires_at: float | None = None
    failures: int | None = None

    @property
    def remaining(self) -> float | None:
        """Seconds the token had left when the event happened, or ``None`` without one."""
        if self.expires_at is None:
            return None
        return self.expires_at - self.timestamp


class Listener:
    """A callable that receives events, one at a time, in order; an exception in it is
    logged once, then ignored.

    A listener hears the kinds it asked for (every kind by default): an event nobody asked
    for is never built. An event decided on a caller's loop is given to the callback there
    and then, unless the listener still has events queued: then it queues behind them. An
    event decided on the refresher (where the fetches of every provider run) is queued and
    given to the callback by the listener's own worker thread, a daemon started when its
    queue fills and gone when it empties, so a slow callback holds up only its own events.
    """  # noqa: D205 (the summary needs both halves)

    __slots__ = (
        "__weakref__",
        "_last",
        "_lock",
        "_queue",
        "_serial",
        "_worker",
        "callback",
        "failed",
        "kinds",
    )

    def __init__(
        self, callback: Callable[[TokenEvent], object], kinds: Iterable[EventKind] | None = None
    ) -> None:
        """Wrap ``callback``, for ``kinds`` (``None``: every kind)."""
        self.callback: Final = callback
        self.kinds: Final = ALL_KINDS if kinds is None else frozenset(kinds)
        self.failed: bool = False
        self._start_empty()
        _LISTENERS.add(self)

    def _start_empty(self) -> None:
        """No event queued, none being given, no worker (also a forked child's state)."""
        # _lock guards the fields below and ``failed``; _serial is held while the callback
        # runs, so it never runs twice at once and events reach it in the order taken.
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        self._queue: collections.deque[tuple[TokenEvent, concurrent.futures.Future[None]]] = (
            collections.deque()
        )
        self._last: concurrent.futures.Future[None] | None = None  # of the last one queued
        self._worker: threading.Thread | None = None

    def __call__(self, event: TokenEvent) -> None:
        """Give ``event`` to the callback; log its first exception, swallow every one."""
        try:
            self.callback(event)
        except Exception as error:  # noqa: BLE001 (logged by _raised, with its traceback, once)
            self._raised(event, error)

    def _raised(self, event: TokenEvent, error: BaseException) -> None:
        """Log ``error``, with its traceback, if it is the callback's first one."""
        with self._lock:
            first, self.failed = not self.failed, True
        if first:
            logger.error(
                "event listener %r raised on a %s event; its later errors are not logged, "
                "and no call fails because of it",
                self.callback,
                event.kind.value,
                exc_info=error,
            )

    def take(self, event: TokenEvent, *, queue: bool) -> None:
        """Give ``event`` to the callback now, or queue it for the worker.

        Args:
            event: The event.
            queue: Whether it must not run on this thread (the refresher's); it is queued
                anyway while earlier events wait in the queue.
        """
        if not queue and self._serial.acquire(blocking=False):
            # Nothing is being given. A worker (set before its first event is queued,
            # cleared once none is left) means events wait: this one goes behind them.
            if self._worker is None:
                try:
                    self(event)
                finally:
                    self._serial.release()
                return
            self._serial.release()
        worker = None
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((event, done))
            self._last = done
            if self._worker is None:
                worker = self._worker = threading.Thread(
                    target=self._work, name="plainid-async listener", daemon=True
                )
        if worker is not None:
            worker.start()

    def _work(self) -> None:
        """The worker: give the queued events, oldest first, then end."""
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                event, done = self._queue.popleft()
            try:
                with self._serial:
                    self(event)
            except BaseException as error:  # noqa: BLE001 (SystemExit in a callback ends no worker)
                self._raised(event, error)
            finally:
                done.set_result(None)

    def backlog(self) -> concurrent.futures.Future[None] | None:
        """A future done once the callback has had every event queued so far, or ``None``."""
        with self._lock:
            last = self._last
        return None if last is None or last.done() else last


#: Every listener alive: a forked child empties their queues.
_LISTENERS: Final[weakref.WeakSet[Listener]] = weakref.WeakSet()


def _forget_after_fork() -> None:
    """In a forked child: no worker, no queue; a lock of the parent's may be held."""
    for listener in list(_LISTENERS):
        listener._start_empty()  # noqa: SLF001 (this module's own class)


os.register_at_fork(after_in_child=_forget_after_fork)


class _Bus:
    """The process-wide subscribers, the kinds they hear, and who must hear that one arrived."""

    __slots__ = ("_lock", "listeners", "wanted", "watchers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, under the lock: readers need no lock.
        self.listeners: tuple[Listener, ...] = ()
        #: The kinds at least one subscriber hears: an event of another kind is built for
        #: no subscriber.
        self.wanted: frozenset[EventKind] = frozenset()
        #: Called after a subscriber that hears ``HIT`` is added (the provider empties its
        #: hot slots, so lookups that used to be answered there are emitted from now on).
        self.watchers: list[Callable[[], object]] = []

    def add(self, listener: Listener) -> None:
        with self._lock:
            self.listeners = (*self.listeners, listener)
            self.wanted = self.wanted | listener.kinds
        if EventKind.HIT in listener.kinds:
            for watcher in self.watchers:
                watcher()

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self.listeners = tuple(s for s in self.listeners if s is not listener)
            self.wanted = frozenset().union(*(s.kinds for s in self.listeners))


#: The process-wide subscribers; empty when nobody listens.
BUS: Final = _Bus()


def subscribe(
    callback: Callable[[TokenEvent], object], *, kinds: Iterable[EventKind] | None = None
) -> Callable[[], None]:
    """Receive the events of every provider and cache in this process.

    The callback gets the events one at a time, in the order they were decided. One decided
    on a caller's event loop (a lookup, a fetch starting) is given there and then, unless
    the callback still has events queued; one decided on the refresher (a fetch ending,
    a retry, a Redis fallback) waits in a queue for the callback's own worker thread: a
    slow callback never delays a fetch, but keep it short all the same, as a caller that
    waited for a fetch returns once the callback has had that fetch's events (within its
    provider's time budget). An exception in it is logged once and ignored.

    Args:
        callback: Called with each :class:`TokenEvent` of ``kinds``.
        kinds: The kinds to hear; ``None``: every kind. Leaving ``HIT`` out keeps every
            provider's hot path as it is with nobody listening.

    Returns:
        A function that unsubscribes (idempotent).
    """
    listener = Listener(callback, kinds)
    BUS.add(listener)
    return lambda: BUS.remove(listener)


def publish(event: TokenEvent, own: Iterable[Listener] = ()) -> None:
    """Give ``event`` to the ``own`` (``on_event``) listeners, then the subscribers, of its kind.

    On the refresher's thread it is only queued for them (see :class:`Listener`).
    """
    kind = event.kind
    queue = on_refresher_thread()
    for listener in own:
        if kind in listener.kinds:
            listener.take(event, queue=queue)
    for listener in BUS.listeners:
        if kind in listener.kinds:
            listener.take(event, queue=queue)


def backlog(own: Listener | None) -> tuple[concurrent.futures.Future[None], ...]:
    """What ``own`` and the subscribers have yet to hear: one future per listener with
    events queued, done once it has had the last of them.
    """  # noqa: D205 (two lines)
    listeners = BUS.listeners if own is None else (own, *BUS.listeners)
    return tuple(f for f in (x.backlog() for x in listeners) if f is not None)


async def until_heard(
    futures: Sequence[concurrent.futures.Future[None]], timeout: float | None = None
) -> None:
    """Wait until every one of ``futures`` (from :func:`backlog`) is done, or ``timeout``.

    Never blocks the loop. A wait cut short by ``timeout`` (or a cancel) leaves nothing
    behind: the futures are never cancelled, and a loop closed by then is not called.
    """
    pending = [f for f in futures if not f.done()]
    if not pending or (timeout is not None and timeout <= 0):
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    left = [len(pending)]
    lock = threading.Lock()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def one_done(_: concurrent.futures.Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the waiting loop closed meanwhile
                loop.call_soon_threadsafe(wake)

    for future in pending:
        future.add_done_callback(one_done)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await waiter


def heard(kind: EventKind, own: Listener | None) -> bool:
    """Whether an event of ``kind`` would reach anyone: ``own`` or a process-wide subscriber."""
    return kind in BUS.wanted or (own is not None and kind in own.kinds)


def emit(
    kind: EventKind,
    client_id: str | None = None,
    *,
    own: tuple[Listener, ...] = (),
    cached: bool | None = None,
    **fields: Any,  # noqa: ANN401 (the TokenEvent fields, defined there once)
) -> None:
    """Put one decision on the stream: write its log record, then tell its listeners.

    The :class:`TokenEvent` is built only when a listener hears it (``own`` or a
    subscriber); the log record, only when the logger is enabled for its level, is rendered
    from the same fields, by their :class:`TokenEvent` names.

    Args:
        kind: What was decided.
        client_id: The API client id, or ``None`` for an event of a whole cache.
        own: The ``on_event`` listeners of the provider (or the key) it concerns.
        cached: For the log only, on ``FETCH_FAILED``: whether a usable token is still
            cached (it keeps being served), which the WARNING's wording tells.
        **fields: The other :class:`TokenEvent` fields the kind fills in (``error`` already
            fit to show: no secret, one line).
    """
    level = log_level(kind, fields.get("failures"))
    if level:
        _log(kind, client_id, level, fields, cached=cached)
    if kind in BUS.wanted or any(kind in listener.kinds for listener in own):
        publish(TokenEvent(kind=kind, client_id=client_id, timestamp=time.time(), **fields), own)


# -- the log: one more consumer of the stream ---------------------------------------------


class _Fields:
    """:class:`TokenEvent` fields by name, read as attributes (``None`` when absent)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 (a TokenEvent field's value)
        if name not in _FIELD_NAMES:
            raise AttributeError(name)
        return self._fields.get(name)


#: The names a TokenEvent has: the one list of them.
_FIELD_NAMES: Final = frozenset(field.name for field in attrs.fields(TokenEvent))

#: The level the log writes each kind at. Kinds not here are not logged: lookups come once
#: per call (stats, health and listeners count them), and a cool-down, a caller that gave
#: up or a cancelled fetch follows from a record that is logged or from the caller's error.
_LOG_LEVELS: Final[dict[EventKind, int]] = {
    EventKind.FETCH_STARTED: logging.DEBUG,
    EventKind.ATTEMPT_FAILED: logging.INFO,
    EventKind.FETCH_SUCCEEDED: logging.INFO,
    EventKind.FETCH_FAILED: logging.WARNING,  # once per failure episode: DEBUG after
    EventKind.UNAUTHORIZED_HELD: logging.DEBUG,
    EventKind.REDIS_FALLBACK_ENTERED: logging.WARNING,
    EventKind.REDIS_FALLBACK_LEFT: logging.INFO,
    EventKind.EVICTED: logging.DEBUG,
}
#: The same, by the members' ids: hashing an enum member runs Python code (~0.2 us), and
#: emit() looks a level up for every event, lookups included. Members live as long as
#: the process, so their ids never change.
_LEVEL_BY_ID: Final = {id(kind): level for kind, level in _LOG_LEVELS.items()}


def log_level(kind: EventKind, failures: int | None = None) -> int:
    """The level the log writes ``kind`` at now; 0 when it writes nothing.

    Nothing: ``kind`` is not logged, or the ``plainid_async`` logger drops that level. A
    failed fetch is a WARNING for the first failure in a row (one per failure episode),
    DEBUG for the next ones.

    Args:
        kind: What was decided.
        failures: For ``FETCH_FAILED``: failed fetches in a row, this one included.
    """
    level = _LEVEL_BY_ID.get(id(kind), 0)
    if level and kind is EventKind.FETCH_FAILED and failures != 1:
        level = logging.DEBUG
    return level if level and logger.isEnabledFor(level) else 0


def _log(  # noqa: C901 (one branch per kind)
    kind: EventKind,
    client_id: str | None,
    level: int,
    fields: Mapping[str, Any],
    *,
    cached: bool | None,
) -> None:
    """Write the record of one decision: what each kind says, from the event's fields.

    ``fields`` are :class:`TokenEvent` fields by name (absent ones are ``None``). Each
    record carries the kind's name as ``record.plainid_event`` (e.g. ``"fetch_failed"``).
    """
    event = _Fields(fields)
    extra = {"plainid_event": kind.value}
    if kind is EventKind.FETCH_STARTED:
        if event.reason is FetchReason.REFRESH:
            logger.log(level, "background refresh started for client %s", client_id, extra=extra)
        else:
            why = None if event.reason is None else event.reason.value
            logger.log(level, "token fetch started for client %s (%s)", client_id, why, extra=extra)
    elif kind is EventKind.ATTEMPT_FAILED:
        logger.log(
            level,
            "token request %d for client %s failed (%s); retrying in %.2f s",
            event.attempts,
            client_id,
            event.error,
            event.retry_in,
            extra=extra,
        )
    elif kind is EventKind.FETCH_SUCCEEDED:
        if event.attempts:  # 0: a shared cache already held a new token
            logger.log(
                level,
                "token fetched for client %s (expires in %g s)",
                client_id,
                event.expires_in,
                extra=extra,
            )
        if event.failures:
            logger.log(
                level,
                "token endpoint recovered for client %s after %d failed fetches",
                client_id,
                event.failures,
                extra=extra,
            )
    elif kind is EventKind.FETCH_FAILED:
        _log_failed(client_id, event, level, extra, cached=cached)
    elif kind is EventKind.UNAUTHORIZED_HELD:
        logger.log(
            level,
            "401 for client %s inside the 401 guard (%.1f s left): token kept",
            client_id,
            event.retry_in,
            extra=extra,
        )
    elif kind is EventKind.REDIS_FALLBACK_ENTERED:
        logger.log(
            level,
            "Redis token cache unavailable (%s): using this process's memory and fetching "
            "tokens directly until Redis answers again",
            event.error,
            extra=extra,
        )
    elif kind is EventKind.REDIS_FALLBACK_LEFT:
        logger.log(level, "Redis token cache answers again", extra=extra)
    elif kind is EventKind.EVICTED:
        logger.log(
            level,
            "token of client %s evicted: the memory cache holds its max_entries keys; "
            "its next call fetches again",
            client_id,
            extra=extra,
        )


def _log_failed(
    client_id: str | None,
    event: _Fields,
    level: int,
    extra: Mapping[str, object],
    *,
    cached: bool | None,
) -> None:
    """A failed fetch: the WARNING of an episode, by what is cached, or DEBUG after it."""
    error, retry_in, failures = event.error, event.retry_in, event.failures
    if failures != 1:
        logger.log(
            level,
            "token fetch for client %s failed again (%d in a row): %s",
            client_id,
            failures,
            error,
            extra=extra,
        )
    elif cached:
        logger.log(
            level,
            "token fetch for client %s failed: %s; the cached token, still valid, keeps "
            "being served; next try in %.1f s",
            client_id,
            error,
            retry_in,
            extra=extra,
        )
    elif retry_in is not None:
        logger.log(
            level,
            "token fetch for client %s failed: %s; no usable token is cached: calls fail at "
            "once for %.1f s (cool-down), then try again",
            client_id,
            error,
            retry_in,
            extra=extra,
        )
    else:
        logger.log(
            level,
            "token fetch for client %s failed: %s; no usable token is cached",
            client_id,
            error,
            extra=extra,
        )
