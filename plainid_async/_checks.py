"""The argument rules the constructors and the command line share: one function per rule.

Each rule is written once, as a ``*_problem`` function that says what is wrong with a value
(or ``None``), and a ``check_*`` function that raises :class:`ConfigurationError` naming the
parameter. The command line's argparse types call the ``*_problem`` functions on the value
they parsed and show the same words beside the text as it was typed. Pure functions.
"""

from __future__ import annotations

import math

from .exceptions import ConfigurationError

# The command line imports this module on every start: `typing`, `ssl` and the rest are
# imported where used, and type checkers read the block below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Mapping
    from typing import Final, TypeVar

    from yarl import URL

    _T = TypeVar("_T")

__all__ = [
    "DOCUMENTED_REGIONS",
    "check_bool",
    "check_count",
    "check_has_method",
    "check_instance",
    "check_mapping",
    "check_port",
    "check_seconds",
    "check_ssl",
    "check_text",
    "check_token_origin",
    "count_problem",
    "region_hint",
    "seconds_problem",
]


def seconds_problem(value: object, *, allow_zero: bool) -> str | None:
    """What is wrong with ``value`` as a number of seconds, or ``None`` when nothing is.

    Every bad value (not a number, a bool, NaN, infinite, negative, zero unless
    ``allow_zero``) gets the same words, which state the whole rule.

    Args:
        value: The value to check.
        allow_zero: Whether zero seconds is allowed.

    Returns:
        ``"must be a finite number of seconds >= 0"`` (or ``"> 0"``), or ``None``.
    """
    rule = f"must be a finite number of seconds {'>= 0' if allow_zero else '> 0'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return rule
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return rule
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        return rule
    return None


def check_seconds(name: str, value: object, *, allow_zero: bool) -> float:
    """Check a duration parameter and return it as a float.

    Args:
        name: The parameter, for the message.
        value: Its value.
        allow_zero: Whether zero seconds is allowed.

    Returns:
        The number of seconds.

    Raises:
        ConfigurationError: ``value`` breaks the rule of :func:`seconds_problem`; the
            message names ``name``.
    """
    problem = seconds_problem(value, allow_zero=allow_zero)
    if problem is not None:
        raise ConfigurationError(f"{name}={value!r} {problem}")
    return float(value)  # type: ignore[arg-type]  # seconds_problem saw an int or float


def count_problem(value: object, *, minimum: int = 1) -> str | None:
    """What is wrong with ``value`` as a count (an ``int``, not a bool, >= ``minimum``).

    Args:
        value: The value to check.
        minimum: The smallest count allowed.

    Returns:
        ``"must be an integer >= {minimum}"``, or ``None``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"must be an integer >= {minimum}"
    return None


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """Check a count parameter (attempts, entries, records).

    Args:
        name: The parameter, for the message.
        value: Its value.
        minimum: The smallest count allowed.

    Returns:
        The count.

    Raises:
        ConfigurationError: ``value`` breaks the rule of :func:`count_problem`; the message
            names ``name``.
    """
    problem = count_problem(value, minimum=minimum)
    if problem is not None:
        raise ConfigurationError(f"{name}={value!r} {problem}")
    return value  # type: ignore[return-value]  # count_problem saw an int


def check_text(name: str, value: object) -> str:
    """Check a text parameter such as a client id or secret: a string, not blank, one line.

    Args:
        name: The parameter, for the message.
        value: Its value (never shown: it may be a secret).

    Returns:
        The text, unchanged.

    Raises:
        ConfigurationError: It is not a string, is empty or blank, or holds control
            characters; the message names ``name`` and never shows the value.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty or blank")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigurationError(f"{name} must not contain control characters")
    return value


