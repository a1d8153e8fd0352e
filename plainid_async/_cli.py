"""The ``plainid-async`` command line: ``token``, ``fake-server`` and ``demo``.

Argument parsing and the two small commands live here; the demo workload is in
:mod:`plainid_async._demo`. Every command reports errors as one line on stderr and a
documented exit code, never a traceback, never the client secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, NoReturn

import attrs

from ._checks import count_problem, seconds_problem
from ._endpoint import RetryPolicy
from ._log import LOGGER_NAME
from ._provider import TokenProvider
from ._proxy import proxy_from_env
from ._secret import Secret, redact
from ._settings import (
    ENV_BASE_URL,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_CLIENT_SECRET_FILE,
    ENV_REGION,
    Flags,
    Settings,
    read_secret_file,
    strip_one_newline,
)
from ._token import lifetime_problem
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    PlainIDError,
    TokenRequestError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._token import Token
    from .testing import FakePlainID

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_CREDENTIALS",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "PROG",
    "build_parser",
    "main",
]

PROG: Final = "plainid-async"

#: Success.
EXIT_OK: Final = 0
#: The demo's claims did not hold, or an unexpected error.
EXIT_FAILURE: Final = 1
#: Usage or configuration error (bad flag, missing variable, invalid region, unreadable file).
EXIT_CONFIG: Final = 2
#: PlainID rejected the client credentials.
EXIT_CREDENTIALS: Final = 3
#: The token endpoint was unavailable (after retries) or answered an invalid token response.
EXIT_UNAVAILABLE: Final = 4
#: Interrupted (SIGINT), as shells report it.
EXIT_INTERRUPTED: Final = 130

_COMMANDS: Final = ("token", "fake-server", "demo")


@attrs.frozen
class ExitCode:
    """One row of the exit-code table: a status, what it means, and per command.

    Attributes:
        status: The exit status.
        meaning: What it means for the command line as a whole (``--help``).
        commands: What it means for each command whose ``--help`` lists it; a command
            missing here never exits with this status.
    """

    status: int
    meaning: str
    commands: Mapping[str, str]


_USAGE: Final = "usage or configuration error"
_UNEXPECTED: Final = "an unexpected error (still one line on stderr)"

#: Every exit status of every command, written once: the ``--help`` texts and
#: docs/cli.md are built from it (tests/test_cli.py keeps the page in step).
EXIT_CODES: Final = (
    ExitCode(
        EXIT_OK,
        "success",
        {
            "token": "the token was printed",
            "fake-server": "stopped by SIGINT (Ctrl-C) or SIGTERM",
            "demo": "no request failed and none waited on a token refresh",
        },
    ),
    ExitCode(
        EXIT_FAILURE,
        "the demo's claims did not hold, the fake server could not start, or an unexpected error",
        {
            "token": _UNEXPECTED,
            "fake-server": "the server could not start (e.g. the port is in use)",
            "demo": "some request failed or waited (the summary says which)",
        },
    ),
    ExitCode(
        EXIT_CONFIG,
        f"{_USAGE}: unknown or invalid option, missing variable, invalid region or base "
        "URL, unreadable secret file, a secret given as a flag",
        dict.fromkeys(_COMMANDS, _USAGE),
    ),
    ExitCode(
        EXIT_CREDENTIALS,
        "PlainID rejected the client credentials or refused the request (HTTP 400, 401 or "
        "403; the message quotes the server's code)",
        {"token": "PlainID rejected the client credentials or refused the request"},
    ),
    ExitCode(
        EXIT_UNAVAILABLE,
        "the token endpoint was unavailable after the retries (connection error, timeout, "
        "408, 429, 5xx), a proxy wants credentials (407), answered an error such as 404 "
        "(check region or base_url), or answered a 200 that is not a valid token response",
        {
            "token": "the token endpoint was unavailable, a proxy wants credentials (407), "
            "it answered an error such as 404 (check region or base_url), or its answer was "
            "not a valid token response",
        },
    ),
    ExitCode(
        EXIT_INTERRUPTED,
        "interrupted (SIGINT)",
        dict.fromkeys(("token", "demo"), "interrupted (SIGINT)"),
    ),
)


def exit_codes_help(command: str | None = None) -> str:
    """The "exit codes:" section of ``--help``, from :data:`EXIT_CODES`.

    Args:
        command: A command name, or ``None`` for the program as a whole.

    Returns:
        The section, one line per status (long meanings wrapped and indented).
    """
    lines = ["exit codes:"]
    for row in EXIT_CODES:
        meaning = row.meaning if command is None else row.commands.get(command)
        if meaning is None:
            continue
        prefix = f"  {row.status:<3} "
        lines += textwrap.wrap(
            meaning, width=88, initial_indent=prefix, subsequent_indent=" " * len(prefix)
        )
    return "\n".join(lines)


_SECRET_FLAG_REFUSED: Final = (
    "--client-secret is not accepted: other users of this machine can read command-line "
    f"arguments; set {ENV_CLIENT_SECRET}, or use --client-secret-file PATH or "
    "--client-secret-stdin"
)

_TOKEN_EPILOG: Final = f"""\
configuration (flags win over the environment):
  {ENV_CLIENT_ID}      or --client-id ID
  {ENV_CLIENT_SECRET}  or {ENV_CLIENT_SECRET_FILE} (a file holding it),
                         or --client-secret-file PATH, or --client-secret-stdin
                         (never a flag value: other users can read process arguments)
  {ENV_REGION}         or --region REGION      (https://api.REGION.plainid.io)
  {ENV_BASE_URL}       or --base-url URL       (a customer-hosted deployment)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY  as curl reads them, or --proxy URL ('' for none)

{exit_codes_help("token")}

examples:
  export {ENV_CLIENT_ID}=... {ENV_REGION}=us1
  {PROG} token --client-secret-file ~/.plainid-secret
  curl -H "$({PROG} token --format header)" https://api.us1.plainid.io/env-mgmt/1.0/api-key/clients
"""

_FAKE_EPILOG: Final = f"""\
It accepts client id "test-client" with secret "test-secret" (fake credentials) and prints a
ready "export {ENV_BASE_URL}=..." line. Any path other than the token endpoint is a
protected resource: 200 with a valid bearer token, else 401; a token request sent to
another path gets 404, as a wrong base URL would.

{exit_codes_help("fake-server")}

example:
  {PROG} fake-server --port 8300 --expires-in 60 --outage 30 45
"""

_DEMO_EPILOG: Final = f"""\
The demo never contacts PlainID and ignores PLAINID_* variables: it runs on an embedded
FakePlainID. It uses rich for a live view when rich is installed (plainid-async[rich]) and
stdout is a terminal; otherwise it prints one plain line per second.

{exit_codes_help("demo")}
"""


_INVALID_CHOICE: Final = re.compile(r"invalid choice: '.*?' \(", re.DOTALL)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line and exit with :data:`EXIT_CONFIG`."""
        if self.prog == PROG:
            # In "plainid-async --client-secret VALUE token", VALUE lands where the command
            # name goes: name the mistake without echoing the value.
            message = _INVALID_CHOICE.sub("invalid choice (", message)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


class _ExitError(Exception):
    """Stop a command with a one-line message and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _VersionAction(argparse.Action):
    """``--version``: reads the package metadata only when asked, not on every parse.

    The demo runs from a checkout without the package installed (``make demo``), where there
    is no metadata to read.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:  # noqa: A002 (argparse's name)
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,  # noqa: ARG002 (argparse's signature)
        values: object,  # noqa: ARG002
        option_string: str | None = None,  # noqa: ARG002
    ) -> None:
        """Print the version and exit."""
        from importlib.metadata import PackageNotFoundError  # noqa: PLC0415

        try:
            from . import __version__  # noqa: PLC0415 (read from the package metadata on demand)
        except PackageNotFoundError:
            __version__ = "(not installed: running from a source checkout)"
        sys.stdout.write(f"{parser.prog} {__version__}\n")  # on stdout, as argparse's own
        parser.exit()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _number(text: str) -> float | str:
    """``text`` as a float, or as it is when it is no number (the rule then says so)."""
    try:
        return float(text)
    except ValueError:
        return text


