"""The event stream, stats and health(), end to end against FakePlainID on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING

import attrs
import pytest
from _clock import PolicyClock
from _providers import FAST, Recorder, make_provider, recording, token_with
from _servers import fake_in_thread, settle

import plainid_async as pa
from plainid_async import _events, _policy
from plainid_async._events import EventKind, FetchReason, TokenEvent
from plainid_async.testing import FakePlainID, running_fetches

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


#: One attempt, and a cool-down of 10-20 s after a failed fetch: calls right after it are
#: inside it on any machine.
COOLING = pa.RetryPolicy(attempts=1, backoff_base=5.0, deadline=5.0)


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield
    assert running_fetches() == []
    assert _events.BUS.listeners == ()  # every test unsubscribed what it subscribed


def assert_no_secret(events: list[TokenEvent], *secrets: str) -> None:
    for event in events:
        shown = [repr(event), *(str(v) for v in attrs.astuple(event))]
        for secret in secrets:
            assert not any(secret in text for text in shown), event


# -- the events of each decision ------------------------------------------------------------


async def test_cold_fetch_waits_fetches_once_then_hits(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    async with provider:
        token = await provider.get_token()
        await provider.get_token()
    assert seen.kinds() == [
        EventKind.WAIT,
        EventKind.FETCH_STARTED,
        EventKind.FETCH_SUCCEEDED,
        EventKind.HIT,
    ]
    started, succeeded = seen.of(EventKind.FETCH_STARTED)[0], seen.of(EventKind.FETCH_SUCCEEDED)[0]
    assert started.reason is succeeded.reason is FetchReason.COLD
    assert started.fetch_id == succeeded.fetch_id is not None
    assert (succeeded.attempts, succeeded.status, succeeded.failures) == (1, 200, 0)
    assert succeeded.expires_at == token.expires_at
    assert succeeded.duration is not None
    assert succeeded.duration >= 0
    [hit] = seen.of(EventKind.HIT)
    assert hit.client_id == fake.client_id
    assert hit.remaining is not None
    assert 0 < hit.remaining <= fake.expires_in


async def test_stale_token_is_served_while_a_background_refresh_runs(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    async with provider:
        stale = token_with(remaining=40)
        await provider.cache.store(provider.cache_key, stale)
        assert await provider.get_token() is stale
        await settle()
    assert seen.kinds() == [EventKind.FETCH_STARTED, EventKind.STALE, EventKind.FETCH_SUCCEEDED]
    assert {e.reason for e in seen.of(EventKind.FETCH_STARTED)} == {FetchReason.REFRESH}
    assert provider.stats.stale_hits == provider.stats.cache_hits == 1
    assert provider.stats.background_refreshes == 1


async def test_outage_reports_each_failed_attempt_and_the_failed_fetch(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    fake.start_outage(503)
    async with provider:
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token()
    assert seen.kinds() == [
        EventKind.WAIT,
        EventKind.FETCH_STARTED,
        EventKind.ATTEMPT_FAILED,
        EventKind.FETCH_FAILED,
        EventKind.COOLDOWN_STARTED,  # nothing usable is cached
    ]
    [attempt] = seen.of(EventKind.ATTEMPT_FAILED)
    assert (attempt.attempts, attempt.status) == (1, 503)
    assert attempt.retry_in is not None
    assert attempt.retry_in > 0
    assert attempt.error_type == "TokenEndpointUnavailableError"
    [failed] = seen.of(EventKind.FETCH_FAILED)
    assert (failed.attempts, failed.status, failed.failures) == (2, 503, 1)
    assert failed.error is not None
    assert "HTTP 503" in failed.error
    stats = provider.stats
    assert (stats.token_requests, stats.retries, stats.failures) == (2, 1, 1)


async def test_calls_inside_a_cooldown_are_reported_and_send_nothing(fake: FakePlainID) -> None:
    provider, seen = recording(fake, retry=COOLING)
    fake.start_outage(503)
    async with provider:
        with pytest.raises(pa.TokenEndpointUnavailableError) as first:
            await provider.get_token()
        for _ in range(3):
            with pytest.raises(pa.TokenEndpointUnavailableError) as later:
                await provider.get_token()
            assert later.value is first.value
    assert len(fake.token_requests) == 1
    [started] = seen.of(EventKind.COOLDOWN_STARTED)
    assert (started.failures, started.reason) == (1, FetchReason.COLD)
    assert started.retry_in is not None
    assert 10 <= started.retry_in <= 20
    assert started.error is not None
    assert "HTTP 503" in started.error
    rejected = seen.of(EventKind.COOLDOWN)
    assert len(rejected) == 3
    for event in rejected:
        assert event.error == started.error
        assert event.retry_in is not None
        assert 0 < event.retry_in <= started.retry_in
    stats = provider.stats
    assert (stats.cooldown_rejections, stats.waits, stats.failures) == (3, 1, 1)


async def test_a_401_refetches_once_then_inside_the_guard_is_held_and_goes_back(
    fake: FakePlainID,
) -> None:
    provider, seen = recording(fake)
    async with provider, provider.session() as session:
        first = await provider.get_token()
        fake.revoke(first.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 200  # the guard opened; a new token was fetched
        second = await provider.get_token()
        assert second != first
        fake.revoke(second.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 401  # inside the guard: no new token, the 401 returns
        assert await provider.get_token() is second
    assert len(fake.token_requests) == 2
    [held] = seen.of(EventKind.UNAUTHORIZED_HELD)
    assert held.client_id == fake.client_id
    assert held.retry_in is not None
    assert 0 < held.retry_in <= _policy.GUARD_BASE
    assert provider.stats.unauthorized_held == 1
    # The first 401 (outside the guard) started a fetch for reason UNAUTHORIZED.
    reasons = [e.reason for e in seen.of(EventKind.FETCH_STARTED)]
    assert reasons == [FetchReason.COLD, FetchReason.UNAUTHORIZED]
    assert provider.stats.unauthorized_refreshes == 1


async def test_an_lru_eviction_reaches_the_evicted_keys_provider_and_subscribers(
    fake: FakePlainID,
) -> None:
    fake.add_client("other-client", "other-secret")
    cache = pa.MemoryTokenCache(max_entries=1)
    seen, everything = Recorder(), Recorder()
    unsubscribe = _events.subscribe(everything)
    try:
        async with make_provider(fake, cache=cache, on_event=seen) as first:
            token = await first.get_token()
            # A second key: the first one, least recently used, is evicted.
            async with pa.TokenProvider(
                "other-client", "other-secret", base_url=str(fake.base_url), cache=cache
            ) as other:
                assert first.health().state is None
                await other.get_token()
                again = await first.get_token()  # fetches anew (and evicts the other)
    finally:
        unsubscribe()
    assert again != token
    assert len(fake.token_requests) == 3
    [evicted] = seen.of(EventKind.EVICTED)
    assert evicted.client_id == fake.client_id
    assert evicted.expires_at == token.expires_at
    assert [e.client_id for e in everything.of(EventKind.EVICTED)] == [
        fake.client_id,
        "other-client",
    ]
    assert cache.key_states.evictions == 2
    assert seen.kinds()[-3:] == [
        EventKind.WAIT,
        EventKind.FETCH_STARTED,
        EventKind.FETCH_SUCCEEDED,
    ]
    assert_no_secret(everything.events, fake.client_secret, "other-secret", *fake.issued_tokens)


async def test_a_caller_that_gives_up_on_another_providers_fetch_is_reported(
    fake: FakePlainID,
) -> None:
    cache = pa.MemoryTokenCache()
    patient = make_provider(fake, cache=cache, timeout=30.0)
    seen = Recorder()
    quick = make_provider(
        fake, cache=cache, timeout=0.3, retry=pa.RetryPolicy(attempts=1), on_event=seen
    )
    fake.hang = True
    async with patient, quick:
        waiting = asyncio.ensure_future(patient.get_token())
        while not fake.token_requests:  # noqa: ASYNC110 (the patient fetch is under way)
            await asyncio.sleep(0.005)
        with pytest.raises(pa.TokenEndpointUnavailableError, match="time budget"):
            await quick.get_token()
        await patient.close()
        with pytest.raises((asyncio.CancelledError, pa.ProviderClosedError)):
            await waiting
    [gave_up] = seen.of(EventKind.GAVE_UP)
    assert gave_up.reason is FetchReason.COLD
    assert gave_up.error is not None
    assert "time budget" in gave_up.error
    assert seen.of(EventKind.FETCH_STARTED) == []  # the patient provider started it
    assert quick.stats.failures == 1
    assert len(fake.token_requests) == 1


async def test_force_refresh_starts_a_fetch_for_reason_forced(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    async with provider:
        await provider.get_token()
        await provider.get_token(force_refresh=True)
    reasons = [e.reason for e in seen.of(EventKind.FETCH_STARTED)]
    assert reasons == [FetchReason.COLD, FetchReason.FORCED]
    assert provider.stats.forced_refreshes == 1


async def test_closing_during_a_fetch_reports_it_cancelled(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    fake.hang = True
    async with provider:
        await provider.cache.store(provider.cache_key, token_with(remaining=40))
        await provider.get_token()
    assert seen.kinds()[-1] is EventKind.FETCH_CANCELLED
    assert provider.stats.failures == 0


async def test_no_event_carries_a_secret_or_a_token(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    async with provider, provider.session() as session:
        first = await provider.get_token()
        fake.revoke(first.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 200
        await provider.get_token(force_refresh=True)
        third = await provider.get_token()
        fake.revoke(third.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 401  # the guard holds
        fake.start_outage(503)
        # Nothing usable is cached (a forced fetch would keep serving a usable token)
        await provider.cache.store(provider.cache_key, token_with(remaining=5))
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token(force_refresh=True)
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token()  # inside the cool-down
        fake.end_outage()
        fake.rotate_secret(fake.client_id, "the-next-secret")
        with pytest.raises(pa.InvalidCredentialsError):
            await provider.get_token(force_refresh=True)
    assert {e.kind for e in seen.events} >= {
        EventKind.HIT,
        EventKind.WAIT,
        EventKind.COOLDOWN,
        EventKind.FETCH_STARTED,
        EventKind.ATTEMPT_FAILED,
        EventKind.FETCH_SUCCEEDED,
        EventKind.FETCH_FAILED,
        EventKind.COOLDOWN_STARTED,
        EventKind.UNAUTHORIZED_HELD,
    }
    assert len(fake.issued_tokens) == 3
    assert_no_secret(seen.events, fake.client_secret, "the-next-secret", *fake.issued_tokens)


# -- listeners --------------------------------------------------------------------------------


async def test_a_failing_on_event_is_logged_once_and_never_breaks_a_call(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[EventKind] = []

    def broken(event: TokenEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("listener bug")

    caplog.set_level(logging.DEBUG, logger="plainid_async")
    provider = make_provider(fake, cache=pa.MemoryTokenCache(), on_event=broken)
    async with provider:
        tokens = [await provider.get_token() for _ in range(5)]
    assert len({t.access_token for t in tokens}) == 1
    assert len(calls) == 3 + 4  # wait, started, succeeded, four hits: it kept being called
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "listener bug" in caplog.text  # the traceback, once


async def test_a_failing_subscriber_is_logged_once_and_never_breaks_a_call(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TokenEvent) -> None:
        raise ValueError(event.kind.value)

    unsubscribe = _events.subscribe(broken)
    try:
        provider = make_provider(fake, cache=pa.MemoryTokenCache())
        async with provider:
            for _ in range(3):
                await provider.get_token()
    finally:
        unsubscribe()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    unsubscribe()  # idempotent


class Blocking:
    """A listener that records each event and blocks on ``FETCH_SUCCEEDED`` until let go.

    Only in the process that made it: a forked child's copy never blocks.
    """

    def __init__(self, *, hits: int = 0) -> None:
        self.kinds: list[EventKind] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()  # it is blocked
        self.gate = threading.Event()  # let it go
        self.hits_heard = threading.Event()  # it has had ``hits`` HITs
        self._hits = hits
        self._pid = os.getpid()

    def __call__(self, event: TokenEvent) -> None:
        self.threads.add(threading.current_thread().name)
        self.kinds.append(event.kind)
        if event.kind is EventKind.HIT and self.kinds.count(EventKind.HIT) == self._hits:
            self.hits_heard.set()
        if event.kind is EventKind.FETCH_SUCCEEDED and os.getpid() == self._pid:
            self.entered.set()
            self.gate.wait(30)  # a bound, so a failing test cannot hang its worker forever


async def test_a_blocked_listener_of_one_provider_never_holds_up_another_providers_fetch(
    fake: FakePlainID,
) -> None:
    """A's on_event blocks on its fetch's end; B (other credentials and cache) fetches cold."""
    fake.add_client("other-client", "other-secret")
    blocked = Blocking()
    a = make_provider(fake, on_event=blocked)
    b = make_provider(fake, client_id="other-client", client_secret="other-secret")
    async with a, b:
        try:
            first = asyncio.create_task(a.get_token())
            assert await asyncio.to_thread(blocked.entered.wait, 10)
            async with asyncio.timeout(10):  # turns a hold-up into a failure, not a hang
                other = await b.get_token()
            assert fake.is_valid(other.access_token)
            assert len(fake.token_requests) == 2
            # A's caller returns only once its listener heard how its fetch ended.
            assert not first.done()
            assert blocked.kinds == [
                EventKind.WAIT,
                EventKind.FETCH_STARTED,
                EventKind.FETCH_SUCCEEDED,
            ]
        finally:
            blocked.gate.set()
        token = await asyncio.wait_for(first, 10)
    assert fake.is_valid(token.access_token)
    assert "plainid-async refresher" not in blocked.threads  # never on the fetches' thread


async def test_a_fetchs_end_is_heard_on_a_listener_thread_before_its_caller_returns(
    fake: FakePlainID,
) -> None:
    """The fetch's end goes to a worker thread; the caller still sees it before it returns."""
    ended: list[str] = []

    def listener(event: TokenEvent) -> None:
        if event.kind is EventKind.FETCH_SUCCEEDED:
            ended.append(threading.current_thread().name)

    async with make_provider(fake, on_event=listener) as provider:
        for _ in range(3):
            await provider.get_token(force_refresh=True)
            assert len(ended) == len(fake.token_requests)
    assert ended == ["plainid-async listener"] * 3


