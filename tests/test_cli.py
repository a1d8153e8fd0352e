"""The plainid-async command line, run as a subprocess against FakePlainID."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import attrs
import pytest
import trustme
from _proxy import TinyProxy, TokenServer, child_environ
from _servers import server_tls
from rich.console import Console

import plainid_async as pa
from plainid_async import _cli, _demo
from plainid_async._checks import count_problem, seconds_problem
from plainid_async._demo import DemoOptions, run_demo
from plainid_async._log import LOGGER_NAME
from plainid_async._token import lifetime_problem
from plainid_async.testing import FakePlainID, FakeResponse, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Iterator, Mapping

SECRET = "s3cr3t-Zq9-never-shown"
PROXY_PASSWORD = "cl1-pr0xy-Pa55"
WRONG_SECRET = "wr0ng-Xy7-never-shown"
CLIENT_ID = "cli-client"


@attrs.frozen
class Result:
    returncode: int
    stdout: str
    stderr: str

    def assert_clean(self, *secrets: str) -> None:
        """No secret anywhere, no traceback, no unclosed-session warning."""
        for secret in (SECRET, WRONG_SECRET, *secrets):
            assert secret not in self.stdout
            assert secret not in self.stderr
        assert "Traceback" not in self.stderr
        assert "Unclosed" not in self.stderr

    def assert_error(self, code: int) -> str:
        """A failure: the exit code, nothing on stdout, one line on stderr."""
        assert self.returncode == code, self
        assert self.stdout == ""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("plainid-async")
        self.assert_clean()
        return lines[0]


def _base_env() -> dict[str, str]:
    # The CLI honours proxy variables as curl does: the machine's own must not steer tests.
    return {k: v for k, v in child_environ().items() if not k.startswith("PLAINID_")}


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainid_async",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**_base_env(), **(env or {})},
    )
    out, err = await asyncio.wait_for(
        process.communicate(None if stdin is None else stdin.encode()), 30
    )
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


#: Each help text, as the first test that asked for it got it: it never changes.
_HELP: dict[tuple[str, ...], Result] = {}


async def help_of(*command: str) -> Result:
    """``plainid-async [COMMAND] --help``, started once per command for the whole module."""
    if command not in _HELP:
        _HELP[command] = await run_cli(*command, "--help")
    return _HELP[command]


@pytest.fixture
async def fake() -> AsyncIterator[FakePlainID]:
    async with FakePlainID(client_id=CLIENT_ID, client_secret=SECRET) as server:
        yield server


@pytest.fixture
def env(fake: FakePlainID) -> dict[str, str]:
    return {
        "PLAINID_CLIENT_ID": CLIENT_ID,
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_BASE_URL": str(fake.base_url),
    }


# -- token: success --------------------------------------------------------------------


async def test_token_prints_only_the_token(fake: FakePlainID, env: dict[str, str]) -> None:
    result = await run_cli("token", env=env)
    assert result.returncode == 0, result
    assert result.stderr == ""
    token = result.stdout.removesuffix("\n")
    assert "\n" not in token
    assert fake.is_valid(token)
    assert len(fake.token_requests) == 1
    result.assert_clean()


async def test_token_format_header(fake: FakePlainID, env: dict[str, str]) -> None:
    result = await run_cli("token", "--format", "header", env=env)
    assert result.returncode == 0, result
    match = re.fullmatch(r"Authorization: Bearer (\S+)\n", result.stdout)
    assert match is not None
    assert fake.is_valid(match.group(1))
    result.assert_clean()


async def test_token_format_json(fake: FakePlainID, env: dict[str, str]) -> None:
    fake.expires_in = 1800
    result = await run_cli("token", "--format", "json", env=env)
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert set(data) == {"access_token", "token_type", "expires_in"}
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 1800
    assert fake.is_valid(data["access_token"])
    result.assert_clean()


async def test_token_flags_override_the_environment(fake: FakePlainID) -> None:
    env = {
        "PLAINID_CLIENT_ID": "someone-else",
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_REGION": "us1",
    }
    result = await run_cli(
        "token", "--client-id", CLIENT_ID, "--base-url", str(fake.base_url), env=env
    )
    assert result.returncode == 0, result
    assert fake.token_requests[0].client_id == CLIENT_ID


async def test_token_secret_from_stdin(fake: FakePlainID, env: dict[str, str]) -> None:
    del env["PLAINID_CLIENT_SECRET"]
    result = await run_cli("token", "--client-secret-stdin", env=env, stdin=SECRET + "\n")
    assert result.returncode == 0, result
    assert fake.is_valid(result.stdout.strip())
    result.assert_clean()


async def test_token_secret_from_stdin_wins_over_the_environment(
    fake: FakePlainID, env: dict[str, str]
) -> None:
    env["PLAINID_CLIENT_SECRET"] = WRONG_SECRET
    result = await run_cli("token", "--client-secret-stdin", env=env, stdin=SECRET)
    assert result.returncode == 0, result
    result.assert_clean()


async def test_token_secret_from_file(
    fake: FakePlainID, env: dict[str, str], tmp_path: Path
) -> None:
    del env["PLAINID_CLIENT_SECRET"]
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    result = await run_cli("token", "--client-secret-file", str(secret_file), env=env)
    assert result.returncode == 0, result
    assert fake.is_valid(result.stdout.strip())
    result.assert_clean()


async def test_token_secret_from_the_file_named_by_the_environment(
    fake: FakePlainID, env: dict[str, str], tmp_path: Path
) -> None:
    del env["PLAINID_CLIENT_SECRET"]
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env["PLAINID_CLIENT_SECRET_FILE"] = str(secret_file)
    result = await run_cli("token", env=env)
    assert result.returncode == 0, result
    assert fake.is_valid(result.stdout.strip())
    result.assert_clean()


async def test_secret_and_secret_file_together_exit_2(
    fake: FakePlainID, env: dict[str, str], tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    env["PLAINID_CLIENT_SECRET_FILE"] = str(secret_file)
    line = (await run_cli("token", env=env)).assert_error(2)
    assert "PLAINID_CLIENT_SECRET_FILE" in line
    assert fake.token_requests == []


async def test_token_verbose_logs_on_stderr_without_secret_or_token(
    fake: FakePlainID, env: dict[str, str]
) -> None:
    result = await run_cli("token", "-v", env=env)
    assert result.returncode == 0, result
    token = result.stdout.strip()
    assert "token fetched" in result.stderr
    assert token not in result.stderr
    result.assert_clean()


# -- token: exit codes -----------------------------------------------------------------


async def test_wrong_secret_exits_3(fake: FakePlainID, env: dict[str, str]) -> None:
    env["PLAINID_CLIENT_SECRET"] = WRONG_SECRET
    line = (await run_cli("token", env=env)).assert_error(3)
    assert "rejected the client credentials" in line


async def test_wrong_secret_from_stdin_exits_3(fake: FakePlainID, env: dict[str, str]) -> None:
    del env["PLAINID_CLIENT_SECRET"]
    result = await run_cli("token", "--client-secret-stdin", env=env, stdin=WRONG_SECRET)
    result.assert_error(3)


async def test_outage_exits_4(fake: FakePlainID, env: dict[str, str]) -> None:
    fake.start_outage(503)
    started = time.monotonic()
    result = await run_cli("token", "--timeout", "0.5", "--attempts", "2", env=env)
    line = result.assert_error(4)
    assert "503" in line
    assert time.monotonic() - started < 10
    assert 1 <= len(fake.token_requests) <= 2


async def test_unreachable_endpoint_exits_4(env: dict[str, str]) -> None:
    env["PLAINID_BASE_URL"] = "http://127.0.0.1:9"
    (await run_cli("token", "--timeout", "0.5", "--attempts", "1", env=env)).assert_error(4)


async def test_invalid_token_response_exits_4(fake: FakePlainID, env: dict[str, str]) -> None:
    fake.fail_next(FakeResponse(body="<html>maintenance</html>", content_type="text/html"))
    line = (await run_cli("token", env=env)).assert_error(4)
    assert "invalid token response" in line


_NO = None  # an environment variable to unset


@pytest.mark.parametrize(
    ("args", "changes", "expected"),
    [
        pytest.param((), {"PLAINID_CLIENT_ID": _NO}, "PLAINID_CLIENT_ID", id="no-client-id"),
        pytest.param((), {"PLAINID_CLIENT_SECRET": _NO}, "PLAINID_CLIENT_SECRET", id="no-secret"),
        pytest.param((), {"PLAINID_BASE_URL": _NO}, "PLAINID_REGION", id="no-region"),
        pytest.param(("--timeout", "0"), {}, "--timeout", id="zero-timeout"),
        pytest.param(("--region", "US1"), {}, "region", id="bad-region"),
        pytest.param(("--region", "evil.example/x"), {}, "region", id="region-changes-host"),
        pytest.param((), {"PLAINID_REGION": "us1"}, "both", id="region-and-base-url"),
        pytest.param(("--base-url", "http://pap.example.com"), {}, "https", id="plain-http"),
        pytest.param(("--client-secret", WRONG_SECRET), {}, "--client-secret", id="secret-flag"),
        pytest.param((f"--client-secret={WRONG_SECRET}",), {}, "--client-secret", id="flag="),
        pytest.param(("--client_secret", WRONG_SECRET), {}, "unrecognized", id="lookalike"),
        pytest.param((WRONG_SECRET,), {}, "unrecognized", id="stray-value"),
        pytest.param(("--timeout", "nope"), {}, "--timeout", id="bad-timeout"),
        pytest.param(("--format", "xml"), {}, "--format", id="bad-format"),
    ],
)
async def test_usage_and_configuration_errors_exit_2(
    fake: FakePlainID,
    env: dict[str, str],
    args: tuple[str, ...],
    changes: dict[str, str | None],
    expected: str,
) -> None:
    for name, value in changes.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    line = (await run_cli("token", *args, env=env)).assert_error(2)
    assert expected in line
    assert fake.token_requests == []


async def test_missing_secret_file_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    line = (await run_cli("token", "--client-secret-file", missing, env=env)).assert_error(2)
    assert "--client-secret-file" in line


async def test_empty_stdin_exits_2(env: dict[str, str]) -> None:
    del env["PLAINID_CLIENT_SECRET"]
    (await run_cli("token", "--client-secret-stdin", env=env, stdin="\n")).assert_error(2)


async def test_unknown_command_exits_2() -> None:
    (await run_cli("tokens")).assert_error(2)


async def test_secret_flag_before_the_command_is_not_echoed() -> None:
    line = (await run_cli("--client-secret", WRONG_SECRET, "token")).assert_error(2)
    assert "invalid choice" in line


async def test_help_documents_exit_codes() -> None:
    result = await help_of("token")
    assert result.returncode == 0
    for text in (
        "exit codes",
        "0   the token",
        "2   usage",
        "3   PlainID",
        "4   the token endpoint",
    ):
        assert text in result.stdout
    assert "--client-secret-stdin" in result.stdout
    assert "--client-secret " not in result.stdout


# -- fake-server -----------------------------------------------------------------------


async def test_fake_server_answers_token_requests_until_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plainid_async",
        "fake-server",
        "--port",
        "0",
        "--expires-in",
        "120",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_base_env(),
    )
    assert process.stdout is not None
    try:
        banner: list[str] = []
        while not banner or not banner[-1].startswith("Serving"):
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            assert line, "fake-server ended early"
            banner.append(line.decode().rstrip("\n"))
        text = "\n".join(banner)
        base_url = re.search(r"export PLAINID_BASE_URL=(\S+)", text)
        assert base_url is not None
        assert "test-client" in text
        assert "test-secret" in text
        form = {
            "grant_type": "client_credentials",
            "client_id": "test-client",
            "client_secret": "test-secret",
        }
        async with aiohttp.ClientSession() as session:
            token_url = f"{base_url.group(1)}/api/1.0/api-key/token"
            async with session.post(token_url, data=form) as response:
                assert response.status == 200
                body = await response.json()
            assert body["expires_in"] == 120
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            async with session.get(f"{base_url.group(1)}/anything", headers=headers) as response:
                assert response.status == 200
        # The printed export line is ready to use by the token command.
        env = dict(re.findall(r"(PLAINID_\w+)=(\S+)", banner[-3]))
        result = await run_cli("token", env=env)
        assert result.returncode == 0, result
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "stopped after 2 token requests" in out.decode()


async def test_fake_server_rejects_bad_outage() -> None:
    line = (await run_cli("fake-server", "--outage", "5", "1")).assert_error(2)
    assert "--outage" in line


# -- demo ------------------------------------------------------------------------------


async def test_demo_finishes_with_no_failed_request() -> None:
    started = time.monotonic()
    result = await run_cli("demo", "--seconds", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 20
    out = result.stdout
    assert re.search(r"^failed requests +0 ", out, re.MULTILINE), out
    assert re.search(r"^requests that waited on a token +0 ", out, re.MULTILINE), out
    assert re.search(r"^token requests failed in the outage +[1-9]", out, re.MULTILINE), out
    assert re.search(r"^tokens fetched +[2-9]", out, re.MULTILINE), out
    assert "OK: no request failed" in out
    assert result.stderr == ""
    # The last live line and the summary count the same background refreshes.
    live = [line for line in out.splitlines() if re.match(r" *\d+s +[\d,]+ ", line)]
    summary = re.search(r"^background refreshes +(\d+) ", out, re.MULTILINE)
    assert summary is not None, out
    assert _live_cell(live[-1], "refreshes") == summary.group(1), out


def _live_cell(line: str, column: str) -> str:
    """One cell of a plain live line: the columns are right-justified, two spaces apart."""
    start = 0
    for name, width in _demo._LIVE_COLUMNS:
        if name == column:
            return line[start : start + width].strip()
        start += width + 2
    raise KeyError(column)


async def test_demo_exits_1_when_requests_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # The websocket route answers a plain GET with 400: every request fails.
    monkeypatch.setattr(_demo, "RESOURCE_PATH", "ws")
    out = io.StringIO()
    code = await run_demo(DemoOptions(seconds=0.5, workers=2, outage=False), out)
    assert code == 1
    assert "NOT OK" in out.getvalue()
    assert "HTTP 400" in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_demo_live_view_on_a_terminal_uses_rich() -> None:
    out = _Terminal()
    code = await run_demo(DemoOptions(seconds=1, workers=2, outage=False), out)
    assert code == 0
    text = out.getvalue()
    assert "\x1b[" in text  # rich wrote terminal control sequences
    assert "waited on a token" in text
    assert "OK: no request failed" in text


# -- version, missing configuration, one rule per option, the exit-code table --------------


async def test_version_prints_the_package_version() -> None:
    result = await run_cli("--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"plainid-async {pa.__version__}"


async def test_a_checkout_without_package_metadata_says_so_on_version() -> None:
    """`make demo` runs the package from the checkout, where there is no metadata to read.

    ``-S`` leaves site-packages (and with it the installed metadata, aiohttp and attrs) off
    ``sys.path``: ``--version`` needs none of them.
    """
    checkout = Path(pa.__file__).parent.parent
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        "-m",
        "plainid_async",
        "--version",
        cwd=checkout,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_base_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, err) == (0, b"")
    assert out.decode() == "plainid-async (not installed: running from a source checkout)\n"


async def imported_by(
    args: list[str], env: Mapping[str, str] | None = None
) -> tuple[Result, set[str]]:
    """Run ``python -m plainid_async ARGS`` in a new interpreter: its result, and every
    module it imported (written on stderr after the command's own output, then left out)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['plainid-async', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('plainid_async', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "print('\\nimported:', *sorted(sys.modules), file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**_base_env(), **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    stderr, _, imported = err.decode().rpartition("\nimported: ")
    assert imported, stderr  # the command line ran to its end
    return Result(process.returncode, out.decode(), stderr), set(imported.split())


def among(loaded: set[str], packages: Collection[str]) -> set[str]:
    """The modules of ``loaded`` that are one of ``packages`` or inside one."""
    return {
        name
        for name in loaded
        if any(name == package or name.startswith(f"{package}.") for package in packages)
    }


#: What a token request never needs: the demo, the fake, and the optional integrations
#: (plainid_async's modules and the packages behind them), as they are installed for tests.
NOT_FOR_A_TOKEN = (
    "httpx",
    "httpx2",
    "opentelemetry",
    "plainid_async._demo",
    "plainid_async._otel",
    "plainid_async.httpx",
    "plainid_async.otel",
    "plainid_async.redis",
    "plainid_async.testing",
    "redis",
    "rich",
)
#: What no command line without a command, nor a command's --help, may import: all of the
#: above, the library's dependencies, `typing` and `pathlib`, and the modules that run a
#: command or resolve its settings.
HEAVY = (
    *NOT_FOR_A_TOKEN,
    "aiohttp",
    "attrs",
    "pathlib",
    "plainid_async._commands",
    "plainid_async._settings",
    "typing",
    "yarl",
)


#: What ``--version`` loads neither, besides: it wraps no text and asks no terminal width
#: (shutil imports zlib, bz2 and lzma); argparse's own checks get a fixed-width formatter.
NO_HELP_TEXT = ("shutil", "textwrap")


@pytest.mark.parametrize(
    ("args", "unloaded"),
    [
        pytest.param(args, unloaded, id=" ".join(args))
        for args, unloaded in [
            (["--version"], (*HEAVY, *NO_HELP_TEXT)),
            (["--help"], HEAVY),
            (["token", "--help"], HEAVY),
            (["fake-server", "--help"], HEAVY),
            (["demo", "--help"], HEAVY),
        ]
    ],
)
async def test_version_and_help_import_nothing_heavy(
    args: list[str], unloaded: tuple[str, ...]
) -> None:
    result, loaded = await imported_by(args)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith(("plainid-async ", "usage: plainid-async"))
    assert "plainid_async._cli" in loaded
    assert among(loaded, unloaded) == set()


async def test_token_imports_only_what_a_token_request_needs(
    fake: FakePlainID, env: dict[str, str]
) -> None:
    installed = [name for name in NOT_FOR_A_TOKEN if importlib.util.find_spec(name) is not None]
    # Each is importable here, so the child could have imported it: the check can fail.
    assert installed == list(NOT_FOR_A_TOKEN)
    result, loaded = await imported_by(["token"], env)
    assert result.returncode == 0, result
    assert result.stdout.strip() == fake.issued_tokens[-1]
    assert "aiohttp" in loaded  # the token request itself
    assert among(loaded, NOT_FOR_A_TOKEN) == set()


async def test_missing_id_and_region_are_named_together_when_the_secret_is_set() -> None:
    line = (await run_cli("token", env={"PLAINID_CLIENT_SECRET": SECRET})).assert_error(2)
    assert "PLAINID_CLIENT_ID" in line
    assert "PLAINID_REGION" in line
    assert "client secret" not in line


async def test_timeout_minus_one_and_zero_state_the_same_rule(env: dict[str, str]) -> None:
    messages = []
    for value in ("-1", "0"):
        line = (await run_cli("token", "--timeout", value, env=env)).assert_error(2)
        messages.append(line.replace(f"'{value}'", "VALUE"))
    assert messages[0] == messages[1]
    assert "> 0" in messages[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("token", "--timeout", "nan"), seconds_problem(math.nan, allow_zero=False)),
        (("token", "--attempts", "0"), count_problem(0)),
        (("fake-server", "--latency", "-1"), seconds_problem(-1, allow_zero=True)),
        (("fake-server", "--fail-first", "-1"), count_problem(-1, minimum=0)),
        (("fake-server", "--expires-in", "1e10"), lifetime_problem(1e10)),
        (("demo", "--expires-in", "1e10"), lifetime_problem(1e10)),
        (("demo", "--workers", "x"), count_problem("x")),
    ],
    ids=" ".join,
)
async def test_option_values_are_refused_in_the_words_of_the_library_rule(
    args: tuple[str, ...], words: str
) -> None:
    line = (await run_cli(*args)).assert_error(2)
    assert f"argument {args[1]}: '{args[2]}' {words}" in line


