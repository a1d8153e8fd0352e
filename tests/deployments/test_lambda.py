"""A Lambda-style handler: ``asyncio.run`` per invocation, the process frozen with SIGSTOP."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import TYPE_CHECKING

from deployments._harness import Process, plainid, problems, service_env, wait_for

if TYPE_CHECKING:
    from pathlib import Path

#: Token lifetime and the token endpoint's latency (seconds).
LIFETIME = 3.0
LATENCY = 1.0
#: How long the process stays frozen: longer than a token lives.
FROZEN = LIFETIME + 2.0


class Function:
    """The function's process, invoked one line at a time."""

    def __init__(self, process: Process) -> None:
        self.process = process
        wait_for(lambda: "READY" in process.output(), what="the function start")

    def results(self) -> list[dict[str, int]]:
        lines = self.process.output().splitlines()
        return [json.loads(line[len("RESULT ") :]) for line in lines if line.startswith("RESULT ")]

    def send(self) -> int:
        """Start an invocation; return how many results there will be once it is done."""
        expected = len(self.results()) + 1
        stdin = self.process.process.stdin
        assert stdin is not None
        stdin.write(b"{}\n")
        stdin.flush()
        return expected

    def invoke(self) -> dict[str, int]:
        expected = self.send()
        return self.wait(expected)

    def wait(self, expected: int) -> dict[str, int]:
        wait_for(lambda: len(self.results()) >= expected, what="the invocation's result")
        return self.results()[expected - 1]

    def freeze(self, seconds: float) -> None:
        self.process.process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)  # the freeze itself is what is tested: real time must pass
        self.process.process.send_signal(signal.SIGCONT)

    def stop(self) -> str:
        stdin = self.process.process.stdin
        assert stdin is not None
        stdin.close()
        status = self.process.wait(30)
        assert status == 0, self.process.output()
        return self.process.output()


def start_function(tmp: Path, env: dict[str, str]) -> Function:
    process = Process(
        [sys.executable, "-m", "deployments.apps.lambda_runtime"],
        log=tmp / "function.log",
        env=env,
        stdin=True,
    )
    return Function(process)


def test_lambda_frozen_between_invocations_never_sends_an_expired_token(tmp_path: Path) -> None:
    with plainid(tmp_path, expires_in=LIFETIME, latency=LATENCY) as (fake, api):
        function = start_function(tmp_path, service_env(fake, api))
        try:
            results = [function.invoke(), function.invoke()]
            for _ in range(2):
                function.freeze(FROZEN)
                results.append(function.invoke())
            output = function.stop()
        finally:
            function.process.kill()
        fake.settle()
        assert [r["api"] for r in results] == [200] * 4
        assert api.stats() == {"ok": 4, "rejected": 0}
        # The first invocation fetched, and each thaw found the token dead and fetched again.
        assert fake.token_requests() == fake.all_token_requests() == 3
        assert problems(output) == []


def test_lambda_frozen_while_a_fetch_is_in_flight_never_sends_an_expired_token(
    tmp_path: Path,
) -> None:
    with plainid(tmp_path, expires_in=LIFETIME, latency=LATENCY) as (fake, api):
        function = start_function(tmp_path, service_env(fake, api))
        try:
            expected = function.send()
            # The fetch is in flight (the endpoint answers after LATENCY): freeze it there.
            time.sleep(LATENCY / 3)
            function.freeze(FROZEN)
            result = function.wait(expected)
            output = function.stop()
        finally:
            function.process.kill()
        fake.settle()
        assert result["api"] == 200
        assert api.stats() == {"ok": 1, "rejected": 0}
        assert fake.token_requests() == fake.all_token_requests() <= 2
        assert problems(output) == []
