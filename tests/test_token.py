"""Token value and the refresh policy, with plain numbers for the clock."""

from __future__ import annotations

import json
import pickle
from typing import Any

import attrs
import pytest

from plainid_async import ConfigurationError, InvalidTokenResponseError
from plainid_async._token import (
    JITTER_FRACTION,
    MAX_LIFETIME,
    RefreshSchedule,
    Token,
    TokenState,
    is_valid_lifetime,
    lifetime_problem,
    schedule_for,
)
from plainid_async._wire import parse_token_response
from plainid_async.testing import FakePlainID

ACCESS = "eyJhbGciOi.secret-token-value.sig"


def token(lifetime: float, *, expiry: float = 100_000.0) -> Token:
    """A token of ``lifetime`` seconds expiring at monotonic time ``expiry``."""
    return Token.issued(
        ACCESS,
        expires_in=lifetime,
        sent_at=1_700_000_000.0,
        sent_at_monotonic=expiry - lifetime,
    )


# -- Token ---------------------------------------------------------------------------------


def test_repr_and_str_never_show_the_access_token() -> None:
    tok = token(3600)
    assert ACCESS not in repr(tok)
    assert ACCESS not in str(tok)
    assert "Bearer" in repr(tok)


def test_issued_measures_expiry_from_when_the_request_was_sent() -> None:
    tok = Token.issued(ACCESS, expires_in=3600, sent_at=1000.0, sent_at_monotonic=50.0)
    assert tok.expires_at == 4600.0
    assert tok.expires_at_monotonic == 3650.0
    assert tok.remaining(now_monotonic=3600.0) == 50.0
    assert tok.remaining(now_monotonic=3700.0) == -50.0


def test_authorization_is_the_bearer_header_value() -> None:
    assert token(60).authorization == f"Bearer {ACCESS}"


def test_authorization_is_built_once_per_token_and_never_shown() -> None:
    issued = token(60)
    assert issued.authorization is issued.authorization
    assert ACCESS not in repr(issued)
    moved = attrs.evolve(issued, access_token="other")
    assert moved.authorization == "Bearer other"


def test_equal_tokens_compare_equal_whatever_their_monotonic_expiry() -> None:
    a = Token.issued(ACCESS, expires_in=60, sent_at=1000.0, sent_at_monotonic=5.0)
    b = Token.issued(ACCESS, expires_in=60, sent_at=1000.0, sent_at_monotonic=999.0)
    assert a == b
    assert hash(a) == hash(b)


@pytest.mark.parametrize(
    "change",
    [
        {"access_token": "other"},
        {"token_type": "bearer"},
        {"expires_in": 61.0},
        {"expires_at": 1061.0},
    ],
)
def test_tokens_differing_in_a_field_are_not_equal(change: dict[str, Any]) -> None:
    tok = Token.issued(ACCESS, expires_in=60, sent_at=1000.0, sent_at_monotonic=5.0)
    assert attrs.evolve(tok, **change) != tok


def test_token_is_immutable() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        token(60).access_token = "x"  # type: ignore[misc]


def test_from_wall_clock_places_the_expiry_on_this_process_monotonic_clock() -> None:
    tok = Token.from_wall_clock(
        ACCESS,
        token_type="Bearer",
        expires_in=3600,
        expires_at=10_100.0,
        now=10_000.0,
        now_monotonic=500.0,
    )
    assert tok.expires_at == 10_100.0
    assert tok.expires_at_monotonic == 600.0
    assert tok.remaining(now_monotonic=500.0) == 100.0


def test_from_wall_clock_of_an_expired_token_is_already_expired() -> None:
    tok = Token.from_wall_clock(
        ACCESS,
        token_type="Bearer",
        expires_in=60,
        expires_at=900.0,
        now=1000.0,
        now_monotonic=500.0,
    )
    assert tok.remaining(now_monotonic=500.0) == -100.0


