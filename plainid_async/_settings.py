"""Where a provider's settings come from: the environment, and the command line's flags.

One resolver for :meth:`TokenProvider.from_env <plainid_async.TokenProvider.from_env>` and
``plainid-async token``: it reads ``PLAINID_CLIENT_ID``, ``PLAINID_CLIENT_SECRET`` or
``PLAINID_CLIENT_SECRET_FILE``, and ``PLAINID_REGION`` or ``PLAINID_BASE_URL``, lets values
given another way (the command line's flags) win, and names every missing setting in one
message. The secret is wrapped in :class:`~plainid_async._secret.Secret` as it is read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import attrs

from ._env import (
    ENV_BASE_URL,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_CLIENT_SECRET_FILE,
    ENV_REGION,
)
from ._secret import Secret, read_secret_file, strip_one_newline
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ENV_BASE_URL",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_CLIENT_SECRET_FILE",
    "ENV_REGION",
    "Flags",
    "Settings",
    "read_secret_file",
    "strip_one_newline",
]


@attrs.frozen
class Flags:
    """How a command line names each setting besides its variables, for the messages.

    An empty string: no flag for that setting.

    Attributes:
        client_id: E.g. ``"--client-id"``.
        secret: E.g. ``"--client-secret-file PATH or --client-secret-stdin"``.
        location: The region and base URL, e.g. ``"--region or --base-url"``.
    """

    client_id: str
    secret: str
    location: str


_NO_FLAGS: Final = Flags("", "", "")


def _read(environ: Mapping[str, str], name: str) -> str | None:
    # A variable that is set but blank counts as unset.
    value = environ.get(name)
    return value if value is not None and value.strip() else None


def _sources(variables: str, flag: str) -> str:
    """``variables`` and then ``flag`` (if any) as alternatives, for a "missing" message."""
    if not flag:
        return variables
    return f"{variables}, or {flag}" if " or " in variables else f"{variables} or {flag}"


@attrs.frozen
class Settings:
    """What a provider needs to know, resolved from the environment and any overrides.

    Attributes:
        client_id: The API client id (not yet checked: the provider checks it).
        client_secret: The API client secret, wrapped.
        region: The region, or ``None`` when ``base_url`` is given.
        base_url: The base URL, or ``None`` when ``region`` is given.
        client_secret_file: The file the secret was read from (``PLAINID_CLIENT_SECRET_FILE``),
            for a provider to re-read when it rotates; ``None`` when it came another way.
    """

    client_id: str
    client_secret: Secret = attrs.field(repr=False)
    region: str | None
    base_url: str | None
    client_secret_file: str | None = None

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        client_id: str | None = None,
        client_secret: Secret | None = None,
        region: str | None = None,
        base_url: str | None = None,
        flags: Flags | None = None,
    ) -> Settings:
        """Resolve the settings: each override wins over its variables.

        Args:
            environ: Where to read the variables; defaults to :data:`os.environ`.
            client_id: Wins over ``PLAINID_CLIENT_ID``.
            client_secret: Wins over ``PLAINID_CLIENT_SECRET`` and
                ``PLAINID_CLIENT_SECRET_FILE`` (neither is then read).
            region: Wins over both ``PLAINID_REGION`` and ``PLAINID_BASE_URL``.
            base_url: Wins over both ``PLAINID_REGION`` and ``PLAINID_BASE_URL``.
            flags: How the overrides are given on a command line, so the messages say so.

        Returns:
            The settings.

        Raises:
            ConfigurationError: Both variables of a pair are set, the secret file cannot be
                read, or settings are missing: one message names every missing one.
        """
        # Every variable is read, the secret wrapped, and the mapping forgotten before
        # anything can raise: a traceback with locals (Sentry's default) shows no frame
        # holding the environment, and with it the secret, in plain text.
        env = os.environ if environ is None else environ
        env_id, env_region, env_base_url, secret_file = (
            _read(env, name)
            for name in (ENV_CLIENT_ID, ENV_REGION, ENV_BASE_URL, ENV_CLIENT_SECRET_FILE)
        )
        env_secret = (
            None if _read(env, ENV_CLIENT_SECRET) is None else Secret(env[ENV_CLIENT_SECRET])
        )
        del env, environ
        names = _NO_FLAGS if flags is None else flags
        from_file: str | None = None  # the file the secret came from, if it did
        if client_secret is None:
            from_file = secret_file
            if env_secret is not None and secret_file is not None:
                raise ConfigurationError(
                    f"set only one of {ENV_CLIENT_SECRET} and {ENV_CLIENT_SECRET_FILE}"
                )
            client_secret = (
                env_secret
                if secret_file is None
                else Secret(read_secret_file(secret_file, source=ENV_CLIENT_SECRET_FILE))
            )
        if client_id is None:
            client_id = env_id
        if region is None and base_url is None:
            region, base_url = env_region, env_base_url
            if region is not None and base_url is not None:
                hint = f", or use {names.location}" if names.location else ""
                raise ConfigurationError(
                    f"both {ENV_REGION} and {ENV_BASE_URL} are set: unset one{hint}"
                )
        # Everything missing in one message, so one try shows all there is to set.
        missing = []
        if client_id is None:
            missing.append(f"client id ({_sources(ENV_CLIENT_ID, names.client_id)})")
        if client_secret is None:
            variables = f"{ENV_CLIENT_SECRET} or {ENV_CLIENT_SECRET_FILE}"
            missing.append(f"client secret ({_sources(variables, names.secret)})")
        if region is None and base_url is None:
            variables = f"{ENV_REGION} or {ENV_BASE_URL}"
            missing.append(f"region ({_sources(variables, names.location)})")
        if client_id is None or client_secret is None or missing:
            raise ConfigurationError("missing " + "; ".join(missing))
        return cls(client_id, client_secret, region, base_url, from_file)