def _checked(text: str, problem: str | None) -> None:
    # The library's own words for the rule, beside the value as it was typed.
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")


def _seconds(text: str, *, allow_zero: bool = True) -> float:
    """Argparse type: a number of seconds, by the library's rule (>= 0, or > 0)."""
    value = _number(text)
    _checked(text, seconds_problem(value, allow_zero=allow_zero))
    return float(value)


def _positive_seconds(text: str) -> float:
    """Argparse type: a number of seconds > 0."""
    return _seconds(text, allow_zero=False)


def _lifetime(text: str) -> float:
    """Argparse type: a token lifetime, by the library's rule for ``expires_in``."""
    value = _number(text)
    _checked(text, lifetime_problem(value))
    return float(value)


def _integer(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _count(text: str, *, minimum: int = 1) -> int:
    """Argparse type: an integer >= ``minimum``, by the library's rule for counts."""
    value = _integer(text)
    _checked(text, count_problem(value, minimum=minimum))
    return int(value)


def _positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    return _count(text)


def _non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    return _count(text, minimum=0)


def _int_between(text: str, low: int, high: int, what: str) -> int:
    value = _integer(text)
    if not isinstance(value, int) or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low} to {high})")
    return value


def _port(text: str) -> int:
    """Argparse type: a TCP port, 0 for any free one."""
    return _int_between(text, 0, 65535, "a port number")


