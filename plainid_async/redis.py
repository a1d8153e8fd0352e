"""RedisTokenCache: one token for a whole fleet of processes, shared through Redis.

Install the extra (``pip install 'plainid-async[redis]'``) and pass the cache to every
provider of every process::

    client = redis.asyncio.Redis(host="redis.internal")
    provider = TokenProvider(..., cache=RedisTokenCache(client))

What goes to Redis, per cache key (token URL, client id, secret):

* ``NAMESPACE:token:{DIGEST}``: the current token, encrypted with AES-256-GCM under a
  key derived from the client secret (HKDF-SHA256), with the cache key's digest bound in as
  associated data, and a TTL equal to the token's remaining lifetime. The value is
  ``1.TOKEN_ID.BASE64URL(NONCE + CIPHERTEXT)``; ``TOKEN_ID`` is an HMAC of the token keyed
  by the secret, so any process with the secret can compare-and-delete a token it was told
  is bad, while the value reveals nothing to anyone else.
* ``NAMESPACE:lock:{DIGEST}``: a random owner id while one process fetches a token for
  the fleet, with a TTL (``lock_timeout``) so a process that dies holding it blocks nobody
  for longer than that.

``DIGEST`` is :meth:`~plainid_async.CacheKey.digest`: a hash over the token URL, the
client id and an HMAC keyed by the secret, so nothing in Redis names the client, and only
holders of the secret can find or read its token. The braces around it are a Redis Cluster
hash tag: a key's token and lock live in the same slot, as the lock script reads both.

Redis is an optimisation, never a dependency: every call is bounded by ``timeout``; when
Redis fails or is slow the cache answers from this process's memory, the fleet lock
becomes a no-op (each process fetches for itself), one WARNING is logged for the episode,
and Redis is tried again ``retry_interval`` later.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import time
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from ._cache import DEFAULT_MAX_ENTRIES, KeyStates
from ._checks import check_async_redis, check_seconds
from ._endpoint import RetryPolicy
from ._events import EventKind, emit
from ._log import LOGGER_NAME
from ._token import Token, is_valid_lifetime
from .exceptions import ConfigurationError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as _missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "plainid_async.redis needs the 'redis' extra: pip install 'plainid-async[redis]'"
    ) from _missing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
    from contextlib import AbstractAsyncContextManager

    import redis.asyncio

    from ._cache import CacheKey
    from ._secret import Secret

__all__ = ["RedisTokenCache"]

logger: logging.Logger = logging.getLogger(LOGGER_NAME)

_T = TypeVar("_T")

#: Version of the value format; the first field of every stored value.
_FORMAT: Final = "1"
#: HKDF salt and infos. Changing any of them makes every stored value unreadable (ignored).
_HKDF_SALT: Final = b"plainid-async/redis/v1"
_INFO_AEAD: Final = b"plainid-async/redis/v1/aes-256-gcm"
_INFO_TOKEN_ID: Final = b"plainid-async/redis/v1/token-id"
_AAD_LABEL: Final = b"plainid-async/redis/v1/token"
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_TOKEN_ID_BYTES: Final = 16
_MAX_VALUE_CHARS: Final = 64 * 1024
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]+")
#: Where the Redis permissions the cache needs are documented.
ACL_DOCS: Final = "docs/many-processes.md, 'Redis permissions'"

# Value and remaining TTL in one round trip; nil when the key does not exist.
_LOAD_SCRIPT: Final = """
local value = redis.call('GET', KEYS[1])
if not value then return false end
return {value, redis.call('PTTL', KEYS[1])}
"""
# Delete the token only if it is still the one with this token id (the value's prefix).
_DISCARD_SCRIPT: Final = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Take the fleet lock (1), or say which token Redis holds now (its token id, "" if none),
# so a waiter sees when the lock owner has stored a new token.
_LOCK_SCRIPT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local value = redis.call('GET', KEYS[2])
if not value then return '' end
return string.match(value, '^[^.]*%.([^.]*)%.') or ''
"""
# Release the fleet lock only if this process still owns it.
_UNLOCK_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Unavailable(enum.Enum):
    """Marks a Redis call that failed or timed out (the caller falls back)."""

    UNAVAILABLE = enum.auto()


_UNAVAILABLE: Final = _Unavailable.UNAVAILABLE


