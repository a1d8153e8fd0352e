"""The token value, and the refresh policy as pure functions of (token, now).

Nothing here does I/O or reads a clock: callers pass ``now`` in, so the policy is tested
with plain numbers.
"""

from __future__ import annotations

import enum
import math
import time
from typing import TypeGuard

import attrs

__all__ = [
    "DEFAULT_MAX_REFRESH_WINDOW",
    "DEFAULT_MIN_REMAINING",
    "JITTER_FRACTION",
    "RefreshSchedule",
    "Token",
    "TokenState",
    "is_valid_lifetime",
    "lifetime_problem",
    "schedule_for",
]

#: The default refresh window is half the lifetime, but never more than this (seconds).
DEFAULT_MAX_REFRESH_WINDOW = 3600.0
#: A token is not handed out with less than min(this, a tenth of its lifetime) left (seconds).
DEFAULT_MIN_REMAINING = 30.0
#: The refresh window shrinks by up to this fraction at random, so a fleet spreads its refreshes.
JITTER_FRACTION = 0.1


@attrs.frozen
class Token:
    """An access token issued by PlainID.

    ``access_token`` never shows in ``repr()`` or ``str()``.

    Attributes:
        access_token: The bearer token itself.
        token_type: The token type PlainID gave, normally ``"Bearer"``.
        expires_in: The lifetime PlainID gave, in seconds.
        expires_at: Wall-clock expiry (seconds since the epoch), measured from when the
            request was sent. Shared caches store this, as monotonic time is per process.
        expires_at_monotonic: Expiry on this process's monotonic clock
            (:func:`time.monotonic`), measured from when the request was sent. Decisions
            in this process use this one, so a wall-clock jump changes nothing.
        authorization: The value of an ``Authorization`` header carrying this token
            (``"Bearer <access_token>"``); never shows in ``repr()`` or ``str()``.
    """

    access_token: str = attrs.field(repr=False)
    token_type: str
    expires_in: float
    expires_at: float
    expires_at_monotonic: float = attrs.field(eq=False)
    # Built once per token, not on every access: the middlewares read it on every request.
    authorization: str = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(lambda token: f"Bearer {token.access_token}", takes_self=True),
    )

    @classmethod
    def issued(
        cls,
        access_token: str,
        *,
        token_type: str = "Bearer",  # noqa: S107 (a token type, not a password)
        expires_in: float,
        sent_at: float | None = None,
        sent_at_monotonic: float | None = None,
    ) -> Token:
        """Build a token from a token response, timing it from when the request was sent.

        Args:
            access_token: The bearer token.
            token_type: The token type from the response.
            expires_in: The lifetime from the response, in seconds.
            sent_at: Wall-clock time the request was sent; defaults to now.
            sent_at_monotonic: Monotonic time the request was sent; defaults to now.

        Returns:
            The token.
        """
        wall = time.time() if sent_at is None else sent_at
        mono = time.monotonic() if sent_at_monotonic is None else sent_at_monotonic
        return cls(
            access_token=access_token,
            token_type=token_type,
            expires_in=expires_in,
            expires_at=wall + expires_in,
            expires_at_monotonic=mono + expires_in,
        )

    @classmethod
    def from_wall_clock(
        cls,
        access_token: str,
        *,
        token_type: str,
        expires_in: float,
        expires_at: float,
        now: float | None = None,
        now_monotonic: float | None = None,
    ) -> Token:
        """Rebuild a token read from a shared cache, placing its expiry on this process's clock.

        Args:
            access_token: The bearer token.
            token_type: The token type.
            expires_in: The lifetime it was issued with, in seconds.
            expires_at: Its wall-clock expiry.
            now: The current wall-clock time; defaults to now.
            now_monotonic: The current monotonic time; defaults to now.

        Returns:
            The token.
        """
        wall = time.time() if now is None else now
        mono = time.monotonic() if now_monotonic is None else now_monotonic
        return cls(
            access_token=access_token,
            token_type=token_type,
            expires_in=expires_in,
            expires_at=expires_at,
            expires_at_monotonic=mono + (expires_at - wall),
        )

    def remaining(self, now_monotonic: float | None = None) -> float:
        """Seconds left before expiry (negative once expired).

        Args:
            now_monotonic: The current monotonic time; defaults to now.
        """
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return self.expires_at_monotonic - now


