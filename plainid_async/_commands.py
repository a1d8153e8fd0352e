"""The commands of ``plainid-async``: ``token``, ``fake-server`` and ``demo``.

:mod:`plainid_async._cli` parses the arguments and imports this module only to run a
command, so ``--version`` and ``--help`` never load aiohttp. ``fake-server`` and ``demo``
import the fake and the demo themselves: ``token`` loads neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
from typing import IO, TYPE_CHECKING, Final

import aiohttp

from ._checks import region_hint
from ._cli import (
    EXIT_CONFIG,
    EXIT_CREDENTIALS,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    PROG,
    ExitError,
    secret_flag_refused,
)
from ._endpoint import RetryPolicy
from ._log import LOGGER_NAME
from ._provider import TokenProvider
from ._proxy import proxy_from_env, resolve_proxy
from ._secret import Secret, redact
from ._settings import (
    ENV_BASE_URL,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_REGION,
    Flags,
    Settings,
    read_secret_file,
    strip_one_newline,
)
from .exceptions import (
    ConfigurationError,
    InvalidCredentialsError,
    PlainIDError,
    TokenRequestError,
)

if TYPE_CHECKING:
    import argparse

    from ._token import Token
    from .testing import FakePlainID

__all__ = ["run_demo", "run_fake_server", "run_token"]


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
            raise ExitError(EXIT_CONFIG, str(exc)) from None
    if args.client_secret_stdin:
        try:
            # Wrapped at once: no frame here holds the secret in a plain local.
            secret = Secret(strip_one_newline(stdin.read()))
        except (OSError, UnicodeDecodeError):
            raise ExitError(EXIT_CONFIG, "cannot read the client secret from stdin") from None
        if not secret.reveal().strip():
            raise ExitError(EXIT_CONFIG, "--client-secret-stdin: standard input is empty")
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
        raise ExitError(EXIT_CONFIG, _region_hinted(str(exc), _region_given(args))) from None


def _region_given(args: argparse.Namespace) -> str | None:
    """The region the command was told to use, from the flag or the environment."""
    if args.region is not None or args.base_url is not None:
        return args.region  # type: ignore[no-any-return]  # argparse's Namespace
    return os.environ.get(ENV_REGION)


def _region_hinted(message: str, region: str | None) -> str:
    """``message``, with a "did you mean" when the region given is close to a documented one."""
    hint = region_hint(region)
    return message if hint is None else f"{message}; did you mean --region {hint}?"


def _ca_context(cafile: str | None) -> ssl.SSLContext | None:
    """The TLS context that trusts the CA bundle ``--cafile`` names (and only it)."""
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        # ssl.SSLError is an OSError whose words are in .reason
        reason = (exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror) or str(exc)
        raise ExitError(
            EXIT_CONFIG,
            f"--cafile {cafile}: cannot load CA certificates from it ({reason}); give a PEM "
            "file of one or more CA certificates",
        ) from None


def _build_provider(args: argparse.Namespace, settings: Settings) -> TokenProvider:
    # The timeout bounds the whole command; one attempt gets at most 10 s of it, so a hung
    # connection still leaves time for a retry.
    timeout: float = args.timeout
    retry = RetryPolicy(attempts=args.attempts, deadline=timeout)
    # As curl: --proxy wins ('' meaning none), else the environment's proxy variables.
    # Resolved here, so a bad URL and a proxy that wants credentials are told as --proxy's.
    proxy = resolve_proxy(args.proxy or None, source="--proxy")
    provider = TokenProvider(
        settings.client_id,
        settings.client_secret,
        region=settings.region,
        base_url=settings.base_url,
        timeout=min(timeout, 10.0),
        retry=retry,
        proxy=proxy,  # type: ignore[arg-type]  # a resolved Proxy passes through as it is
        trust_env=args.proxy is None,
        ssl=_ca_context(args.cafile),
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


def run_token(args: argparse.Namespace) -> int:
    if args.secret_flag is not None:
        raise ExitError(EXIT_CONFIG, secret_flag_refused())
    settings = _settings(args, sys.stdin)
    try:
        try:
            provider = _build_provider(args, settings)
        except ConfigurationError as exc:
            raise ExitError(EXIT_CONFIG, _region_hinted(str(exc), _region_given(args))) from None
        _configure_logging(args.verbose)
        try:
            token = asyncio.run(_fetch_token(provider))
        except InvalidCredentialsError as exc:
            raise ExitError(EXIT_CREDENTIALS, str(exc)) from None
        except TokenRequestError as exc:
            message = _next_step(exc, provider, args, settings.region) or str(exc)
            if args.verbose and message != str(exc):
                message += f" (detail: {exc})"
            raise ExitError(EXIT_UNAVAILABLE, message) from None
        except PlainIDError as exc:
            raise ExitError(EXIT_FAILURE, str(exc)) from None
        except Exception as exc:  # a bug: still one line, still no secret  # noqa: BLE001
            raise ExitError(
                EXIT_FAILURE, f"unexpected error: {type(exc).__name__}: {exc}"
            ) from None
    except ExitError as exc:
        # Belt and braces: the library never puts the secret in a message, and we check
        # with the library's own redaction (literal and URL-encoded, never mangling words).
        raise ExitError(exc.code, redact(str(exc), (settings.client_secret,))) from None
    sys.stdout.write(_render_token(token, args.format) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _next_step(  # noqa: PLR0911 (one sentence per kind of failure)
    error: TokenRequestError, provider: TokenProvider, args: argparse.Namespace, region: str | None
) -> str | None:
    """One plain sentence for a token request that got no answer, with what to do next.

    ``None`` when the library's own message says it best (an HTTP status, a proxy that
    wants credentials, an invalid response). Transport class names stay out: ``-v`` adds
    the library's message as the detail.
    """
    cause = error.__cause__
    url = provider.token_url
    where = f"{url.host}:{url.port}"
    setting = "the base URL" if region is None else "the region"
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return (
            f"the TLS certificate of {url.host} is not trusted by this machine: if your "
            "organisation or a TLS-intercepting proxy issues it, give its CA certificate "
            "with --cafile PATH (or SSL_CERT_FILE)"
        )
    if isinstance(cause, aiohttp.ClientSSLError):
        return (
            f"the TLS handshake with {where} failed: check that it serves https on that "
            f"port (a plain-http server on this machine needs an http:// base URL)"
        )
    if isinstance(cause, aiohttp.ClientProxyConnectionError):
        return (
            "cannot connect to the proxy for the token request: check --proxy or "
            "HTTPS_PROXY / HTTP_PROXY (--proxy '' connects directly)"
        )
    if isinstance(cause, aiohttp.ClientConnectorError):
        if isinstance(cause.os_error, socket.gaierror):
            return _region_hinted(
                f"cannot resolve the host name {url.host}: check {setting}, and this "
                "machine's DNS and network",
                region,
            )
        if isinstance(cause.os_error, ConnectionRefusedError):
            return (
                f"nothing accepts connections on {where}: check {setting} (and its port), "
                "and that the server is running"
            )
        return f"cannot connect to {where}: check this machine's network, or its proxy settings"
    if isinstance(cause, TimeoutError):
        return (
            f"no answer from {url.host} within {args.timeout:g} s: check this machine's "
            "network and proxy settings, or allow more time with --timeout SECONDS"
        )
    return None


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
        raise ExitError(
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


def run_fake_server(args: argparse.Namespace) -> int:
    for start, end in args.outage:
        if not end > start:
            raise ExitError(EXIT_CONFIG, f"--outage {start:g} {end:g}: END must be after START")
    try:
        return asyncio.run(_serve_fake(args))
    except KeyboardInterrupt:  # where asyncio cannot handle signals (Windows): still a clean stop
        return EXIT_OK


# -- demo --------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run_demo  # noqa: PLC0415 (keeps `token` quick to start)

    options = DemoOptions(
        seconds=args.seconds,
        workers=args.workers,
        expires_in=args.expires_in,
        outage=args.outage,
        plain=args.plain,
    )
    return asyncio.run(run_demo(options))