@attrs.frozen
class _Entry:
    """A token read from Redis, and its token id."""

    token: Token
    token_id: str


def _derive(secret: Secret, info: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info)
    return hkdf.derive(secret.reveal().encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_id(key: CacheKey, access_token: str) -> str:
    """A keyed hash naming a token: lets any holder of the secret compare-and-delete it."""
    mac = hmac.new(_derive(key.client_secret, _INFO_TOKEN_ID), access_token.encode(), "sha256")
    return _b64(mac.digest()[:_TOKEN_ID_BYTES])


def _aad(key: CacheKey, token_id: str) -> bytes:
    return b"\0".join((_AAD_LABEL, key.digest().encode(), token_id.encode()))


def _seal(key: CacheKey, token: Token, token_id: str) -> str:
    """Encrypt ``token`` for ``key``: ``"1.{token id}.{base64url(nonce + ciphertext)}"``."""
    plaintext = json.dumps(
        {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "expires_in": token.expires_in,
            "expires_at": token.expires_at,
        },
        separators=(",", ":"),
    ).encode()
    nonce = os.urandom(_NONCE_BYTES)
    aead = AESGCM(_derive(key.client_secret, _INFO_AEAD))
    sealed = aead.encrypt(nonce, plaintext, _aad(key, token_id))
    return f"{_FORMAT}.{token_id}.{_b64(nonce + sealed)}"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _decrypt(key: CacheKey, value: str) -> tuple[str, object] | None:
    """Return (token id, decoded plaintext) of a stored value, or ``None`` if unreadable."""
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != _FORMAT or len(value) > _MAX_VALUE_CHARS:
        return None
    token_id = parts[1]
    try:
        blob = _unb64(parts[2])
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            return None
        aead = AESGCM(_derive(key.client_secret, _INFO_AEAD))
        plaintext = aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(key, token_id))
        return token_id, json.loads(plaintext)
    except (InvalidTag, binascii.Error, ValueError):
        return None


def _open(key: CacheKey, value: str, ttl_ms: int) -> _Entry | None:
    """Decrypt and check a stored value; ``None`` for anything not readable with this key.

    A value written under another secret, moved from another key, tampered with or in an
    unknown format is ignored, never an error.
    """
    decrypted = _decrypt(key, value)
    if decrypted is None:
        return None
    token_id, fields = decrypted
    if not isinstance(fields, dict):
        return None
    access_token, token_type = fields.get("access_token"), fields.get("token_type")
    expires_in, expires_at = fields.get("expires_in"), _number(fields.get("expires_at"))
    if (
        not isinstance(access_token, str)
        or not access_token
        or not isinstance(token_type, str)
        or not is_valid_lifetime(expires_in)
        or expires_at is None
        or not hmac.compare_digest(token_id, _token_id(key, access_token))
    ):
        return None
    now_monotonic = time.monotonic()
    token = Token.from_wall_clock(
        access_token,
        token_type=token_type,
        expires_in=float(expires_in),
        expires_at=expires_at,
        now_monotonic=now_monotonic,
    )
    if ttl_ms > 0 and token.expires_at_monotonic > now_monotonic + ttl_ms / 1000:
        # Redis's TTL bounds the expiry here too, so a host whose clock runs behind never
        # keeps a token past the moment Redis drops it. (Equality ignores this field.)
        token = attrs.evolve(token, expires_at_monotonic=now_monotonic + ttl_ms / 1000)
    if token.remaining(now_monotonic) <= 0:
        return None
    return _Entry(token, token_id)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _permission_refusal(error: BaseException) -> str | None:
    """Redis's text when ``error`` is an ACL refusal (``NOPERM``), else ``None``.

    redis-py raises ``NoPermissionError`` for a refused command, and a ``ResponseError``
    that quotes ``NOPERM`` when a script's own call is refused; other clients (Valkey's)
    follow suit. Recognised by the text, so the module imports no client library.
    """
    text = _CONTROL_CHARS.sub(" ", str(error)).strip()
    if type(error).__name__ != "NoPermissionError" and "NOPERM" not in text:
        return None
    return text[:200] or "NOPERM"


