"""django-oauth-toolkit as an independent token endpoint, at PlainID's token path.

``python oauth_site.py setup`` creates the database (``DOT_DATABASE``) and two applications:
``dot-client`` (confidential, client_credentials) and ``dot-authcode`` (authorization-code
only); ``gunicorn oauth_site:application`` serves ``/api/1.0/api-key/token``. Tokens live
``DOT_EXPIRES_IN`` seconds.
"""

from __future__ import annotations

import os
import sys

import django
from django.conf import settings
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.urls import path

CLIENT_ID = "dot-client"
AUTHCODE_CLIENT_ID = "dot-authcode"

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.urandom(16).hex(),
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "oauth2_provider",
    ],
    MIDDLEWARE=[],
    DATABASES={
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DOT_DATABASE"]}
    },
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    USE_TZ=True,
    OAUTH2_PROVIDER={"ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("DOT_EXPIRES_IN", "3600"))},
    LOGGING_CONFIG=None,
)
django.setup()

from oauth2_provider.models import Application  # noqa: E402 (after django.setup())
from oauth2_provider.views import TokenView  # noqa: E402

urlpatterns = [path("api/1.0/api-key/token", TokenView.as_view())]
application = get_wsgi_application()


def setup() -> None:
    """Create the database and the applications (secrets from ``DOT_CLIENT_SECRET``)."""
    call_command("migrate", verbosity=0)
    secret = os.environ["DOT_CLIENT_SECRET"]
    Application.objects.create(
        name="service",
        client_id=CLIENT_ID,
        client_secret=secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    Application.objects.create(
        name="web login only",
        client_id=AUTHCODE_CLIENT_ID,
        client_secret=secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris="http://127.0.0.1/callback",
    )


if __name__ == "__main__" and sys.argv[1:] == ["setup"]:
    setup()
