"""The library's logger name, written once: every module logs under it."""

from __future__ import annotations

from typing import Final

__all__ = ["LOGGER_NAME"]

#: The logger every part of plainid-async logs to (``logging.getLogger(LOGGER_NAME)``).
LOGGER_NAME: Final = "plainid_async"
