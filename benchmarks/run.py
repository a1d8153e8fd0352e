"""Benchmarks side by side: plainid-async and the OAuth2 clients users would pick instead.

Every scenario runs against FakePlainID (token endpoint + protected resource) in a process
of its own, on 127.0.0.1 only. Results go to benchmarks/results.jsonl (JSON lines), and
docs/benchmarks.md (Markdown tables between generated markers) with docs/_static/benchmarks.png.

    .venv/bin/python benchmarks/run.py                  # everything, a few minutes
    .venv/bin/python benchmarks/run.py --quick          # shorter runs, same shape
    .venv/bin/python benchmarks/run.py --only expiry,outage --contenders plainid
    .venv/bin/python benchmarks/run.py --report-only    # redo the docs from results.jsonl
    .venv/bin/python benchmarks/run.py --only steady --contenders httpx --merge
                                        # rerun some rows, keep the others of results.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import contenders as c
import report
import scenarios as s
from server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results.jsonl"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "_static" / "benchmarks.png"
CHART_LINK = "_static/benchmarks.png"

SCENARIOS = ("stampede", "steady", "expiry", "outage", "credentials", "processes")

TEMPLATE = f"""# Benchmarks

## Results

{report.BEGIN}
{report.END}
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _line_up(pattern: str | None) -> list[c.Contender]:
    chosen = []
    for contender in c.CONTENDERS:
        if pattern and not any(p.lower() in contender.label.lower() for p in pattern.split(",")):
            continue
        if not contender.available():
            log(f"skipped {contender.label}: {', '.join(contender.requires)} not importable")
            continue
        chosen.append(contender)
    return chosen


async def _redis_row(processes: int) -> dict[str, Any]:
    """The RedisTokenCache row, from benchmarks/bench_processes.py when it can run here."""
    row: dict[str, Any] = {
        "scenario": "many_processes",
        "contender": f"{c.PLAINID} (RedisTokenCache)",
        "library": c.PLAINID,
        "variant": "RedisTokenCache",
        "params": {"processes": processes, "concurrency": 1, "cache": "Redis"},
    }
    if shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None:
        return {**row, "note": "see benchmarks/bench_processes.py (no redis-server here)"}
    try:
        bench_processes: Any = importlib.import_module("bench_processes")
        with bench_processes.redis_server() as url:
            requests, distinct, slowest = await bench_processes.one_round(
                "redis", processes, 0.2, url
            )
    except Exception as exc:  # noqa: BLE001 (another engineer's script: report, do not fail)
        return {**row, "note": f"see benchmarks/bench_processes.py ({type(exc).__name__})"}
    return {
        **row,
        "token_requests": requests,
        "failed": 0,
        "note": f"from bench_processes.py: {distinct} distinct token(s), "
        f"slowest process {slowest * 1000:.0f} ms",
    }


async def run(args: argparse.Namespace, server: ServerProcess) -> list[dict[str, Any]]:  # noqa: C901, PLR0912 (one branch per scenario)
    line_up = _line_up(args.contenders)
    auth = [x for x in line_up if not x.floor]
    quick = args.quick
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    records: list[dict[str, Any]] = [report.environment()]

    def keep(record: dict[str, Any]) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)

    if "stampede" in only:
        log("cold stampede")
        for contender in line_up:
            if contender.margin:
                continue  # with 1-hour tokens the early-expiry margin changes nothing here
            keep(await s.cold_stampede(server, contender, requests=200 if quick else 1000))
    if "steady" in only:
        log("steady overhead (interleaved with the floors)")
        rounds, per_round = (5, 100) if quick else (15, 200)
        for record in await s.steady_overhead(server, line_up, rounds=rounds, requests=per_round):
            keep(record)
    # The expiry and outage runs include the static-header floors: the same load with no
    # token work, so a slow request in a contender's row can be told from the transport's own.
    if "expiry" in only:
        for contender in line_up:
            log(f"expiry under load: {contender.label}")
            keep(await s.expiry_under_load(server, contender, duration=6.0 if quick else 12.0))
    if "outage" in only:
        for contender in line_up:
            log(f"outage in the refresh window: {contender.label}")
            keep(await s.outage_in_refresh_window(server, contender))
    if "credentials" in only:
        log("bad credentials")
        for contender in auth:
            keep(await s.bad_credentials(server, contender))
    if "processes" in only:
        processes = 4 if quick else args.processes
        for contender in auth:
            if contender.margin or (
                contender.variant == "defaults" and contender.name == c.PLAINID
            ):
                continue  # the early-expiry margin and retry settings change nothing here
            log(f"{processes} processes starting cold: {contender.label}")
            keep(await s.many_processes(server, contender, processes=processes, concurrency=5))
        if any(x.name == c.PLAINID for x in auth):
            log(f"{processes} processes starting cold: plainid-async with RedisTokenCache")
            keep(await _redis_row(processes))
    return records


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the rows ``new`` reran replaced in place, and the rest of ``new`` added."""

    def key(record: dict[str, Any]) -> tuple[object, object]:
        return record.get("scenario"), record.get("contender")

    fresh = {key(r): r for r in new if r.get("scenario") != "environment"}
    old_env = next((r for r in old if r.get("scenario") == "environment"), None)
    env = next(r for r in new if r.get("scenario") == "environment")
    if old_env is not None:
        env = {**env, "kept_from": old_env.get("kept_from", old_env["date"])}
    kept = [fresh.pop(key(r), r) for r in old if r.get("scenario") != "environment"]
    rows = [*kept, *fresh.values()]
    # Each scenario's rows together, in line-up order, as a full run writes them.
    scenarios = list(dict.fromkeys(r.get("scenario") for r in rows))
    order = {contender.label: index for index, contender in enumerate(c.CONTENDERS)}
    rows.sort(
        key=lambda r: (scenarios.index(r.get("scenario")), order.get(r["contender"], len(order)))
    )
    return [env, *rows]


def publish(records: list[dict[str, Any]], command: str) -> None:
    drawn = report.chart(records, CHART)
    generated = report.generated_markdown(records, command, CHART_LINK if drawn else None)
    report.update_docs(DOC, generated, TEMPLATE)
    log(f"wrote {DOC.relative_to(ROOT)}" + (f" and {CHART.relative_to(ROOT)}" if drawn else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, same shape")
    parser.add_argument("--only", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--contenders", help="comma-separated substrings of contender labels")
    parser.add_argument("--processes", type=int, default=8, help="for the many-processes run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines output")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild docs from the results file"
    )
    parser.add_argument(
        "--merge", action="store_true", help="replace the rows rerun, keep the other results"
    )
    args = parser.parse_args()
    # Library warnings (plainid-async's background-refresh WARNING in the outage run, …) are
    # counted by the scenarios, not printed in the middle of the progress lines.
    root = logging.getLogger()
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)
    command = (
        "make bench" if len(sys.argv) == 1 else "python benchmarks/run.py " + " ".join(sys.argv[1:])
    )
    if args.report_only:
        records = report.read_jsonl(args.results)
    else:
        started = time.monotonic()
        with ServerProcess() as server:
            records = asyncio.run(run(args, server))
        log(f"all scenarios done in {time.monotonic() - started:.0f} s")
        if args.merge and args.results.exists():
            records = merge(report.read_jsonl(args.results), records)
        report.write_jsonl(args.results, records)
    if not args.no_docs:
        publish(records, command)


if __name__ == "__main__":
    main()
