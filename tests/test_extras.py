"""Each optional module, imported without its extra, says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs in a fresh interpreter: makes the given top-level modules impossible to import, exactly
# as Python reports a module that is not installed, then imports the optional module.
BLOCK = """
import importlib.abc, sys

BLOCKED = set(sys.argv[2].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import importlib
try:
    importlib.import_module(sys.argv[1])
except ImportError as exc:
    print(type(exc).__name__, exc)
else:
    print("imported")
"""


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("plainid_async.otel", "opentelemetry", "otel"),
        ("plainid_async.redis", "cryptography", "redis"),
        ("plainid_async.httpx", "httpx,httpx2", "httpx"),
    ],
)
def test_optional_module_without_its_extra_names_the_extra(
    module: str, missing: str, extra: str
) -> None:
    result = subprocess.run(  # noqa: S603 (our own interpreter, our own arguments)
        [sys.executable, "-c", BLOCK, module, missing],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.startswith("ImportError "), result.stdout + result.stderr
    assert f"pip install 'plainid-async[{extra}]'" in result.stdout


def test_optional_modules_import_with_their_extras() -> None:
    """The blocker, not the environment, makes the test above fail: with nothing blocked, all
    optional modules import.
    """
    for module in ("plainid_async.otel", "plainid_async.redis", "plainid_async.httpx"):
        result = subprocess.run(  # noqa: S603 (our own interpreter, our own arguments)
            [sys.executable, "-c", BLOCK, module, "nothing"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert result.stdout.strip() == "imported", result.stdout + result.stderr
