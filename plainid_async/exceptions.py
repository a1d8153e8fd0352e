"""Errors raised by plainid-async.

Every error the library raises on purpose derives from :class:`PlainIDError`::

    PlainIDError
    ├── ConfigurationError (also ValueError)   bad region, base_url, empty credentials, …
    ├── ProviderClosedError (also RuntimeError)   used after close()
    └── TokenRequestError                      no token could be obtained
        ├── InvalidCredentialsError            400/401/403 from the token endpoint; not retried
        ├── TokenEndpointUnavailableError      network, timeout, 429, 5xx after the retries
        └── InvalidTokenResponseError (also ValueError)   a 200 that is not a valid token

No message ever contains a client secret or an access token.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidCredentialsError",
    "InvalidTokenResponseError",
    "PlainIDError",
    "ProviderClosedError",
    "TokenEndpointUnavailableError",
    "TokenRequestError",
]


class PlainIDError(Exception):
    """Base class of every error raised by plainid-async."""


class ConfigurationError(PlainIDError, ValueError):
    """A parameter or environment variable is missing or invalid.

    The message names the parameter; it never echoes a secret.
    """


class ProviderClosedError(PlainIDError, RuntimeError):
    """The :class:`~plainid_async.TokenProvider` was used after it was closed."""


class TokenRequestError(PlainIDError):
    """No token could be obtained from the token endpoint.

    Attributes:
        status: The HTTP status of the last response, or ``None`` when there was none
            (connection error, timeout).
        retryable: Whether trying again later may succeed.
        error: The error code the server gave: OAuth's ``error`` (``invalid_client``,
            ``unsupported_grant_type``, …) or ``name`` from PlainID's error body
            ``{"id", "status", "name", "message"}``; ``None`` when it gave none.
        retry_after: The server's ``Retry-After`` on the last answer, in seconds, or
            ``None``.
    """

    #: Whether errors of this class are worth retrying, unless the instance says otherwise.
    default_retryable: bool = False
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        error: str | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: What went wrong, without any secret.
            status: The HTTP status of the last response, if there was one.
            retryable: Whether trying again may help; defaults to the class's
                :attr:`default_retryable`.
            error: The server's error code, if it gave one.
        """
        super().__init__(message)
        self.status: int | None = status
        self.retryable: bool = self.default_retryable if retryable is None else retryable
        self.error: str | None = error

    def __repr__(self) -> str:
        """Show the class, message, status and error code."""
        shown = f"{type(self).__name__}({str(self)!r}, status={self.status!r}"
        return shown + (f", error={self.error!r})" if self.error is not None else ")")


class InvalidCredentialsError(TokenRequestError):
    """The token endpoint rejected the client credentials (HTTP 400, 401 or 403).

    Never retried: the same credentials would be rejected again.
    """


class TokenEndpointUnavailableError(TokenRequestError):
    """The token endpoint could not be reached or kept failing after the retries ran out.

    Raised for connection errors, timeouts, 408, 429 and 5xx answers; the last cause is
    chained as ``__cause__``.
    """

    default_retryable = True


class InvalidTokenResponseError(TokenRequestError, ValueError):
    """The token endpoint answered 200, but not with a valid token response."""
