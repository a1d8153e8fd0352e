"""The provider against a token endpoint nobody here wrote: Authlib's authorization server.

Authlib's Flask ``AuthorizationServer`` with the client credentials grant and
``client_secret_post``, served by werkzeug on 127.0.0.1 in a thread, at PlainID's path
``/api/1.0/api-key/token``.
"""

from __future__ import annotations

import hmac
import threading
from typing import TYPE_CHECKING, Any

import pytest
from _providers import make_provider
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from flask import Flask
from werkzeug.serving import make_server
from yarl import URL

from plainid_async import (
    InvalidCredentialsError,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenProvider,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "authlib-client-secret-value"


class Client(ClientMixin):  # type: ignore[misc]
    """An OAuth client as Authlib asks for one."""

    def __init__(self, client_id: str, secret: str, grant_types: tuple[str, ...]) -> None:
        self.client_id = client_id
        self.secret = secret
        self.grant_types = grant_types

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

    def get_allowed_scope(self, scope: str) -> str:  # noqa: ARG002 (Authlib's interface)
        return ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:  # noqa: ARG002
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:  # noqa: ARG002
        return method == "client_secret_post"

    def check_response_type(self, response_type: str) -> bool:  # noqa: ARG002
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post"]  # noqa: RUF012 (Authlib's API)


CLIENTS = {
    "service-a": Client("service-a", SECRET, ("client_credentials",)),
    "no-grant": Client("no-grant", SECRET, ("authorization_code",)),
}


def make_app() -> Flask:
    app = Flask("authlib-interop")
    issued: list[dict[str, Any]] = []
    server = AuthorizationServer(
        app,
        query_client=CLIENTS.get,
        save_token=lambda token, _request: issued.append(token),
    )
    server.register_grant(ClientCredentials)

    @app.post("/api/1.0/api-key/token")
    def token() -> Any:
        return server.create_token_response()

    return app


@pytest.fixture
def authlib_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="authlib", daemon=True)
    thread.start()
    try:
        yield URL.build(scheme="http", host="127.0.0.1", port=server.server_port)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def provider_for(base_url: URL, client_id: str, secret: str = SECRET) -> TokenProvider:
    return make_provider(
        base_url,
        client_id=client_id,
        client_secret=secret,
        retry=RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0),
    )


async def test_good_secret_gets_a_token(authlib_server: URL) -> None:
    async with provider_for(authlib_server, "service-a") as provider:
        token = await provider.get_token()
    assert token.access_token
    assert token.token_type.lower() == "bearer"
    assert token.expires_in == 864000  # Authlib's default lifetime, ten days
    assert provider.stats.token_requests == 1


async def test_wrong_secret_is_rejected_credentials_once(authlib_server: URL) -> None:
    async with provider_for(authlib_server, "service-a", "wrong-secret-value") as provider:
        with pytest.raises(InvalidCredentialsError) as info:
            await provider.get_token()
    assert info.value.error == "invalid_client"
    assert "rejected the client credentials" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)
    assert provider.stats.token_requests == 1


async def test_grant_not_allowed_names_the_code_not_bad_credentials(authlib_server: URL) -> None:
    async with provider_for(authlib_server, "no-grant") as provider:
        with pytest.raises(InvalidCredentialsError) as info:
            await provider.get_token()
    assert info.value.status == 400
    assert info.value.error == "unauthorized_client"
    assert "unauthorized_client" in str(info.value)
    assert "rejected the client credentials" not in str(info.value)
    assert provider.stats.token_requests == 1


async def test_wrong_path_is_not_retried_and_points_at_base_url(authlib_server: URL) -> None:
    async with provider_for(authlib_server / "tenant", "service-a") as provider:
        with pytest.raises(TokenEndpointUnavailableError) as info:
            await provider.get_token()
    assert info.value.status == 404
    assert info.value.retryable is False
    assert "base_url" in str(info.value)
    assert provider.stats.token_requests == 1
