"""gunicorn with aiohttp's worker and uvicorn with FastAPI: 4 worker processes each."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from _redis_server import RedisServer, redis_binary

from deployments._harness import (
    LIFETIME,
    Load,
    Process,
    free_port,
    listening,
    problems,
    refreshes,
    require_module,
    service_env,
    uvicorn,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deployments._harness import ApiServer, FakeServer

WORKERS = 4
SECONDS = 10.0


def run_service(
    args: list[str], port: int, tmp: Path, env: dict[str, str], *, path: str = "call"
) -> tuple[Load, str]:
    """Start the service, call ``/path`` steadily for ``SECONDS``, stop it; the load and log."""
    service = Process(args, log=tmp / "service.log", env=env)
    try:
        wait_for(lambda: listening(port), what="the service start")
        load = Load(f"http://127.0.0.1:{port}/{path}", threads=WORKERS)
        load.run(SECONDS)
        status = service.stop()
    finally:
        service.kill()
    output = service.output()
    assert status == 0, output
    return load, output


def check_counts(
    load: Load, output: str, fake: FakeServer, api: ApiServer, *, processes: int
) -> None:
    """No failed call, at most one token request per process per refresh, no WARNING."""
    fake.settle()
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    assert api.stats() == {"ok": load.ok, "rejected": 0}
    assert fake.all_token_requests() == fake.token_requests()  # every one issued a token
    most = processes * refreshes(SECONDS, LIFETIME)
    assert 1 <= fake.token_requests() <= most, f"{fake.token_requests()} token requests"
    assert problems(output) == []


def gunicorn(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "deployments.apps.gunicorn_aiohttp:app",
        "--worker-class", "aiohttp.GunicornWebWorker",
        "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
        "--graceful-timeout", "10", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("preload", "warm"),
    [(False, False), (True, False), (True, True)],
    ids=["workers-import", "preload", "preload-token-fetched-in-master"],
)
def test_gunicorn_aiohttp_workers_each_fetch_once_per_refresh(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path, preload: bool, warm: bool
) -> None:
    require_module("gunicorn")
    fake, api = fake_and_api
    port = free_port()
    env = service_env(fake, api, WARM_IN_MASTER="1" if warm else "")
    args = gunicorn(port, *(["--preload"] if preload else []))
    load, output = run_service(args, port, tmp_path, env)
    check_counts(load, output, fake, api, processes=WORKERS + warm)


def test_uvicorn_fastapi_lifespan_memory_cache_one_fetch_per_worker_per_refresh(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path
) -> None:
    require_module("fastapi")
    fake, api = fake_and_api
    port = free_port()
    load, output = run_service(
        uvicorn(port, workers=WORKERS), port, tmp_path, service_env(fake, api)
    )
    check_counts(load, output, fake, api, processes=WORKERS)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port."""
    server = RedisServer(redis_binary(), tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_uvicorn_fastapi_lifespan_redis_cache_one_fetch_per_refresh_for_the_fleet(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path, redis_url: str
) -> None:
    require_module("fastapi")
    fake, api = fake_and_api
    port = free_port()
    env = service_env(fake, api, REDIS_URL=redis_url)
    load, output = run_service(uvicorn(port, workers=WORKERS), port, tmp_path, env)
    check_counts(load, output, fake, api, processes=1)


def django_wsgi(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "deployments.apps.django_site:wsgi_application",
        "--worker-class", "gthread", "--threads", "4", "--workers", "2",
        "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("server", "cache"),
    [
        ("asgi-async-view", "memory"),
        ("asgi-async-view", "redis"),
        ("wsgi-gthread-async-to-sync", "memory"),
        ("wsgi-gthread-async-to-sync", "redis"),
    ],
)
def test_django_views_fetch_once_per_refresh(
    fake_and_api: tuple[FakeServer, ApiServer],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    server: str,
    cache: str,
) -> None:
    require_module("django")
    require_module("gunicorn")
    fake, api = fake_and_api
    port = free_port()
    extra = {"REDIS_URL": request.getfixturevalue("redis_url")} if cache == "redis" else {}
    env = service_env(fake, api, **extra)
    if server == "asgi-async-view":
        args, path, processes = (
            uvicorn(port, "deployments.apps.django_site:asgi_application", workers=WORKERS),
            "call",
            WORKERS,
        )
    else:
        args, path, processes = django_wsgi(port), "call-sync", 2
    load, output = run_service(args, port, tmp_path, env, path=path)
    check_counts(load, output, fake, api, processes=1 if cache == "redis" else processes)