class TokenState(enum.Enum):
    """Where a cached token stands.

    FRESH: hand it out. STALE: hand it out and refresh in the background. EXPIRED: too close
    to expiry to hand out; callers wait for a new one.
    """

    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


@attrs.frozen
class RefreshSchedule:
    """When a token turns STALE and EXPIRED, on the monotonic clock.

    Attributes:
        refresh_at: From this time the token is STALE.
        usable_until: From this time the token is EXPIRED.
    """

    refresh_at: float
    usable_until: float

    def state(self, now: float) -> TokenState:
        """The token's state at monotonic time ``now``."""
        if now < self.refresh_at:
            return TokenState.FRESH
        if now < self.usable_until:
            return TokenState.STALE
        return TokenState.EXPIRED


def refresh_window(lifetime: float, refresh_margin: float | None) -> float:
    """Seconds before expiry at which the refresh window opens, before jitter.

    The default is min(half the lifetime, 1 h). An explicit ``refresh_margin`` is capped at
    half the lifetime, so a margin longer than a short-lived token does not turn every call
    into a refresh.
    """
    half = lifetime / 2
    if refresh_margin is None:
        return min(half, DEFAULT_MAX_REFRESH_WINDOW)
    return min(refresh_margin, half)


def min_remaining(lifetime: float) -> float:
    """Seconds before expiry from which a token is no longer handed out.

    min(30 s, a tenth of the lifetime), whatever the refresh margin.
    """
    return min(DEFAULT_MIN_REMAINING, lifetime / 10)


def schedule_for(token: Token, *, refresh_margin: float | None, jitter: float) -> RefreshSchedule:
    """Compute when ``token`` turns STALE and EXPIRED.

    Args:
        token: The token.
        refresh_margin: Seconds before expiry at which the refresh window opens, or ``None``
            for the default that scales with the lifetime. A token is never handed out with
            less than min(30 s, a tenth of its lifetime) left, whatever the margin.
        jitter: A number in [0, 1): the window shrinks by ``jitter * JITTER_FRACTION`` of
            itself, so processes that got tokens at the same time refresh at different times.

    Returns:
        The schedule.
    """
    lifetime = token.expires_in
    hard = min_remaining(lifetime)
    # A margin below the hard threshold must not hand out a token about to expire (requests
    # in flight would get 401s): such a token goes from FRESH straight to EXPIRED.
    window = max(refresh_window(lifetime, refresh_margin), hard)
    jittered = window - (window - hard) * JITTER_FRACTION * min(max(jitter, 0.0), 1.0)
    expiry = token.expires_at_monotonic
    return RefreshSchedule(refresh_at=expiry - jittered, usable_until=expiry - hard)


#: Longest ``expires_in`` accepted: one year. Anything longer is a broken response.
MAX_LIFETIME = 366 * 24 * 3600.0


def lifetime_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a token lifetime (``expires_in``), or ``None``.

    The one rule for lifetimes: parsing a token response, reading a token back from a
    shared cache, and the lifetimes FakePlainID and the command line are given all use it.
    A lifetime is a number of seconds (an ``int`` or ``float``, not a bool), positive,
    finite and at most :data:`MAX_LIFETIME`.

    Args:
        value: The lifetime to check.

    Returns:
        What is wrong, worded to follow the parameter's name (``"expires_in " + problem``),
        or ``None``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {type(value).__name__}"
    # Compared as they are: Python compares an int of any size with a float exactly.
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        return "must be a positive, finite number of seconds"
    if value > MAX_LIFETIME:
        return f"is absurdly large (over {MAX_LIFETIME:.0f} s)"
    return None


def is_valid_lifetime(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a usable ``expires_in`` (:func:`lifetime_problem` finds nothing)."""
    return lifetime_problem(value) is None
