"""Programs the tests start (redis-server, redis-cli, tinyproxy): found, or the test skips."""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable


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


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    stop: Callable[[], None],
) -> None:
    """Wait until ``ready()`` says the program started; else ``stop()`` it and raise.

    Args:
        process: The program's process: if it exits, waiting stops at once.
        ready: Whether the program answers yet.
        what: What is starting, for the error (``"redis-server on port 6379"``).
        timeout: How long to wait, in seconds.
        stop: Stops the program before the error is raised.

    Raises:
        RuntimeError: The program exited, or did not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)
