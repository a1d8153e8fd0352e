"""Which URLs may be configured, and which requests get the token: one set of rules.

Every URL the library is configured with (``base_url``, ``origins=``, a provider's
``api_url``) follows :func:`check_http_url`; the aiohttp middleware and the httpx
``BearerAuth`` decide which requests get the token with :func:`allowed_schemes` and
:func:`is_allowed` (yarl URLs) or :func:`allows` with :func:`host_port` (httpx URLs), so
both integrations answer alike for every URL. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

from yarl import URL

from .exceptions import ConfigurationError

__all__ = [
    "WS_SCHEMES",
    "allowed_schemes",
    "allows",
    "check_http_url",
    "check_origin",
    "check_origins",
    "host_port",
    "is_allowed",
    "is_loopback_host",
    "without_userinfo",
]

#: WebSocket handshakes are requests to ws:// and wss:// URLs; they share the http(s) origin.
WS_SCHEMES: Final = {"http": "ws", "https": "wss"}

#: Allowed host[:port] (as yarl's ``host_port_subcomponent`` writes it) -> allowed schemes.
Allowed = Mapping[str | None, frozenset[str]]


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def without_userinfo(text: str) -> str:
    # A URL yarl could not split is shown as typed, minus whatever precedes an "@": that
    # may be a password.
    return "***@" + text.rpartition("@")[2] if "@" in text else text


def check_http_url(value: object, name: str) -> URL:
    """Check the rules every configured URL follows, and parse it.

    Absolute http(s) with a host; no credentials, query or fragment; https unless the host
    is loopback (``localhost``, 127.0.0.0/8, ``::1``). A path is left to the caller.

    Args:
        value: The URL, a string or a :class:`yarl.URL`.
        name: What it is called in the error message, e.g. ``"base_url"``.

    Returns:
        The parsed URL.

    Raises:
        ConfigurationError: A rule is broken; the message names ``name`` and shows the URL
            without its credentials.
    """
    if not isinstance(value, (str, URL)):
        raise ConfigurationError(f"{name} must be a string or yarl.URL, not {type(value)}")
    try:
        url = URL(value) if isinstance(value, str) else value
    except (ValueError, TypeError) as exc:
        shown = without_userinfo(str(value))
        raise ConfigurationError(f"{name}={shown!r} is not a valid URL") from exc
    shown = (
        str(url.with_user(None).with_password(None)) if url.host else without_userinfo(str(value))
    )
    if not url.absolute or not url.host or url.scheme not in WS_SCHEMES:
        raise ConfigurationError(f"{name}={shown!r} must be an absolute http(s) URL")
    if url.user is not None or url.password is not None:
        raise ConfigurationError(f"{name}={shown!r} must not carry credentials")
    if url.query_string or url.fragment:
        raise ConfigurationError(f"{name}={shown!r} must not have a query or fragment")
    if url.scheme == "http" and not is_loopback_host(url.host):
        raise ConfigurationError(
            f"{name}={shown!r} must use https (plain http is allowed for loopback hosts only)"
        )
    return url


def check_origin(value: object, name: str = "origins") -> URL:
    """Check one origin (:func:`check_http_url`, and no path) and return it as an origin."""
    url = check_http_url(value, name)
    if url.path not in {"", "/"}:
        raise ConfigurationError(
            f"{name}={str(url)!r} must be an origin only (scheme, host, port), without a path"
        )
    return url.origin()


def check_origins(origins: object) -> tuple[URL, ...]:
    """Check an ``origins=`` argument: ``None`` or an iterable of origins.

    Raises:
        ConfigurationError: It is a single string or URL, not iterable, or one of its
            items breaks a rule of :func:`check_origin`.
    """
    if origins is None:
        return ()
    if isinstance(origins, (str, URL)):
        raise ConfigurationError("origins must be a list of origins, not a single string or URL")
    if not isinstance(origins, Iterable):
        raise ConfigurationError(f"origins must be an iterable, not {type(origins).__name__}")
    return tuple(check_origin(origin, f"origins[{i}]") for i, origin in enumerate(origins))


def allowed_schemes(origins: Iterable[URL]) -> dict[str | None, frozenset[str]]:
    """Map each allowed host[:port] to the schemes allowed with it, ws(s) with http(s)."""
    allowed: dict[str | None, frozenset[str]] = {}
    for origin in origins:
        key = origin.host_port_subcomponent
        allowed[key] = allowed.get(key, frozenset()) | {origin.scheme, WS_SCHEMES[origin.scheme]}
    return allowed


def allows(allowed: Allowed, scheme: str, host_and_port: str | None) -> bool:
    """Whether a request to ``scheme``://``host_and_port`` gets the token."""
    schemes = allowed.get(host_and_port)
    return schemes is not None and scheme in schemes


def is_allowed(allowed: Allowed, url: URL) -> bool:
    """Whether a request to the yarl ``url`` gets the token (the aiohttp middleware's check)."""
    # The origin is (scheme, host, port). yarl's host_port_subcomponent is the host, lowercased
    # and IDNA-encoded, with the port unless it is the scheme's default: so (scheme, it) names
    # one origin, "https://h:443" and "https://h" alike (URL.origin() tells them apart). aiohttp
    # has already computed it for the Host header, so this check allocates nothing.
    return allows(allowed, url.scheme, url.host_port_subcomponent)


def host_port(host: str, port: int | None) -> str:
    """``host[:port]`` written as yarl's ``host_port_subcomponent`` writes it.

    Args:
        host: The host, lowercased and IDNA-encoded (httpx's ``URL.raw_host``, decoded), an
            IPv6 address without brackets.
        port: The port, ``None`` for the scheme's default (httpx's ``URL.port``).
    """
    if ":" in host:  # IPv6: yarl writes it compressed and in brackets
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            host = f"[{host}]"
    else:  # yarl drops the dots that end a fully qualified name: the same host
        host = host.rstrip(".")
    return host if port is None else f"{host}:{port}"