async def test_a_listener_hears_its_events_in_order_when_later_ones_queue_behind_a_slow_one(
    fake: FakePlainID,
) -> None:
    """Lookups on the caller's loop wait behind a background refresh's end still being heard."""
    blocked = Blocking(hits=3)
    provider = make_provider(fake, on_event=blocked)
    async with provider:
        stale = token_with(remaining=40)
        await provider.cache.store(provider.cache_key, stale)
        try:
            assert await provider.get_token() is stale
            assert await asyncio.to_thread(blocked.entered.wait, 10)
            fresh = [await provider.get_token() for _ in range(3)]  # three HITs, queued
            assert fresh[0] is not stale
            assert blocked.kinds == [
                EventKind.FETCH_STARTED,
                EventKind.STALE,
                EventKind.FETCH_SUCCEEDED,
            ]
        finally:
            blocked.gate.set()
        assert await asyncio.to_thread(blocked.hits_heard.wait, 10)
    assert blocked.kinds == [
        EventKind.FETCH_STARTED,
        EventKind.STALE,
        EventKind.FETCH_SUCCEEDED,
        EventKind.HIT,
        EventKind.HIT,
        EventKind.HIT,
    ]


async def test_a_blocked_subscriber_never_holds_up_a_fetch_nor_another_subscriber(
    fake: FakePlainID,
) -> None:
    """A subscriber blocked on A's fetch: B's fetch ends, another subscriber hears it."""
    fake.add_client("other-client", "other-secret")
    blocked = Blocking()
    b_ended = threading.Event()

    def other(event: TokenEvent) -> None:
        if event.kind is EventKind.FETCH_SUCCEEDED and event.client_id == "other-client":
            b_ended.set()

    unsubscribe = _events.subscribe(blocked, kinds=[EventKind.FETCH_SUCCEEDED])
    unsubscribe_other = _events.subscribe(other)
    a = make_provider(fake)
    b = make_provider(fake, client_id="other-client", client_secret="other-secret")
    try:
        async with a, b:
            try:
                first = asyncio.create_task(a.get_token())
                assert await asyncio.to_thread(blocked.entered.wait, 10)
                second = asyncio.create_task(b.get_token())
                assert await asyncio.to_thread(b_ended.wait, 10)
                assert len(fake.token_requests) == 2
                # Both callers return once the subscribers heard their fetches.
                assert not first.done()
                assert not second.done()
            finally:
                blocked.gate.set()
            await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        unsubscribe()
        unsubscribe_other()
    assert blocked.kinds == [EventKind.FETCH_SUCCEEDED] * 2


