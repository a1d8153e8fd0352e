"""The failure policy as pure functions of (record, now): a number for now, no I/O, no sleeps."""

from __future__ import annotations

import time

import pytest

import plainid_async as pa
from plainid_async import _policy
from plainid_async._cache import KeyState
from plainid_async._events import FetchReason
from plainid_async._policy import (
    BACKGROUND_RETRY_FLOOR,
    COOLDOWN_MAX,
    Failures,
    Guard,
    RevocationWatch,
    after_failure,
    background_due,
    cooldown_delay,
    cooldown_left,
    looks_revoked,
    on_unauthorized,
    probe_only,
    retry_delay,
    wait_budget,
    window_left,
)

OUTAGE = pa.TokenEndpointUnavailableError("HTTP 503")


# -- the cool-down -----------------------------------------------------------------------


def test_cooldown_grows_with_the_streak_up_to_its_cap() -> None:
    retry = pa.RetryPolicy(backoff_base=0.25)
    longest = [cooldown_delay(retry, n, None, 1.0) for n in range(1, 10)]
    # backoff steps 3, 4, ... of the policy: 1 s, 2 s, 4 s, ... then COOLDOWN_MAX
    assert longest[:4] == [1.0, 2.0, 4.0, 8.0]
    assert longest[-1] == COOLDOWN_MAX
    assert longest == sorted(longest)
    # half of each step is jitter
    assert cooldown_delay(retry, 1, None, 0.0) == 0.5


def test_cooldown_honours_retry_after_within_the_policy_and_its_cap() -> None:
    retry = pa.RetryPolicy(max_retry_after=20.0)
    assert cooldown_delay(retry, 1, 12.0, 0.0) == 12.0
    assert cooldown_delay(retry, 1, 25.0, 0.0) == 20.0  # the policy caps Retry-After
    capped = pa.RetryPolicy(max_retry_after=120.0)
    assert cooldown_delay(capped, 1, 90.0, 0.0) == COOLDOWN_MAX


def test_a_failure_with_no_usable_token_starts_a_cool_down() -> None:
    decision = after_failure(Failures(), 100.0, OUTAGE, delay=4.0, usable_left=None)
    assert decision.cooling
    assert not decision.cached
    assert decision.retry_in == 4.0
    record = decision.record
    assert (record.count, record.last_error) == (1, OUTAGE)
    assert cooldown_left(record, 101.0) == 3.0
    assert cooldown_left(record, 104.0) == 0.0


def test_an_error_that_is_not_a_token_error_starts_no_cool_down() -> None:
    decision = after_failure(Failures(), 100.0, RuntimeError("bug"), delay=4.0, usable_left=None)
    assert not decision.cooling
    assert decision.retry_in is None
    assert cooldown_left(decision.record, 100.5) == 0.0


def test_a_cold_fetch_after_a_cool_down_probes_with_one_attempt() -> None:
    cooled = after_failure(Failures(), 0.0, OUTAGE, delay=1.0, usable_left=None).record
    assert probe_only(cooled, FetchReason.COLD, full_budget=False)
    assert not probe_only(cooled, FetchReason.COLD, full_budget=True)
    assert not probe_only(cooled, FetchReason.UNAUTHORIZED, full_budget=False)
    assert not probe_only(Failures(), FetchReason.COLD, full_budget=False)


# -- the background retry cap --------------------------------------------------------------


def test_a_failed_background_refresh_waits_its_backoff() -> None:
    decision = after_failure(Failures(), 0.0, OUTAGE, delay=2.0, usable_left=100.0)
    assert decision.cached
    assert not decision.cooling
    assert decision.retry_in == 2.0
    assert not background_due(decision.record, 1.9)
    assert background_due(decision.record, 2.0)
    assert cooldown_left(decision.record, 1.0) == 0.0  # a usable token: no cool-down


def test_the_background_retry_comes_before_half_the_usable_time_is_gone() -> None:
    # a long backoff after many failures, 30 s of usable time left at the failure
    decision = after_failure(Failures(count=7), 0.0, OUTAGE, delay=1000.0, usable_left=30.0)
    assert decision.retry_in == 15.0
    assert not background_due(decision.record, 14.9)
    assert background_due(decision.record, 15.0)


def test_the_background_retry_waits_at_least_a_floor_near_expiry() -> None:
    decision = after_failure(Failures(), 0.0, OUTAGE, delay=5.0, usable_left=0.1)
    assert decision.retry_in == BACKGROUND_RETRY_FLOOR
    assert not background_due(decision.record, BACKGROUND_RETRY_FLOOR / 2)


def test_no_failure_means_a_background_refresh_is_due() -> None:
    assert background_due(Failures(), 0.0)


# -- the retry delay between attempts -------------------------------------------------------


def test_the_retry_delay_is_the_planned_one_while_nobody_waits() -> None:
    assert retry_delay(7.5, None, pa.RetryPolicy(), 0.3) == 7.5


