"""Write a real run of the demo into README.md's demo sample.

The demo runs as `make demo` runs it, printing to a pipe (one line a second, no live view);
what it printed replaces the sample, so the sample is always a run of the current demo.
Usage: python scripts/update_readme_demo.py (or `make readme-demo`). tests/test_demo.py checks
the sample against a fresh run: same header, same summary rows, lines in order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = "<!-- demo sample: written by scripts/update_readme_demo.py from a real run -->\n"


def run_demo() -> str:
    """The demo's output with default options, as a pipe sees it (no rich live view)."""
    result = subprocess.run(
        [sys.executable, "-m", "plainid_async", "demo"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    return result.stdout


def with_sample(readme: str, sample: str) -> str:
    """``readme`` with the fenced block after MARKER replaced by ``sample``."""
    start = readme.index(MARKER) + len(MARKER)
    body = readme.index("```text\n", start) + len("```text\n")
    end = readme.index("```\n", body)
    return readme[:body] + sample + readme[end:]


def main() -> None:
    """Write a fresh run into the README."""
    README.write_text(with_sample(README.read_text(encoding="utf-8"), run_demo()), "utf-8")


if __name__ == "__main__":
    main()
