"""The argument rules the constructors and the command line share: one function per rule.

Each rule is written once, as a ``*_problem`` function that says what is wrong with a value
(or ``None``), and a ``check_*`` function that raises :class:`ConfigurationError` naming the
parameter. The command line's argparse types call the ``*_problem`` functions on the value
they parsed and show the same words beside the text as it was typed. Pure functions.
"""

from __future__ import annotations

import math

from .exceptions import ConfigurationError

__all__ = [
    "check_bool",
    "check_count",
    "check_seconds",
    "check_text",
    "count_problem",
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
