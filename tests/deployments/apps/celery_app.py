"""A Celery app on a Redis broker whose task calls the PlainID API through the provider.

``celery -A celery_app worker --pool prefork|threads``: the provider is created at module
level, as a project's ``tasks.py`` creates it; each task runs ``asyncio.run`` (Celery tasks
are sync functions). ``CELERY_BROKER_URL`` is the broker and result backend; ``REDIS_URL``,
when set, selects the Redis token cache.
"""

from __future__ import annotations

import asyncio
import os

from celery import Celery

from deployments.apps.service import call_api, make_provider

app = Celery(
    "celery_app",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_BROKER_URL"],
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
)

PROVIDER = make_provider()


def call() -> dict[str, int]:
    """The task: get a token, call the API, return what it said."""
    return asyncio.run(call_api(PROVIDER))


call_task = app.task(name="call_api")(call)