def _describe(error: Exception, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    # The type only: a message could carry connection details we do not want in logs.
    return type(error).__name__


class RedisTokenCache:
    """A token cache shared by every process that uses the same Redis.

    Pass the same kind of cache to the providers of every process (and host); for each set
    of credentials the fleet then makes one token request per refresh instead of one per
    process. A memory layer in front of Redis answers the hot path without I/O.

    Redis only speeds things up: when it fails or is slow every call still succeeds, from
    this process's memory and by fetching tokens directly, with one WARNING per episode on
    the ``plainid_async`` logger.

    Args:
        client: A redis-py asyncio client: ``redis.asyncio.Redis`` (also from
            ``Redis.from_url`` or a Sentinel's ``master_for``),
            ``redis.asyncio.RedisCluster``, or a client with the same API (Valkey's).
            Either ``decode_responses`` setting works. The cache never closes it.
        namespace: Prefix of every key the cache writes.
        timeout: Time limit of each Redis call, seconds; past it Redis counts as down.
        lock_timeout: Lifetime of the fleet fetch lock, seconds: the longest a process waits
            for another one's fetch, and how long a dead lock owner blocks the others.
            Keep it above the time a token request usually takes.
        lock_poll_interval: How often a process waiting for the lock first checks it,
            seconds; later checks back off (the provider's backoff rule, up to 4 times this).
        retry_interval: After a Redis failure, how long to use memory only before trying
            Redis again, seconds.
        max_entries: The most keys held in this process's memory layer (least recently
            used first out); as for :class:`~plainid_async.MemoryTokenCache`.

    Raises:
        ConfigurationError: A parameter is invalid.
        TypeError: ``client`` is not a ``redis.asyncio`` client.
    """

    #: True, as the redis-py client belongs to the event loop its connections were made
    #: on. Fetches for this cache run on the caller's loop, not on the refresher's.
    loop_bound: Final = True

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        *,
        namespace: str = "plainid",
        timeout: float = 0.5,
        lock_timeout: float = 10.0,
        lock_poll_interval: float = 0.05,
        retry_interval: float = 1.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        """Keep the settings; do no I/O."""
        if not isinstance(namespace, str) or not namespace or not namespace.isprintable():
            raise ConfigurationError("namespace must be a non-empty printable string")
        if any(c.isspace() or c in "{}" for c in namespace):
            # Braces would change the Redis Cluster hash tag of the key names.
            raise ConfigurationError("namespace must not contain whitespace or braces")
        check_async_redis("client", client)
        self._client = client
        self._namespace = namespace
        self._timeout = check_seconds("timeout", timeout, allow_zero=False)
        self._lock_timeout = check_seconds("lock_timeout", lock_timeout, allow_zero=False)
        self._lock_poll_interval = check_seconds(
            "lock_poll_interval", lock_poll_interval, allow_zero=False
        )
        self._retry_interval = check_seconds("retry_interval", retry_interval, allow_zero=False)
        # The lock poll backs off with the same rule as token retries and cool-downs.
        self._poll = RetryPolicy(
            backoff_base=self._lock_poll_interval, backoff_max=4 * self._lock_poll_interval
        )
        #: The memory layer (token and token id per key), flights, failure streaks,
        #: cool-downs and 401 guards, per key.
        self.key_states: Final = KeyStates(max_entries)
        self._mutex = self.key_states.lock
        self._tasks: set[asyncio.Task[None]] = set()
        self._down = False
        self._skip_until = 0.0
        self._refusals: set[str] = set()

    @property
    def namespace(self) -> str:
        """The prefix of every key this cache writes."""
        return self._namespace

    @property
    def source(self) -> str:
        """``"redis"`` while Redis answers, ``"memory"`` while the cache falls back to memory.

        :meth:`TokenProvider.health <plainid_async.TokenProvider.health>` reports it.
        """
        return "memory" if self._down else "redis"

    def __repr__(self) -> str:
        """Show the namespace and state; never a secret or a token."""
        state = "down" if self._down else "up"
        return (
            f"<RedisTokenCache namespace={self._namespace!r} tokens={self._held()} redis={state}>"
        )

    def _held(self) -> int:
        states = self.key_states
        return sum(1 for key in states if (state := states.get(key)) and state.token)

    def token_key(self, key: CacheKey) -> str:
        """The Redis key holding the encrypted token for ``key``."""
        return f"{self._namespace}:token:{{{key.digest()}}}"

    def lock_key(self, key: CacheKey) -> str:
        """The Redis key of the fleet fetch lock for ``key``."""
        return f"{self._namespace}:lock:{{{key.digest()}}}"

    # -- the TokenCache protocol ---------------------------------------------------------

    def get(self, key: CacheKey) -> Token | None:
        """Return the token held in this process for ``key``, without I/O.

        The same object is returned until another token replaces it.
        """
        state = self.key_states.get(key)
        return None if state is None else state.token

    async def load(self, key: CacheKey) -> Token | None:
        """Return the newest token for ``key``: from Redis if it has a newer one, else local.

        A token read from Redis becomes the local one. A token passed to :meth:`discard` is
        never returned. When Redis is unavailable this is the local token.
        """
        name = self.token_key(key)
        reply = await self._call(
            lambda: self._client.eval(_LOAD_SCRIPT, 1, name), f"EVAL (GET, PTTL) on {name}"
        )
        shared = None if isinstance(reply, _Unavailable) else self._decode(key, reply)
        with self._mutex:
            state = self.key_states.state(key)
            current = state.token
            if shared is None:
                return current
            if not state.is_rejected(shared.token_id):
                if current is not None and (
                    state.token_id == shared.token_id
                    or current.expires_at_monotonic >= shared.token.expires_at_monotonic
                ):
                    return current
                self.key_states.set_token(key, shared.token, shared.token_id)
                return shared.token
        # Redis still holds a token this process discarded (its delete failed): retry it.
        await self._delete_if(key, shared.token_id)
        return current

    async def store(self, key: CacheKey, token: Token) -> None:
        """Keep ``token`` for ``key`` here and, encrypted, in Redis until it expires."""
        token_id = _token_id(key, token.access_token)
        self.key_states.set_token(key, token, token_id)
        ttl_ms = math.floor(token.remaining() * 1000)
        if ttl_ms <= 0:
            return
        value = _seal(key, token, token_id)
        name = self.token_key(key)
        await self._call(lambda: self._client.set(name, value, px=ttl_ms), f"SET on {name}")

    def discard(self, key: CacheKey, token: Token) -> bool:
        """Drop ``token`` if it is still the current one, here at once and in Redis soon.

        The Redis delete is a compare-and-delete run as a background task (see
        :meth:`flush`): it removes the token only if Redis still holds that very token, so
        a newer token another process stored meanwhile survives. ``token`` is never
        returned by :meth:`load` again.

        Returns:
            Whether it was the current token here and was dropped.
        """
        token_id = _token_id(key, token.access_token)
        now = time.monotonic()
        with self._mutex:
            state = self.key_states.state(key)
            first = state.reject(token_id, token.expires_at_monotonic, now)
            dropped = state.drop_id(token_id)
        if first:
            self._in_background(self._delete_if(key, token_id))
        return dropped

    def fetch_lock(self, key: CacheKey) -> AbstractAsyncContextManager[object]:
        """Hold the fleet lock for ``key`` while fetching: one process fetches for all.

        Entering waits while another process holds the lock, polling every
        ``lock_poll_interval``, until it is released or ``lock_timeout`` has passed; then it
        takes the lock (or goes on without it: after the timeout, or when Redis is
        unavailable). The lock has a TTL of ``lock_timeout`` and only its owner releases it.
        """
        return self._fleet_lock(key)

    async def flush(self) -> None:
        """Wait for this loop's background Redis writes (the deletes :meth:`discard` starts)."""
        loop = asyncio.get_running_loop()
        with self._mutex:
            pending = [task for task in self._tasks if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _fleet_lock(self, key: CacheKey) -> AsyncIterator[None]:
        owner = secrets.token_hex(16)
        try:
            owned = await self._acquire(key, owner)
        except asyncio.CancelledError:
            # Redis may have taken the lock for us before the reply was lost: free it now
            # rather than make the fleet wait for its TTL.
            self._in_background(self._unlock(key, owner))
            raise
        try:
            yield
        finally:
            if owned:
                await self._unlock(key, owner)

    async def _unlock(self, key: CacheKey, owner: str) -> None:
        name = self.lock_key(key)
        await self._call(
            lambda: self._client.eval(_UNLOCK_SCRIPT, 1, name, owner),
            f"EVAL (GET, DEL) on {name}",
        )

    async def _acquire(self, key: CacheKey, owner: str) -> bool:
        """Take the lock for ``owner``; ``False`` means go on without it."""
        names = (self.lock_key(key), self.token_key(key))
        ttl_ms = max(1, math.ceil(self._lock_timeout * 1000))
        deadline = time.monotonic() + self._lock_timeout
        first_seen: str | None = None
        polls = 0
        while True:
            reply = await self._call(
                lambda: self._client.eval(_LOCK_SCRIPT, 2, *names, owner, ttl_ms),
                f"EVAL (SET, GET) on {names[0]} and {names[1]}",
            )
            if isinstance(reply, _Unavailable):
                return False
            if reply == 1:
                return True
            seen = _text(reply) or ""
            if first_seen is None:
                first_seen = seen
            elif seen and seen != first_seen:
                # The owner stored a new token: the provider's load will find it, so there
                # is no need to queue for the lock just to read it.
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                logger.info(
                    "token fetch lock for client %s still held after %g s; fetching without it",
                    key.client_id,
                    self._lock_timeout,
                )
                return False
            # Jitter spreads the waiters, so they do not all poll at the same instant.
            polls += 1
            pause = self._poll.backoff(polls, random.random())  # noqa: S311 (jitter)
            await asyncio.sleep(min(left, pause))

    async def _delete_if(self, key: CacheKey, token_id: str) -> None:
        prefix = f"{_FORMAT}.{token_id}."
        name = self.token_key(key)
        await self._call(
            lambda: self._client.eval(_DISCARD_SCRIPT, 1, name, prefix),
            f"EVAL (GET, DEL) on {name}",
        )

    def _decode(self, key: CacheKey, reply: object) -> _Entry | None:
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        value, ttl_ms = _text(reply[0]), reply[1]
        if value is None or not isinstance(ttl_ms, int):
            return None
        entry = _open(key, value, ttl_ms)
        if entry is None:
            logger.debug(
                "ignoring a token in Redis for client %s that this secret cannot read",
                key.client_id,
            )
        return entry

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop (called from sync code): the token is dropped here; Redis keeps it
            # until it expires or another process discards it.
            work.close()
            return
        task = loop.create_task(work, name="plainid-async redis cleanup")
        with self._mutex:
            self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        with self._mutex:
            self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()  # marks it retrieved
        if error is not None:
            logger.debug("background Redis delete failed: %s", type(error).__name__)

    async def _call(self, command: Callable[[], Awaitable[_T]], what: str) -> _T | _Unavailable:
        """Run one Redis command within ``timeout``; on any failure, mark Redis down.

        ``what`` names the command and keys, for the error a refused permission logs.
        """
        if time.monotonic() < self._skip_until:
            return _UNAVAILABLE
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(self._timeout):
                result = await command()
        except Exception as error:  # whatever Redis does, the call must not fail
            if task is not None and task.cancelling() > cancels:
                raise asyncio.CancelledError from error  # a cancel the client swallowed
            self._skip_until = time.monotonic() + self._retry_interval
            refusal = _permission_refusal(error)
            if refusal is not None:
                self._log_refusal(what, refusal)
                self._down = True  # the ERROR says it all: no WARNING about an outage
            elif not self._down:
                self._down = True
                emit(EventKind.REDIS_FALLBACK_ENTERED, error=_describe(error, self._timeout))
            else:
                logger.debug("Redis token cache still unavailable")
            return _UNAVAILABLE
        if task is not None and task.cancelling() > cancels:
            # Cancelled during the command, yet the client answered: redis-py
            # sends through asyncio.wait_for, which on Python 3.11 drops a cancel that lands
            # as the write completes. Honour it, or a closed provider would go on polling
            # the fleet lock until lock_timeout and then fetch a token.
            raise asyncio.CancelledError
        if self._down:
            self._down = False
            emit(EventKind.REDIS_FALLBACK_LEFT)
        return result

    def _log_refusal(self, what: str, refusal: str) -> None:
        # Not an outage but a misconfiguration that fails the same way on every call: say
        # so once per cache and kind of refusal, at ERROR, with what to fix.
        # Once per cause (Redis's text: the command, or "one of the keys"), not per key.
        with self._mutex:
            if refusal in self._refusals:
                return
            self._refusals.add(refusal)
        logger.error(
            "Redis refused %s for this user (%s): its ACL lacks a command or key pattern the "
            "token cache needs (see %s); each process now fetches its own tokens",
            what,
            refusal,
            ACL_DOCS,
        )