def _status(text: str) -> int:
    """Argparse type: an HTTP error status the fake can answer."""
    return _int_between(text, 400, 599, "an HTTP error status")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``plainid-async`` argument parser.

    Returns:
        The parser, with one subcommand each for ``token``, ``fake-server`` and ``demo``.
    """
    parser = _Parser(
        prog=PROG,
        description="PlainID access tokens from the command line, a local fake PlainID,\n"
        "and a demo of refresh-ahead token handling.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f'{exit_codes_help()}\n\nRun "{PROG} COMMAND --help" for the options of a command.',
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    token = commands.add_parser(
        "token",
        help="print an access token (for scripts and curl)",
        description="Get a PlainID access token (OAuth2 client credentials) and print it on\n"
        "stdout, and nothing else.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_TOKEN_EPILOG,
    )
    token.add_argument(
        "--format",
        choices=("token", "header", "json"),
        default="token",
        help="token: the bare access token (default); header: 'Authorization: Bearer ...'; "
        "json: access_token, token_type and expires_in",
    )
    token.add_argument("--client-id", metavar="ID", help=f"API client id [{ENV_CLIENT_ID}]")
    location = token.add_mutually_exclusive_group()
    location.add_argument(
        "--region", metavar="REGION", help=f"PlainID region such as us1, ca1, eu1 [{ENV_REGION}]"
    )
    location.add_argument(
        "--base-url",
        metavar="URL",
        help=f"base URL of a customer-hosted deployment (https) [{ENV_BASE_URL}]",
    )
    secret = token.add_mutually_exclusive_group()
    secret.add_argument(
        "--client-secret-file",
        metavar="PATH",
        type=Path,
        help="read the client secret from this file (one trailing newline is ignored)",
    )
    secret.add_argument(
        "--client-secret-stdin",
        action="store_true",
        help="read the client secret from standard input (one trailing newline is ignored)",
    )
    # Not an option: it is here to refuse the secret on the command line without echoing it.
    secret.add_argument(
        "--client-secret", dest="secret_flag", nargs="?", const="", help=argparse.SUPPRESS
    )
    token.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=30.0,
        help="give up after this long, retries included (default: %(default)g)",
    )
    token.add_argument(
        "--proxy",
        metavar="URL",
        default=None,
        help="HTTP proxy for the token request, http://[USER:PASSWORD@]HOST:PORT; an empty "
        "value connects directly (default: HTTPS_PROXY / HTTP_PROXY unless NO_PROXY lists "
        "the host, as curl does)",
    )
    token.add_argument(
        "--attempts",
        metavar="N",
        type=_positive_int,
        default=4,
        help="token requests at most, for connection errors, timeouts, 429 and 5xx "
        "(default: %(default)d)",
    )
    token.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log token requests and retries on stderr (-vv: debug)",
    )

    fake = commands.add_parser(
        "fake-server",
        help="run a fake PlainID token endpoint on 127.0.0.1 for local development",
        description="Serve a fake PlainID token endpoint and protected API on 127.0.0.1\n"
        "until interrupted, to develop and test services locally.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_FAKE_EPILOG,
    )
    fake.add_argument(
        "--port", type=_port, default=0, help="TCP port; 0 picks a free one (default: 0)"
    )
    fake.add_argument(
        "--expires-in",
        metavar="SECONDS",
        type=_lifetime,
        default=3600.0,
        help="lifetime of the tokens it issues (default: %(default)g)",
    )
    fake.add_argument(
        "--latency",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help="delay before answering each token request (default: 0)",
    )
    fake.add_argument(
        "--fail-first",
        metavar="N",
        type=_non_negative_int,
        default=0,
        help="answer the first N token requests with --error-status",
    )
    fake.add_argument(
        "--outage",
        metavar=("START", "END"),
        nargs=2,
        type=_seconds,
        action="append",
        default=[],
        help="answer token requests with --error-status from START to END seconds after "
        "the server starts (repeatable)",
    )
    fake.add_argument(
        "--error-status",
        metavar="STATUS",
        type=_status,
        default=503,
        help="status of --fail-first and --outage answers (default: 503; 401 rejects the "
        "credentials)",
    )
    fake.add_argument(
        "-q", "--quiet", action="store_true", help="do not print a line per token request"
    )

    demo = commands.add_parser(
        "demo",
        help="show refresh-ahead tokens under load, on an embedded fake PlainID",
        description="Drive concurrent requests through TokenProvider.session() against an\n"
        "embedded FakePlainID with short-lived tokens and an outage of its token endpoint\n"
        "inside a refresh window, and show that no request fails or waits on a token.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_DEMO_EPILOG,
    )
    demo.add_argument(
        "--seconds",
        metavar="N",
        type=_positive_seconds,
        default=8.0,
        help="how long the workload runs (default: %(default)g)",
    )
    demo.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        default=20,
        help="concurrent workers (default: %(default)d)",
    )
    demo.add_argument(
        "--expires-in",
        metavar="SECONDS",
        type=_lifetime,
        default=5.0,
        help="lifetime of the fake's tokens (default: %(default)g)",
    )
    demo.add_argument(
        "--no-outage",
        dest="outage",
        action="store_false",
        help="do not inject the token endpoint outage",
    )
    demo.add_argument(
        "--plain",
        action="store_true",
        help="print plain lines even on a terminal with rich installed",
    )
    return parser


# -- token -------------------------------------------------------------------------------


#: How ``token`` names each setting besides its variables, in the "missing" message.
_FLAGS: Final = Flags(
    client_id="--client-id",
    secret="--client-secret-file PATH or --client-secret-stdin",  # noqa: S106 (flag names)
    location="--region or --base-url",
)


def _flag_secret(args: argparse.Namespace, stdin: IO[str]) -> Secret | None:
    """The client secret a flag names (a file, or stdin); ``None`` when no flag does."""
    if args.client_secret_file is not None:
        try:
            return Secret(read_secret_file(args.client_secret_file, source="--client-secret-file"))
        except ConfigurationError as exc:
            raise _ExitError(EXIT_CONFIG, str(exc)) from None
    if args.client_secret_stdin:
        try:
            # Wrapped at once: no frame here holds the secret in a plain local.
            secret = Secret(strip_one_newline(stdin.read()))
        except (OSError, UnicodeDecodeError):
            raise _ExitError(EXIT_CONFIG, "cannot read the client secret from stdin") from None
        if not secret.reveal().strip():
            raise _ExitError(EXIT_CONFIG, "--client-secret-stdin: standard input is empty")
        return secret
    return None


def _settings(args: argparse.Namespace, stdin: IO[str]) -> Settings:
    """The settings from the flags, then the environment (the resolver from_env uses)."""
    try:
        return Settings.from_environ(
            client_id=args.client_id,
            client_secret=_flag_secret(args, stdin),
            region=args.region,
            base_url=args.base_url,
            flags=_FLAGS,
        )
    except ConfigurationError as exc:
        raise _ExitError(EXIT_CONFIG, str(exc)) from None


def _build_provider(args: argparse.Namespace, settings: Settings) -> TokenProvider:
    # The timeout bounds the whole command; one attempt gets at most 10 s of it, so a hung
    # connection still leaves time for a retry.
    timeout: float = args.timeout
    retry = RetryPolicy(attempts=args.attempts, deadline=timeout)
    # As curl: --proxy wins ('' meaning none), else the environment's proxy variables.
    proxy: str | None = args.proxy or None
    provider = TokenProvider(
        settings.client_id,
        settings.client_secret,
        region=settings.region,
        base_url=settings.base_url,
        timeout=min(timeout, 10.0),
        retry=retry,
        proxy=proxy,
        trust_env=args.proxy is None,
    )
    if args.proxy is None:
        proxy_from_env(provider.token_url)  # a bad HTTPS_PROXY is a configuration error (2)
    return provider


def _render_token(token: Token, output_format: str) -> str:
    if output_format == "header":
        return f"Authorization: {token.authorization}"
    if output_format == "json":
        expires_in = token.expires_in
        return json.dumps(
            {
                "access_token": token.access_token,
                "token_type": token.token_type,
                "expires_in": int(expires_in) if expires_in.is_integer() else expires_in,
            }
        )
    return token.access_token


async def _fetch_token(provider: TokenProvider) -> Token:
    async with provider:
        return await provider.get_token()


class _CLIHandler(logging.StreamHandler[IO[str]]):
    """The command line's log handler; ``main()`` replaces it rather than adding another."""


