"""Which HTTP proxy a token request goes through, and where that setting came from.

A proxy is named by ``proxy=``, by a ``session=`` made with ``proxy=`` (and ``proxy_auth=``),
by ``HTTPS_PROXY`` / ``HTTP_PROXY`` with ``trust_env``, or by the command line's ``--proxy``.
Whichever it was, :class:`Proxy` remembers it (``source``), so a message about a bad proxy
URL or a proxy that wants credentials tells the user where to fix it. The credentials are
split off the URL at once and kept in a :class:`~plainid_async._secret.Secret`; the
``Proxy-Authorization`` value is built only in :func:`proxy_headers`, a frame that ends
before any I/O.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from typing import TYPE_CHECKING, Final

import aiohttp
import attrs
from yarl import URL

from ._origins import without_userinfo
from ._secret import Secret
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "FROM_ARGUMENT",
    "FROM_SESSION",
    "Proxy",
    "choose_proxy",
    "proxy_from_env",
    "proxy_headers",
    "resolve_proxy",
]

#: ``source`` of a proxy given as the ``proxy=`` argument.
FROM_ARGUMENT: Final = "proxy="
#: ``source`` of a proxy taken from a ``session=`` made with ``proxy=``.
FROM_SESSION: Final = "the session's proxy="


@attrs.frozen
class Proxy:
    """An HTTP proxy for token requests; its credentials never show.

    Attributes:
        url: The proxy URL without credentials, e.g. ``http://proxy.internal:3128``.
        login: The proxy user name, if any.
        password: The proxy password, if any.
        source: Where the setting came from, as a user would look for it: ``proxy=``,
            ``HTTPS_PROXY`` (or another variable), ``--proxy``, ``the session's proxy=``.
        encoding: How ``login:password`` is encoded for ``Proxy-Authorization``.
    """

    url: URL
    login: str | None = attrs.field(default=None, repr=False)
    password: Secret | None = attrs.field(default=None, repr=False)
    source: str = FROM_ARGUMENT
    encoding: str = attrs.field(default="utf-8", repr=False)

    def credentials_advice(self) -> str:
        """What to do about a 407, worded for where the setting came from."""
        if self.login is not None:
            where = (
                "the session's proxy= or proxy_auth="
                if self.source == FROM_SESSION
                else self.source
            )
            return f"it refused the credentials given in {where}"
        return f"give them in {self.source} as http://USER:PASSWORD@HOST:PORT"


def _named(source: str, shown: str) -> str:
    # "proxy='…'", "HTTPS_PROXY='…'", "--proxy='…'": the setting as the user wrote it.
    return f"{source}{shown!r}" if source.endswith("=") else f"{source}={shown!r}"


def resolve_proxy(proxy: object, source: str = FROM_ARGUMENT) -> Proxy | None:
    """Validate a proxy URL and split its credentials off.

    Args:
        proxy: ``None``, a :class:`Proxy` (returned as it is), or an ``http://`` (or
            ``https://``) proxy URL as a string or :class:`yarl.URL`, with optional
            ``user:password@``.
        source: Where the value came from, for messages: ``proxy=`` (the default),
            ``--proxy``, a variable's name.

    Returns:
        The proxy, or ``None`` for no proxy.

    Raises:
        ConfigurationError: The value is not such a URL; the message names ``source`` and
            never shows the credentials.
    """
    outcome = _proxy_or_error(proxy, source)
    # The raise below must not find the URL (and its credentials) among this frame's locals.
    del proxy
    if isinstance(outcome, ConfigurationError):
        raise outcome
    return outcome


def _proxy_or_error(proxy: object, source: str) -> Proxy | ConfigurationError | None:
    """The proxy, or the error to raise; it returns either, so no frame of it is in a traceback."""
    if proxy is None or isinstance(proxy, Proxy):
        return proxy
    if not isinstance(proxy, (str, URL)):
        return ConfigurationError(
            f"{source.rstrip('=')} must be a string or yarl.URL, not {type(proxy)}"
        )
    try:
        url = URL(proxy) if isinstance(proxy, str) else proxy
        shown = str(url.with_user(None)) if url.host else without_userinfo(str(proxy))
    except (ValueError, TypeError):
        return ConfigurationError(
            f"{_named(source, without_userinfo(str(proxy)))} is not a valid URL"
        )
    if not url.absolute or not url.host or url.scheme not in {"http", "https"}:
        return ConfigurationError(
            f"{_named(source, shown)} must be an absolute http:// proxy URL, such as "
            "'http://proxy.internal:3128'"
        )
    if url.raw_path not in {"", "/"} or url.query_string or url.fragment:
        return ConfigurationError(
            f"{_named(source, shown)} must not have a path, query or fragment"
        )
    login = url.user or None
    password = None if url.password is None else Secret(url.password)
    return Proxy(url.with_user(None).with_path(""), login, password, source)


def proxy_from_env(url: URL, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy the environment names for ``url``, as curl reads it.

    ``HTTPS_PROXY`` (or ``https_proxy``) for https URLs, ``HTTP_PROXY`` (or ``http_proxy``)
    for http ones, lower case winning; none for a host ``NO_PROXY`` (or ``no_proxy``) lists
    (comma-separated host names or domain suffixes, ``*`` for all). ``~/.netrc`` is never
    read.

    Args:
        url: The URL to be requested.
        environ: Where to read the variables; defaults to :data:`os.environ`.

    Returns:
        The proxy (its ``source`` the variable's name), or ``None`` for a direct connection.

    Raises:
        ConfigurationError: The variable holds no valid proxy URL; the message names it.
    """
    # Read in a frame that returns: a frame that may raise never holds the environment
    # (whose repr shows every variable, the client secret's too) nor the variable's value.
    return resolve_proxy(*_variable(url, os.environ if environ is None else environ))


