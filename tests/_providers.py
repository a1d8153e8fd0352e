"""The one provider factory of the tests: a TokenProvider for a fake or a base URL, and
``token_with``, a token with a chosen time left to preload a cache with."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from plainid_async._cache import MemoryTokenCache
from plainid_async._endpoint import RetryPolicy
from plainid_async._provider import TokenProvider
from plainid_async._token import Token
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from yarl import URL

    from plainid_async._events import EventKind, TokenEvent

__all__ = ["FAST", "Recorder", "make_provider", "recording", "token_with"]

#: Two quick attempts within 2 s: a failure is seen at once, a flake is retried.
FAST = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, deadline=2.0)


def make_provider(
    target: FakePlainID | object,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    **options: Any,
) -> TokenProvider:
    """A TokenProvider with a memory cache of its own (no token leaks between tests).

    Args:
        target: A FakePlainID (its base URL and, unless given, its client's credentials)
            or a base URL (then ``client_id`` and ``client_secret`` are required).
        client_id: The client id, instead of the fake's.
        client_secret: The client secret, instead of the fake's.
        **options: Further TokenProvider arguments; ``cache`` replaces the memory cache.

    Returns:
        The provider, not started: use it in ``async with``.
    """
    if isinstance(target, FakePlainID):
        base_url: str | URL = target.base_url
        client_id = target.client_id if client_id is None else client_id
        client_secret = target.client_secret if client_secret is None else client_secret
    else:
        base_url = str(target)
        if client_id is None or client_secret is None:
            raise TypeError("make_provider(base_url) needs client_id and client_secret")
    options.setdefault("cache", MemoryTokenCache())
    return TokenProvider(client_id, client_secret, base_url=base_url, **options)


def token_with(remaining: float, lifetime: float = 100.0, value: str = "preloaded") -> Token:
    """A token with ``remaining`` seconds left of ``lifetime``.

    Args:
        remaining: Seconds until it expires, on the wall and the monotonic clock.
        lifetime: Its ``expires_in``: how long it was issued for.
        value: Its access token.

    Returns:
        The token, to store in a cache.
    """
    return Token(
        access_token=value,
        token_type="Bearer",
        expires_in=lifetime,
        expires_at=time.time() + remaining,
        expires_at_monotonic=time.monotonic() + remaining,
    )


class Recorder:
    """An on_event callback that keeps what it gets."""

    def __init__(self) -> None:
        self.events: list[TokenEvent] = []

    def __call__(self, event: TokenEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events]

    def of(self, kind: EventKind) -> list[TokenEvent]:
        return [e for e in self.events if e.kind is kind]


def recording(fake: FakePlainID, **options: Any) -> tuple[TokenProvider, Recorder]:
    """A provider on ``fake`` with its own memory cache and a Recorder as ``on_event``."""
    recorder = Recorder()
    options.setdefault("retry", FAST)
    provider = make_provider(fake, cache=MemoryTokenCache(), on_event=recorder, **options)
    return provider, recorder
