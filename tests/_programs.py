"""Programs the tests start (redis-server, redis-cli, tinyproxy): found, or the test skips."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str, *, package: str, require_env: str) -> str:
    """Return the path of program ``name``, or skip the test.

    Args:
        name: The program, as looked up on ``PATH``.
        package: The Debian package that installs it, for the skip message.
        require_env: When this environment variable is set (CI sets it), a missing program
            fails the test instead of skipping it.
    """
    binary = shutil.which(name)
    if binary is None:
        reason = f"{name} is not installed (apt-get install {package})"
        if os.environ.get(require_env):
            pytest.fail(f"{reason}, and {require_env} is set")
        pytest.skip(reason)
    return binary