def _variable(url: URL, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The proxy variable's value for ``url`` and its name, or ``(None, "")``."""
    name = f"{url.scheme}_proxy"
    value = env.get(name) or env.get(name.upper())
    if not value or not value.strip():
        return None, ""
    if _bypassed(url.host or "", env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None, ""
    text = value.strip()
    return text if "://" in text else f"http://{text}", name if env.get(name) else name.upper()


def _bypassed(host: str, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        pattern = entry.strip().lower()
        if not pattern:
            continue
        if pattern == "*":
            return True
        pattern = pattern.lstrip(".").strip("[]")
        if ":" in pattern and not _is_ip(pattern):
            pattern = pattern.rpartition(":")[0]  # host:port: the port does not matter here
        if host == pattern or host.endswith("." + pattern):
            return True
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _of_session(session: aiohttp.ClientSession) -> Proxy | None:
    """The proxy a session was made with (``ClientSession(proxy=..., proxy_auth=...)``)."""
    # aiohttp keeps them without a public reader; a session from before 3.10 has neither.
    # No local holds the URL or the BasicAuth (whose repr shows the password) while
    # resolve_proxy may raise.
    proxy = resolve_proxy(getattr(session, "_default_proxy", None), source=FROM_SESSION)
    return (
        None if proxy is None else _with_auth(proxy, getattr(session, "_default_proxy_auth", None))
    )


def _with_auth(proxy: Proxy, auth: object) -> Proxy:
    """``proxy`` with the credentials of a session's ``proxy_auth=``, if it has one."""
    if not isinstance(auth, aiohttp.BasicAuth):
        return proxy
    return attrs.evolve(
        proxy, login=auth.login, password=Secret(auth.password), encoding=auth.encoding
    )


def choose_proxy(
    proxy: Proxy | None, session: aiohttp.ClientSession, url: URL, *, trust_env: bool
) -> Proxy | None:
    """The proxy a token request to ``url`` goes through, as aiohttp would pick it.

    The ``proxy=`` given wins; then the proxy ``session`` was made with (and its
    ``proxy_auth``); then, when ``trust_env`` or the session's own ``trust_env`` is set,
    the environment's (:func:`proxy_from_env`, never ``~/.netrc``).

    Args:
        proxy: The proxy given to the provider, if any.
        session: The session whose connector sends the request.
        url: The token endpoint.
        trust_env: Whether the provider was told to read the proxy variables.

    Returns:
        The proxy, or ``None`` for a direct connection.

    Raises:
        ConfigurationError: The session's proxy or the variable is not a valid proxy URL;
            the message names which.
    """
    if proxy is not None:
        return proxy
    chosen = _of_session(session)
    if chosen is None and (trust_env or session.trust_env):
        chosen = proxy_from_env(url)
    return chosen


def proxy_headers(proxy: Proxy | None, url: URL, *, tunnel: bool) -> dict[str, str]:
    """``Proxy-Authorization`` for ``proxy``, where aiohttp sends it on.

    That is the CONNECT of a tunnel (an https ``url``, ``tunnel=True``) or the forwarded
    request itself (an http ``url``, ``tunnel=False``). Call it in the expression that
    passes the headers on: no frame that may raise then holds the value in a local.

    Returns:
        The header, or nothing when there is no proxy, no credentials, or the other case.
    """
    if proxy is None or proxy.login is None or tunnel != (url.scheme == "https"):
        return {}
    password = "" if proxy.password is None else proxy.password.reveal()
    basic = base64.b64encode(f"{proxy.login}:{password}".encode(proxy.encoding)).decode("ascii")
    return {"Proxy-Authorization": f"Basic {basic}"}