def _configure_logging(verbosity: int) -> None:
    library = logging.getLogger(LOGGER_NAME)
    for previous in [h for h in library.handlers if isinstance(h, _CLIHandler)]:
        library.removeHandler(previous)
    # Quiet, failures are reported as one line by the command itself; a handler that
    # drops everything keeps Python's last-resort handler from printing the warnings too.
    handler = _CLIHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    if verbosity <= 0:
        handler.setLevel(logging.CRITICAL + 1)
    else:
        library.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    library.addHandler(handler)
    library.propagate = False


def _run_token(args: argparse.Namespace) -> int:
    if args.secret_flag is not None:
        raise _ExitError(EXIT_CONFIG, _SECRET_FLAG_REFUSED)
    settings = _settings(args, sys.stdin)
    try:
        try:
            provider = _build_provider(args, settings)
        except ConfigurationError as exc:
            raise _ExitError(EXIT_CONFIG, f"configuration error: {exc}") from None
        _configure_logging(args.verbose)
        try:
            token = asyncio.run(_fetch_token(provider))
        except InvalidCredentialsError as exc:
            raise _ExitError(EXIT_CREDENTIALS, str(exc)) from None
        except TokenRequestError as exc:
            raise _ExitError(EXIT_UNAVAILABLE, str(exc)) from None
        except PlainIDError as exc:
            raise _ExitError(EXIT_FAILURE, str(exc)) from None
        except Exception as exc:  # a bug: still one line, still no secret  # noqa: BLE001
            raise _ExitError(
                EXIT_FAILURE, f"unexpected error: {type(exc).__name__}: {exc}"
            ) from None
    except _ExitError as exc:
        # Belt and braces: the library never puts the secret in a message, and we check
        # with the library's own redaction (literal and URL-encoded, never mangling words).
        raise _ExitError(exc.code, redact(str(exc), (settings.client_secret,))) from None
    sys.stdout.write(_render_token(token, args.format) + "\n")
    sys.stdout.flush()
    return EXIT_OK


