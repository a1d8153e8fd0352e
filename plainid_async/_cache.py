"""Where tokens live between requests: the cache key, the TokenCache protocol, the memory cache.

The provider talks to a cache only through :class:`TokenCache`, so a shared backend (Redis)
plugs in without touching the provider. A cache stores :class:`~plainid_async.Token` values,
whose wall-clock ``expires_at`` is what crosses process boundaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from ._secret import Secret

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ._token import Token

__all__ = ["CacheKey", "MemoryTokenCache", "TokenCache", "default_cache"]

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


@attrs.define(eq=False)
class MemoryTokenCache:
    """A token cache in this process's memory. The default cache is one shared instance.

    Thread-safe; expired tokens are dropped when another token is stored.
    """

    _tokens: dict[CacheKey, Token] = attrs.field(factory=dict, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def get(self, key: CacheKey) -> Token | None:
        """Return the token held for ``key``."""
        return self._tokens.get(key)

    async def load(self, key: CacheKey) -> Token | None:
        """Return the token held for ``key`` (there is no shared store)."""
        return self._tokens.get(key)

    async def store(self, key: CacheKey, token: Token) -> None:
        """Keep ``token`` for ``key`` and drop any expired token."""
        now = time.monotonic()
        with self._lock:
            for other in [k for k, t in self._tokens.items() if t.expires_at_monotonic <= now]:
                del self._tokens[other]
            self._tokens[key] = token

    def discard(self, key: CacheKey, token: Token) -> bool:
        """Drop ``token`` if it is still the one held for ``key``."""
        with self._lock:
            if self._tokens.get(key) is token:
                del self._tokens[key]
                return True
            return False

    def fetch_lock(self, key: CacheKey) -> AbstractAsyncContextManager[object]:  # noqa: ARG002
        """No lock is needed within one process: the provider runs one fetch per key."""
        return _NO_LOCK

    def clear(self) -> None:
        """Drop every token (for tests)."""
        with self._lock:
            self._tokens.clear()

    def __len__(self) -> int:
        """The number of tokens held."""
        return len(self._tokens)


_DEFAULT_CACHE = MemoryTokenCache()


def default_cache() -> MemoryTokenCache:
    """The process-wide memory cache that providers use unless given another."""
    return _DEFAULT_CACHE