async def test_a_caller_waits_for_its_own_fetchs_events_never_for_ones_queued_after(
    fake: FakePlainID,
) -> None:
    """A's caller wakes only after A's fetch was heard and a subscriber blocked on the end of
    B's later fetch: it returns, for that event is not its fetch's (its budget is far longer)."""
    fake.add_client("other-client", "other-secret")
    a_started, a_heard = threading.Event(), threading.Event()
    b_blocked, release = threading.Event(), threading.Event()

    def subscriber(event: TokenEvent) -> None:
        if event.client_id == fake.client_id and event.kind is EventKind.FETCH_STARTED:
            a_started.set()
        if event.client_id == fake.client_id and event.kind is EventKind.FETCH_SUCCEEDED:
            a_heard.set()
        if event.client_id == "other-client" and event.kind is EventKind.FETCH_SUCCEEDED:
            b_blocked.set()
            release.wait(30)  # a bound, so a failing test cannot hang the worker forever

    loop_held, returned = threading.Event(), threading.Event()
    a = make_provider(fake, timeout=60.0)
    b = make_provider(fake, client_id="other-client", client_secret="other-secret")

    def caller() -> None:
        async def main() -> None:
            task = asyncio.create_task(a.get_token())
            assert await asyncio.to_thread(a_started.wait, 10)
            loop_held.wait(30)  # this loop stands still while A's fetch ends and B's starts
            await task
            returned.set()

        asyncio.run(main())

    unsubscribe = _events.subscribe(subscriber)
    thread = threading.Thread(target=caller, daemon=True)
    try:
        async with a, b:
            try:
                thread.start()
                assert await asyncio.to_thread(a_heard.wait, 10)
                second = asyncio.create_task(b.get_token())
                assert await asyncio.to_thread(b_blocked.wait, 10)
                loop_held.set()
                # A bound that turns a hang into a failure: waiting for B's event would last
                # until release, or A's budget (over a minute).
                assert await asyncio.to_thread(returned.wait, 10)
            finally:
                loop_held.set()
                release.set()
            await asyncio.wait_for(second, 10)
    finally:
        unsubscribe()
        await asyncio.to_thread(thread.join, 10)


