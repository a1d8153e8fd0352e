"""Nothing in the docs can rot: every Python block of docs/*.md and README.md, and every
example, runs here against FakePlainID on loopback.

Each ```python block is a complete script and runs as is, in its own interpreter (``python
-W error``), with ``PLAINID_CLIENT_ID``, ``PLAINID_CLIENT_SECRET`` and ``PLAINID_BASE_URL``
pointing at a FakePlainID started for it, so a block written for a reader's real credentials
(``TokenProvider.from_env()``) runs offline. A guard in the interpreter refuses any
connection or name lookup that is not loopback: a block that would reach the real PlainID
fails instead. Tracebacks name the Markdown file and its line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
from markdown_it import MarkdownIt

import plainid_async as pa
from plainid_async._middleware import BearerAuthMiddleware
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 60.0

# Runs before each block: refuse non-loopback network access, then run the block with its
# line numbers matching the Markdown file.
BOOTSTRAP = r"""
import ipaddress, socket, sys

def _loopback(host):
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False

def _refuse(host):
    raise OSError(f"docs examples may only reach loopback addresses, not {host!r}")

_getaddrinfo = socket.getaddrinfo
def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _loopback(host.decode() if isinstance(host, bytes) else host):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _guarded_getaddrinfo

for _name in ("connect", "connect_ex"):
    def _make(real):
        def guarded(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
                _refuse(address[0])
            return real(self, address)
        return guarded
    setattr(socket.socket, _name, _make(getattr(socket.socket, _name)))

path, first_line = sys.argv[1], int(sys.argv[2])
source = sys.stdin.read()
sys.argv = [path]
exec(compile("\n" * (first_line - 1) + source, path, "exec"), {"__name__": "__main__"})
"""


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the first line of code
    info: str
    source: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path``, parsed as MyST (CommonMark) parses it."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    return [
        Block(path, token.map[0] + 2, token.info.strip(), token.content)
        for token in tokens
        if token.type == "fence" and token.map is not None
    ]


ALL_BLOCKS = [block for path in DOC_FILES for block in blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.info == "python"]


@attrs.frozen
class Outcome:
    returncode: int
    stdout: str
    stderr: str


async def run(args: list[str], *, stdin: str = "", env: dict[str, str] | None = None) -> Outcome:
    """Run a Python subprocess, kill it after TIMEOUT, and collect its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode()), TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{' '.join(args)} did not finish within {TIMEOUT:.0f} s")
    assert process.returncode is not None
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any PLAINID_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAINID_")}
    env.update(extra)
    return env


def explain(outcome: Outcome) -> str:
    return f"exit {outcome.returncode}\n--- stdout\n{outcome.stdout}\n--- stderr\n{outcome.stderr}"


@pytest.fixture
async def fake() -> AsyncIterator[FakePlainID]:
    async with FakePlainID(client_id="docs-client", client_secret="docs-secret") as server:
        yield server


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.id)
async def test_python_block_runs(block: Block, fake: FakePlainID) -> None:
    """A ```python block runs to completion as a script, offline, with no warning."""
    env = clean_env(
        PLAINID_CLIENT_ID=fake.client_id,
        PLAINID_CLIENT_SECRET=fake.client_secret,
        PLAINID_BASE_URL=str(fake.base_url),
    )
    args = ["-W", "error", "-c", BOOTSTRAP, block.id.rsplit(":", 1)[0], str(block.line)]
    outcome = await run(args, stdin=block.source, env=env)
    assert outcome.returncode == 0, explain(outcome)
    assert "Unclosed" not in outcome.stderr, explain(outcome)
    assert "Exception ignored" not in outcome.stderr, explain(outcome)


def test_docs_have_python_blocks() -> None:
    """The collector finds the blocks (a parser change cannot silently skip them all)."""
    assert len(PYTHON_BLOCKS) >= 10
    assert any(block.path.name == "README.md" for block in PYTHON_BLOCKS)


def test_no_python_code_escapes_execution() -> None:
    """Python code is written as ```python, so it runs here; other spellings would not."""
    escaped = [
        block.id
        for block in ALL_BLOCKS
        if block.info.startswith("{code") or block.info in {"py", "python3", "pycon"}
    ]
    assert not escaped, f"write these blocks as ```python so the test suite runs them: {escaped}"


# -- examples ---------------------------------------------------------------------------------


def _needs(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(
        missing,
        reason=f"{module} is not installed: `pip install --group examples` to run this example",
    )


EXAMPLE_PARAMS = [
    pytest.param(path, marks=_needs("fastapi") if "fastapi" in path.name else (), id=path.name)
    for path in EXAMPLES
]


def test_examples_exist() -> None:
    """Both framework examples are there."""
    assert {p.name for p in EXAMPLES} >= {"aiohttp_service.py", "fastapi_service.py"}


@pytest.mark.parametrize("path", EXAMPLE_PARAMS)
async def test_example_self_test(path: Path) -> None:
    """With no PlainID credentials set, the example starts FakePlainID, serves, calls itself
    through PlainID, and exits 0.
    """
    outcome = await run(["-W", "error::ResourceWarning", str(path), "--self-test"], env=clean_env())
    assert outcome.returncode == 0, explain(outcome)
    assert "self-test passed" in outcome.stdout, explain(outcome)
    assert "Unclosed" not in outcome.stderr, explain(outcome)


# -- the configuration reference --------------------------------------------------------------


def table_rows(path: Path) -> dict[str, list[str]]:
    """Rows of every Markdown table of ``path`` whose first cell is `code`, by that name."""
    rows: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            rows.setdefault(cells[0].strip("`"), cells[1:])
    return rows


@pytest.mark.parametrize(
    "target",
    [pa.TokenProvider, pa.RetryPolicy, BearerAuthMiddleware, pa.MemoryTokenCache],
    ids=lambda target: target.__name__,
)
def test_configuration_reference_lists_every_parameter_with_its_default(target: type) -> None:
    """docs/configuration.md has a row per parameter, and the default it shows is the real one."""
    rows = table_rows(ROOT / "docs" / "configuration.md")
    for name, parameter in inspect.signature(target).parameters.items():
        assert name in rows, f"{target.__name__}({name}=...) is missing from configuration.md"
        shown = rows[name][0]
        if parameter.default is inspect.Parameter.empty:
            assert shown == "required", f"{name}: shown as {shown!r}, but it is required"
        else:
            assert shown == f"`{parameter.default!r}`", (
                f"{name}: default shown as {shown}, but it is {parameter.default!r}"
            )


def test_configuration_reference_lists_every_environment_variable() -> None:
    """Every PLAINID_* variable TokenProvider.from_env reads is documented."""
    rows = table_rows(ROOT / "docs" / "configuration.md")
    source = inspect.getsource(sys.modules["plainid_async._provider"])
    for variable in sorted(set(re.findall(r'"(PLAINID_[A-Z_]+)"', source))):
        assert variable in rows, f"{variable} is missing from configuration.md"
