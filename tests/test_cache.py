"""CacheKey and MemoryTokenCache."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest
from _providers import FAST, make_provider

import plainid_async as pa
from plainid_async._cache import CacheKey, MemoryTokenCache, TokenCache, default_cache
from plainid_async._token import Token
from plainid_async.testing import FakePlainID

URL_US = "https://api.us1.plainid.io/api/1.0/api-key/token"
URL_EU = "https://api.eu1.plainid.io/api/1.0/api-key/token"
SECRET = "s3cr3t-Value-that-must-not-leak"


def key(url: str = URL_US, client_id: str = "client-1", secret: str = SECRET) -> CacheKey:
    return CacheKey.for_credentials(url, client_id, secret)


def token(value: str = "tok", remaining: float = 3600.0) -> Token:
    """A token with ``remaining`` seconds left on the real monotonic clock."""
    return Token.issued(
        value, expires_in=3600.0, sent_at_monotonic=time.monotonic() - 3600.0 + remaining
    )


# -- CacheKey ------------------------------------------------------------------------------


def test_same_credentials_give_equal_keys_with_the_same_hash_and_digest() -> None:
    a, b = key(), key()
    assert a == b
    assert hash(a) == hash(b)
    assert a.digest() == b.digest()
    assert {a: 1}[b] == 1


@pytest.mark.parametrize(
    "other",
    [
        {"secret": SECRET + "x"},
        {"secret": SECRET.upper()},
        {"client_id": "client-2"},
        {"url": URL_EU},
    ],
)
def test_different_credentials_or_endpoint_give_different_keys(other: dict[str, str]) -> None:
    a, b = key(), key(**other)
    assert a != b
    assert a.digest() != b.digest()


def test_a_different_secret_gives_a_different_fingerprint() -> None:
    assert key(secret="one").fingerprint != key(secret="two").fingerprint


def test_secrets_differing_only_by_a_trailing_zero_byte_give_different_keys() -> None:
    # HMAC zero-pads a short key, so keying it with the raw secret made these collide
    assert key(secret="abc") != key(secret="abc\x00")


def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "from plainid_async._cache import CacheKey;"
        f"k = CacheKey.for_credentials({URL_US!r}, 'client-1', {SECRET!r});"
        "print(k.fingerprint, k.digest())"
    )
    out = subprocess.run(  # noqa: S603 (our own interpreter and code)
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.split()
    assert out == [key().fingerprint, key().digest()]


def test_fingerprint_and_digest_are_hex_and_do_not_contain_the_secret() -> None:
    k = key()
    assert SECRET not in k.fingerprint
    assert SECRET not in k.digest()
    assert len(k.fingerprint) == 64
    int(k.fingerprint, 16)
    int(k.digest(), 16)


def test_digest_does_not_reveal_the_client_id_or_url() -> None:
    digest = key().digest()
    assert "client-1" not in digest
    assert "plainid" not in digest


def test_repr_never_shows_the_secret() -> None:
    text = repr(key())
    assert SECRET not in text
    assert "client-1" in text


def test_key_carries_the_secret_for_caches_that_need_it() -> None:
    assert key().client_secret.reveal() == SECRET


def test_cache_key_is_exported() -> None:
    assert pa.CacheKey is CacheKey


# -- MemoryTokenCache ----------------------------------------------------------------------


def test_memory_cache_satisfies_the_token_cache_protocol() -> None:
    assert isinstance(MemoryTokenCache(), TokenCache)
    assert isinstance(MemoryTokenCache(), pa.TokenCache)


def test_default_cache_is_one_shared_memory_cache() -> None:
    assert default_cache() is default_cache()
    assert isinstance(default_cache(), MemoryTokenCache)


async def test_empty_cache_has_no_token() -> None:
    cache = MemoryTokenCache()
    assert cache.get(key()) is None
    assert await cache.load(key()) is None
    assert len(cache) == 0


async def test_store_then_get_and_load_return_the_token() -> None:
    cache = MemoryTokenCache()
    tok = token()
    await cache.store(key(), tok)
    assert cache.get(key()) is tok
    assert await cache.load(key()) is tok
    assert len(cache) == 1


async def test_tokens_are_kept_apart_per_key() -> None:
    cache = MemoryTokenCache()
    us, eu = token("us"), token("eu")
    await cache.store(key(url=URL_US), us)
    await cache.store(key(url=URL_EU), eu)
    assert cache.get(key(url=URL_US)) is us
    assert cache.get(key(url=URL_EU)) is eu
    assert cache.get(key(secret="another secret")) is None


async def test_store_replaces_the_previous_token_of_the_key() -> None:
    cache = MemoryTokenCache()
    await cache.store(key(), token("old"))
    new = token("new")
    await cache.store(key(), new)
    assert cache.get(key()) is new
    assert len(cache) == 1


async def test_discard_drops_the_current_token() -> None:
    cache = MemoryTokenCache()
    tok = token()
    await cache.store(key(), tok)
    assert cache.discard(key(), tok) is True
    assert cache.get(key()) is None
    assert await cache.load(key()) is None


async def test_discarding_an_old_token_after_a_newer_one_was_stored_does_nothing() -> None:
    cache = MemoryTokenCache()
    old, new = token("old"), token("new")
    await cache.store(key(), old)
    await cache.store(key(), new)
    assert cache.discard(key(), old) is False
    assert cache.get(key()) is new


async def test_discarding_twice_drops_once() -> None:
    cache = MemoryTokenCache()
    tok = token()
    await cache.store(key(), tok)
    assert [cache.discard(key(), tok) for _ in range(5)] == [True, False, False, False, False]


def test_discard_on_an_empty_cache_returns_false() -> None:
    assert MemoryTokenCache().discard(key(), token()) is False


async def test_store_drops_expired_tokens_of_other_keys() -> None:
    cache = MemoryTokenCache()
    await cache.store(key(client_id="expired"), token(remaining=-1.0))
    await cache.store(key(client_id="valid"), token(remaining=600.0))
    await cache.store(key(), token())
    assert cache.get(key(client_id="expired")) is None
    assert cache.get(key(client_id="valid")) is not None
    assert len(cache) == 2


async def test_clear_drops_everything() -> None:
    cache = MemoryTokenCache()
    await cache.store(key(), token())
    cache.clear()
    assert len(cache) == 0
    assert cache.get(key()) is None


async def test_fetch_lock_is_an_async_context_manager() -> None:
    async with MemoryTokenCache().fetch_lock(key()):
        pass


async def test_memory_cache_repr_shows_no_token() -> None:
    cache = MemoryTokenCache()
    await cache.store(key(), token("visible-token-value"))
    for shown in (repr(cache), repr(cache.key_states), repr(cache.key_states.get(key()))):
        assert "visible-token-value" not in shown
        assert SECRET not in shown


# -- flights belong to the cache (moved from test_core.py) ---------------------------


@pytest.mark.usefixtures("no_leftover_fetches")
async def test_failure_streak_lives_in_the_cache_that_holds_the_key() -> None:
    async with FakePlainID() as fake:
        first, second = pa.MemoryTokenCache(), pa.MemoryTokenCache()
        failing = make_provider(fake, cache=first, retry=FAST)
        other = make_provider(fake, cache=second, retry=FAST)
        async with failing, other:
            fake.start_outage(503)
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await failing.get_token()
            state = first.key_states.get(failing.cache_key)
            assert state is not None
            assert state.failures == 1
            assert state.cooldown_until > time.monotonic()
            # Another cache knows nothing of it: its provider fetches at once.
            fake.end_outage()
            assert fake.is_valid((await other.get_token()).access_token)


@pytest.mark.usefixtures("no_leftover_fetches")
async def test_closed_failing_providers_leave_nothing_behind() -> None:
    """Many failing client ids, every provider closed: no per-key state stays (no secret)."""
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache()
        for i in range(300):
            provider = pa.TokenProvider(
                f"unknown-{i}", f"secret-{i}", base_url=str(fake.base_url), cache=cache, retry=FAST
            )
            async with provider:
                with pytest.raises(pa.InvalidCredentialsError):
                    await provider.get_token()
            assert len(cache.key_states) == 0
        assert len(fake.token_requests) == 300


@pytest.mark.usefixtures("no_leftover_fetches")
async def test_expired_tokens_of_closed_providers_are_swept_by_later_stores() -> None:
    async with FakePlainID(expires_in=1) as fake:
        cache = pa.MemoryTokenCache()
        soon_gone = pa.Token.issued("old", expires_in=1, sent_at_monotonic=time.monotonic() - 0.95)
        for i in range(20):
            await cache.store(pa.CacheKey.for_credentials("u", f"c{i}", "s"), soon_gone)
        assert len(cache.key_states) == 20
        while soon_gone.remaining() > 0:  # noqa: ASYNC110 (waiting on the clock itself)
            await asyncio.sleep(0.01)
        provider = make_provider(fake, cache=cache)
        async with provider:
            for _ in range(10):
                await provider.get_token(force_refresh=True)
        # each store looks at a couple of the least recently used keys and drops dead ones
        assert len(cache.key_states) == 1


# -- many tenants (moved from test_core.py) ------------------------------------------


@pytest.mark.usefixtures("no_leftover_fetches")
async def test_least_recently_used_keys_are_evicted_and_fetch_again() -> None:
    async with FakePlainID() as fake:
        for i in range(3):
            fake.add_client(f"tenant-{i}", f"secret-{i}")
        cache = pa.MemoryTokenCache(max_entries=2)
        providers = [
            pa.TokenProvider(f"tenant-{i}", f"secret-{i}", base_url=str(fake.base_url), cache=cache)
            for i in range(3)
        ]
        first = await providers[0].get_token()
        await providers[1].get_token()
        await providers[2].get_token()  # tenant-0 is the least recently used: evicted
        assert len(cache.key_states) == 2
        assert cache.get(providers[0].cache_key) is None
        again = await providers[0].get_token()  # its hot slot must not serve the evicted token
        assert again is not first
        assert len(fake.token_requests) == 4
        for provider in providers:
            await provider.close()


@pytest.mark.usefixtures("no_leftover_fetches")
def test_max_entries_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(pa.ConfigurationError, match="max_entries"):
            pa.MemoryTokenCache(max_entries=bad)  # type: ignore[arg-type]
    assert pa.MemoryTokenCache().max_entries == 10_000


# -- the cache's LRU keeps open keys' cool-downs, issue 20 (moved from test_core.py) -------


async def test_lru_eviction_keeps_the_cool_down_of_keys_open_providers_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three open providers, a cache of two keys, an outage: one fetch and one WARNING
    per key, then cool-downs, not a fetch per call."""
    async with FakePlainID() as fake:
        cache = pa.MemoryTokenCache(max_entries=2)
        providers = [
            pa.TokenProvider(
                f"client-{i}",
                "secret",
                base_url=str(fake.base_url),
                cache=cache,
                retry=pa.RetryPolicy(attempts=1),
            )
            for i in range(3)
        ]
        fake.start_outage(503)
        caplog.set_level(logging.WARNING, logger="plainid_async")
        for call in range(48):
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await providers[call % 3].get_token()
        requests = len(fake.token_requests)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        for provider in providers:
            await provider.close()
    assert requests == 3, requests  # one per key; 48 without the cool-downs
    assert len(warnings) == 3
