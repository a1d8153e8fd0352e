"""A real Celery worker on a Redis broker, prefork and threads pools."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from _redis_server import RedisServer, redis_binary

from deployments._harness import LIFETIME, Process, problems, refreshes, require_module, service_env

if TYPE_CHECKING:
    from pathlib import Path

    from deployments._harness import ApiServer, FakeServer

CONCURRENCY = 4
SECONDS = 10.0


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_celery_worker_tasks_call_the_api_with_one_fetch_per_process_per_refresh(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path, pool: str
) -> None:
    require_module("celery")
    from celery import Celery  # noqa: PLC0415 (only when installed)

    fake, api = fake_and_api
    broker = RedisServer(redis_binary(), tmp_path)
    broker.start()
    env = service_env(fake, api, CELERY_BROKER_URL=broker.url)
    worker = Process(
        [
            sys.executable, "-m", "celery", "-A", "deployments.apps.celery_app", "worker",
            "--pool", pool, "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        log=tmp_path / "worker.log",
        env=env,
    )  # fmt: skip
    client = Celery("client", broker=broker.url, backend=broker.url)
    try:
        first = client.send_task("call_api")
        assert first.get(timeout=60)["api"] == 200
        results: list[Any] = []
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            batch = [client.send_task("call_api") for _ in range(CONCURRENCY)]
            results.extend(r.get(timeout=30) for r in batch)
        status = worker.stop()
    finally:
        worker.kill()
        client.close()
        broker.stop()
    output = worker.output()
    assert status == 0, output
    fake.settle()
    assert [r for r in results if r["api"] != 200] == []
    assert len(results) > 50
    assert api.stats() == {"ok": len(results) + 1, "rejected": 0}
    processes = CONCURRENCY if pool == "prefork" else 1
    most = processes * refreshes(SECONDS + 2, LIFETIME)
    assert 1 <= fake.token_requests() == fake.all_token_requests() <= most
    assert problems(output) == []