def test_token_survives_pickling_with_equal_value() -> None:
    tok = token(60)
    assert pickle.loads(pickle.dumps(tok)) == tok  # noqa: S301 (our own bytes)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (1.0, True),
        (MAX_LIFETIME, True),
        (0.0, False),
        (-1.0, False),
        (MAX_LIFETIME + 1, False),
        (float("nan"), False),
        (float("inf"), False),
    ],
)
def test_is_valid_lifetime(value: float, valid: bool) -> None:
    assert is_valid_lifetime(value) is valid


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (True, "must be a number of seconds, not bool"),
        (None, "must be a number of seconds, not NoneType"),
        ("60", "must be a number of seconds, not str"),
        (0, "must be a positive, finite number of seconds"),
        (-1.5, "must be a positive, finite number of seconds"),
        (float("nan"), "must be a positive, finite number of seconds"),
        (float("inf"), "must be a positive, finite number of seconds"),
        (-(10**400), "must be a positive, finite number of seconds"),
        (MAX_LIFETIME + 1, "is absurdly large (over 31622400 s)"),
        (10**400, "is absurdly large (over 31622400 s)"),
    ],
)
def test_lifetime_problem_says_what_is_wrong(value: object, words: str) -> None:
    assert lifetime_problem(value) == words
    assert not is_valid_lifetime(value)


@pytest.mark.parametrize("value", [1, 0.05, 3600, MAX_LIFETIME, int(MAX_LIFETIME)])
def test_lifetime_problem_finds_nothing_in_a_usable_lifetime(value: float) -> None:
    assert lifetime_problem(value) is None
    assert is_valid_lifetime(value)


#: Lifetimes JSON can carry that the rule refuses.
WIRE_BAD = [0, -1, MAX_LIFETIME + 1, 10**400, True, None, [60]]


@pytest.mark.parametrize("value", WIRE_BAD, ids=repr)
def test_a_token_response_is_refused_with_the_words_of_the_one_rule(value: object) -> None:
    body = {"access_token": "t", "token_type": "Bearer", "expires_in": value}
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(json.dumps(body).encode())
    assert f"expires_in {lifetime_problem(value)}" in str(info.value)


@pytest.mark.parametrize("value", [*WIRE_BAD, float("nan"), float("inf"), "60"], ids=repr)
def test_fake_plainid_takes_only_lifetimes_the_library_accepts(value: object) -> None:
    expected = f"expires_in={value!r} {lifetime_problem(value)}"
    with pytest.raises(ConfigurationError) as info:
        FakePlainID(expires_in=value)  # type: ignore[arg-type]
    assert str(info.value) == expected
    fake = FakePlainID(expires_in=60)
    with pytest.raises(ConfigurationError) as info:
        fake.expires_in = value  # type: ignore[assignment]
    assert str(info.value) == expected
    assert fake.expires_in == 60


# -- RefreshSchedule.state -----------------------------------------------------------------


def test_state_boundaries_are_fresh_then_stale_then_expired() -> None:
    schedule = RefreshSchedule(refresh_at=100.0, usable_until=200.0)
    assert schedule.state(99.999) is TokenState.FRESH
    assert schedule.state(100.0) is TokenState.STALE
    assert schedule.state(199.999) is TokenState.STALE
    assert schedule.state(200.0) is TokenState.EXPIRED
    assert schedule.state(1e9) is TokenState.EXPIRED


# -- schedule_for: the default window ------------------------------------------------------

EXPIRY = 100_000.0


@pytest.mark.parametrize(
    ("lifetime", "window", "hard"),
    [
        (3600.0, 1800.0, 30.0),  # 60 min token: half the lifetime
        (7200.0, 3600.0, 30.0),  # exactly at the 1 h cap
        (86400.0, 3600.0, 30.0),  # 24 h token: the window is capped at 1 h
        (100.0, 50.0, 10.0),  # short token: hard threshold is a tenth of it
        (20.0, 10.0, 2.0),
    ],
)
def test_default_window_is_min_of_half_the_lifetime_and_one_hour(
    lifetime: float, window: float, hard: float
) -> None:
    schedule = schedule_for(token(lifetime, expiry=EXPIRY), refresh_margin=None, jitter=0.0)
    assert schedule.refresh_at == EXPIRY - window
    assert schedule.usable_until == EXPIRY - hard


def test_one_hour_token_turns_stale_1800_s_before_expiry_and_expired_30_s_before() -> None:
    schedule = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=None, jitter=0.0)
    assert schedule.state(EXPIRY - 1800.5) is TokenState.FRESH
    assert schedule.state(EXPIRY - 1800.0) is TokenState.STALE
    assert schedule.state(EXPIRY - 30.5) is TokenState.STALE
    assert schedule.state(EXPIRY - 30.0) is TokenState.EXPIRED


