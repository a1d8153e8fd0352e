"""Secret rotation while requests flow through provider.session(): no call may fail.

PlainID invalidates the old secret the moment a new one is generated; tokens already issued
may or may not stay valid. The fake rotates first, then the provider learns the new secret,
in three ways, in turn: at once with the old tokens still valid; at once with every old
token revoked (requests in flight get a 401, which the middleware answers by fetching a
token with the new secret and retrying); and 1 s later, while the cached token turns STALE,
so a background refresh with the old secret is rejected meanwhile and the cached token is
served until the provider learns the new secret.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

import aiohttp
import pytest
from _reliability import InFlightFake, LoopWatch, Redaction, open_fds, record, watch_redaction
from aiohttp import hdrs

import plainid_async as pa
from plainid_async.testing import running_fetches

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp import ClientRequest, ClientResponse
    from aiohttp.client_middlewares import ClientHandlerType

WORKERS = 8
ROTATIONS = 6
EVERY = 1.2  # seconds between rotations
LIFETIME = 6.0  # STALE from ~3 s before expiry, EXPIRED 0.6 s before
MODES = (
    "old tokens stay valid",
    "old tokens revoked",
    "provider told 1 s later, its token turning STALE meanwhile",
)
FIRST_SECRET = "rot-S3CRET-0-" + secrets.token_hex(8)
POLICY = pa.RetryPolicy(attempts=4, backoff_base=0.02, backoff_max=0.1, deadline=3.0)


@pytest.fixture
def redaction(caplog: pytest.LogCaptureFixture) -> Iterator[Redaction]:
    yield from watch_redaction(caplog, FIRST_SECRET)


@pytest.mark.slow
async def test_rotating_the_secret_under_load_fails_no_call(redaction: Redaction) -> None:  # noqa: C901, PLR0915 (one scenario, told in order)
    watch = LoopWatch.start()
    fake = InFlightFake(
        client_id="rot", client_secret=FIRST_SECRET, expires_in=LIFETIME, latency=0.05
    )
    revoked: set[str] = set()
    wrong: list[str] = []
    unauthorized = {"revoked": 0}
    calls = {"ok": 0, "failed": 0}

    async def inspect(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        # Inside the bearer middleware: sees the token it set, and the answer.
        token = request.headers[hdrs.AUTHORIZATION].removeprefix("Bearer ")
        if not fake.is_valid(token) and token not in revoked:
            wrong.append("handed out a token the server does not accept")
        response = await handler(request)
        if response.status == 401:
            if token in revoked:
                unauthorized["revoked"] += 1
            else:
                wrong.append("401 for a token that was not revoked")
        return response

    async with fake:
        provider = pa.TokenProvider(
            "rot",
            FIRST_SECRET,
            base_url=str(fake.base_url),
            cache=pa.MemoryTokenCache(),
            retry=POLICY,
            timeout=2.0,
        )
        async with provider, provider.session(middlewares=(inspect,)) as session:
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        async with session.get("api/1.0/rotation") as response:
                            await response.read()
                            ok = response.status == 200
                    except (aiohttp.ClientError, pa.PlainIDError):
                        ok = False
                    calls["ok" if ok else "failed"] += 1

            loads = [asyncio.create_task(worker()) for _ in range(WORKERS)]
            for rotation in range(ROTATIONS):
                await asyncio.sleep(EVERY)
                mode = MODES[rotation % len(MODES)]
                new = f"rot-S3CRET-{rotation + 1}-" + secrets.token_hex(8)
                redaction.secrets.add(new)
                if mode == MODES[2]:
                    # Rotate at the server 3.2 s before expiry, just before the token turns
                    # STALE; the provider hears of it 1 s later, 1.6 s before it is EXPIRED.
                    current = await provider.get_token(force_refresh=True)
                    await asyncio.sleep(max(0.0, current.remaining() - 3.2))
                fake.rotate_secret("rot", new)
                if mode == MODES[1]:
                    revoked.update(fake.issued_tokens)
                    fake.revoke_all()
                if mode == MODES[2]:
                    await asyncio.sleep(1.0)
                provider.rotate_secret(new)
            await asyncio.sleep(EVERY)
            stop.set()
            await asyncio.gather(*loads)
            await asyncio.gather(*(f.wait() for f in running_fetches()), return_exceptions=True)
            redaction.objects += [provider, provider.stats, fake, session]
            stats = provider.stats
        redaction.tokens.update(fake.issued_tokens)
        token_requests = len(fake.token_requests)
        rejected = sum(r.status == 401 for r in fake.token_requests)
    seen = await watch.finish()
    redaction.texts += watch.texts()
    record(
        "secret rotation under load",
        load=f"{WORKERS} workers through provider.session(), 6 s tokens",
        faults=f"{ROTATIONS} rotations: " + "; ".join(MODES),
        requests=calls["ok"] + calls["failed"],
        failures=calls["failed"],
        wrong_tokens=len(wrong),
        token_requests=token_requests,
        token_requests_rejected_old_secret=rejected,
        revoked_token_401s_retried=unauthorized["revoked"],
        failed_fetches=stats.failures,
        max_token_requests_in_flight_per_key=max(fake.max_in_flight.values()),
        # The old and the new secret are two keys: a fetch with each may overlap.
        max_token_requests_in_flight_per_client=max(fake.max_in_flight_per_client.values()),
        leaked_tasks=seen["leaked_tasks"],
        loop_errors=seen["loop_errors"],
    )
    assert calls["failed"] == 0
    assert calls["ok"] > 0
    assert wrong == []
    assert max(fake.max_in_flight.values()) == 1
    assert seen["leaked_tasks"] == 0
    assert seen["loop_errors"] == 0, watch.contexts
    assert open_fds() <= watch.fds  # taken after a full gc.collect()
