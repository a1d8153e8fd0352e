"""Side-by-side rounds: the order each round runs its variants in, and how rounds are reported.

A shared machine drifts (other processes come and go), so a benchmark that compares variants
runs them all in every round, in an order that rotates from round to round (with two variants
it alternates), and reports per-round ratios to the reference of the same round as their
median and their range (lowest to highest) over at least three rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

T = TypeVar("T")

MIN_ROUNDS = 3


def orders(names: Sequence[T], rounds: int) -> Iterator[list[T]]:
    """The order of each round: ``names`` rotated by one more place each round.

    Every variant runs first, second, ... equally often over ``len(names)`` rounds, so a
    drift in the machine's speed does not favour whichever runs first.
    """
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds must be at least {MIN_ROUNDS}, not {rounds}")
    count = len(names)
    for index in range(rounds):
        shift = index % count
        yield [*names[shift:], *names[:shift]]


@dataclass(frozen=True)
class Spread:
    """The median of some per-round figures, and their lowest and highest."""

    median: float
    low: float
    high: float
    rounds: int

    def text(self, digits: int = 2, suffix: str = "") -> str:
        """E.g. ``1.13x (1.10-1.17)``."""
        return (
            f"{self.median:.{digits}f}{suffix} "
            f"({self.low:.{digits}f}-{self.high:.{digits}f}{suffix})"
        )


def spread(samples: Sequence[float]) -> Spread:
    """Median and range of ``samples`` (one figure per round)."""
    if not samples:
        raise ValueError("no samples")
    return Spread(statistics.median(samples), min(samples), max(samples), len(samples))


def ratios(samples: dict[str, list[float]], reference: str) -> dict[str, Spread]:
    """Per-round ratio of each variant's figure to the reference's figure of the same round."""
    base = samples[reference]
    return {
        name: spread([value / ref for value, ref in zip(values, base, strict=True)])
        for name, values in samples.items()
    }
