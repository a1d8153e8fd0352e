"""The failure policy: pure functions of (record, now) that return a decision.

Nothing here reads a clock, sleeps or does I/O: the per-key record
(:class:`~plainid_async._cache.KeyState`) passes its own values and the current monotonic
time in, and keeps what comes back. Each rule is written once:

* the retry delay between two attempts of one fetch (:func:`retry_delay`),
* the cool-down after failed fetches with no usable token (:func:`cooldown_delay`,
  :func:`after_failure`, :func:`cooldown_left`),
* the background retry cap: a failed background refresh is tried again after its backoff,
  but never later than half the usable time that was left (:func:`after_failure`,
  :func:`background_due`),
* the 401 guard (:func:`on_unauthorized`) and what lets a real revocation through it
  (:func:`looks_revoked`),
* a waiter's time budget (:func:`wait_budget`).

The model is azure-identity's ``get_refresh_status(token, last_request_time)``: policy decides,
the provider acts. Tests give ``now`` as a plain number (``tests/test_policy.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from ._events import FetchReason
from .exceptions import TokenRequestError

if TYPE_CHECKING:
    from ._endpoint import RetryPolicy

__all__ = [
    "BACKGROUND_RETRY_FLOOR",
    "COOLDOWN_MAX",
    "COOLDOWN_STEP_OFFSET",
    "GUARD_BASE",
    "GUARD_MAX",
    "WAIT_GRACE",
    "FailureDecision",
    "Failures",
    "Guard",
    "RevocationWatch",
    "after_failure",
    "background_due",
    "cooldown_delay",
    "cooldown_left",
    "guard_interval",
    "looks_revoked",
    "on_unauthorized",
    "probe_only",
    "retry_delay",
    "wait_budget",
    "window_left",
]

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


@attrs.frozen
class Failures:
    """A key's failure record: replaced as a whole after each fetch, never changed in place.

    Attributes:
        count: Failed fetches in a row.
        last_error: The error of the last failed fetch, while ``count`` > 0.
        retry_at: Monotonic time before which no background refresh starts again (backoff).
        retry_by: Monotonic time from which one may start whatever the backoff (the cap).
        cooldown_until: Monotonic time before which, with no usable token, calls fail at once
            with ``last_error`` and no token request.
        transport: Which transport (proxy, TLS, session) the last failed fetch used: its
            cool-down holds for providers with that transport only.
        window_until: Monotonic end of the server's ``Retry-After`` window: no token
            request before it unless forced.
    """

    count: int = 0
    last_error: BaseException | None = None
    retry_at: float = 0.0
    retry_by: float = 0.0
    cooldown_until: float = 0.0
    transport: int | None = None
    window_until: float = 0.0


#: No failure: the record of a key after a success.
NO_FAILURES: Final = Failures()


@attrs.frozen
class FailureDecision:
    """What a failed fetch leads to.

    Attributes:
        record: The key's new failure record.
        retry_in: Seconds until the next fetch may start (``None``: at once).
        cached: Whether a usable token is still cached (it keeps being served).
        cooling: Whether a cool-down started (calls fail at once for ``retry_in``).
    """

    record: Failures
    retry_in: float | None
    cached: bool
    cooling: bool


def cooldown_delay(
    retry: RetryPolicy, failures: int, retry_after: float | None, jitter: float
) -> float:
    """Seconds before the next fetch after ``failures`` failed fetches in a row.

    The retry policy's own backoff (one rule for retries, cool-downs and the Redis lock
    poll), continued past the steps the fetch used, at least ``Retry-After`` (capped by the
    policy), and at most :data:`COOLDOWN_MAX`.

    Args:
        retry: The provider's retry policy.
        failures: Failed fetches in a row, the last one included.
        retry_after: The last answer's ``Retry-After``, seconds, if it had one.
        jitter: A number in [0, 1).
    """
    longest = attrs.evolve(retry, backoff_max=COOLDOWN_MAX)
    delay = longest.backoff(failures + COOLDOWN_STEP_OFFSET, jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry.max_retry_after))
    return min(delay, COOLDOWN_MAX)


def after_failure(
    record: Failures,
    now: float,
    error: BaseException,
    *,
    delay: float,
    usable_left: float | None,
    transport: int | None = None,
) -> FailureDecision:
    """Decide what a failed fetch leads to.

    With a usable token still cached, it keeps being served and one background refresh
    starts again after ``delay``, but no later than half the usable time left (at least
    :data:`BACKGROUND_RETRY_FLOOR`), so an endpoint that recovers is asked in time. With
    none, a typed token error starts a cool-down of ``delay``.

    Args:
        record: The key's failure record before this failure.
        now: The current monotonic time.
        error: The fetch's error.
        delay: The backoff from :func:`cooldown_delay`.
        usable_left: Seconds the cached token stays usable, or ``None`` without one.
        transport: Which transport the fetch used (its cool-down is that transport's).
    """
    count = record.count + 1
    retry_after = error.retry_after if isinstance(error, TokenRequestError) else None
    window = 0.0 if retry_after is None else now + min(retry_after, COOLDOWN_MAX)
    if usable_left is not None:
        # Never inside the server's Retry-After window, whatever the usable time left.
        cap = max(usable_left / 2, BACKGROUND_RETRY_FLOOR, window - now)
        new = Failures(
            count, error, now + delay, now + cap, record.cooldown_until, transport, window
        )
        return FailureDecision(new, min(delay, cap), cached=True, cooling=False)
    if isinstance(error, TokenRequestError):
        new = Failures(count, error, now + delay, now + delay, now + delay, transport, window)
        return FailureDecision(new, delay, cached=False, cooling=True)
    new = Failures(count, error, now + delay, now + delay, record.cooldown_until, transport, window)
    return FailureDecision(new, None, cached=False, cooling=False)


def window_left(record: Failures, now: float, transport: int | None = None) -> float:
    """Seconds left of the server's ``Retry-After`` window (0: token requests may go)."""
    if transport is not None and record.transport not in (None, transport):
        return 0.0
    return max(0.0, record.window_until - now)


def background_due(record: Failures, now: float) -> bool:
    """Whether a background refresh may start now: no failure, or its wait is over."""
    return record.count == 0 or now >= min(record.retry_at, record.retry_by)


def cooldown_left(record: Failures, now: float, transport: int | None = None) -> float:
    """Seconds left of a cool-down (0 when calls may fetch) for a provider's ``transport``.

    A cool-down started by a fetch over another transport (another proxy, TLS setting or
    session) does not hold: that transport's failure says nothing of this one.
    """
    if record.last_error is None or now >= record.cooldown_until:
        return 0.0
    if transport is not None and record.transport not in (None, transport):
        return 0.0
    return record.cooldown_until - now


def probe_only(record: Failures, reason: FetchReason, *, full_budget: bool) -> bool:
    """Whether a fetch gets one attempt only: a cold fetch after a cool-down probes.

    The failure streak already spent a full retry budget, and each cool-down step then
    costs one request.
    """
    return not full_budget and reason is FetchReason.COLD and record.cooldown_until > 0


def retry_delay(
    planned: float,
    hurried: int | None,
    retry: RetryPolicy,
    jitter: float,
    *,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before the next attempt of a fetch: the one decision of it.

    Args:
        planned: What the retry policy planned (backoff or ``Retry-After``).
        hurried: ``None`` while nobody waits for the fetch; else backoff steps taken since
            callers came waiting. They are not held by a long step chosen while nobody
            waited: the next attempt goes at once, then the backoff starts over.
        retry: The provider's retry policy.
        jitter: A number in [0, 1).
        retry_after: The server's ``Retry-After`` for the failed attempt, if it gave one:
            its window is kept whoever waits (no token request inside it).
    """
    if hurried is None or retry_after is not None:
        return planned
    if hurried == 0:
        return 0.0
    return min(planned, retry.backoff(hurried, jitter))


@attrs.frozen
class Guard:
    """The 401 guard of a key.

    Attributes:
        until: Monotonic time before which a 401 from the API does not replace the token.
        step: Guard intervals in a row (each doubles the next).
    """

    until: float = 0.0
    step: int = 0


def guard_interval(step: int) -> float:
    """The 401 guard interval after ``step`` guarded 401s in a row (0: none)."""
    if step <= 0:
        return 0.0
    return min(GUARD_MAX, GUARD_BASE * 2.0 ** min(step - 1, 16))


def on_unauthorized(guard: Guard, now: float) -> tuple[Guard, float]:
    """Decide a 401 from the API: hold it inside the guard, or open a new interval.

    A 401 soon after an interval ends (within the length of that interval) doubles the
    next one, up to :data:`GUARD_MAX`; after a quiet spell it starts over at
    :data:`GUARD_BASE`.

    Returns:
        The new guard, and the seconds the guard still holds (> 0: hold the token and
        return the 401; 0: replace the token).
    """
    held = guard.until - now
    if held > 0:
        return guard, held
    repeat = guard.step > 0 and now < guard.until + guard_interval(guard.step)
    step = guard.step + 1 if repeat else 1
    return Guard(now + guard_interval(step), step), 0.0


@attrs.frozen
class RevocationWatch:
    """What a provider saw of the 401s for one token (see :func:`looks_revoked`).

    Calls are counted by the provider (its lookups), so "between" means between two of its
    calls, whatever the clock says.

    Attributes:
        token: The token watched (compared by identity), or ``None``.
        since: The provider's call count before the call that got the token's first 401.
        unauthorized: 401s reported for the token.
        last: The provider's call count at the token's latest 401.
    """

    token: object = None
    since: int = 0
    unauthorized: int = 0
    last: int = 0


def looks_revoked(
    watch: RevocationWatch, token: object, calls: int
) -> tuple[RevocationWatch, bool]:
    """Decide whether a 401 for ``token`` looks like a revocation, not an unrelated 401.

    The 401 guard holds back 401s of an API path that refuses every token (a permission
    problem). A token that worked (since its first 401, the provider's calls outnumber the
    token's 401s) and then gets a 401 on two calls in a row (no call between them) was
    revoked: the guard lets that
    one through, so healthy calls recover on the second call, not after the guard's
    interval. A replacement that fails at once never worked, so a storm stays bounded.

    Args:
        watch: What was seen so far.
        token: The token the API rejected.
        calls: The provider's call count now.

    Returns:
        What was seen, this 401 included, and whether the 401 looks like a revocation.
    """
    if watch.token is not token:  # first 401 of this token: count from the call that got it
        watch = RevocationWatch(token, calls - 1, 0, calls - 1)
    unauthorized = watch.unauthorized + 1
    worked = calls - watch.since > unauthorized
    consecutive = calls - watch.last <= 1
    return RevocationWatch(token, watch.since, unauthorized, calls), worked and consecutive


def wait_budget(retry: RetryPolicy, timeout: float) -> float:
    """The longest a caller waits for a token: its own policy's worst case, plus a grace."""
    # Past step 1024 every step is the same (RetryPolicy.backoff caps the exponent), so a
    # huge ``attempts`` costs no time here.
    steps = retry.attempts - 1
    backoffs = sum(retry.backoff(step, 1.0) for step in range(1, min(steps, 1024) + 1))
    backoffs += max(0, steps - 1024) * retry.backoff(1025, 1.0)
    return min(retry.deadline, retry.attempts * timeout + backoffs) + WAIT_GRACE
