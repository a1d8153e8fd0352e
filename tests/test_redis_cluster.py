"""RedisTokenCache on a real 3-master Redis Cluster started by the tests on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio
from _programs import require_program
from _redis_server import redis_binary
from redis.asyncio.cluster import RedisCluster

from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache
from plainid_async.testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import Iterator

#: When set (CI sets it), missing redis-server or redis-cli fails these tests.
REQUIRE_ENV = "PLAINID_REQUIRE_REDIS_CLUSTER"
PROCESSES = 6

# One process of the fleet: waits for "go", gets a token through the cluster, prints it hashed.
WORKER = """
import asyncio, hashlib, sys
from redis.asyncio.cluster import RedisCluster
from plainid_async import TokenProvider
from plainid_async.redis import RedisTokenCache

async def main(base_url, port):
    client = RedisCluster(host="127.0.0.1", port=int(port))
    await client.initialize()
    cache = RedisTokenCache(client, timeout=2.0, lock_timeout=10.0, lock_poll_interval=0.02)
    provider = TokenProvider("test-client", "test-secret", base_url=base_url, cache=cache)
    print("ready", flush=True)
    sys.stdin.readline()
    async with provider:
        token = await provider.get_token()
    await client.aclose()
    print(hashlib.sha256(token.access_token.encode()).hexdigest(), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def redis_cli() -> str:
    """Return the redis-cli path, or skip (fail under ``PLAINID_REQUIRE_REDIS_CLUSTER``)."""
    return require_program("redis-cli", package="redis-tools", require_env=REQUIRE_ENV)


def cluster_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def wait_until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cli(binary: str, port: int, *args: str) -> str:
    return subprocess.run(  # noqa: S603 (a fixed binary found on PATH, fixed args)
        [binary, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters with all 16384 slots, torn down after the module's tests."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    server, client = redis_binary(), redis_cli()
    ports = cluster_ports(3)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            directory = tmp_path / str(port)
            directory.mkdir()
            processes.append(
                subprocess.Popen(  # noqa: S603 (a fixed binary found on PATH, fixed args)
                    [
                        server,
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(directory / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(directory),
                        "--loglevel",
                        "warning",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            wait_until(lambda port=port: cli(client, port, "PING").strip() == "PONG", "PING")
        created = subprocess.run(  # noqa: S603
            [client, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            wait_until(
                lambda port=port: "cluster_state:ok" in cli(client, port, "CLUSTER", "INFO"),
                "cluster_state:ok",
            )
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


async def test_a_fleet_on_a_redis_cluster_makes_one_token_request(cluster: list[int]) -> None:
    async with FakePlainID(latency=0.2) as fake:
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                str(fake.base_url),
                str(cluster[index % len(cluster)]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for index in range(PROCESSES)
        ]
        for worker in workers:
            assert worker.stdout is not None
            assert await asyncio.wait_for(worker.stdout.readline(), 30) == b"ready\n"
        outputs = await asyncio.wait_for(
            asyncio.gather(*(worker.communicate(b"go\n") for worker in workers)), 60
        )
    assert [worker.returncode for worker in workers] == [0] * PROCESSES
    digests = {out.decode().strip() for out, _ in outputs}
    assert len(digests) == 1  # every process got the same token
    assert len(fake.token_requests) == 1


async def test_token_and_lock_keys_share_a_slot_so_scripts_never_cross_slots(
    cluster: list[int],
) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster[0])
    try:
        await client.initialize()
        cache = RedisTokenCache(client)
        provider = TokenProvider("c", "secret-for-slots", region="us1", cache=cache)
        token_key, lock_key = (
            cache.token_key(provider.cache_key),
            cache.lock_key(provider.cache_key),
        )
        node = redis.asyncio.Redis(host="127.0.0.1", port=cluster[0])
        try:
            slots = {
                await node.execute_command("CLUSTER", "KEYSLOT", name)  # type: ignore[no-untyped-call]
                for name in (token_key, lock_key)
            }
        finally:
            await node.aclose()
        assert len(slots) == 1
    finally:
        await client.aclose()
