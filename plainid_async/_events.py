"""The event stream: one immutable event per decision the provider and the caches make.

:attr:`TokenProvider.stats <plainid_async.TokenProvider.stats>` and :mod:`plainid_async.otel`
consume this one stream, so they cannot disagree; :meth:`TokenProvider.health
<plainid_async.TokenProvider.health>` reads the per-key state the same decisions leave in the
cache. The emission points are the very places the core logs from.

Listeners: the ``on_event=`` callable of one provider, and the process-wide subscribers
(:func:`subscribe`, used by :mod:`plainid_async.otel`). No event object is built unless
someone listens, and a provider's hot path looks at nothing of this: while anyone listens,
lookups take the provider's slow path, which emits them (a subscriber that arrives empties
every provider's hot slot through :data:`BUS`'s watchers). An exception in a listener is
logged once per listener and never reaches the call that emitted the event.

No event carries a secret or a token: only the client id, reasons, counts, HTTP statuses,
durations, expiry times and redacted error text.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import TYPE_CHECKING, Final

import attrs

from ._log import LOGGER_NAME

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "BUS",
    "EventKind",
    "FetchReason",
    "Listener",
    "TokenEvent",
    "emit",
    "listening",
    "publish",
    "subscribe",
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
      ``error``, ``error_type``, ``failures``: failed fetches in a row, this one included).
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
    """A callable that receives events; an exception in it is logged once, then ignored."""

    __slots__ = ("_lock", "callback", "failed")

    def __init__(self, callback: Callable[[TokenEvent], object]) -> None:
        """Wrap ``callback``."""
        self.callback: Final = callback
        self.failed = False
        self._lock = threading.Lock()

    def __call__(self, event: TokenEvent) -> None:
        """Give ``event`` to the callback; log its first exception, swallow every one."""
        try:
            self.callback(event)
        except Exception:
            with self._lock:
                first, self.failed = not self.failed, True
            if first:
                logger.exception(
                    "event listener %r raised on a %s event; its later errors are not logged, "
                    "and no call fails because of it",
                    self.callback,
                    event.kind.value,
                )


class _Bus:
    """The process-wide subscribers, and who must hear that one arrived."""

    __slots__ = ("_lock", "listeners", "watchers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, under the lock: readers need no lock.
        self.listeners: tuple[Listener, ...] = ()
        #: Called after a subscriber is added (the provider empties its hot slots, so
        #: lookups that used to be answered there are emitted from now on).
        self.watchers: list[Callable[[], object]] = []

    def add(self, listener: Listener) -> None:
        with self._lock:
            self.listeners = (*self.listeners, listener)
        for watcher in self.watchers:
            watcher()

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self.listeners = tuple(s for s in self.listeners if s is not listener)


#: The process-wide subscribers; empty when nobody listens.
BUS: Final = _Bus()


def subscribe(callback: Callable[[TokenEvent], object]) -> Callable[[], None]:
    """Receive every event of every provider and cache in this process.

    The callback runs synchronously in the thread and event loop that made the decision:
    keep it short and never block. An exception in it is logged once and ignored.

    Args:
        callback: Called with each :class:`TokenEvent`.

    Returns:
        A function that unsubscribes (idempotent).
    """
    listener = Listener(callback)
    BUS.add(listener)
    return lambda: BUS.remove(listener)


def publish(event: TokenEvent, own: Iterable[Listener] = ()) -> None:
    """Give ``event`` to ``own`` (``on_event`` listeners), then to the subscribers."""
    for listener in own:
        listener(event)
    for listener in BUS.listeners:
        listener(event)


def listening(own: Listener | None) -> bool:
    """Whether an event would reach anyone: ``own`` or a process-wide subscriber."""
    return own is not None or bool(BUS.listeners)


def emit(kind: EventKind, *, error: str | None = None) -> None:
    """Put an event of a whole cache (no client id) on the stream, if anyone subscribed.

    Args:
        kind: What was decided.
        error: What went wrong, already fit to show (no secret, one line).
    """
    if BUS.listeners:
        publish(TokenEvent(kind=kind, client_id=None, timestamp=time.time(), error=error))
