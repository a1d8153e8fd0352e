"""Check the built sdist and wheel in dist/: what each holds, and its metadata.

Run by `make dist` after the build and `twine check --strict`. Exits non-zero naming every
problem found.
"""

from __future__ import annotations

import email.parser
import sys
import tarfile
import zipfile
from pathlib import Path

DIST = Path("dist")
# What the sdist's own tests read besides the package and the tests.
SDIST_NEEDS = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "Makefile",
    "plainid_async/__init__.py",
    "plainid_async/py.typed",
    "tests/conftest.py",
    "docs/conf.py",
    "examples/aiohttp_service.py",
    "benchmarks/scenarios.py",
)
SDIST_NEVER = (".venv", ".git/", "docs/_build/", "__pycache__", ".pytest_cache")


def one(pattern: str) -> Path:
    """The one file of dist/ matching ``pattern``."""
    [found] = DIST.glob(pattern)
    return found


def check_wheel(wheel: Path) -> list[str]:
    """What is wrong with the wheel: files beyond the package, metadata, entry points."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [info] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = archive.read(entry_points).decode()
    outside = [n for n in names if not n.startswith(("plainid_async/", info.split("/")[0]))]
    if outside:
        problems.append(f"wheel holds more than the package: {outside[:5]}")
    if "plainid_async/py.typed" not in names:
        problems.append("wheel lacks plainid_async/py.typed")
    if metadata.get("License-Expression") != "MIT":
        problems.append(f"License-Expression is {metadata.get('License-Expression')!r}, not 'MIT'")
    if metadata.get("Description-Content-Type") != "text/markdown":
        problems.append("README is not declared as Markdown")
    if "[pytest11]" not in entry_text or "plainid_async.testing.pytest_plugin" not in entry_text:
        problems.append("the pytest plugin is not registered (pytest11 entry point)")
    extras = set(metadata.get_all("Provides-Extra") or [])
    if not {"redis", "httpx", "otel", "rich", "testing"} <= extras:
        problems.append(f"extras missing from the metadata: {sorted(extras)}")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    """What is wrong with the sdist: files its tests need and lack, files it must not hold."""
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    problems = [f"sdist lacks {need}" for need in SDIST_NEEDS if need not in names]
    problems += [f"sdist holds {name}" for name in names for never in SDIST_NEVER if never in name]
    return problems


def main() -> int:
    """Print every problem of dist/ and exit 1 if there is one."""
    problems = check_wheel(one("*.whl")) + check_sdist(one("*.tar.gz"))
    for problem in problems:
        print(f"dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
