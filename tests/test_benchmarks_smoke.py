"""A short smoke run of benchmarks/: every scenario runs and yields its fields.

No timing is asserted (the machine is shared); only that each contender and scenario runs
end to end against the FakePlainID process and produces the record the report reads.
Peers (``pip install --group bench``) are skipped when they are not importable, and only
their default configuration runs here; plainid-async and the static floors always run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import contenders as c  # noqa: E402 (benchmarks/ is a directory of scripts, not a package)
import report  # noqa: E402
import scenarios as s  # noqa: E402
from server import ServerProcess  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

SMOKED = [x for x in c.CONTENDERS if not x.margin and x.label != "plainid-async (defaults)"]
AUTH = [x for x in SMOKED if not x.floor]


def _param(contender: c.Contender) -> object:
    return pytest.param(
        contender,
        id=contender.label,
        marks=pytest.mark.skipif(
            not contender.available(),
            reason=f"{', '.join(contender.requires)} not installed (pip install --group bench)",
        ),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as process:
        yield process


def test_plainid_and_floors_always_run() -> None:
    """The smoke never skips what the project itself provides."""
    for label in ("plainid-async (tuned)", "static header (aiohttp)"):
        assert c.by_label(label).available()


@pytest.mark.parametrize("contender", [_param(x) for x in SMOKED])
async def test_cold_stampede(server: ServerProcess, contender: c.Contender) -> None:
    record = await s.cold_stampede(server, contender, requests=20, latency=0.02)
    assert record["requests"] == 20
    for key in ("token_requests", "server_401", "failed", "wall_s", "p99_ms"):
        assert key in record
    if contender.name == c.PLAINID:
        assert record["token_requests"] == 1
        assert record["failed"] == 0


async def test_steady_overhead(server: ServerProcess) -> None:
    line_up = [x for x in SMOKED if x.available()]
    records = await s.steady_overhead(server, line_up, rounds=2, requests=10)
    labels = {r["contender"] for r in records}
    assert {"plainid-async (tuned)", "static header (aiohttp)"} <= labels
    for record in records:
        for key in ("rps", "ratio", "ratio_q1", "ratio_q3", "floor", "failed"):
            assert key in record
        assert record["failed"] == 0


def _check_floor(record: dict[str, object], contender: c.Contender) -> None:
    """A floor's row is the load with no token work: its hour-long token never expires."""
    if contender.floor:
        assert record["token_requests"] == 0
        assert record["failed"] == 0


@pytest.mark.parametrize("contender", [_param(x) for x in SMOKED])
async def test_expiry_under_load_sends_the_requests_at_the_given_rate(
    server: ServerProcess, contender: c.Contender
) -> None:
    record = await s.expiry_under_load(
        server, contender, expires_in=2.0, latency=0.02, rate=20.0, duration=1.0
    )
    for key in ("requests", "token_requests", "server_401", "slow", "p99_ms", "max_ms"):
        assert key in record
    # An open load: arrivals do not wait for answers. Only a client that blocks the event
    # loop (httpx-auth) can leave some unsent; they are counted, not lost.
    assert record["requests"] + record["unfinished"] == 20
    if contender.name == c.PLAINID or contender.floor:
        assert record["requests"] == 20
    assert record["params"]["rate_per_s"] == 20.0
    _check_floor(record, contender)


@pytest.mark.parametrize("contender", [_param(x) for x in SMOKED])
async def test_outage_in_refresh_window(server: ServerProcess, contender: c.Contender) -> None:
    record = await s.outage_in_refresh_window(
        server, contender, expires_in=2.0, outage=(0.5, 1.0), rate=20.0, duration=1.2
    )
    for key in ("failed", "server_401", "token_requests", "log_warnings", "secret_in_errors"):
        assert key in record
    assert record["requests"] + record["unfinished"] == 24
    if contender.name == c.PLAINID:
        assert record["failed"] == 0
    _check_floor(record, contender)


@pytest.mark.parametrize("contender", [_param(x) for x in AUTH])
async def test_bad_credentials(server: ServerProcess, contender: c.Contender) -> None:
    record = await s.bad_credentials(server, contender)
    assert record["outcome"]
    for key in ("secret_in_exception", "secret_in_exception_attributes", "secret_in_logs"):
        assert isinstance(record[key], bool)
    if contender.name == c.PLAINID:
        assert record["outcome"].startswith("InvalidCredentialsError")
        assert not record["secret_in_exception"]
        assert not record["secret_in_logs"]


async def test_many_processes(server: ServerProcess) -> None:
    contender = c.by_label("plainid-async (tuned)")
    record = await s.many_processes(server, contender, processes=2, concurrency=2, limit=60)
    assert record["token_requests"] == 2
    assert record["failed"] == 0


def test_report(tmp_path: Path) -> None:
    """The Markdown and the chart come out of records of every scenario."""
    records = [
        report.environment(),
        {
            "scenario": "cold_stampede",
            "contender": "plainid-async (tuned)",
            "params": {"requests": 1},
            "token_requests": 1,
            "server_401": 0,
            "failed": 0,
            "wall_s": 0.1,
            "p99_ms": 1.0,
        },
    ]
    text = report.generated_markdown(records, "make bench", None)
    assert "| **plainid-async (tuned)** | 1 |" in text
    doc = tmp_path / "benchmarks.md"
    report.update_docs(doc, text, f"# B\n\nhand-written\n\n{report.BEGIN}\n{report.END}\n")
    report.update_docs(doc, text, "unused")
    written = doc.read_text(encoding="utf-8")
    assert written.count(report.BEGIN) == 1
    assert "hand-written" in written
