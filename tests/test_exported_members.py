"""The public API: what `plainid_async` exports, documented and in order."""

from __future__ import annotations

import importlib.metadata
import inspect
import types

import pytest

import plainid_async
import plainid_async.exceptions
import plainid_async.otel
import plainid_async.testing

MODULES = [plainid_async, plainid_async.exceptions, plainid_async.otel, plainid_async.testing]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(module: types.ModuleType) -> None:
    exported = list(module.__all__)
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    # The package imports its names on first use: each must resolve, and then be a plain one.
    for name in exported:
        assert not isinstance(getattr(module, name), types.ModuleType)
    assert set(exported) <= set(dir(module))
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations", "TYPE_CHECKING"}
    }
    assert public == set(exported)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module: types.ModuleType) -> None:
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"


def test_design_names_are_importable_from_the_package() -> None:
    for name in (
        "TokenProvider",
        "Token",
        "TokenCache",
        "PlainIDError",
        "ConfigurationError",
        "TokenRequestError",
        "InvalidCredentialsError",
        "TokenEndpointUnavailableError",
        "InvalidTokenResponseError",
        "TokenEvent",
        "HealthReport",
    ):
        assert name in plainid_async.__all__
    assert plainid_async.exceptions.PlainIDError is plainid_async.PlainIDError


def test_version_comes_from_the_package_metadata() -> None:
    assert plainid_async.__version__ == importlib.metadata.version("plainid-async")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = plainid_async.no_such_name