def check_bool(name: str, value: object) -> bool:
    """Check a flag parameter: ``True`` or ``False``, not a truthy stand-in.

    Args:
        name: The parameter, for the message.
        value: Its value.

    Returns:
        The flag.

    Raises:
        ConfigurationError: It is not a bool; the message names ``name``.
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a bool, not {type(value).__name__}")
    return value


#: The regions PlainID documents. The rule for a region stays open (PlainID says "etc."):
#: these only feed the "did you mean" hint of a region that failed.
DOCUMENTED_REGIONS: Final = ("us1", "ca1", "eu1")


def region_hint(value: object) -> str | None:
    """The documented region ``value`` was probably meant to be, or ``None``.

    Only a hint for a region that failed (refused, or a host name that does not resolve):
    an undocumented region is still a region.

    Args:
        value: The region as given.

    Returns:
        A region of :data:`DOCUMENTED_REGIONS` close to ``value`` (``"US-1"`` and ``"su1"``
        give ``"us1"``, ``"ue1"`` gives ``"eu1"``), or ``None`` when ``value`` is one of
        them or close to none.
    """
    if not isinstance(value, str) or value in DOCUMENTED_REGIONS:
        return None
    import difflib  # noqa: PLC0415 (only on a failure)

    folded = "".join(c for c in value.lower() if c.isalnum())
    if folded in DOCUMENTED_REGIONS:
        return folded
    swapped = [region for region in DOCUMENTED_REGIONS if sorted(region) == sorted(folded)]
    if swapped:  # two letters swapped ("ue1"), which difflib ranks no closer than "us1"
        return swapped[0]
    close = difflib.get_close_matches(folded, DOCUMENTED_REGIONS, n=1, cutoff=0.6)
    return close[0] if close else None


def check_instance(
    name: str, value: object, kind: type[_T] | tuple[type[_T], ...], what: str
) -> _T:
    """Check an argument is of the type it must be.

    Args:
        name: The parameter, for the message.
        value: Its value (never shown: it may hold a secret).
        kind: The type it must be an instance of (or a tuple of types).
        what: The type as the message names it, such as ``"a plainid_async.Token"``.

    Returns:
        The value.

    Raises:
        TypeError: It is not a ``kind``; the message names ``name``.
    """
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
    return value


def check_ssl(name: str, value: object) -> ssl.SSLContext | bool | None:
    """Check a TLS setting as aiohttp takes it: an ``ssl.SSLContext``, a bool, or ``None``.

    Args:
        name: The parameter, for the message.
        value: Its value.

    Returns:
        The value.

    Raises:
        ConfigurationError: It is anything else (``"yes"`` would fail every request later).
    """
    import ssl  # noqa: PLC0415 (the command line imports this module before it needs ssl)

    if value is None or isinstance(value, (bool, ssl.SSLContext)):
        return value
    raise ConfigurationError(
        f"{name} must be an ssl.SSLContext (for a private CA), True, False or None, "
        f"not {type(value).__name__}"
    )


def check_mapping(name: str, value: object) -> Mapping[str, str]:
    """Check an environment-like argument: a mapping of names to values.

    Raises:
        ConfigurationError: It is not a mapping; the message names ``name``.
    """
    from collections.abc import Mapping  # noqa: PLC0415 (loaded by the interpreter)

    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{name} must be a mapping such as os.environ, not {type(value).__name__}"
        )
    return value


def check_port(name: str, value: object) -> int:
    """Check a TCP port to listen on: an integer from 0 (any free port) to 65535.

    Raises:
        ConfigurationError: It is not one; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigurationError(f"{name}={value!r} must be an integer from 0 to 65535")
    return value


def check_has_method(name: str, value: object, method: str, what: str) -> None:
    """Check a duck-typed argument has the method it will be asked for, or is ``None``.

    Args:
        name: The parameter, for the message.
        value: Its value; ``None`` passes (the default applies).
        method: The method it must have.
        what: What it must be, for the message.

    Raises:
        TypeError: It has no such method; the message names ``name``.
    """
    if value is not None and not callable(getattr(value, method, None)):
        raise TypeError(f"{name} must be {what} (with {method}()), not {type(value).__name__}")


def check_token_origin(
    name: str, value: object, *, allows: Callable[[URL], bool], origins: Iterable[object]
) -> None:
    """Check the ``base_url`` of a client that sends the token is on an origin that gets it.

    ``provider.session()`` and ``plainid_async.httpx.client()`` both refuse one that is not:
    its requests would silently go without a token.

    Args:
        name: The parameter, for the message.
        value: The URL, as ``str`` or ``yarl.URL``.
        allows: Whether a request to an absolute URL gets the token.
        origins: The origins that get it, for the message.

    Raises:
        ConfigurationError: ``value`` is no absolute URL, or its origin gets no token.
    """
    from yarl import URL  # noqa: PLC0415 (the command line imports this module: no yarl)

    try:
        url = URL(value) if isinstance(value, str) else value
        allowed = isinstance(url, URL) and url.absolute and allows(url)
    except (TypeError, ValueError):
        allowed = False
    if not allowed:
        shown = ", ".join(str(origin) for origin in origins)
        raise ConfigurationError(
            f"{name}={_shown_url(value)!r} is not on an origin that gets the token ({shown}): "
            "add its origin to origins=, or use a client without the provider for requests "
            "that need no token"
        )


def _shown_url(value: object) -> str:
    """A URL as an error may show it: without user info, which may hold a password."""
    from yarl import URL  # noqa: PLC0415

    if isinstance(value, (str, URL)):
        try:
            url = URL(value) if isinstance(value, str) else value
            return str(url.with_user(None)) if url.host else "(not a URL)"
        except (TypeError, ValueError):
            return "(not a URL)"
    return f"({type(value).__name__})"
