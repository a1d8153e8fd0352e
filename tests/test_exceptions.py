"""The public error tree."""

from __future__ import annotations

import copy
import pickle

import pytest

import plainid_async
from plainid_async import exceptions
from plainid_async.exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    InvalidTokenResponseError,
    PlainIDError,
    ProviderClosedError,
    TokenEndpointUnavailableError,
    TokenRequestError,
)

REQUEST_ERRORS = [
    TokenRequestError,
    InvalidCredentialsError,
    TokenEndpointUnavailableError,
    InvalidTokenResponseError,
]


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (PlainIDError, (Exception,)),
        (ConfigurationError, (PlainIDError, ValueError)),
        (ProviderClosedError, (PlainIDError, RuntimeError)),
        (TokenRequestError, (PlainIDError,)),
        (InvalidCredentialsError, (TokenRequestError,)),
        (TokenEndpointUnavailableError, (TokenRequestError,)),
        (InvalidTokenResponseError, (TokenRequestError, ValueError)),
    ],
)
def test_error_tree(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)


@pytest.mark.parametrize(
    "cls", [TokenRequestError, InvalidCredentialsError, TokenEndpointUnavailableError]
)
def test_request_errors_other_than_a_bad_response_are_not_value_errors(
    cls: type[Exception],
) -> None:
    assert not issubclass(cls, ValueError)


def test_configuration_error_is_caught_as_value_error() -> None:
    with pytest.raises(ValueError, match="region"):
        raise ConfigurationError("region='x y' is not a PlainID region")


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (TokenRequestError, False),
        (InvalidCredentialsError, False),
        (TokenEndpointUnavailableError, True),
        (InvalidTokenResponseError, False),
    ],
)
def test_default_status_and_retryable(cls: type[TokenRequestError], retryable: bool) -> None:
    error = cls("boom")
    assert error.status is None
    assert error.retryable is retryable
    assert str(error) == "boom"


@pytest.mark.parametrize("cls", REQUEST_ERRORS)
def test_status_and_retryable_can_be_overridden(cls: type[TokenRequestError]) -> None:
    flipped = not cls("x").retryable
    error = cls("boom", status=503, retryable=flipped)
    assert error.status == 503
    assert error.retryable is flipped


def test_repr_shows_class_message_and_status() -> None:
    error = InvalidCredentialsError("rejected", status=401)
    assert repr(error) == "InvalidCredentialsError('rejected', status=401)"


@pytest.mark.parametrize("cls", REQUEST_ERRORS)
def test_request_errors_survive_pickling_and_copying(cls: type[TokenRequestError]) -> None:
    error = cls("boom", status=429, retryable=True, error="slow_down")
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):  # noqa: S301
        assert type(clone) is cls
        assert str(clone) == "boom"
        assert clone.status == 429
        assert clone.retryable is True
        assert clone.error == "slow_down"


@pytest.mark.parametrize("name", exceptions.__all__)
def test_every_error_is_importable_from_the_package(name: str) -> None:
    assert getattr(plainid_async, name) is getattr(exceptions, name)
    assert name in plainid_async.__all__


def test_exceptions_all_lists_every_error_class_in_the_module() -> None:
    defined = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, PlainIDError)
    }
    assert defined == set(exceptions.__all__)
    assert exceptions.__all__ == sorted(exceptions.__all__)


def test_module_docstring_draws_every_error() -> None:
    doc = exceptions.__doc__ or ""
    for name in exceptions.__all__:
        assert name in doc


def test_error_code_defaults_to_none_and_is_kept() -> None:
    assert TokenRequestError("x").error is None
    error = InvalidCredentialsError("refused", status=400, error="unsupported_grant_type")
    assert error.error == "unsupported_grant_type"
    assert repr(error) == (
        "InvalidCredentialsError('refused', status=400, error='unsupported_grant_type')"
    )
