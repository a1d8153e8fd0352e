"""A fake clock for a cache's failure policy (the public ``KeyStates.clock`` seam)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plainid_async._cache import KeyStates


class PolicyClock:
    """Monotonic time plus the seconds a test skipped; installed as ``states.clock``.

    Cool-downs, background backoffs and the 401 guard are recorded and read on this
    clock, tokens' lifetimes are not: skipping ahead ends a wait without ageing a token.
    """

    def __init__(self, states: KeyStates) -> None:
        """Install the clock on ``states``."""
        self.offset = 0.0
        states.clock = self

    def __call__(self) -> float:
        """The policy's current time."""
        return time.monotonic() + self.offset

    def skip(self, seconds: float) -> None:
        """Move the policy's time ``seconds`` ahead."""
        self.offset += seconds
