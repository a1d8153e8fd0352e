"""``python -m plainid_async``: the same as the ``plainid-async`` command."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
