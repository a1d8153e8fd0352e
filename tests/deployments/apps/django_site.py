"""A one-module Django 5 project: an async view (ASGI) and a sync view (WSGI, ``async_to_sync``).

``uvicorn django_site:asgi_application`` or ``gunicorn django_site:wsgi_application
--worker-class gthread --threads 4``. The provider is created at module level, as a Django
project creates it in a module its views import; ``REDIS_URL`` selects the Redis cache.
"""

from __future__ import annotations

import os

import django
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from deployments.apps.service import call_api, make_provider

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.urandom(16).hex(),
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    LOGGING_CONFIG=None,
)
django.setup()

PROVIDER = make_provider()


async def call_async(request: HttpRequest) -> JsonResponse:
    """The async view: awaits the provider on the server's loop."""
    return JsonResponse(await call_api(PROVIDER))


def call_sync(request: HttpRequest) -> JsonResponse:
    """The sync view: a new event loop per call, through ``async_to_sync``."""
    return JsonResponse(async_to_sync(call_api)(PROVIDER))


urlpatterns = [path("call", call_async), path("call-sync", call_sync)]

asgi_application = get_asgi_application()
wsgi_application = get_wsgi_application()
