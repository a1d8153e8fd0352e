"""Start-up cost of the ``plainid-async`` command line, beside a bare ``python -c pass``.

Each round starts every command once, in an order that rotates from round to round
(benchmarks/sidebyside.py), and divides its wall time and its CPU time (user + system of
the child, from ``os.wait4``) by those of ``python -c pass`` in the same round; the figures
are the median and the range of those per-round ratios. The interpreter is this one (run it
with the project's virtual environment), and the console script is the ``plainid-async``
installed beside it. Two floor rows start an empty argparse parser, the least any argparse
command line costs. Goal (issue 23): ``--version`` and ``--help`` at most 3x the bare start.

The commands run with their bytecode cached, as ``pip install`` leaves a package (it compiles
it): ``PYTHONDONTWRITEBYTECODE`` is dropped from their environment, and an unmeasured first
start of each writes the cache (and warms the file cache).

Run: .venv/bin/python benchmarks/bench_cli_start.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import sidebyside

PYTHON = sys.executable
SCRIPT = str(Path(PYTHON).parent / "plainid-async")

#: The floor of any argparse command line: an empty parser that parses nothing, or prints
#: its help (argparse with re, enum and gettext; for a help, textwrap and shutil).
ARGPARSE = "import argparse; argparse.ArgumentParser(prog='p').{}"

#: What is started, by the name each row shows; the first is the reference.
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "floor: empty argparse parser, no option": [PYTHON, "-c", ARGPARSE.format("parse_args([])")],
    "floor: empty argparse parser, its help": [PYTHON, "-c", ARGPARSE.format("print_help()")],
    "python -m plainid_async --version": [PYTHON, "-m", "plainid_async", "--version"],
    "python -m plainid_async --help": [PYTHON, "-m", "plainid_async", "--help"],
    "plainid-async --version": [SCRIPT, "--version"],
    "plainid-async --help": [SCRIPT, "--help"],
    "python -m plainid_async token --help": [PYTHON, "-m", "plainid_async", "token", "--help"],
}
REFERENCE = "python -c pass"


def start(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command`` to its end: its wall time and its CPU time (user + system), in s."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)  # noqa: S603 (our own commands)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    if process.returncode != 0:
        raise SystemExit(f"{command} exited {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Start every command once per round: each one's wall and CPU times, round by round."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    names = list(COMMANDS)
    for name in names:  # unmeasured: writes the bytecode, warms the file cache
        start(COMMANDS[name], env)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for order in sidebyside.orders(names, rounds):
        for name in order:
            elapsed, used = start(COMMANDS[name], env)
            wall[name].append(elapsed)
            cpu[name].append(used)
    return wall, cpu


def main() -> None:
    """Run the rounds and print one row per command."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default: 21)")
    options = parser.parse_args()
    wall, cpu = measure(options.rounds)
    wall_ratio = sidebyside.ratios(wall, REFERENCE)
    cpu_ratio = sidebyside.ratios(cpu, REFERENCE)
    print(
        f"{options.rounds} rounds, order rotated each round; Python {sys.version.split()[0]}, "
        f"bytecode cached; ratios to `{REFERENCE}` of the same round, median (range)"
    )
    print(f"{'command':40} {'wall ms':>8} {'wall ratio':>20} {'cpu ms':>7} {'cpu ratio':>20}")
    for name in COMMANDS:
        print(
            f"{name:40} {sidebyside.spread(wall[name]).median * 1e3:8.1f} "
            f"{wall_ratio[name].text(suffix='x'):>20} "
            f"{sidebyside.spread(cpu[name]).median * 1e3:7.1f} "
            f"{cpu_ratio[name].text(suffix='x'):>20}"
        )


if __name__ == "__main__":
    main()
