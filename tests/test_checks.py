"""One rule per check: every parameter of a kind is refused with the same words, naming it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from plainid_async import (
    BearerAuthMiddleware,
    ConfigurationError,
    MemoryTokenCache,
    RetryPolicy,
    TokenProvider,
)
from plainid_async._checks import (
    check_bool,
    check_count,
    check_seconds,
    check_text,
    count_problem,
    region_hint,
    seconds_problem,
)
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import Callable

BAD_SECONDS = [-1, -0.5, float("nan"), float("inf"), -float("inf"), "10", True, None, 10**400]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize("allow_zero", [True, False])
def test_every_bad_number_of_seconds_gets_the_words_of_the_whole_rule(
    value: object, *, allow_zero: bool
) -> None:
    bound = ">= 0" if allow_zero else "> 0"
    assert seconds_problem(value, allow_zero=allow_zero) == (
        f"must be a finite number of seconds {bound}"
    )


def test_zero_seconds_passes_only_where_zero_is_allowed() -> None:
    assert check_seconds("x", 0, allow_zero=True) == 0.0
    with pytest.raises(ConfigurationError, match=r"x=0 must be a finite number of seconds > 0"):
        check_seconds("x", 0, allow_zero=False)


def test_seconds_come_back_as_floats() -> None:
    value = check_seconds("x", 3, allow_zero=False)
    assert value == 3.0
    assert type(value) is float


def _provider(**kwargs: object) -> TokenProvider:
    return TokenProvider("id", "secret", region="us1", **kwargs)  # type: ignore[arg-type]


def _redis(**kwargs: object) -> RedisTokenCache:
    return RedisTokenCache(redis.asyncio.Redis(), **kwargs)  # type: ignore[arg-type]


def _retry(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(**kwargs)  # type: ignore[arg-type]


def _fake(**kwargs: object) -> FakePlainID:
    return FakePlainID(**kwargs)  # type: ignore[arg-type]


def _fake_latency_set_later(value: object) -> None:
    FakePlainID().latency = value  # type: ignore[assignment]


#: (what builds the object with the value, the parameter's name, whether 0 is allowed)
DURATIONS: list[tuple[Callable[[object], object], str, bool]] = [
    (lambda v: _provider(timeout=v), "timeout", False),
    (lambda v: _provider(refresh_margin=v), "refresh_margin", True),
    (lambda v: _retry(backoff_base=v), "backoff_base", True),
    (lambda v: _retry(backoff_max=v), "backoff_max", True),
    (lambda v: _retry(max_retry_after=v), "max_retry_after", True),
    (lambda v: _retry(deadline=v), "deadline", True),
    (lambda v: _redis(timeout=v), "timeout", False),
    (lambda v: _redis(lock_timeout=v), "lock_timeout", False),
    (lambda v: _redis(lock_poll_interval=v), "lock_poll_interval", False),
    (lambda v: _redis(retry_interval=v), "retry_interval", False),
    (lambda v: _fake(latency=v), "latency", True),
    (_fake_latency_set_later, "latency", True),
]


@pytest.mark.parametrize("value", [-1, float("nan"), "10", True])
@pytest.mark.parametrize(
    ("build", "name", "allow_zero"),
    DURATIONS,
    ids=[f"{i}-{name}" for i, (_, name, _) in enumerate(DURATIONS)],
)
def test_every_duration_parameter_is_refused_with_the_one_rule(
    build: Callable[[object], object], name: str, value: object, *, allow_zero: bool
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(value)
    problem = seconds_problem(value, allow_zero=allow_zero)
    assert str(info.value) == f"{name}={value!r} {problem}"


@pytest.mark.parametrize(
    ("build", "name", "allow_zero"),
    DURATIONS,
    ids=[f"{i}-{name}" for i, (_, name, _) in enumerate(DURATIONS)],
)
def test_zero_is_refused_exactly_where_the_rule_says(
    build: Callable[[object], object], name: str, *, allow_zero: bool
) -> None:
    if allow_zero:
        build(0)
    else:
        with pytest.raises(ConfigurationError, match=f"^{name}=0 must be"):
            build(0)


@pytest.mark.parametrize("value", [0, -3, 1.0, "2", True, None])
@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: _retry(attempts=v), "attempts"),
        (lambda v: MemoryTokenCache(max_entries=v), "max_entries"),
        (lambda v: FakePlainID(max_records=v), "max_records"),
    ],
)
def test_every_count_parameter_is_refused_with_the_one_rule(
    build: Callable[[object], object], name: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(value)
    assert str(info.value) == f"{name}={value!r} {count_problem(value)}"
    assert count_problem(value) == "must be an integer >= 1"


def test_a_count_may_start_elsewhere_than_one() -> None:
    assert check_count("n", 0, minimum=0) == 0
    assert count_problem(-1, minimum=0) == "must be an integer >= 0"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (42, "must be a string, not int"),
        ("", "must not be empty or blank"),
        (" \t", "must not be empty or blank"),
        ("a\nb", "must not contain control characters"),
        ("a\x7fb", "must not contain control characters"),
    ],
)
@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: TokenProvider(v, "secret", region="us1"), "client_id"),
        (lambda v: TokenProvider("id", v, region="us1"), "client_secret"),
        (lambda v: _provider().rotate_secret(v), "client_secret"),
        (lambda v: FakePlainID(client_id=v), "client_id"),
        (lambda v: FakePlainID(client_secret=v), "client_secret"),
        (lambda v: FakePlainID().add_client("c", v), "client_secret"),
        (lambda v: FakePlainID().rotate_secret("test-client", v), "new_secret"),
    ],
)
def test_every_credential_parameter_is_refused_with_the_one_rule(
    build: Callable[[object], object], name: str, value: object, words: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(value)
    assert str(info.value) == f"{name} {words}"
    with pytest.raises(ConfigurationError, match=words):
        check_text(name, value)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: _provider(trust_env=v), "trust_env"),
        (lambda v: BearerAuthMiddleware(_provider(), retry_on_401=v), "retry_on_401"),
    ],
)
def test_every_flag_parameter_is_refused_with_the_one_rule(
    build: Callable[[object], object], name: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(1)
    assert str(info.value) == f"{name} must be a bool, not int"
    assert check_bool(name, False) is False


@pytest.mark.parametrize(
    ("region", "hint"),
    [
        ("US1", "us1"),
        ("us-1", "us1"),
        (" Eu1 ", "eu1"),
        ("ue1", "eu1"),
        ("ca", "ca1"),
        ("us1", None),  # right already
        ("eu1", None),
        ("ap9", None),  # an undocumented region is still a region: no hint
        (None, None),
        (42, None),
    ],
)
def test_a_region_close_to_a_documented_one_gets_it_as_a_hint(
    region: object, hint: str | None
) -> None:
    assert region_hint(region) == hint
