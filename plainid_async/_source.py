"""What the integrations (aiohttp middleware, httpx ``BearerAuth``) need from a provider.

A :class:`typing.Protocol` rather than :class:`~plainid_async.TokenProvider` itself: the
integrations then do not import the provider (which imports them for
``TokenProvider.session()``), and a test double with the three members works too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, cast

from yarl import URL

from ._checks import check_bool
from ._origins import allowed_schemes, check_http_url, check_origins
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._token import Token

__all__ = ["TokenScope", "TokenSource", "check_source", "hot_lookup"]


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


def _no_hot_token() -> None:
    """A source without a hot path: every request awaits its ``get_token()``."""


def hot_lookup(provider: TokenSource) -> Callable[[], Token | None]:
    """The synchronous hot path of ``provider.get_token()``, for the integrations.

    The returned function gives the token ``get_token()`` would return at once, counted as
    the same cache hit, or ``None`` when ``get_token()`` has more to do (wait, refresh, raise,
    emit an event): then the integration awaits ``get_token()``. Creating and awaiting a
    coroutine on every request costs more than all the rest of an integration's work.

    Only a :class:`~plainid_async.TokenProvider` whose ``get_token`` is the library's own has
    one: a test double, or a subclass that overrides ``get_token``, is asked every time.
    """
    from ._provider import TokenProvider  # noqa: PLC0415 (the provider imports the integrations)

    if isinstance(provider, TokenProvider) and type(provider).get_token is TokenProvider.get_token:
        return provider._hot_token  # noqa: SLF001 (the provider's hook for the integrations)
    return _no_hot_token


class TokenScope:
    """What both integrations hold: the provider, the origins that get its token, the options.

    The base of :class:`~plainid_async.BearerAuthMiddleware` and of the httpx ``BearerAuth``,
    so both check their arguments, and answer ``provider``, ``origins`` and ``repr()``, alike.
    """

    __slots__ = ("_allowed", "_hot_token", "_origins", "_provider", "_retry_on_401")

    def __init__(
        self,
        provider: TokenSource,
        *,
        origins: Iterable[str | URL] | None = None,
        retry_on_401: bool = True,
    ) -> None:
        """Check the arguments and precompute the allowed origins."""
        provider = check_source(provider)
        check_bool("retry_on_401", retry_on_401)
        self._provider: Final = provider
        extra = check_origins(origins)
        self._origins: Final = (provider.api_url.origin(), *extra)
        self._allowed: Final = allowed_schemes(self._origins)
        self._retry_on_401: Final = retry_on_401
        self._hot_token: Final = hot_lookup(provider)

    @property
    def provider(self) -> TokenSource:
        """The token provider."""
        return self._provider

    @property
    def origins(self) -> tuple[URL, ...]:
        """The origins that get the token, the provider's API origin first."""
        return self._origins

    def __repr__(self) -> str:
        """Show the origins and the options; never a token."""
        shown = ", ".join(f"'{origin}'" for origin in self._origins)
        name = type(self).__name__
        return f"<{name} origins=({shown}) retry_on_401={self._retry_on_401}>"