async def test_wrong_base_url_exits_4_and_says_check_region_or_base_url(
    fake: FakePlainID, env: dict[str, str]
) -> None:
    env["PLAINID_BASE_URL"] = str(fake.base_url / "wrong-prefix")
    line = (await run_cli("token", env=env)).assert_error(4)
    assert "HTTP 404" in line
    assert "check region or base_url" in line
    assert "rejected the client credentials" not in line


@pytest.fixture
def library_logger() -> Iterator[logging.Logger]:
    """The library's logger, put back as it was after the test."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_main_twice_leaves_one_log_handler(
    library_logger: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("PLAINID_")]:
        monkeypatch.delenv(name)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    before = len(library_logger.handlers)
    args = ["token", "--client-id", CLIENT_ID, "--client-secret-file", str(secret_file)]
    args += ["--base-url", f"http://127.0.0.1:{free_port()}", "--attempts", "1"]
    for verbose in ([], ["-v"]):
        assert _cli.main([*args, *verbose]) == _cli.EXIT_UNAVAILABLE
    assert len(library_logger.handlers) == before + 1


@pytest.mark.parametrize("command", [None, "token", "fake-server", "demo"])
async def test_help_lists_the_exit_codes_from_the_one_table(command: str | None) -> None:
    result = await help_of(*([command] if command else []))
    assert result.returncode == 0, result
    assert _cli.exit_codes_help(command) in result.stdout
    for row in _cli.EXIT_CODES:
        listed = re.search(rf"^  {row.status} ", result.stdout, re.MULTILINE) is not None
        assert listed == (command is None or command in row.commands), (command, row.status)


def test_docs_exit_code_table_is_the_one_table() -> None:
    """docs/cli.md shows EXIT_CODES, row for row (regenerate it from the table)."""
    page = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\d+)` \| (.*) \|$", page, re.MULTILINE)
    expected = [(str(row.status), row.meaning) for row in _cli.EXIT_CODES]
    assert rows == expected


# -- demo: a short run, the live view's layout ------------------------------------------------


async def test_demo_too_short_for_the_outage_never_announces_one() -> None:
    assert not _demo.outage_fits(DemoOptions(seconds=3))
    assert _demo.outage_fits(DemoOptions(seconds=6))
    out = io.StringIO()
    assert await run_demo(DemoOptions(seconds=3, workers=2), out) == 0
    text = out.getvalue()
    assert "too short for an outage" in text
    assert "an outage of it is injected" not in text
    assert "scheduled" not in text
    assert "failed in the outage" not in text


def _snapshot() -> _demo.Snapshot:
    return _demo.Snapshot(
        elapsed=7.5, requests=12_345, rate=800.0, failures=0, waits=0, unauthorized=0,
        token_requests=9, token_ok=6, token_errors=3, tokens_fetched=6,
        background_refreshes=6, refresh_failures=1, p50=2.0, p99=7.0, max=17.0,
        endpoint_down=True,
    )  # fmt: skip


LONG_EVENTS = [
    f"t={i:5.2f}s  WARNING: token fetch failed: token endpoint answered HTTP 503: Service "
    "Unavailable (gave up after 3 attempts); retrying with backoff"
    for i in range(12)
] + ["t=12.00s  token fetched from the token endpoint (expires in 5 s)"]


def test_demo_live_view_fits_80x24_with_whole_events() -> None:
    console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True)
    view = _demo._RichView(console, 15)
    lines = console.render_lines(view._render(_snapshot(), LONG_EVENTS), pad=False)
    text = ["".join(segment.text for segment in line).rstrip() for line in lines]
    assert len(text) <= 24, "\n".join(text)
    assert all(len(line) <= 80 for line in text)
    assert text[-1].startswith("╰"), "the events panel is cut"
    start = next(i for i, line in enumerate(text) if "events" in line)
    inner = [line.strip("│ ").rstrip() for line in text[start + 1 : -1]]
    assert inner[-1] == LONG_EVENTS[-1]  # the newest event shows, whole
    shown: list[str] = []
    for line in inner:  # continuation lines are indented under the text of their event
        if line.startswith("t="):
            shown.append(line)
        else:
            shown[-1] += " " + line.strip()
    assert len(shown) >= 3
    assert all(event in LONG_EVENTS for event in shown), shown  # never broken mid-word


# -- token: proxies, as curl reads them ------------------------------------------------------


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    running = TinyProxy(tmp_path, login="cli-proxy", password=PROXY_PASSWORD)
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    async with TokenServer() as running:
        yield running


@pytest.fixture
def server_env(server: TokenServer) -> dict[str, str]:
    return {
        "PLAINID_CLIENT_ID": CLIENT_ID,
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_BASE_URL": str(server.base_url),
    }


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
async def test_token_goes_through_the_proxy_the_environment_names(
    server: TokenServer, server_env: dict[str, str], proxy: TinyProxy, variable: str
) -> None:
    result = await run_cli("token", env={**server_env, variable: proxy.url_with_credentials})
    assert result.returncode == 0, result
    assert server.via_proxy == [True]
    result.assert_clean(PROXY_PASSWORD)


async def test_token_skips_the_proxy_for_a_host_no_proxy_lists(
    server: TokenServer, server_env: dict[str, str], proxy: TinyProxy
) -> None:
    proxy_env = {"HTTP_PROXY": proxy.url_with_credentials, "NO_PROXY": "localhost,127.0.0.1"}
    result = await run_cli("token", env={**server_env, **proxy_env})
    assert result.returncode == 0, result
    assert server.via_proxy == [False]


async def test_token_proxy_flag_wins_and_empty_means_direct(
    server: TokenServer, server_env: dict[str, str], proxy: TinyProxy
) -> None:
    result = await run_cli("token", "--proxy", proxy.url_with_credentials, env=server_env)
    assert result.returncode == 0, result
    unreachable = {"HTTP_PROXY": "http://127.0.0.1:1"}
    result = await run_cli("token", "--proxy", "", env={**server_env, **unreachable})
    assert result.returncode == 0, result
    assert server.via_proxy == [True, False]  # the second went direct


async def test_proxy_asking_for_credentials_exits_4_with_one_clear_line(
    server: TokenServer, server_env: dict[str, str], proxy: TinyProxy
) -> None:
    result = await run_cli(
        "token", env={**server_env, "HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url}
    )
    line = result.assert_error(4)
    assert "wants credentials" in line
    assert "give them in HTTP_PROXY" in line  # the token URL is http
    assert server.headers == []


async def test_invalid_proxy_flag_exits_2_without_its_password(env: dict[str, str]) -> None:
    result = await run_cli("token", "--proxy", f"socks5://u:{PROXY_PASSWORD}@127.0.0.1:1", env=env)
    line = result.assert_error(2)
    assert "--proxy='socks5://127.0.0.1:1'" in line
    result.assert_clean(PROXY_PASSWORD)


async def test_proxy_flag_asking_for_credentials_says_to_give_them_in_the_flag(
    server: TokenServer, server_env: dict[str, str], proxy: TinyProxy
) -> None:
    line = (await run_cli("token", "--proxy", proxy.url, env=server_env)).assert_error(4)
    assert "give them in --proxy as http://USER:PASSWORD@HOST:PORT" in line
    assert server.headers == []


async def test_invalid_proxy_variable_exits_2_naming_it_without_its_password(
    env: dict[str, str],
) -> None:
    bad = {"HTTP_PROXY": f"ftp://u:{PROXY_PASSWORD}@127.0.0.1:1"}
    line = (await run_cli("token", env={**env, **bad})).assert_error(2)
    assert "HTTP_PROXY" in line


# -- first errors: one plain sentence with the next step; details only with -v -------------

#: A transport class name, such as ClientConnectorError or SSLError.
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    import socket  # noqa: PLC0415

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


async def test_refused_connection_says_nothing_listens_and_what_to_check(
    env: dict[str, str],
) -> None:
    port = free_port()
    env["PLAINID_BASE_URL"] = f"http://127.0.0.1:{port}"
    line = (await run_cli("token", "--attempts", "1", env=env)).assert_error(4)
    assert f"nothing accepts connections on 127.0.0.1:{port}: check the base URL" in line
    assert not CLASS_NAME.search(line), line


async def test_https_to_an_http_server_says_the_tls_handshake_failed(
    fake: FakePlainID, env: dict[str, str]
) -> None:
    env["PLAINID_BASE_URL"] = str(fake.base_url).replace("http://", "https://")
    line = (await run_cli("token", "--attempts", "1", env=env)).assert_error(4)
    assert f"the TLS handshake with 127.0.0.1:{fake.base_url.port} failed" in line
    assert "http:// base URL" in line
    assert not CLASS_NAME.search(line), line
    assert fake.token_requests == []


async def test_a_host_name_that_does_not_resolve_says_so(env: dict[str, str]) -> None:
    # .invalid never resolves (RFC 6761): the resolver answers without sending anything out.
    env["PLAINID_BASE_URL"] = "https://nonexistent.invalid"
    line = (await run_cli("token", "--attempts", "1", env=env)).assert_error(4)
    assert "cannot resolve the host name nonexistent.invalid: check the base URL" in line
    assert not CLASS_NAME.search(line), line


async def test_no_answer_says_how_long_it_waited_and_how_to_wait_longer(
    env: dict[str, str], silent_port: int
) -> None:
    env["PLAINID_BASE_URL"] = f"http://127.0.0.1:{silent_port}"
    args = ("token", "--attempts", "1", "--timeout", "0.5")
    line = (await run_cli(*args, env=env)).assert_error(4)
    assert "no answer from 127.0.0.1 within 0.5 s" in line
    assert "--timeout SECONDS" in line
    assert not CLASS_NAME.search(line), line


async def test_verbose_adds_the_transport_detail_to_the_sentence(env: dict[str, str]) -> None:
    env["PLAINID_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
    result = await run_cli("token", "--attempts", "1", "-v", env=env)
    assert result.returncode == 4
    result.assert_clean()
    last = result.stderr.splitlines()[-1]
    assert last.startswith("plainid-async token: error: nothing accepts connections on")
    assert "(detail: token request to" in last
    assert "ClientConnectorError" in last


@pytest.mark.parametrize(
    ("args", "changes", "expected"),
    [
        pytest.param(("--region", "US1"), {}, "region='US1'", id="flag"),
        pytest.param(("--region", "us-1"), {}, "region='us-1'", id="dash"),
        pytest.param((), {"PLAINID_BASE_URL": None, "PLAINID_REGION": "Us1"}, "region=", id="env"),
    ],
)
async def test_a_region_typo_is_one_configuration_error_with_a_did_you_mean(
    fake: FakePlainID,
    env: dict[str, str],
    args: tuple[str, ...],
    changes: dict[str, str | None],
    expected: str,
) -> None:
    for name, value in changes.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    line = (await run_cli("token", *args, env=env)).assert_error(2)
    assert line.startswith(f"plainid-async token: configuration error: {expected}")
    assert line.endswith("; did you mean --region us1?")
    assert line.count("error") == 1
    assert fake.token_requests == []


async def test_missing_settings_are_one_configuration_error_naming_every_variable(
    fake: FakePlainID,
) -> None:
    line = (await run_cli("token")).assert_error(2)
    assert line.startswith("plainid-async token: configuration error: missing client id")
    for name in ("PLAINID_CLIENT_ID", "PLAINID_CLIENT_SECRET", "PLAINID_REGION"):
        assert name in line
    assert "did you mean" not in line
    assert fake.token_requests == []


async def test_help_and_docs_state_that_the_cli_reads_proxy_variables_and_the_library_not() -> None:
    result = await help_of("token")
    assert result.returncode == 0
    assert _cli.PROXY_DIFFERENCE in " ".join(result.stdout.split())
    docs = Path(__file__).parent.parent / "docs" / "cli.md"
    assert _cli.PROXY_DIFFERENCE in " ".join(docs.read_text().split())


# -- --cafile: a CA bundle to trust for the token request ------------------------------------


@pytest.fixture
async def https_fake(ca: trustme.CA) -> AsyncIterator[FakePlainID]:
    context = server_tls(ca)
    async with FakePlainID(
        client_id=CLIENT_ID, client_secret=SECRET, ssl_context=context
    ) as server:
        yield server


@pytest.fixture
def https_env(https_fake: FakePlainID) -> dict[str, str]:
    assert https_fake.base_url.scheme == "https"
    return {
        "PLAINID_CLIENT_ID": CLIENT_ID,
        "PLAINID_CLIENT_SECRET": SECRET,
        "PLAINID_BASE_URL": str(https_fake.base_url),
    }


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_cafile_trusts_a_private_ca_for_the_token_request(
    https_fake: FakePlainID, https_env: dict[str, str], ca_file: Path
) -> None:
    result = await run_cli("token", "--cafile", str(ca_file), env=https_env)
    assert result.returncode == 0, result
    assert result.stdout.strip() == https_fake.issued_tokens[-1]


async def test_ssl_cert_file_trusts_a_private_ca_too(
    https_fake: FakePlainID, https_env: dict[str, str], ca_file: Path
) -> None:
    result = await run_cli("token", env={**https_env, "SSL_CERT_FILE": str(ca_file)})
    assert result.returncode == 0, result
    assert result.stdout.strip() == https_fake.issued_tokens[-1]


async def test_an_untrusted_certificate_says_to_give_its_ca_with_cafile(
    https_fake: FakePlainID, https_env: dict[str, str]
) -> None:
    line = (await run_cli("token", env=https_env)).assert_error(4)
    assert "the TLS certificate of 127.0.0.1 is not trusted" in line
    assert "--cafile PATH" in line
    assert not CLASS_NAME.search(line), line
    assert https_fake.token_requests == []


async def test_cafile_trusts_only_its_own_cas(
    https_fake: FakePlainID, https_env: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    line = (await run_cli("token", "--cafile", str(other), env=https_env)).assert_error(4)
    assert "is not trusted" in line
    assert https_fake.token_requests == []


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
async def test_a_cafile_that_holds_no_ca_is_a_configuration_error(
    https_env: dict[str, str], tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    line = (await run_cli("token", "--cafile", str(path), env=https_env)).assert_error(2)
    assert line.startswith(f"plainid-async token: configuration error: --cafile {path}:")