def test_day_long_token_turns_stale_one_hour_before_expiry() -> None:
    schedule = schedule_for(token(86400, expiry=EXPIRY), refresh_margin=None, jitter=0.0)
    assert schedule.state(EXPIRY - 3600.5) is TokenState.FRESH
    assert schedule.state(EXPIRY - 3600.0) is TokenState.STALE


@pytest.mark.parametrize("lifetime", [1.0, 20.0, 100.0, 3600.0, 86400.0, MAX_LIFETIME])
@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.999999, 1.0])
def test_jitter_shrinks_the_window_by_at_most_ten_percent(lifetime: float, jitter: float) -> None:
    plain = schedule_for(token(lifetime, expiry=EXPIRY), refresh_margin=None, jitter=0.0)
    jittered = schedule_for(token(lifetime, expiry=EXPIRY), refresh_margin=None, jitter=jitter)
    window = EXPIRY - plain.refresh_at
    shrunk_by = jittered.refresh_at - plain.refresh_at
    assert 0.0 <= shrunk_by <= window * JITTER_FRACTION + 1e-9
    # jitter never moves the hard threshold, and the STALE phase never vanishes for it
    assert jittered.usable_until == plain.usable_until
    assert jittered.refresh_at < jittered.usable_until


def test_jitter_really_spreads_the_refresh_point() -> None:
    early = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=None, jitter=0.0)
    late = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=None, jitter=0.9)
    assert late.refresh_at > early.refresh_at


@pytest.mark.parametrize("jitter", [-5.0, 7.0])
def test_out_of_range_jitter_is_clamped(jitter: float) -> None:
    schedule = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=None, jitter=jitter)
    window = EXPIRY - schedule.refresh_at
    assert 1800.0 * (1 - JITTER_FRACTION) <= window <= 1800.0


# -- schedule_for: refresh_margin ----------------------------------------------------------


def test_refresh_margin_overrides_the_default_window() -> None:
    schedule = schedule_for(token(86400, expiry=EXPIRY), refresh_margin=120.0, jitter=0.0)
    assert schedule.refresh_at == EXPIRY - 120.0
    assert schedule.usable_until == EXPIRY - 30.0


def test_refresh_margin_longer_than_the_default_is_honoured() -> None:
    schedule = schedule_for(token(86400, expiry=EXPIRY), refresh_margin=7200.0, jitter=0.0)
    assert schedule.refresh_at == EXPIRY - 7200.0


def test_refresh_margin_is_capped_at_half_the_lifetime() -> None:
    schedule = schedule_for(token(600, expiry=EXPIRY), refresh_margin=3600.0, jitter=0.0)
    # a just-issued 10 min token is FRESH, not STALE on every call
    assert schedule.refresh_at == EXPIRY - 300.0
    assert schedule.state(EXPIRY - 600.0) is TokenState.FRESH


def test_refresh_margin_zero_still_never_hands_out_a_token_about_to_expire() -> None:
    schedule = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=0.0, jitter=0.5)
    # no background refresh window: FRESH straight to EXPIRED at the hard threshold
    assert schedule.state(EXPIRY - 30.5) is TokenState.FRESH
    assert schedule.state(EXPIRY - 30.0) is TokenState.EXPIRED
    assert schedule.state(EXPIRY - 1.0) is TokenState.EXPIRED
    assert schedule.state(EXPIRY) is TokenState.EXPIRED


def test_refresh_margin_below_the_hard_threshold_keeps_the_hard_threshold() -> None:
    schedule = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=10.0, jitter=0.0)
    assert schedule.usable_until == EXPIRY - 30.0
    assert schedule.refresh_at == schedule.usable_until
    assert schedule.state(EXPIRY - 20.0) is TokenState.EXPIRED


def test_refresh_margin_above_the_hard_threshold_gives_a_stale_phase() -> None:
    schedule = schedule_for(token(3600, expiry=EXPIRY), refresh_margin=60.0, jitter=0.0)
    assert schedule.state(EXPIRY - 60.5) is TokenState.FRESH
    assert schedule.state(EXPIRY - 45.0) is TokenState.STALE
    assert schedule.state(EXPIRY - 30.0) is TokenState.EXPIRED
