"""Concurrency under churn: 10,000 callers across expiry boundaries, cancellations and an outage.

Three providers (two share one set of credentials, the third has its own) serve 1 s tokens
from an instrumented FakePlainID that counts token requests in flight per client. Callers
arrive at random over a few seconds; some force a refresh or invalidate their token, a fifth
are cancelled at a random moment, and an outage longer than a token's lifetime makes some
fetches fail. Invariants: never more than one token request in flight per key; every caller
that is not cancelled gets a valid token of its own client or the error of the fetch it
waited for; afterwards no task, socket, loop error or secret is left anywhere.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from typing import TYPE_CHECKING

import pytest
from _reliability import InFlightFake, LoopWatch, Redaction, open_fds, record, watch_redaction
from _servers import connection_handlers, connections_closed

import plainid_async as pa
from plainid_async.testing import running_fetches

if TYPE_CHECKING:
    from collections.abc import Iterator

CALLERS = 10_000
SPREAD = 4.0  # seconds over which callers arrive
LIFETIME = 1.0  # token lifetime: STALE after ~0.5 s, EXPIRED 0.1 s before expiry
CANCEL_SHARE = 0.2
OUTAGE = (1.6, 2.9)  # seconds after the start: longer than a token lives, so callers wait
SECRET_A = "churn-A-" + secrets.token_hex(8)
SECRET_B = "churn-B-" + secrets.token_hex(8)
POLICY = pa.RetryPolicy(attempts=2, backoff_base=0.02, backoff_max=0.05, deadline=3.0)


@pytest.fixture
def redaction(caplog: pytest.LogCaptureFixture) -> Iterator[Redaction]:
    yield from watch_redaction(caplog, SECRET_A, SECRET_B)


@pytest.mark.slow
async def test_ten_thousand_callers_across_expiry_with_cancellations_and_an_outage(  # noqa: C901, PLR0915 (one scenario, told in order)
    redaction: Redaction,
) -> None:
    rng = random.Random(6)  # noqa: S311 (a load shape, not crypto)
    watch = LoopWatch.start()
    loop = asyncio.get_running_loop()
    fake = InFlightFake(
        client_id="churn-a", client_secret=SECRET_A, expires_in=LIFETIME, latency=0.03
    )
    async with fake:
        fake.add_client("churn-b", SECRET_B)
        cache = pa.MemoryTokenCache()

        def provider(client_id: str, secret: str) -> pa.TokenProvider:
            return pa.TokenProvider(
                client_id,
                secret,
                base_url=str(fake.base_url),
                cache=cache,
                retry=POLICY,
                timeout=2.0,
            )

        providers = [
            provider("churn-a", SECRET_A),
            provider("churn-a", SECRET_A),  # same key: shares the single flight
            provider("churn-b", SECRET_B),
        ]
        wrong: list[str] = []
        served: list[pa.Token] = []

        async def caller(index: int) -> pa.Token:
            chosen = providers[index % len(providers)]
            await asyncio.sleep(rng.uniform(0, SPREAD))
            roll = rng.random()
            try:
                token = await chosen.get_token(force_refresh=roll < 0.0005)
            except pa.TokenRequestError:
                error_times.append(loop.time())
                raise
            # Checked the moment it is handed out: issued by the fake, to this client,
            # unexpired there and with time left here.
            if not fake.is_valid(token.access_token):
                wrong.append("invalid at the server")
            elif fake.client_of(token.access_token) != chosen.client_id:
                wrong.append("issued to another client")
            elif token.remaining() <= 0:
                wrong.append("expired")
            served.append(token)
            if 0.0005 <= roll < 0.001:
                chosen.invalidate(token)  # as on a 401
            return token

        outage_started: list[float] = []
        error_times: list[float] = []

        def start_outage() -> None:
            outage_started.append(loop.time())
            fake.start_outage(503)

        loop.call_later(OUTAGE[0], start_outage)
        loop.call_later(OUTAGE[1], fake.end_outage)
        tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
        cancelled_on_purpose = rng.sample(range(CALLERS), int(CALLERS * CANCEL_SHARE))
        for index in cancelled_on_purpose:
            loop.call_later(rng.uniform(0, SPREAD + 0.5), tasks[index].cancel)
        results = await asyncio.gather(*tasks, return_exceptions=True)

        # Every flight finishes (the last background refresh may still run). The fake's
        # handlers of the refresher's kept-alive connections live on until the providers
        # close (checked below); nothing else may.
        await asyncio.gather(*(f.wait() for f in running_fetches()), return_exceptions=True)
        assert not watch.leaked_tasks() - connection_handlers(), watch.leaked_tasks()

        cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
        errors = [r for r in results if isinstance(r, BaseException) and r not in cancelled]
        tokens = [r for r in results if isinstance(r, pa.Token)]
        assert len(cancelled) + len(errors) + len(tokens) == CALLERS
        assert all(isinstance(e, pa.TokenEndpointUnavailableError) for e in errors), errors[:3]
        # Callers that failed got the error of the fetch they shared: no more distinct
        # errors than failed fetches.
        failed_fetches = sum(p.stats.failures for p in providers)
        assert len({id(e) for e in errors}) <= failed_fetches
        # ... and only because of the outage: after it began, its 503 being the last cause.
        assert all(e.status == 503 for e in errors if isinstance(e, pa.TokenRequestError))
        assert all(t >= outage_started[0] for t in error_times)
        answered_503 = sum(r.status == 503 for r in fake.token_requests)
        # A fetch spends the whole retry budget; after a cool-down one attempt probes.
        assert answered_503 >= failed_fetches
        assert answered_503 <= failed_fetches * POLICY.attempts
        assert wrong == []
        assert max(fake.max_in_flight.values()) == 1, fake.max_in_flight
        assert {key.split("/")[0] for key in fake.max_in_flight} == {"churn-a", "churn-b"}

        for p in providers:
            await p.close()
        # Closing the providers closed their connections: the fake, still serving, sees
        # each end (before it stops, which would end them anyway).
        still_open = await connections_closed()
        assert not still_open, still_open
        redaction.errors += errors[:50]
        redaction.objects += [*providers, *[p.stats for p in providers], fake, cache]
        redaction.objects += served[:100]
        redaction.tokens.update(fake.issued_tokens)
    seen = await watch.finish()
    redaction.texts += watch.texts()
    assert seen["leaked_tasks"] == 0
    assert seen["loop_errors"] == 0, watch.contexts
    assert open_fds() <= watch.fds  # taken after a full gc.collect()
    record(
        "churn: 10,000 callers across expiry boundaries",
        load=(
            f"{CALLERS} callers over {SPREAD:.0f} s, 3 providers / 2 keys, 1 s tokens, "
            "0.1% force_refresh or invalidate"
        ),
        faults=(
            f"{len(cancelled_on_purpose)} random cancellations; 503 outage of "
            f"{OUTAGE[1] - OUTAGE[0]:.1f} s (longer than a token lives)"
        ),
        requests=CALLERS,
        token_requests=len(fake.token_requests),
        tokens_issued=len(fake.issued_tokens),
        cancelled=len(cancelled),
        failures=len(errors),
        distinct_errors=len({id(e) for e in errors}),
        failed_fetches=failed_fetches,
        waits=sum(p.stats.waits for p in providers),
        background_refreshes=sum(p.stats.background_refreshes for p in providers),
        max_token_requests_in_flight_per_key=max(fake.max_in_flight.values()),
        outcome="tokens valid and of the caller's client; failures only during the outage",
        wrong_tokens=len(wrong),
        leaked_tasks=seen["leaked_tasks"],
        loop_errors=seen["loop_errors"],
    )