def test_once_callers_wait_the_next_attempt_goes_at_once_then_the_backoff_starts_over() -> None:
    retry = pa.RetryPolicy(backoff_base=0.02, backoff_max=1000)
    assert retry_delay(64.0, 0, retry, 1.0) == 0.0
    assert retry_delay(64.0, 1, retry, 1.0) == 0.02
    assert retry_delay(64.0, 2, retry, 1.0) == 0.04
    assert retry_delay(0.01, 2, retry, 1.0) == 0.01  # never longer than planned


# -- the 401 guard -------------------------------------------------------------------------


def test_the_guard_interval_doubles_on_repeats_and_resets_after_a_quiet_spell() -> None:
    guard, now, lengths = Guard(), 1000.0, []
    for _ in range(6):
        guard, held = on_unauthorized(guard, now)
        assert held == 0.0  # the 401 replaces the token
        lengths.append(guard.until - now)
        now = guard.until  # the interval has just ended
    assert lengths == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    guard, _ = on_unauthorized(guard, now + 1000)  # long quiet: starts over
    assert guard.until - (now + 1000) == 5.0


def test_a_401_inside_the_guard_is_held() -> None:
    guard, _ = on_unauthorized(Guard(), 0.0)
    same, held = on_unauthorized(guard, 2.0)
    assert held == 3.0
    assert same == guard


# -- a waiter's budget ---------------------------------------------------------------------


def test_a_waiter_budget_is_its_worst_case_plus_a_grace() -> None:
    retry = pa.RetryPolicy(attempts=3, backoff_base=1.0, backoff_max=8.0, deadline=100.0)
    # 3 attempts of 2 s, then backoffs of at most 1 s and 2 s
    assert wait_budget(retry, 2.0) == 6.0 + 3.0 + _policy.WAIT_GRACE
    assert wait_budget(retry, 60.0) == 100.0 + _policy.WAIT_GRACE  # the deadline bounds it


def test_a_huge_attempt_count_costs_no_time() -> None:
    retry = pa.RetryPolicy(attempts=10**9, backoff_base=0.0, deadline=1e12)
    started = time.perf_counter()
    assert wait_budget(retry, 1e-6) == pytest.approx(1e3 + _policy.WAIT_GRACE)
    assert time.perf_counter() - started < 5  # a bound on a hang, not a timing


# -- the record applies the policy, and only it changes itself ------------------------------


def test_the_record_changes_only_through_its_methods() -> None:
    state = KeyState()
    decision = state.failed(10.0, OUTAGE, delay=3.0, usable_left=None)
    assert state.failures == 1
    assert state.cooldown_until == 13.0
    assert state.record is decision.record
    assert state.succeeded(12345.0) == 1
    assert (state.failures, state.last_error, state.last_success) == (0, None, 12345.0)
    assert state.guarded(0.0) == 0.0
    assert state.guarded(1.0) == 4.0
    for field in ("token", "flight", "failures", "cooldown_until", "guard", "record"):
        with pytest.raises(AttributeError):
            setattr(state, field, None)


# -- the server's Retry-After window ---------------------------------------------------


def test_a_failed_background_refresh_waits_out_retry_after_whatever_the_usable_time() -> None:
    limited = pa.TokenEndpointUnavailableError("HTTP 429", status=429)
    limited.retry_after = 10.0
    decision = after_failure(Failures(), 0.0, limited, delay=10.0, usable_left=4.0)
    assert not background_due(decision.record, 9.9)  # half the usable time would be 2 s
    assert background_due(decision.record, 10.0)
    assert window_left(decision.record, 4.0) == 6.0
    assert window_left(decision.record, 4.0, transport=7) == 6.0  # no transport recorded


def test_retry_after_is_never_shortened_for_callers_who_wait() -> None:
    assert retry_delay(3.0, 1, pa.RetryPolicy(backoff_base=0.01), 0.0, retry_after=3.0) == 3.0


# -- a revocation seen through the 401 guard --------------------------------------------


def _watch_401s(token: object, calls_at_401s: list[int]) -> list[bool]:
    watch = RevocationWatch()
    seen = []
    for calls in calls_at_401s:
        watch, revoked = looks_revoked(watch, token, calls)
        seen.append(revoked)
    return seen


def test_a_token_that_worked_and_fails_two_calls_in_a_row_looks_revoked() -> None:
    token = object()
    # An unrelated 401 at call 5, calls 6-40 went well, then calls 41 and 42 both got a 401.
    assert _watch_401s(token, [5, 41, 42]) == [False, False, True]


def test_a_token_refused_on_every_call_never_looks_revoked() -> None:
    token = object()
    # A path that answers 401 to every call: each call is a 401, so the token never worked.
    assert not any(_watch_401s(token, list(range(1, 51))))


def test_unrelated_401s_with_good_calls_between_never_look_revoked() -> None:
    token = object()
    # One 401 every tenth call: the token works in between, but no two 401s are in a row.
    assert not any(_watch_401s(token, list(range(10, 200, 10))))


def test_a_new_token_starts_a_new_watch() -> None:
    old, new = object(), object()
    watch, _ = looks_revoked(RevocationWatch(), old, 40)
    watch, revoked = looks_revoked(watch, new, 41)
    # The new token's first 401 counts from the call that got it: not two in a row yet.
    assert not revoked
    assert watch == RevocationWatch(new, 40, 1, 41)
