"""The demo's plain output (what `make demo` prints to a pipe) and the README's sample of it."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from plainid_async import _demo

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- demo sample: written by scripts/update_readme_demo.py from a real run -->\n"
EVENT = re.compile(r"^  t= *(-?\d+\.\d+)s  ")
ROW = re.compile(r"^ *(\d+)s +[\d,]+ ")
SUMMARY = re.compile(r"^(\S.*?\S)  +\S")


@pytest.fixture(scope="module")
def demo_output() -> str:
    """One run of the demo with its default options, printed to a pipe."""

    async def run() -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "plainid_async",
            "demo",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stdout.decode() + stderr.decode()
        return stdout.decode()

    return asyncio.run(run())


def readme_sample() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```text\n", readme.index(MARKER)) + len("```text\n")
    return readme[start : readme.index("```\n", start)]


def event_times(output: str) -> list[float]:
    return [float(m.group(1)) for line in output.splitlines() if (m := EVENT.match(line))]


def row_seconds(output: str) -> list[int]:
    return [int(m.group(1)) for line in output.splitlines() if (m := ROW.match(line))]


def summary_labels(output: str) -> list[str]:
    _, _, summary = output.partition("\n\nplainid-async demo: ")
    return [m.group(1) for line in summary.splitlines()[2:] if (m := SUMMARY.match(line))]


def header(output: str) -> str:
    return next(line for line in output.splitlines() if line.lstrip().startswith("t "))


@pytest.mark.parametrize("source", ["run", "README sample"])
def test_demo_event_lines_are_in_time_order(source: str, demo_output: str) -> None:
    output = demo_output if source == "run" else readme_sample()
    times = event_times(output)
    assert len(times) >= 5, output
    assert times == sorted(times), output


@pytest.mark.parametrize("source", ["run", "README sample"])
def test_demo_prints_each_second_once(source: str, demo_output: str) -> None:
    """One live row per second, the last one (the final state) included: none repeated."""
    output = demo_output if source == "run" else readme_sample()
    seconds = row_seconds(output)
    assert len(seconds) >= 5, output
    assert seconds == sorted(set(seconds)), output
    assert seconds[-1] == int(_demo.DemoOptions().seconds), output


def test_readme_demo_sample_is_a_run_of_the_current_demo(demo_output: str) -> None:
    """The sample shows what the current demo prints (`make readme-demo` writes it): the same
    opening, columns and summary rows as a fresh run.
    """
    sample = readme_sample()
    options = _demo.DemoOptions()
    opening = (
        f"plainid-async demo: {options.workers} workers for {options.seconds:g} s through "
        "TokenProvider.session()"
    )
    assert sample.startswith(opening)
    assert demo_output.startswith(opening)
    assert header(sample) == header(demo_output)
    assert summary_labels(sample) == summary_labels(demo_output)
    assert len(summary_labels(sample)) >= 8
    assert sample.rstrip().endswith("OK: no request failed and none waited on a token refresh.")