def test_a_forked_child_inherits_no_listener_worker_nor_queued_event() -> None:
    """Forked while the parent's listener is blocked with a HIT queued behind: the child's
    listener hears the child's own events, and never the parent's queued ones."""
    blocked = Blocking(hits=1)
    with fake_in_thread() as fake:
        provider = make_provider(fake, on_event=blocked)

        def first_call() -> None:
            with contextlib.suppress(pa.PlainIDError):
                asyncio.run(provider.get_token())

        caller = threading.Thread(target=first_call, daemon=True)
        caller.start()
        try:
            assert blocked.entered.wait(10)
            asyncio.run(provider.get_token())  # a HIT, queued behind the blocked event
            assert blocked.kinds[-1] is EventKind.FETCH_SUCCEEDED
            pid = os.fork()
            if pid == 0:  # the child: one call, then out (no test teardown)
                code = 1
                try:
                    del blocked.kinds[:]
                    asyncio.run(asyncio.wait_for(provider.get_token(force_refresh=True), 5))
                    kinds = blocked.kinds
                    code = 0 if kinds[-1] is EventKind.FETCH_SUCCEEDED else 2
                    code = code if EventKind.HIT not in kinds else 3
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            blocked.gate.set()
        caller.join(10)
        assert blocked.hits_heard.wait(10)
    assert blocked.kinds[-1:] == [EventKind.HIT]  # the parent's, once its listener was let go


