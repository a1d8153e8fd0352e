"""The names of the ``PLAINID_*`` environment variables a provider's settings come from.

Only the names, so that the command line's help texts can show them without loading the
settings resolver (:mod:`plainid_async._settings`, which reads them, and attrs with it).
"""

from __future__ import annotations

# The command line imports this module for `--help`: `typing` costs an import, and type
# checkers read the block below (they treat any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "ENV_BASE_URL",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_CLIENT_SECRET_FILE",
    "ENV_REGION",
]

ENV_CLIENT_ID: Final = "PLAINID_CLIENT_ID"
ENV_CLIENT_SECRET: Final = "PLAINID_CLIENT_SECRET"  # noqa: S105 (a variable name)
ENV_CLIENT_SECRET_FILE: Final = "PLAINID_CLIENT_SECRET_FILE"  # noqa: S105 (a variable name)
ENV_REGION: Final = "PLAINID_REGION"
ENV_BASE_URL: Final = "PLAINID_BASE_URL"