# -- fake-server -------------------------------------------------------------------------


async def _echo_token_requests(fake: FakePlainID, stop: asyncio.Event) -> None:
    seen = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
        for request in fake.token_requests[seen:]:
            seen += 1
            outcome = "issued a token" if request.status == 200 else f"HTTP {request.status}"
            print(  # noqa: T201 (the server's log)
                f"token request {seen}: client_id={request.client_id!r} -> {outcome}",
                flush=True,
            )


async def _serve_fake(args: argparse.Namespace) -> int:
    from .testing import FakePlainID  # noqa: PLC0415 (only this command needs the server)

    fake = FakePlainID(port=args.port, expires_in=args.expires_in, latency=args.latency)
    try:
        await fake.start()
    except OSError as exc:
        raise _ExitError(
            EXIT_FAILURE, f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    try:
        if args.fail_first > 0:
            fake.fail_next(*[args.error_status] * args.fail_first)
        for start, end in args.outage:
            fake.outage_between(start, end, args.error_status)
        base = str(fake.base_url)
        lines = [
            f"FakePlainID listening on {base} (token endpoint {fake.token_url})",
            f"client id:     {fake.client_id}",
            f"client secret: {fake.client_secret}   (fake credentials)",
            f"tokens expire in {args.expires_in:g} s; any other path is a protected resource",
            "",
            (
                f"unset {ENV_REGION}; export {ENV_BASE_URL}={base} "
                f"{ENV_CLIENT_ID}={fake.client_id} {ENV_CLIENT_SECRET}={fake.client_secret}"
            ),
            "",
            "Serving until Ctrl-C.",
        ]
        print("\n".join(lines), flush=True)  # noqa: T201 (the point of the command)
        if args.quiet:
            await stop.wait()
        else:
            await _echo_token_requests(fake, stop)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        await fake.close()
    print(  # noqa: T201
        f"stopped after {len(fake.token_requests)} token requests and "
        f"{len(fake.resource_requests)} resource requests",
        flush=True,
    )
    return EXIT_OK


def _run_fake_server(args: argparse.Namespace) -> int:
    for start, end in args.outage:
        if not end > start:
            raise _ExitError(EXIT_CONFIG, f"--outage {start:g} {end:g}: END must be after START")
    try:
        return asyncio.run(_serve_fake(args))
    except KeyboardInterrupt:  # where asyncio cannot handle signals (Windows): still a clean stop
        return EXIT_OK


# -- demo --------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run_demo  # noqa: PLC0415 (keeps `token` quick to start)

    options = DemoOptions(
        seconds=args.seconds,
        workers=args.workers,
        expires_in=args.expires_in,
        outage=args.outage,
        plain=args.plain,
    )
    return asyncio.run(run_demo(options))


# -- main --------------------------------------------------------------------------------


def _unrecognized(extras: Sequence[str]) -> str:
    # Only option names are shown: a stray value could be a secret pasted on the command line.
    names = [extra.partition("=")[0] for extra in extras if extra.startswith("--")]
    hidden = len(extras) - len(names)
    shown = ", ".join(names)
    if hidden:
        shown += f"{' and ' if names else ''}{hidden} value(s), not shown"
    return f"unrecognized arguments: {shown}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plainid-async`` command line.

    Args:
        argv: The arguments after the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status, one of :data:`EXIT_CODES`.
    """
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    prog = f"{PROG} {args.command}"
    if extras:
        print(f"{prog}: error: {_unrecognized(extras)} (see --help)", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    commands = {"token": _run_token, "fake-server": _run_fake_server, "demo": _run_demo}
    try:
        return commands[args.command](args)
    except _ExitError as exc:
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)  # noqa: T201
        return exc.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
