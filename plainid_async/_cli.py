"""The ``plainid-async`` command line: ``token``, ``fake-server`` and ``demo``.

Argument parsing and the two small commands live here; the demo workload is in
:mod:`plainid_async._demo`. Every command reports errors as one line on stderr and a
documented exit code, never a traceback, never the client secret.
"""

from __future__ import annotations

# Only argparse is imported with this module: `--version` and `--help` need nothing more,
# and aiohttp alone costs ten bare interpreter starts. A help text imports the variables'
# names (._env), an option's value the library's rule for it (._checks, ._token), and each
# command what it uses (`token` the provider, `fake-server` the fake, `demo` the demo and
# rich); type checkers read the block below (they treat any TYPE_CHECKING as true; `typing`
# itself costs an import).
import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Final, NoReturn

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


class ExitCode:
    """One row of the exit-code table: a status, what it means, and per command.

    A plain class rather than an attrs one: ``--help`` builds the table, and attrs costs
    an import.

    Attributes:
        status: The exit status.
        meaning: What it means for the command line as a whole (``--help``).
        commands: What it means for each command whose ``--help`` lists it; a command
            missing here never exits with this status.
    """

    __slots__ = ("commands", "meaning", "status")

    def __init__(self, status: int, meaning: str, commands: Mapping[str, str]) -> None:
        """Keep the row."""
        self.status: Final = status
        self.meaning: Final = meaning
        self.commands: Final = commands

    def __repr__(self) -> str:
        """``ExitCode(status, meaning)``."""
        return f"ExitCode({self.status!r}, {self.meaning!r})"


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
    import textwrap  # noqa: PLC0415 (only when a help text is built)

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


def secret_flag_refused() -> str:
    from ._env import ENV_CLIENT_SECRET  # noqa: PLC0415 (see the imports above)

    return (
        "--client-secret is not accepted: other users of this machine can read command-line "
        f"arguments; set {ENV_CLIENT_SECRET}, or use --client-secret-file PATH or "
        "--client-secret-stdin"
    )


#: What ``token --help`` and docs/cli.md say of proxies, where the library differs.
PROXY_DIFFERENCE: Final = (
    "Like curl, this command reads HTTPS_PROXY, HTTP_PROXY and NO_PROXY by default; the "
    "library does not: a TokenProvider goes direct unless given proxy= or trust_env=True."
)


def _token_epilog() -> str:
    import textwrap  # noqa: PLC0415

    from ._env import (  # noqa: PLC0415 (see the imports above)
        ENV_BASE_URL,
        ENV_CLIENT_ID,
        ENV_CLIENT_SECRET,
        ENV_CLIENT_SECRET_FILE,
        ENV_REGION,
    )

    proxies = textwrap.fill(PROXY_DIFFERENCE, width=88)
    return f"""\
configuration (flags win over the environment):
  {ENV_CLIENT_ID}      or --client-id ID
  {ENV_CLIENT_SECRET}  or {ENV_CLIENT_SECRET_FILE} (a file holding it),
                         or --client-secret-file PATH, or --client-secret-stdin
                         (never a flag value: other users can read process arguments)
  {ENV_REGION}         or --region REGION      (https://api.REGION.plainid.io)
  {ENV_BASE_URL}       or --base-url URL       (a customer-hosted deployment)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY  as curl reads them, or --proxy URL ('' for none)
  SSL_CERT_FILE        or --cafile PATH        (a CA bundle to trust, PEM)

{proxies}

{exit_codes_help("token")}

examples:
  export {ENV_CLIENT_ID}=... {ENV_REGION}=us1
  {PROG} token --client-secret-file ~/.plainid-secret
  curl -H "$({PROG} token --format header)" https://api.us1.plainid.io/env-mgmt/1.0/api-key/clients
"""


def _main_epilog() -> str:
    return f'{exit_codes_help()}\n\nRun "{PROG} COMMAND --help" for the options of a command.'


def _fake_epilog() -> str:
    from ._env import ENV_BASE_URL  # noqa: PLC0415 (see the imports above)

    return f"""\
It accepts client id "test-client" with secret "test-secret" (fake credentials) and prints a
ready "export {ENV_BASE_URL}=..." line. Any path other than the token endpoint is a
protected resource: 200 with a valid bearer token, else 401; a token request sent to
another path gets 404, as a wrong base URL would.

{exit_codes_help("fake-server")}

example:
  {PROG} fake-server --port 8300 --expires-in 60 --outage 30 45
"""


