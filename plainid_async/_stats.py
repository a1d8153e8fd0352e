"""A provider's stats and health: the counters its events add up to, and its health report.

:class:`Reporter` is the provider's side of the event stream: it counts each decision in
:class:`ProviderStats` (:func:`count`, the one rule from events to counters), then hands it
to :func:`plainid_async._events.emit`, which writes the log record and tells the listeners.
The event's fields are worked out only when the log writes a record or someone listens.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._events import EventKind, FetchReason, Listener, emit, heard, log_level
from ._token import TokenState
from ._wire import shown_text
from .exceptions import TokenRequestError

if TYPE_CHECKING:
    from ._cache import CacheKey, KeyState
    from ._flight import Flight
    from ._token import RefreshSchedule, Token

__all__ = ["HealthReport", "ProviderStats", "Reporter", "count", "health_report"]


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


def count(  # noqa: C901, PLR0912 (one branch per kind)
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
        reason = flight.reason
        if reason is FetchReason.REFRESH:
            stats.background_refreshes += 1
        elif reason is FetchReason.FORCED:
            stats.forced_refreshes += 1
        elif reason is FetchReason.UNAUTHORIZED:
            stats.unauthorized_refreshes += 1
    elif kind is EventKind.ATTEMPT_FAILED:
        stats.retries += 1
    elif kind is EventKind.FETCH_SUCCEEDED:
        if flight is not None and flight.attempts:
            stats.tokens_fetched += 1
    elif kind is EventKind.FETCH_FAILED or kind is EventKind.GAVE_UP:
        stats.failures += 1
    elif kind is EventKind.UNAUTHORIZED_HELD:
        stats.unauthorized_held += 1


def describe(error: BaseException) -> str:
    """An error as events and health show it: one line, bounded (redacted where made)."""
    if isinstance(error, TokenRequestError):
        return shown_text(str(error))  # redacted where it was made (_wire)
    return type(error).__name__


class Reporter:
    """One provider's side of the event stream: its stats, its ``on_event`` listener."""

    __slots__ = ("listener", "stats")

    def __init__(self, listener: Listener | None) -> None:
        """Start counting from zero."""
        self.listener = listener
        self.stats = ProviderStats()

    def quiet(self) -> bool:
        """Whether nobody hears a ``HIT`` (neither ``on_event`` nor a subscriber asked for it)."""
        return not heard(EventKind.HIT, self.listener)

    def emit(
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

        With no listener and no log record for it, this costs a counter and a look at the
        logger's level.
        """
        count(self.stats, kind, flight)
        listener = self.listener
        if not heard(kind, listener) and not log_level(kind, failures):
            return
        own = () if listener is None else (listener,)
        fields: dict[str, Any] = {"retry_in": retry_in, "failures": failures}
        if token is not None:
            fields["expires_in"], fields["expires_at"] = token.expires_in, token.expires_at
        if error is not None:
            fields["error_type"] = type(error).__name__
            fields["error"] = describe(error)
            if isinstance(error, TokenRequestError):
                fields["status"] = error.status
        elif kind is EventKind.FETCH_SUCCEEDED and flight is not None and flight.attempts:
            fields["status"] = 200
        if flight is not None:
            fields["reason"], fields["fetch_id"] = flight.reason, flight.id
            now = monotonic()
            if kind is EventKind.ATTEMPT_FAILED:
                fields["attempts"] = flight.attempts
                fields["duration"] = now - flight.attempt_started
            elif kind is not EventKind.FETCH_STARTED:
                fields["attempts"], fields["duration"] = flight.attempts, now - flight.started
        emit(kind, key.client_id, own=own, cached=cached, **fields)


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


def health_report(
    token: Token | None,
    schedule: RefreshSchedule | None,
    record: KeyState | None,
    *,
    shared: bool,
) -> HealthReport:
    """Build the health report of a key from its token, schedule and per-key record.

    Args:
        token: The token cached for it, or ``None``.
        schedule: That token's refresh schedule, or ``None``.
        record: The key's record in the cache, or ``None``.
        shared: Whether the token is served from a shared store that answers now.
    """
    state = expires_in = refresh_in = None
    source: Literal["memory", "redis", "none"] = "none"
    if token is not None and schedule is not None:
        now = monotonic()
        state = schedule.state(now)
        expires_in = max(0.0, token.expires_at_monotonic - now)
        refresh_in = max(0.0, schedule.refresh_at - now)
        source = "redis" if shared else "memory"
    error = None if record is None else record.last_error
    return HealthReport(
        state=state,
        expires_in=expires_in,
        refresh_in=refresh_in,
        failures=0 if record is None else record.failures,
        last_error=None if error is None else describe(error),
        last_success=None if record is None else record.last_success,
        source=source,
    )