async def test_a_listener_whose_worker_died_of_system_exit_still_hears_later_fetches(
    fake: FakePlainID,
) -> None:
    """SystemExit ends a worker thread: the next queued event starts another, nobody waits."""
    ended: list[int] = []

    def exits_once(event: TokenEvent) -> None:
        if event.kind is EventKind.FETCH_SUCCEEDED:
            ended.append(event.fetch_id or 0)
            if len(ended) == 1:
                raise SystemExit

    provider = make_provider(
        fake, on_event=exits_once, timeout=1.0, retry=pa.RetryPolicy(attempts=1)
    )
    async with provider:
        for _ in range(3):
            await provider.get_token(force_refresh=True)
    assert len(ended) == 3


#: A process whose listener never returns from the end of its fetch: it must still exit.
_BLOCKED_FOREVER = """
import asyncio, threading
import plainid_async as pa
from plainid_async.testing import FakePlainID

def stuck(event):
    if event.kind is pa.EventKind.FETCH_SUCCEEDED:
        threading.Event().wait()

async def main():
    async with FakePlainID() as fake:
        async with pa.TokenProvider(
            fake.client_id, fake.client_secret, base_url=str(fake.base_url),
            on_event=stuck, timeout=0.5, retry=pa.RetryPolicy(attempts=1),
        ) as provider:
            token = await provider.get_token()  # its listener never hears the end
    print("got", bool(token.access_token), flush=True)

asyncio.run(main())
"""


