"""A short smoke run of benchmarks/: every scenario runs and yields its fields.

No timing is asserted (the machine is shared); only that each contender and scenario runs
end to end against the FakePlainID process and produces the record the report reads.
Peers (``pip install --group bench``) are skipped when they are not importable, and only
their default configuration runs here; plainid-async and the static floors always run.
"""

from __future__ import annotations

import asyncio
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


# -- side-by-side rounds, the cached-lookup table and the hot-path rows ---------------------


def test_side_by_side_rounds_put_every_variant_in_every_place() -> None:
    """Rotated orders: over len(names) rounds each variant runs once in each position."""
    import sidebyside  # noqa: PLC0415

    orders = list(sidebyside.orders(["a", "b", "c"], 6))
    assert len(orders) == 6
    for place in range(3):
        assert sorted(order[place] for order in orders) == ["a", "a", "b", "b", "c", "c"]
    assert list(sidebyside.orders(["x", "y"], 4)) == [["x", "y"], ["y", "x"]] * 2
    with pytest.raises(ValueError, match="at least 3"):
        list(sidebyside.orders(["a", "b"], 2))


def test_side_by_side_ratios_are_per_round_median_and_range() -> None:
    import sidebyside  # noqa: PLC0415

    ratios = sidebyside.ratios({"f": [1.0, 2.0, 4.0], "x": [2.0, 2.0, 2.0]}, "f")
    assert ratios["f"] == sidebyside.Spread(1.0, 1.0, 1.0, 3)
    assert ratios["x"] == sidebyside.Spread(1.0, 0.5, 2.0, 3)
    assert ratios["x"].text(2, "x") == "1.00x (0.50-2.00x)"


async def test_peers_table_is_the_scripts_output(server: ServerProcess, tmp_path: Path) -> None:
    """bench_peers measures every installed peer beside the floor and writes the docs table."""
    import bench_peers  # noqa: PLC0415

    ratios, ns = await bench_peers.measure(server, rounds=3, calls=20)
    installed = [p.label for p in bench_peers.PEERS if p.available()]
    assert "**plainid-async**" in installed
    assert set(ratios) == {bench_peers.FLOOR, *installed}
    assert all(ratios[name].rounds == 3 and ns[name] > 0 for name in ratios)
    text = bench_peers.markdown(ratios, ns, "smoke")
    for label in installed:
        assert f"| {label} |" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nabove\n\n{bench_peers.BEGIN}\nold\n{bench_peers.END}\n\nbelow\n")
    bench_peers.write_docs(text, doc)
    bench_peers.write_docs(text, doc)
    written = doc.read_text()
    assert written.count(bench_peers.BEGIN) == 1
    assert "old" not in written
    assert "above" in written
    assert "below" in written
    assert text in written
    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        bench_peers.write_docs(text, unmarked)


def test_docs_hold_the_peers_table() -> None:
    """docs/benchmarks.md has the generated table between the script's markers."""
    import bench_peers  # noqa: PLC0415

    page = bench_peers.DOC.read_text(encoding="utf-8")
    table = page.split(bench_peers.BEGIN)[1].split(bench_peers.END)[0]
    assert "| **plainid-async** |" in table
    assert "| floor |" in table


async def test_get_token_bench_measures_the_watched_rows() -> None:
    import bench_get_token  # noqa: PLC0415

    spreads = await bench_get_token.measure(rounds=3, calls=20)
    expected = {bench_get_token.FLOOR, bench_get_token.PLAIN, bench_get_token.OTEL}
    expected |= {bench_get_token._listeners_label(n) for n in bench_get_token.LISTENERS}
    expected.add(bench_get_token.EVERY_KIND)
    assert set(spreads) == expected
    assert all(spread.rounds == 3 for spread in spreads.values())


def test_middleware_bench_prints_the_cheapest_middleware_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import bench_middleware  # noqa: PLC0415

    with bench_middleware.serving() as port:
        asyncio.run(bench_middleware.bench(port, rounds=3, requests=3))
    out = capsys.readouterr().out
    for name in bench_middleware.VARIANTS:
        assert name in out


FAKE_VALGRIND = """\
import subprocess, sys
command = sys.argv[3:]  # after --tool=callgrind and --callgrind-out-file=...
subprocess.run(command, check=True)
requests = int(command[command.index("--requests") + 1])
print(f"==1== Collected : {5000 + 100 * requests}", file=sys.stderr)
"""


def test_middleware_bench_counts_instructions_per_get_of_each_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --instructions plumbing, with a stand-in for valgrind that runs each variant's
    process for real and reports 100 instructions per GET over a fixed start-up."""
    import bench_middleware  # noqa: PLC0415

    valgrind = tmp_path / "valgrind"
    valgrind.write_text(f"#!{sys.executable}\n{FAKE_VALGRIND}")
    valgrind.chmod(0o755)
    with bench_middleware.serving() as port:
        counts = bench_middleware.count_instructions(str(valgrind), port, requests=20)
    assert counts == dict.fromkeys(bench_middleware.VARIANTS, 100.0)
    out = capsys.readouterr().out
    assert all(name in out for name in bench_middleware.VARIANTS)


def test_refresh_load_bench_measures_lag_and_cpu_per_refresh() -> None:
    import bench_refresh_load as b  # noqa: PLC0415

    with b.serving_https() as (port, context):
        figures = asyncio.run(b.bench(port, context, rounds=3, seconds=0.2, tenants=2))
    assert set(figures) == {
        b.IDLE,
        *(f"{kind}, {rate}" for kind in (b.REFRESHER, b.KEPT_ALIVE) for rate in ("20/s", "100/s")),
    }
    assert "CPU ms per refresh" not in figures[b.IDLE]
    for name, figure in figures.items():
        assert figure["p99 lag / idle"].rounds == 3
        if name != b.IDLE:
            assert figure["CPU ms per refresh"].rounds == 3


def test_httpx_bench_prints_the_cheapest_auth_row(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("httpx")
    import bench_httpx  # noqa: PLC0415
    from bench_middleware import serving  # noqa: PLC0415

    with serving() as port:
        asyncio.run(bench_httpx.bench(port, rounds=3, requests=3))
    out = capsys.readouterr().out
    for name in (bench_httpx.OURS, bench_httpx.CHEAPEST, bench_httpx.STATIC):
        assert name in out


def test_cli_start_bench_starts_every_command_in_every_round() -> None:
    import bench_cli_start  # noqa: PLC0415

    wall, cpu = bench_cli_start.measure(rounds=3)
    assert set(wall) == set(cpu) == set(bench_cli_start.COMMANDS)
    for figures in (wall, cpu):
        assert all(len(times) == 3 and min(times) > 0 for times in figures.values())


def test_listeners_bench_times_b_alone_and_beside_a_busy_listener(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import bench_listeners  # noqa: PLC0415

    asyncio.run(bench_listeners.main(rounds=3, delay=0.05))
    out = capsys.readouterr().out
    assert out.count("B cold alone") == 3
    assert "median" in out
