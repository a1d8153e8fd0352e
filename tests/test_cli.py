"""The plainid-async command line, run as a subprocess against FakePlainID."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING

import aiohttp
import attrs
import pytest
from _proxy import PROXY_VARIABLES, TinyProxy, TokenServer

from plainid_async import _demo
from plainid_async._demo import DemoOptions, run_demo
from plainid_async.testing import FakePlainID, FakeResponse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping
    from pathlib import Path

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
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PLAINID_") and k not in PROXY_VARIABLES
    }


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
    result = await run_cli("token", "--help")
    assert result.returncode == 0
    for text in ("exit codes", "0  the token", "2  usage", "3  PlainID", "4  the token endpoint"):
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
    assert server.headers == []


async def test_invalid_proxy_flag_exits_2_without_its_password(env: dict[str, str]) -> None:
    result = await run_cli("token", "--proxy", f"socks5://u:{PROXY_PASSWORD}@127.0.0.1:1", env=env)
    line = result.assert_error(2)
    assert "proxy" in line
    result.assert_clean(PROXY_PASSWORD)


async def test_invalid_proxy_variable_exits_2_naming_it_without_its_password(
    env: dict[str, str],
) -> None:
    bad = {"HTTP_PROXY": f"ftp://u:{PROXY_PASSWORD}@127.0.0.1:1"}
    line = (await run_cli("token", env={**env, **bad})).assert_error(2)
    assert "HTTP_PROXY" in line
