"""RedisTokenCache: one token for a whole fleet of processes, shared through Redis.

Install the extra (``pip install 'plainid-async[redis]'``) and pass the cache to every
provider of every process::

    cache = RedisTokenCache.from_url("redis://redis.internal:6379/0")
    provider = TokenProvider(..., cache=cache)

``from_url`` makes the cache's own client: it works from any event loop and thread
(``asyncio.run`` per request, ``async_to_sync``, Celery) and after ``fork`` (gunicorn
``--preload``, multiprocessing). A client you pass in (``RedisTokenCache(client)``) is used
from its own event loop only, as redis-py requires.

What goes to Redis, per cache key (token URL, client id, secret):

* ``NAMESPACE:token:{DIGEST}``: the current token, encrypted with AES-256-GCM under a
  key derived from the client secret (HKDF-SHA256), with the cache key's digest bound in as
  associated data, and a TTL equal to the token's remaining lifetime. The value is
  ``1.TOKEN_ID.BASE64URL(NONCE + CIPHERTEXT)``; ``TOKEN_ID`` is an HMAC of the token keyed
  by the secret, so any process with the secret can compare-and-delete a token it was told
  is bad, while the value reveals nothing to anyone else.
* ``NAMESPACE:lock:{DIGEST}``: a random owner id while one process fetches a token for
  the fleet. Its TTL is a short lease (three Redis timeouts) that the owner renews while
  its fetch runs, for at most ``lock_timeout``: a process that dies, freezes or loses the
  answer to its lock command blocks the others for one lease at most.

A key of another type than a string where the cache expects its own (a HASH at a token
key, say) is treated as absent, and a lock key without a TTL as stale: either affects that
one key, never the rest of the cache.

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
import atexit
import base64
import binascii
import concurrent.futures
import contextlib
import enum
import hmac
import inspect
import json
import logging
import math
import os
import random
import re
import secrets
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import attrs

from ._cache import DEFAULT_MAX_ENTRIES, KeyStates
from ._checks import check_seconds
from ._endpoint import RetryPolicy
from ._events import EventKind, emit
from ._log import LOGGER_NAME
from ._refresher import refresher_loop, running_refresher_loop
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

    _Client: TypeAlias = "redis.asyncio.Redis | redis.asyncio.RedisCluster"

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

# Every script first checks a key's type: a key of another type (planted, or left by
# another program) must read as absent, not fail the script, or one bad key would make
# the whole cache fall back to memory.

# Value and remaining TTL in one round trip; nil when the key does not exist (or is no string).
_LOAD_SCRIPT: Final = """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return false end
local value = redis.call('GET', KEYS[1])
return {value, redis.call('PTTL', KEYS[1])}
"""
# Delete the token only if it is still the one with this token id (the value's prefix).
_DISCARD_SCRIPT: Final = """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
local value = redis.call('GET', KEYS[1])
if string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Take the fleet lock for a lease (1), or say which token Redis holds now (its token id,
# "" if none), so a waiter sees when the lock owner has stored a new token. A lock key
# without a TTL is stale (every lock this cache takes has one): it is taken over.
_LOCK_SCRIPT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if redis.call('TYPE', KEYS[2]).ok ~= 'string' then return '' end
local value = redis.call('GET', KEYS[2])
if not value then return '' end
return string.match(value, '^[^.]*%.([^.]*)%.') or ''
"""
# Renew the lease of the fleet lock (1) only if this process still owns it.
_RENEW_SCRIPT: Final = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Release the fleet lock only if this process still owns it.
_UNLOCK_SCRIPT: Final = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
#: The lock's lease, in Redis timeouts: long enough for a renewal to be slow once.
_LEASE_TIMEOUTS: Final = 3
#: What redis-py says when one of its clients is used from another event loop than its own.
_FOREIGN_LOOP: Final = re.compile(r"event loop is closed|different (event )?loop", re.IGNORECASE)
#: The fix a misused client's error names.
_FROM_URL_FIX: Final = (
    "use RedisTokenCache.from_url(url, ...), which keeps a client that works from any event "
    "loop, thread and forked process"
)


def _foreign_use(where: str) -> ConfigurationError:
    return ConfigurationError(
        f"RedisTokenCache(client) was used from {where} than the one its client belongs to: "
        f"a redis.asyncio client works on one event loop of one process only; {_FROM_URL_FIX}"
    )


def _check_client(client: object) -> None:
    """Refuse what is no asyncio Redis client, at construction, naming ``client``."""
    what = "redis.asyncio.Redis, redis.asyncio.RedisCluster or a client with their API"
    if client is None:
        raise ConfigurationError(f"client must be a {what}, not None; or {_FROM_URL_FIX}")
    execute = getattr(client, "execute_command", None)
    if (
        not callable(getattr(client, "eval", None))
        or not callable(getattr(client, "set", None))
        or (execute is not None and not inspect.iscoroutinefunction(execute))
    ):
        # A synchronous redis.Redis would block the event loop on every command.
        raise ConfigurationError(
            f"client must be a {what}, not {type(client).__module__}.{type(client).__name__} "
            f"(a synchronous client blocks the event loop); or {_FROM_URL_FIX}"
        )


class _ProcessClient:
    """The client ``from_url`` made, one per process, used on the refresher's loop only.

    One loop per process talks to Redis for every caller: a loop per request
    (``asyncio.run``) would otherwise open and leave behind a connection per request.
    After ``fork`` the child makes its own client on its first call. The parent's client
    stays here, never used (its sockets belong to the parent) and never closed (that would
    run asyncio code for a loop the child does not run).
    """

    def __init__(self, factory: Callable[[], _Client], first: _Client) -> None:
        self._factory = factory
        # No lock (a lock held by another thread at a fork would stay held in the child):
        # two threads of a child may each make a client; setdefault keeps one, and the
        # other, never connected, needs no closing.
        self._clients: dict[int, _Client] = {os.getpid(): first}

    def get(self) -> _Client:
        """This process's client."""
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is None:
            client = self._clients.setdefault(pid, self._factory())
        return client

    async def aclose(self) -> None:
        """Close this process's client; the next :meth:`get` makes a new one."""
        client = self._clients.pop(os.getpid(), None)
        if client is not None:
            with contextlib.suppress(Exception):  # closing must not fail: it may be gone
                await client.aclose()


#: Every ``from_url`` client holder, weakly: a cache collected mid-run lets go of its own.
_PROCESS_CLIENTS: Final[weakref.WeakSet[_ProcessClient]] = weakref.WeakSet()

#: The longest interpreter exit waits for those clients to close.
_EXIT_CLOSE_TIMEOUT: Final = 2.0


def _close_at_exit() -> None:
    """At interpreter exit, close this process's ``from_url`` clients on their loop.

    A cache that lives as long as its process is never closed by its user. Its connections
    live on the refresher's loop, whose daemon thread still runs while ``atexit`` hooks do;
    left to the interpreter's final collection instead, they are finalized on the main
    thread: redis-py warns "unclosed Connection" and, in asyncio's debug mode, closing
    their transports from that thread raises. A child made by ``fork`` closes only its own
    client (``_ProcessClient.aclose``): the parent's belong to the parent's loop.
    """
    loop = running_refresher_loop()
    holders = list(_PROCESS_CLIENTS)
    if loop is None or not holders:
        return

    async def close_all() -> None:
        await asyncio.gather(*(holder.aclose() for holder in holders))

    future = asyncio.run_coroutine_threadsafe(close_all(), loop)
    try:
        future.result(_EXIT_CLOSE_TIMEOUT)
    except Exception:  # noqa: BLE001 (exit goes on: the operating system closes the sockets)
        future.cancel()


atexit.register(_close_at_exit)


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

    Prefer :meth:`from_url`: its client works from any event loop, thread and forked
    process. A client passed here belongs to the event loop (and process) it is first used
    from; using the cache from another raises :class:`~plainid_async.ConfigurationError`
    naming ``from_url``.

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
            The fleet lock's lease is three of these.
        lock_timeout: The longest a process waits for another one's fetch, and the longest
            one process keeps the fleet lock, seconds. Keep it above the time a token
            request usually takes. A process that dies or freezes holding the lock blocks
            the others for one lease only (three ``timeout``, at most this).
        lock_poll_interval: How often a process waiting for the lock first checks it,
            seconds; later checks back off (the provider's backoff rule, up to 4 times this).
        retry_interval: After a Redis failure, how long to use memory only before trying
            Redis again, seconds.
        max_entries: The most keys held in this process's memory layer (least recently
            used first out); as for :class:`~plainid_async.MemoryTokenCache`.

    Raises:
        ConfigurationError: A parameter is invalid: ``client`` is ``None``, a synchronous
            client or no Redis client at all, or an option is out of range.
    """

    def __init__(
        self,
        client: _Client,
        *,
        namespace: str = "plainid",
        timeout: float = 0.5,
        lock_timeout: float = 10.0,
        lock_poll_interval: float = 0.05,
        retry_interval: float = 1.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        """Keep the settings; do no I/O."""
        _check_client(client)
        self._setup(
            namespace=namespace,
            timeout=timeout,
            lock_timeout=lock_timeout,
            lock_poll_interval=lock_poll_interval,
            retry_interval=retry_interval,
            max_entries=max_entries,
        )
        self._client: _Client | None = client
        self._own: _ProcessClient | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "plainid",
        timeout: float = 0.5,
        lock_timeout: float = 10.0,
        lock_poll_interval: float = 0.05,
        retry_interval: float = 1.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        cluster: bool = False,
        **redis_options: Any,  # noqa: ANN401 (redis-py's own keyword arguments)
    ) -> RedisTokenCache:
        """A cache with its own client, for any number of event loops, threads and processes.

        The right choice for ``asyncio.run`` per request, ``async_to_sync``, Celery and
        gunicorn ``--preload``. The cache makes one client per process and runs every Redis
        command on the loop where token fetches run (the refresher's), whatever loop the
        caller is on; a child process made by ``fork`` makes its own client on its first
        call and never touches the parent's connections. Call :meth:`aclose` when done
        with it; a cache that lives as long as its process has its client closed at
        interpreter exit (and one collected earlier, when it is collected).

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://`` URL, as redis-py takes it.
            namespace: Prefix of every key the cache writes.
            timeout: As for :class:`RedisTokenCache`.
            lock_timeout: As for :class:`RedisTokenCache`.
            lock_poll_interval: As for :class:`RedisTokenCache`.
            retry_interval: As for :class:`RedisTokenCache`.
            max_entries: As for :class:`RedisTokenCache`.
            cluster: Connect to a Redis Cluster (``redis.asyncio.RedisCluster.from_url``).
            **redis_options: Passed to redis-py's ``from_url`` (``password``,
                ``ssl_ca_certs``, ``socket_connect_timeout``, ...).

        Returns:
            The cache.

        Raises:
            ConfigurationError: ``url``, ``cluster`` or an option is invalid (checked now,
                without connecting).
        """
        import redis.asyncio  # noqa: PLC0415 (the extra is needed only here)
        from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415

        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError(f"url must be a redis:// URL string, not {url!r}")
        if not isinstance(cluster, bool):
            raise ConfigurationError(f"cluster must be a bool, not {type(cluster).__name__}")
        kind = RedisCluster if cluster else redis.asyncio.Redis

        def make() -> _Client:
            return kind.from_url(url, **redis_options)

        try:
            first = make()
            if isinstance(first, redis.asyncio.Redis):
                # redis-py takes unknown options now and fails on the first connect: make
                # one connection object (no I/O) so a typo fails here instead.
                first.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as error:
            # redis-py's text names the URL's scheme or the option; never the password.
            problem = _CONTROL_CHARS.sub(" ", str(error))[:200]
            raise ConfigurationError(f"url or redis_options not accepted: {problem}") from None
        self = cls.__new__(cls)
        self._setup(
            namespace=namespace,
            timeout=timeout,
            lock_timeout=lock_timeout,
            lock_poll_interval=lock_poll_interval,
            retry_interval=retry_interval,
            max_entries=max_entries,
        )
        self._client = None
        self._own = _ProcessClient(make, first)
        _PROCESS_CLIENTS.add(self._own)
        return self

    def _setup(
        self,
        *,
        namespace: str,
        timeout: float,
        lock_timeout: float,
        lock_poll_interval: float,
        retry_interval: float,
        max_entries: int,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or not namespace.isprintable():
            raise ConfigurationError("namespace must be a non-empty printable string")
        if any(c.isspace() or c in "{}" for c in namespace):
            # Braces would change the Redis Cluster hash tag of the key names.
            raise ConfigurationError("namespace must not contain whitespace or braces")
        self._namespace = namespace
        self._timeout = check_seconds("timeout", timeout, allow_zero=False)
        self._lock_timeout = check_seconds("lock_timeout", lock_timeout, allow_zero=False)
        self._lock_poll_interval = check_seconds(
            "lock_poll_interval", lock_poll_interval, allow_zero=False
        )
        self._retry_interval = check_seconds("retry_interval", retry_interval, allow_zero=False)
        # The lock's lease: renewed while its owner fetches, so a dead, frozen or confused
        # owner blocks the fleet this long at most.
        self._lease = min(self._lock_timeout, _LEASE_TIMEOUTS * self._timeout)
        # The lock poll backs off with the same rule as token retries and cool-downs.
        self._poll = RetryPolicy(
            backoff_base=self._lock_poll_interval, backoff_max=4 * self._lock_poll_interval
        )
        #: The memory layer (token and token id per key), flights, failure streaks,
        #: cool-downs and 401 guards, per key.
        self.key_states: KeyStates = KeyStates(max_entries)
        self._mutex = self.key_states.lock
        self._tasks: set[asyncio.Future[None] | concurrent.futures.Future[None]] = set()
        self._down = False
        self._skip_until = 0.0
        self._refusals: set[str] = set()
        # A passed-in client's event loop and process, from its first use.
        self._home: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._pid = os.getpid()

    @property
    def loop_bound(self) -> bool:
        """Whether fetches for this cache must run on the loop of a client passed in.

        ``False`` for :meth:`from_url` (its client works from every loop), ``True`` for a
        client passed in.
        """
        return self._own is None

    async def aclose(self) -> None:
        """Close the client :meth:`from_url` made (in this process); a passed-in one is kept.

        A cache that lives as long as its process needs no closing; one made per test or
        per app does, or its connections are reported unclosed when it is collected.
        """
        if self._own is not None:
            own = self._own
            await self.flush()  # background deletes first: they would make a new client
            await self._on_home(own.aclose())

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
            lambda client: client.eval(_LOAD_SCRIPT, 1, name), f"EVAL (GET, PTTL) on {name}"
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
        await self._call(lambda client: client.set(name, value, px=ttl_ms), f"SET on {name}")

    def discard(self, key: CacheKey, token: Token) -> bool:
        """Drop ``token`` if it is still the current one, here at once and in Redis soon.

        The Redis delete is a compare-and-delete run as a background task (see
        :meth:`flush`): it removes the token only if Redis still holds that very token, so
        a newer token another process stored meanwhile survives. ``token`` is never
        returned by :meth:`load` again.

        Returns:
            Whether it was the current token here and was dropped.
        """
        if not isinstance(token, Token):
            raise ConfigurationError(f"token must be a Token, not {type(token).__name__}")
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
        unavailable). The lock is a lease of three Redis timeouts, renewed while the block
        runs (for ``lock_timeout`` at most); only its owner renews or releases it. When the
        answer to the lock command is lost (a timeout), the lock is released at once in the
        background, and lapses with its lease if that fails too.
        """
        return self._fleet_lock(key)

    async def flush(self) -> None:
        """Wait for the background Redis writes (the deletes :meth:`discard` starts)."""
        self._check_pid()
        loop = asyncio.get_running_loop()
        with self._mutex:
            pending = list(self._tasks)
        waits: list[asyncio.Future[None]] = []
        for work in pending:
            if isinstance(work, concurrent.futures.Future):
                waits.append(asyncio.wrap_future(work))
            elif work.get_loop() is loop:
                waits.append(work)
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------

    def _check_pid(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            # Forked: the parent's background work and its view of Redis stay with the
            # parent; the child's first call reads Redis for itself.
            self._pid = pid
            self._tasks = set()
            self._skip_until = 0.0
            self._down = False

    @contextlib.asynccontextmanager
    async def _fleet_lock(self, key: CacheKey) -> AsyncIterator[None]:
        owner = secrets.token_hex(16)
        try:
            owned = await self._acquire(key, owner)
        except asyncio.CancelledError:
            # Redis may have taken the lock for us before the reply was lost: free it now
            # rather than make the fleet wait for its lease.
            self._in_background(self._unlock(key, owner))
            raise
        renewal = None
        if owned:
            renewal = asyncio.get_running_loop().create_task(
                self._renew(key, owner), name="plainid-async redis lock lease"
            )
        try:
            yield
        finally:
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
            if owned:
                await self._unlock(key, owner)

    async def _renew(self, key: CacheKey, owner: str) -> None:
        """Renew the lock's lease while its owner fetches, for ``lock_timeout`` at most."""
        name = self.lock_key(key)
        lease_ms = max(1, math.ceil(self._lease * 1000))
        until = time.monotonic() + self._lock_timeout
        while True:
            await asyncio.sleep(self._lease / _LEASE_TIMEOUTS)
            left = until - time.monotonic()
            if left <= 0:
                return  # held long enough: let it lapse, the fleet fetches for itself
            ttl_ms = min(lease_ms, math.ceil(left * 1000))
            reply = await self._call(
                # Awaited here, before the loop moves on: the lambda sees this ttl_ms.
                lambda client: client.eval(_RENEW_SCRIPT, 1, name, owner, ttl_ms),  # noqa: B023
                f"EVAL (GET, PEXPIRE) on {name}",
            )
            if reply != 1:
                return  # lost (expired and taken, or Redis down): nothing left to renew

    async def _unlock(self, key: CacheKey, owner: str) -> None:
        name = self.lock_key(key)
        await self._call(
            lambda client: client.eval(_UNLOCK_SCRIPT, 1, name, owner),
            f"EVAL (GET, DEL) on {name}",
            always=True,
        )

    async def _acquire(self, key: CacheKey, owner: str) -> bool:
        """Take the lock for ``owner``; ``False`` means go on without it."""
        names = (self.lock_key(key), self.token_key(key))
        lease_ms = max(1, math.ceil(self._lease * 1000))
        deadline = time.monotonic() + self._lock_timeout
        first_seen: str | None = None
        polls = 0
        while True:
            reply = await self._call(
                lambda client: client.eval(_LOCK_SCRIPT, 2, *names, owner, lease_ms),
                f"EVAL (SET, GET) on {names[0]} and {names[1]}",
            )
            if isinstance(reply, _Unavailable):
                # The command may have run although its answer never came (a timeout):
                # then the lock is ours and nobody knows. Release it now; if Redis cannot
                # take that either, the lease ends it.
                self._in_background(self._unlock(key, owner))
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
            lambda client: client.eval(_DISCARD_SCRIPT, 1, name, prefix),
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
        """Run ``work`` where this cache's client lives, without waiting for it."""
        self._check_pid()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        home = self._home_loop()
        task: asyncio.Future[None] | concurrent.futures.Future[None]
        if home is None:
            home = running  # a passed-in client not used yet: this loop becomes its home
        if home is None or home.is_closed() or (home is not running and not home.is_running()):
            # Nowhere to run it: the token is dropped here; Redis keeps it until it
            # expires or another process discards it.
            work.close()
            return
        if home is running:
            task = home.create_task(work, name="plainid-async redis cleanup")
        else:
            task = asyncio.run_coroutine_threadsafe(work, home)
        with self._mutex:
            self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(
        self, task: asyncio.Future[None] | concurrent.futures.Future[None]
    ) -> None:
        with self._mutex:
            self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()  # marks it retrieved
        if error is not None:
            logger.debug("background Redis delete failed: %s", type(error).__name__)

    def _home_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the client lives on: the refresher's for ``from_url``, else its first."""
        if self._own is not None:
            return refresher_loop()
        home = self._home
        return None if home is None or home[1] != os.getpid() else home[0]

    def _client_here(self) -> _Client:
        """The client, checking a passed-in one is used from its own loop and process."""
        if self._own is not None:
            return self._own.get()
        loop, pid = asyncio.get_running_loop(), os.getpid()
        with self._mutex:
            if self._home is None:
                self._home = (loop, pid)
            home_loop, home_pid = self._home
        if home_pid != pid:
            raise _foreign_use("a child process (after fork) other")
        if home_loop is not loop:
            raise _foreign_use("another event loop")
        assert self._client is not None  # noqa: S101 (set whenever _own is None)
        return self._client

    async def _on_home(self, work: Coroutine[object, object, _T]) -> _T:
        """Run ``work`` on the refresher's loop (``from_url``), waiting from any loop."""
        home = refresher_loop()
        if home is asyncio.get_running_loop():
            return await work
        # A cancel of this caller cancels the work there too.
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, home))

    async def _call(
        self,
        command: Callable[[_Client], Awaitable[_T]],
        what: str,
        *,
        always: bool = False,
    ) -> _T | _Unavailable:
        """Run one Redis command within ``timeout``; on any failure, mark Redis down.

        ``what`` names the command and keys, for the error a refused permission logs.
        ``always`` runs it even while Redis counts as down (a lock release must be tried).

        Raises:
            ConfigurationError: A passed-in client is used from another loop or process.
        """
        self._check_pid()
        if not always and time.monotonic() < self._skip_until:
            return _UNAVAILABLE
        if self._own is not None:
            return await self._on_home(self._command(self._own.get(), command, what))
        return await self._command(self._client_here(), command, what)

    async def _command(
        self, client: _Client, command: Callable[[_Client], Awaitable[_T]], what: str
    ) -> _T | _Unavailable:
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(self._timeout):
                result = await command(client)
        except Exception as error:  # whatever Redis does, the call must not fail
            if task is not None and task.cancelling() > cancels:
                raise asyncio.CancelledError from error  # a cancel the client swallowed
            if isinstance(error, RuntimeError) and _FOREIGN_LOOP.search(str(error)):
                # redis-py's own words for a client used from a loop it does not belong
                # to: not an outage, and not fixed by waiting.
                raise _foreign_use("another event loop") from None
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