def test_the_interpreter_exits_while_a_listener_is_blocked_for_ever() -> None:
    """The listener's worker is a daemon: a process ends even with one stuck in a callback."""
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", textwrap.dedent(_BLOCKED_FOREVER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "got True\n"), done.stderr


async def test_subscribers_see_every_provider_and_stop_when_unsubscribed(
    fake: FakePlainID,
) -> None:
    seen = Recorder()
    unsubscribe = _events.subscribe(seen)
    async with make_provider(fake, cache=pa.MemoryTokenCache()) as a:
        await a.get_token()
        async with make_provider(fake, cache=pa.MemoryTokenCache()) as b:
            await b.get_token()
        unsubscribe()
        await a.get_token()
    assert [e.kind for e in seen.events].count(EventKind.FETCH_SUCCEEDED) == 2
    assert EventKind.HIT not in [e.kind for e in seen.events]


async def test_a_cache_hit_builds_no_event_when_nobody_listens(
    fake: FakePlainID, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[EventKind] = []
    real = TokenEvent

    def counting(**fields: object) -> TokenEvent:
        event = real(**fields)  # type: ignore[arg-type]
        built.append(event.kind)
        return event

    monkeypatch.setattr(_events, "TokenEvent", counting)
    quiet = make_provider(fake, cache=pa.MemoryTokenCache())
    async with quiet:
        for _ in range(10):
            await quiet.get_token()
    assert built == []  # nobody listens: not even the fetch builds one
    assert quiet.stats.cache_hits == 9
    assert quiet.stats.tokens_fetched == 1
    built.clear()
    listening, _ = recording(fake)
    async with listening:
        for _ in range(10):
            await listening.get_token()
    assert built.count(EventKind.HIT) == 9


FETCH_ENDS = frozenset((EventKind.FETCH_SUCCEEDED, EventKind.FETCH_FAILED))


async def test_no_event_is_built_for_a_kind_nobody_asked_for(
    fake: FakePlainID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listeners that asked for fetch ends leave lookups on the hot path, building nothing."""
    built: list[EventKind] = []
    real = TokenEvent

    def counting(**fields: object) -> TokenEvent:
        event = real(**fields)  # type: ignore[arg-type]
        built.append(event.kind)
        return event

    monkeypatch.setattr(_events, "TokenEvent", counting)
    seen, heard = Recorder(), Recorder()
    provider = make_provider(
        fake, cache=pa.MemoryTokenCache(), on_event=seen, event_kinds=FETCH_ENDS
    )
    unsubscribe = _events.subscribe(heard, kinds=FETCH_ENDS)
    try:
        async with provider:
            for _ in range(10):
                token = await provider.get_token()
            assert provider._hot[0] is token  # the lookups stayed on the hot path
    finally:
        unsubscribe()
    assert built == [EventKind.FETCH_SUCCEEDED]  # one event, shared by both listeners
    assert seen.kinds() == heard.kinds() == [EventKind.FETCH_SUCCEEDED]
    assert provider.stats.cache_hits == 9


async def test_a_subscriber_without_hits_leaves_the_hot_slots_filled(fake: FakePlainID) -> None:
    provider = make_provider(fake, cache=pa.MemoryTokenCache())
    async with provider:
        await provider.get_token()
        await provider.get_token()
        hot = provider._hot
        unsubscribe = _events.subscribe(Recorder(), kinds=FETCH_ENDS)
        try:
            assert provider._hot is hot
            assert EventKind.HIT not in _events.BUS.wanted
        finally:
            unsubscribe()
        assert _events.BUS.wanted == frozenset()


@pytest.mark.parametrize(
    ("kinds", "on_event", "match"),
    [
        ("hit", print, "iterable of EventKind"),
        (EventKind.HIT, print, "iterable of EventKind"),
        (["hit"], print, "EventKind members only"),
        ([EventKind.HIT], None, "pass on_event too"),
    ],
)
def test_event_kinds_are_event_kind_members_for_on_event(
    kinds: object, on_event: object, match: str
) -> None:
    with pytest.raises(pa.ConfigurationError, match=match):
        pa.TokenProvider("id", "secret", region="us1", on_event=on_event, event_kinds=kinds)  # type: ignore[arg-type]


def test_on_event_must_be_callable() -> None:
    with pytest.raises(pa.ConfigurationError, match="on_event"):
        pa.TokenProvider("id", "secret", region="us1", on_event="print")  # type: ignore[arg-type]


async def test_from_env_takes_on_event(fake: FakePlainID) -> None:
    seen = Recorder()
    environ = {
        "PLAINID_CLIENT_ID": fake.client_id,
        "PLAINID_CLIENT_SECRET": fake.client_secret,
        "PLAINID_BASE_URL": str(fake.base_url),
    }
    provider = pa.TokenProvider.from_env(environ, cache=pa.MemoryTokenCache(), on_event=seen)
    async with provider:
        await provider.get_token()
    assert EventKind.FETCH_SUCCEEDED in seen.kinds()


async def test_a_subscriber_that_comes_later_sees_the_hits_of_a_hot_provider(
    fake: FakePlainID,
) -> None:
    provider = make_provider(fake, cache=pa.MemoryTokenCache())
    seen = Recorder()
    async with provider:
        await provider.get_token()
        await provider.get_token()  # answered from the hot slot
        unsubscribe = _events.subscribe(seen)
        try:
            for _ in range(3):
                await provider.get_token()
        finally:
            unsubscribe()
        await provider.get_token()
    assert seen.kinds() == [EventKind.HIT] * 3
    assert provider.stats.cache_hits == 5


def test_events_are_immutable() -> None:
    event = TokenEvent(kind=EventKind.HIT, client_id="c", timestamp=1.0, expires_at=61.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.client_id = "other"  # type: ignore[misc]
    assert event.remaining == 60.0


# -- the log: one more consumer of the stream ---------------------------------------------


def logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The library's records that report a decision (they name its kind)."""
    return [r for r in caplog.records if hasattr(r, "plainid_event")]


def runs(kinds: list[str]) -> list[str]:
    """``kinds`` without repeats in a row (a decision may log one record or two)."""
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


async def test_a_provider_nobody_listens_to_logs_its_warning_without_building_events(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    built: list[TokenEvent] = []
    real = TokenEvent

    def counting(**fields: object) -> TokenEvent:
        built.append(real(**fields))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(_events, "TokenEvent", counting)
    fake.start_outage(503)
    async with make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST) as provider:
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token()
    assert built == []
    records = logged(caplog)
    assert [r.plainid_event for r in records] == [  # type: ignore[attr-defined]
        "fetch_started",
        "attempt_failed",
        "fetch_failed",
    ]
    started, retried, warning = records
    assert (started.levelno, retried.levelno, warning.levelno) == (
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
    )
    assert "token fetch started for client" in started.getMessage()
    assert "retrying in" in retried.getMessage()
    message = warning.getMessage()
    assert "HTTP 503" in message
    assert "no usable token is cached: calls fail at once for" in message


async def test_the_log_reports_the_decisions_a_listener_sees(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    cache, seen = pa.MemoryTokenCache(), Recorder()
    clock = PolicyClock(cache.key_states)
    async with make_provider(fake, cache=cache, on_event=seen, retry=FAST) as provider:
        stale = token_with(remaining=40)
        await cache.store(provider.cache_key, stale)
        fake.start_outage(503)
        assert await provider.get_token() is stale  # its background refresh fails
        await settle()
        fake.end_outage()
        clock.skip(100)  # let the backoff pass without sleeping
        assert await provider.get_token() is stale  # its background refresh recovers
        await settle()
        fake.start_outage(503)
        await cache.store(provider.cache_key, token_with(remaining=5))  # no longer usable
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token(force_refresh=True)  # nothing usable is left
    records = logged(caplog)
    kinds = [r.plainid_event for r in records]  # type: ignore[attr-defined]
    heard = [e.kind.value for e in seen.events if e.kind.value in kinds]
    assert runs(kinds) == runs(heard)
    assert set(kinds) == {"fetch_started", "attempt_failed", "fetch_succeeded", "fetch_failed"}
    kept, cooling = [r for r in records if r.levelno == logging.WARNING]
    first, second = seen.of(EventKind.FETCH_FAILED)
    assert first.error is not None
    assert second.error is not None
    assert first.error in kept.getMessage()
    assert "the cached token, still valid, keeps being served; next try in" in kept.getMessage()
    assert second.error in cooling.getMessage()
    assert "no usable token is cached" in cooling.getMessage()
    # The next try the WARNINGs name is on the events too.
    [cooldown] = seen.of(EventKind.COOLDOWN_STARTED)
    assert second.retry_in == cooldown.retry_in
    assert first.retry_in is not None
    assert 0 < first.retry_in <= 40
    [recovered] = [r for r in records if "recovered" in r.getMessage()]
    assert recovered.levelno == logging.INFO
    assert recovered.plainid_event == "fetch_succeeded"  # type: ignore[attr-defined]


async def test_an_eviction_is_logged_with_nobody_listening(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="plainid_async")
    fake.add_client("other-client", "other-secret")
    cache = pa.MemoryTokenCache(max_entries=1)
    async with make_provider(fake, cache=cache) as first:
        await first.get_token()
        async with pa.TokenProvider(
            "other-client", "other-secret", base_url=str(fake.base_url), cache=cache
        ) as other:
            await other.get_token()
    [evicted] = [r for r in logged(caplog) if r.plainid_event == "evicted"]  # type: ignore[attr-defined]
    assert evicted.levelno == logging.DEBUG
    assert f"token of client {fake.client_id} evicted" in evicted.getMessage()


async def test_the_log_writes_nothing_below_its_level(
    fake: FakePlainID, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plainid_async")
    async with make_provider(fake, cache=pa.MemoryTokenCache()) as provider:
        await provider.get_token()
        await provider.get_token(force_refresh=True)
    assert logged(caplog) == []
    assert _events.log_level(EventKind.FETCH_STARTED) == 0
    assert _events.log_level(EventKind.FETCH_FAILED, failures=1) == logging.WARNING
    assert _events.log_level(EventKind.FETCH_FAILED, failures=2) == 0  # DEBUG after the first
    assert _events.log_level(EventKind.HIT) == 0  # lookups are never logged


# -- Redis fallback, against a real redis-server -------------------------------------------


async def test_redis_fallback_is_entered_and_left_and_health_says_where_tokens_come_from(
    fake: FakePlainID, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio  # noqa: PLC0415 (only this test needs it)
    from _redis_server import RedisServer, redis_binary  # noqa: PLC0415

    from plainid_async.redis import RedisTokenCache  # noqa: PLC0415

    caplog.set_level(logging.INFO, logger="plainid_async")
    server = RedisServer(redis_binary(), tmp_path)
    server.start()
    seen = Recorder()
    unsubscribe = _events.subscribe(seen)
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    try:
        cache = RedisTokenCache(client, timeout=0.3, retry_interval=0.01)
        async with pa.TokenProvider(
            fake.client_id, fake.client_secret, base_url=str(fake.base_url), cache=cache
        ) as provider:
            await provider.get_token()
            assert provider.health().source == "redis"
            server.stop()
            await provider.get_token(force_refresh=True)
            assert provider.health().source == "memory"
            server.start()
            for _ in range(50):  # the first command may meet the dead connection
                await provider.get_token(force_refresh=True)
                if provider.health().source == "redis":
                    break
            assert provider.health().source == "redis"
    finally:
        unsubscribe()
        await client.aclose()
        server.stop()
    kinds = [e.kind for e in seen.events]
    assert kinds.count(EventKind.REDIS_FALLBACK_ENTERED) == 1
    assert kinds.count(EventKind.REDIS_FALLBACK_LEFT) == 1
    assert kinds.index(EventKind.REDIS_FALLBACK_ENTERED) < kinds.index(
        EventKind.REDIS_FALLBACK_LEFT
    )
    [entered] = seen.of(EventKind.REDIS_FALLBACK_ENTERED)
    assert entered.client_id is None
    assert entered.error
    # The log reports the same two decisions: one WARNING naming the error, one INFO.
    fallback = [r for r in logged(caplog) if "redis" in r.plainid_event]  # type: ignore[attr-defined]
    assert [(r.plainid_event, r.levelno) for r in fallback] == [  # type: ignore[attr-defined]
        ("redis_fallback_entered", logging.WARNING),
        ("redis_fallback_left", logging.INFO),
    ]
    assert entered.error in fallback[0].getMessage()
    assert_no_secret(seen.events, fake.client_secret, *fake.issued_tokens)
