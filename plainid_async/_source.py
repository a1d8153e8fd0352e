"""What the integrations (aiohttp middleware, httpx ``BearerAuth``) need from a provider.

A :class:`typing.Protocol` rather than :class:`~plainid_async.TokenProvider` itself: the
integrations then do not import the provider (which imports them for
``TokenProvider.session()``), and a test double with the three members works too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from yarl import URL

from ._origins import check_http_url
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._token import Token

__all__ = ["TokenSource", "check_source"]


class TokenSource(Protocol):
    """Where an integration gets tokens: a ``TokenProvider`` or anything shaped like one."""

    @property
    def api_url(self) -> URL:
        """The API base URL; its origin gets the token."""
        ...

    async def get_token(self) -> Token:
        """A valid token."""
        ...

    def report_unauthorized(self, token: Token) -> bool:
        """The API answered 401 to ``token``; return whether a retry is worth it."""
        ...


def check_source(provider: object) -> TokenSource:
    """Check that ``provider`` has what a :class:`TokenSource` has.

    Raises:
        ConfigurationError: A member is missing or ``api_url`` breaks the URL rules.
    """
    missing = [
        f"{name}()"
        for name in ("get_token", "report_unauthorized")
        if not callable(getattr(provider, name, None))
    ]
    if not hasattr(provider, "api_url"):
        missing.insert(0, "api_url")
    if missing:
        raise ConfigurationError(
            "provider must be a plainid_async.TokenProvider, or have api_url, get_token() and "
            f"report_unauthorized(token); {type(provider).__name__} has no {', '.join(missing)}"
        )
    api_url = getattr(provider, "api_url")  # noqa: B009 (not a TokenSource yet, for mypy)
    if not isinstance(api_url, URL):
        raise ConfigurationError(f"provider.api_url must be a yarl.URL, not {type(api_url)}")
    check_http_url(api_url, "provider.api_url")
    return cast("TokenSource", provider)