def _demo_epilog() -> str:
    return f"""\
The demo never contacts PlainID and ignores PLAINID_* variables: it runs on an embedded
FakePlainID. It uses rich for a live view when rich is installed (plainid-async[rich]) and
stdout is a terminal; otherwise it prints one plain line per second.

{exit_codes_help("demo")}
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    A command's options are added only when that command is parsed or its help shown, an
    epilog is written, and the terminal's width asked, only for a text that is shown:
    ``--version`` builds none of them.

    Args:
        *args: As for :class:`argparse.ArgumentParser`.
        fill: Adds the options, on first use.
        help_epilog: Writes the epilog, when a help text is formatted.
        **kwargs: As for :class:`argparse.ArgumentParser`.
    """

    def __init__(
        self,
        *args: Any,  # noqa: ANN401 (argparse's)
        fill: Callable[[_Parser], None] | None = None,
        help_epilog: Callable[[], str] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(*args, **kwargs)
        self._fill = fill
        self._help_epilog = help_epilog

    #: True while a text to show is formatted: only such a text needs the terminal's width.
    _showing = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse also makes a formatter for its own checks (each option as it is added),
        # and a formatter left to find the terminal's width imports shutil, with zlib, bz2
        # and lzma: a fixed width does for texts nobody sees.
        if self._showing:
            return super()._get_formatter()
        return argparse.HelpFormatter(prog=self.prog, width=80)

    def _shown(self, format_text: Callable[[], str]) -> str:
        self._showing = True
        try:
            return format_text()
        finally:
            self._showing = False

    def _filled(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads, one behaviour
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        """Fill the parser in, then parse as argparse does."""
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """Fill the parser in and write its epilog, then format its help as argparse does."""
        self._filled()
        if self._help_epilog is not None:
            self.epilog = self._help_epilog()
        return self._shown(super().format_help)

    def format_usage(self) -> str:
        """Fill the parser in, then format its usage as argparse does."""
        self._filled()
        return self._shown(super().format_usage)

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line and exit with :data:`EXIT_CONFIG`."""
        if self.prog == PROG:
            import re  # noqa: PLC0415 (loaded by argparse already)

            # In "plainid-async --client-secret VALUE token", VALUE lands where the command
            # name goes: name the mistake without echoing the value.
            message = re.sub(
                r"invalid choice: '.*?' \(", "invalid choice (", message, flags=re.DOTALL
            )
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


class ExitError(Exception):
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
        try:
            from . import __version__  # noqa: PLC0415 (read from the package metadata on demand)
        except ImportError:  # importlib.metadata's PackageNotFoundError, without importing it
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
    from ._checks import seconds_problem  # noqa: PLC0415 (see the imports above)

    value = _number(text)
    _checked(text, seconds_problem(value, allow_zero=allow_zero))
    return float(value)


def _positive_seconds(text: str) -> float:
    """Argparse type: a number of seconds > 0."""
    return _seconds(text, allow_zero=False)


def _lifetime(text: str) -> float:
    """Argparse type: a token lifetime, by the library's rule for ``expires_in``."""
    from ._token import lifetime_problem  # noqa: PLC0415 (see the imports above)

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
    from ._checks import count_problem  # noqa: PLC0415 (see the imports above)

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
        help_epilog=_main_epilog,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "token",
        help="print an access token (for scripts and curl)",
        description="Get a PlainID access token (OAuth2 client credentials) and print it on\n"
        "stdout, and nothing else.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fill=_fill_token,
        help_epilog=_token_epilog,
    )

    commands.add_parser(
        "fake-server",
        help="run a fake PlainID token endpoint on 127.0.0.1 for local development",
        description="Serve a fake PlainID token endpoint and protected API on 127.0.0.1\n"
        "until interrupted, to develop and test services locally.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fill=_fill_fake_server,
        help_epilog=_fake_epilog,
    )

    commands.add_parser(
        "demo",
        help="show refresh-ahead tokens under load, on an embedded fake PlainID",
        description="Drive concurrent requests through TokenProvider.session() against an\n"
        "embedded FakePlainID with short-lived tokens and an outage of its token endpoint\n"
        "inside a refresh window, and show that no request fails or waits on a token.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        fill=_fill_demo,
        help_epilog=_demo_epilog,
    )
    return parser


def _fill_token(token: argparse.ArgumentParser) -> None:
    """The options of ``token``."""
    from ._env import ENV_BASE_URL, ENV_CLIENT_ID, ENV_REGION  # noqa: PLC0415 (see the imports above)

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
        "the host, as curl does; the library reads them only with trust_env=True)",
    )
    token.add_argument(
        "--cafile",
        metavar="PATH",
        default=None,
        help="trust the CA certificates in this PEM file (and only these) for the token "
        "request, such as a TLS-intercepting proxy's or a private PKI's (default: the "
        "system's trust store, or SSL_CERT_FILE)",
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


def _fill_fake_server(fake: argparse.ArgumentParser) -> None:
    """The options of ``fake-server``."""
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


def _fill_demo(demo: argparse.ArgumentParser) -> None:
    """The options of ``demo``."""
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
    # Each command's module is imported only when that command runs.
    from . import _commands  # noqa: PLC0415 (see the imports above)

    commands = {
        "token": _commands.run_token,
        "fake-server": _commands.run_fake_server,
        "demo": _commands.run_demo,
    }
    try:
        return commands[args.command](args)
    except ExitError as exc:
        # Usage errors (argparse's) say "error:" and point to --help; every other exit 2 is
        # the settings' fault, and says so once.
        kind = "configuration error" if exc.code == EXIT_CONFIG else "error"
        print(f"{prog}: {kind}: {_one_line(str(exc))}", file=sys.stderr)  # noqa: T201
        return exc.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
