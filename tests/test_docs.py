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
import itertools
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
from markdown_it import MarkdownIt

import plainid_async as pa
from plainid_async import _settings
from plainid_async import testing as pa_testing
from plainid_async._middleware import BearerAuthMiddleware

if TYPE_CHECKING:
    from plainid_async.testing import FakePlainID

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


# A fenced block right after this comment is an excerpt of a file that runs on its own (the
# examples): it is checked against the file instead of being run as a script.
EXCERPT = re.compile(r"<!-- excerpt of (\S+?):? ")


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the first line of code
    info: str
    source: str
    excerpt_of: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path``, parsed as MyST (CommonMark) parses it."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    found = []
    for index, token in enumerate(tokens):
        if token.type != "fence" or token.map is None:
            continue
        before = tokens[index - 1] if index else None
        marker = EXCERPT.match(before.content) if before and before.type == "html_block" else None
        excerpt_of = marker.group(1) if marker else None
        found.append(Block(path, token.map[0] + 2, token.info.strip(), token.content, excerpt_of))
    return found


ALL_BLOCKS = [block for path in DOC_FILES for block in blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.info == "python" and b.excerpt_of is None]
EXCERPTS = [block for block in ALL_BLOCKS if block.excerpt_of is not None]


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


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.id)
async def test_python_block_runs(block: Block, plainid_fake: FakePlainID) -> None:
    """A ```python block runs to completion as a script, offline, with no warning."""
    # plainid_fake: the project's own pytest plugin, as a user's tests get it.
    env = clean_env(
        PLAINID_CLIENT_ID=plainid_fake.client_id,
        PLAINID_CLIENT_SECRET=plainid_fake.client_secret,
        PLAINID_BASE_URL=str(plainid_fake.base_url),
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
    """The framework examples are there."""
    names = {p.name for p in EXAMPLES}
    assert names >= {"aiohttp_service.py", "fastapi_service.py", "fastapi_httpx_service.py"}


@pytest.mark.parametrize("path", EXAMPLE_PARAMS)
async def test_example_self_test(path: Path) -> None:
    """With no PlainID credentials set, the example starts FakePlainID, says so on stderr and
    in every answer, serves, calls itself through PlainID, and exits 0.
    """
    outcome = await run(["-W", "error::ResourceWarning", str(path), "--self-test"], env=clean_env())
    assert outcome.returncode == 0, explain(outcome)
    assert "self-test passed" in outcome.stdout, explain(outcome)
    assert "Unclosed" not in outcome.stderr, explain(outcome)
    # Serving the fake is said loudly (the self-test checks every answer says it too).
    assert "WARNING: PLAINID_CLIENT_ID is not set: serving a FAKE PlainID" in outcome.stderr


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


def defined_environment_variables() -> set[str]:
    """The PLAINID_* names plainid_async/_settings.py reads: its module-level constants."""
    return {
        value
        for name, value in vars(_settings).items()
        if name.isupper() and isinstance(value, str) and value.startswith("PLAINID_")
    }


def test_configuration_reference_lists_every_environment_variable() -> None:
    """Every PLAINID_* variable the settings resolver reads is documented, and no other."""
    defined = defined_environment_variables()
    assert {"PLAINID_CLIENT_ID", "PLAINID_CLIENT_SECRET", "PLAINID_BASE_URL"} <= defined
    documented = {
        name
        for name in table_rows(ROOT / "docs" / "configuration.md")
        if name.startswith("PLAINID_")
    }
    assert defined - documented == set(), "missing from configuration.md"
    assert documented - defined == set(), "documented in configuration.md but read nowhere"


# -- docs read the same on GitHub and in Sphinx -----------------------------------------------

# MyST roles such as {meth}`x` or {class}`x`: GitHub shows them as raw text.
ROLE = re.compile(r"\{[a-z][\w:+-]*\}$")
# Inside an {eval-rst} block only autodoc directives and their options: GitHub shows the
# block as code, so it must say no more than which object the reference is generated from.
AUTODOC_LINE = re.compile(
    r"(\.\. auto(class|exception|function|data|module|method)::\s+\S+|\s+:[\w-]+:.*)"
)


def github_unreadable(path: Path) -> list[str]:
    """What in ``path`` shows badly on GitHub: empty links, roles, literalinclude."""
    problems = []
    for token in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
        line = (token.map[0] + 1) if token.map else 0
        if token.type == "fence":
            info = token.info.strip()
            if info.startswith("{literalinclude}") or "literalinclude::" in token.content:
                problems.append(f"{line}: literalinclude (GitHub shows no code): paste the code")
            if info == "{eval-rst}":
                problems += [
                    f"{line}: {text!r} in an eval-rst block (only autodoc directives)"
                    for text in token.content.splitlines()
                    if text.strip() and not AUTODOC_LINE.fullmatch(text)
                ]
            continue
        children = token.children or []
        for here, after in itertools.pairwise(children):
            if here.type == "link_open" and after.type == "link_close":
                problems.append(f"{line}: empty link to {here.attrGet('href')}: give it text")
            if here.type == "text" and after.type == "code_inline" and ROLE.search(here.content):
                problems.append(f"{line}: role {here.content.split()[-1]}`{after.content}`")
    return problems


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_docs_source_reads_well_on_github(path: Path) -> None:
    """No empty link, MyST role or literalinclude: GitHub would show them raw or empty."""
    assert github_unreadable(path) == []


def test_the_github_check_finds_each_kind_of_problem(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [](cli.md#x) and {meth}`TokenProvider.get_token`.\n\n"
        "```{literalinclude} ../examples/aiohttp_service.py\n```\n\n"
        "```{eval-rst}\n.. autoclass:: plainid_async.Token\n   :members:\n:class:`Token`\n```\n",
        encoding="utf-8",
    )
    problems = "\n".join(github_unreadable(page))
    for kind in ("empty link to cli.md#x", "role {meth}", "literalinclude", "eval-rst"):
        assert kind in problems
    assert len(github_unreadable(page)) == 4


@pytest.mark.parametrize("block", EXCERPTS, ids=lambda block: block.id)
def test_excerpt_matches_its_file(block: Block) -> None:
    """A pasted excerpt of an example is, line for line, in the file the tests run."""
    assert block.excerpt_of is not None
    source = (ROOT / block.excerpt_of).read_text(encoding="utf-8")
    assert block.source in source, (
        f"{block.id} no longer matches {block.excerpt_of}: paste it again"
    )


def test_frameworks_page_shows_both_examples() -> None:
    assert {block.excerpt_of for block in EXCERPTS} >= {
        "examples/aiohttp_service.py",
        "examples/fastapi_service.py",
    }


REFERENCE = ROOT / "docs" / "reference.rst"


def test_api_reference_documents_every_public_name() -> None:
    """docs/reference.rst has an autodoc entry for every name of the public modules."""
    page = REFERENCE.read_text(encoding="utf-8")
    documented = set(re.findall(r"\.\. auto\w+:: (\S+)", page))
    public = {f"plainid_async.{name}" for name in pa.__all__}
    public |= {f"plainid_async.testing.{name}" for name in pa_testing.__all__}
    assert public - documented == set()


def test_api_reference_puts_the_provider_first_and_cache_key_last() -> None:
    page = REFERENCE.read_text(encoding="utf-8")
    order = re.findall(r"\.\. auto\w+:: plainid_async\.(\w+)$", page, re.MULTILINE)
    assert order[0] == "TokenProvider"
    assert order.index("Token") < order.index("BearerAuthMiddleware") < order.index("PlainIDError")
    assert order.index("PlainIDError") < order.index("MemoryTokenCache") < order.index("CacheKey")
    assert order[-1] == "CacheKey"


def test_api_page_reads_well_on_github() -> None:
    """docs/api.md is prose and tables: the autodoc directives GitHub would show raw live in
    docs/reference.rst, in the same order as api.md's sections.
    """
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert ".. auto" not in page
    assert "{eval-rst}" not in page
    sections = [s.replace("`", "") for s in re.findall(r"^## (.+)$", page, re.MULTILINE)]
    titles = re.findall(r"^(.+)\n-+$", REFERENCE.read_text(encoding="utf-8"), re.MULTILINE)
    assert titles == [s for s in sections if s in titles]
    assert titles[0] == "TokenProvider"


def test_api_reference_describes_every_stats_field_and_token_state() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for field in attrs.fields(pa.ProviderStats):
        assert f"| `{field.name}` |" in page, field.name
    for state in pa.TokenState:
        assert f"| `TokenState.{state.name}` |" in page, state


# With docs/_static/tables.css, ten columns fit the content column at 1280 px (checked with
# a headless Chromium screenshot of the built benchmarks page); more overflow it.
MAX_TABLE_COLUMNS = 10


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_docs_tables_are_narrow_enough_for_a_page(path: Path) -> None:
    """No table has so many columns it must overflow the content column (split it instead)."""
    wide = [
        f"{number}: {line.count('|') - 1} columns"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.startswith("|---") and line.count("|") - 1 > MAX_TABLE_COLUMNS
    ]
    assert wide == []


# -- the README is the PyPI page --------------------------------------------------------------


def test_readme_reads_right_as_the_pypi_page() -> None:
    """On PyPI relative links break: every link is absolute; it says how to install from PyPI
    and lists every extra pyproject.toml declares.
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [
        token.attrGet("href")
        for block in MarkdownIt("commonmark").parse(text)
        for token in block.children or []
        if token.type == "link_open"
    ]
    assert len(links) >= 10
    assert [link for link in links if not str(link).startswith("https://")] == []
    assert "$ python -m pip install plainid-async\n" in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    listed = {name for name in table_rows(ROOT / "README.md") if name in extras}
    assert listed == set(extras), f"extras missing from the README: {set(extras) - listed}"


def test_docs_index_shows_the_install_line_and_the_version() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "$ python -m pip install plainid-async\n" in index
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    assert 'html_title = f"plainid-async {release}"' in conf


def test_supported_pythons_are_the_same_everywhere() -> None:
    """The classifiers, the README, the docs index and CI's matrix name the same CPythons."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    classified = sorted(
        classifier.rsplit(" :: ", 1)[1]
        for classifier in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", classifier)
    )
    assert classified == ["3.11", "3.12", "3.13"]
    assert project["requires-python"] == ">=3.11"
    assert "CPython 3.11, 3.12 or 3.13;" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "CPython 3.11 to 3.13." in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # a checkout (the sdist has no CI): the matrix runs the two others
        text = ci.read_text(encoding="utf-8")
        assert "$(interpreter 3.12)" in text
        assert "$(interpreter 3.13)" in text
