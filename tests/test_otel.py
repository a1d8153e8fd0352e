"""plainid_async.otel with the OpenTelemetry SDK's in-memory reader and exporter, real fetches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _providers import FAST, make_provider, token_with
from _servers import settle
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import plainid_async as pa
from plainid_async import _events, otel

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

    from plainid_async.testing import FakePlainID


class Telemetry:
    """An SDK meter and tracer provider that keep everything in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every data point of metric ``name``."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        """Counter ``name``: value per sorted attribute set."""
        return {tuple(sorted(a.items())): p.value for a, p in self.points(name)}

    def spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == "plainid.token.fetch"]

    def shutdown(self) -> None:
        self.meters.shutdown()
        self.tracers.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    sdk = Telemetry()
    otel.instrument(meter_provider=sdk.meters, tracer_provider=sdk.tracers)
    try:
        yield sdk
    finally:
        otel.uninstrument()
        sdk.shutdown()


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield
    assert not otel.instrumented()
    assert _events.BUS.listeners == ()


def provider_for(fake: FakePlainID) -> pa.TokenProvider:
    return make_provider(fake, cache=pa.MemoryTokenCache(), retry=FAST)


def key(**attributes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(attributes.items()))


async def test_cold_fetch_counts_one_request_lookups_duration_and_remaining(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    async with provider_for(fake) as provider:
        for _ in range(5):
            await provider.get_token()
    requests = telemetry.counts("plainid.token.requests")
    assert requests == {
        key(outcome="success", reason="cold", **{"http.response.status_code": 200}): 1
    }
    lookups = telemetry.counts("plainid.token.lookups")
    assert lookups == {key(result="wait"): 1, key(result="hit"): 4}
    [(attributes, histogram)] = telemetry.points("plainid.token.request.duration")
    assert attributes["outcome"] == "success"
    assert histogram.count == 1
    assert histogram.sum >= 0
    [(attributes, gauge)] = telemetry.points("plainid.token.remaining")
    assert attributes == {"plainid.client_id": fake.client_id}
    assert 0 < gauge.value <= fake.expires_in
    [span] = telemetry.spans()
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "plainid.token.reason": "cold",
        "plainid.token.attempts": 1,
        "plainid.token.outcome": "success",
        "http.response.status_code": 200,
    }
    assert [e.name for e in span.events] == ["plainid.token.attempt"]


async def test_background_refresh_is_reason_refresh_and_lookups_say_stale(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    async with provider_for(fake) as provider:
        await provider.cache.store(provider.cache_key, token_with(remaining=40))
        await provider.get_token()
        await settle()
        await provider.get_token()
    assert telemetry.counts("plainid.token.lookups") == {
        key(result="stale"): 1,
        key(result="hit"): 1,
    }
    assert telemetry.counts("plainid.token.requests") == {
        key(outcome="success", reason="refresh", **{"http.response.status_code": 200}): 1
    }
    [span] = telemetry.spans()
    assert span.attributes is not None
    assert span.attributes["plainid.token.reason"] == "refresh"


async def test_outage_is_a_failed_request_with_its_attempts_on_the_span(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    fake.start_outage(503)
    async with provider_for(fake) as provider:
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token()
    assert telemetry.counts("plainid.token.requests") == {
        key(outcome="failure", reason="cold", **{"http.response.status_code": 503}): 1
    }
    [span] = telemetry.spans()
    assert span.attributes is not None
    assert span.attributes["plainid.token.attempts"] == FAST.attempts
    assert span.attributes["plainid.token.outcome"] == "failure"
    assert span.attributes["error.type"] == "TokenEndpointUnavailableError"
    assert span.status.status_code is StatusCode.ERROR
    attempts = [dict(e.attributes or {}) for e in span.events]
    assert [a["plainid.token.attempt"] for a in attempts] == [1, 2]
    assert [a["http.response.status_code"] for a in attempts] == [503, 503]
    assert "plainid.token.retry_in" in attempts[0]


async def test_a_401_from_the_api_is_a_request_for_reason_unauthorized(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    async with provider_for(fake) as provider, provider.session() as session:
        token = await provider.get_token()
        fake.revoke(token.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 200
    status = {"http.response.status_code": 200}
    assert telemetry.counts("plainid.token.requests") == {
        key(outcome="success", reason="cold", **status): 1,
        key(outcome="success", reason="unauthorized", **status): 1,
    }
    reasons = [str((s.attributes or {}).get("plainid.token.reason")) for s in telemetry.spans()]
    assert sorted(reasons) == ["cold", "unauthorized"]


async def test_the_fetch_span_is_a_child_of_the_callers_span(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    tracer = telemetry.tracers.get_tracer("test")
    async with provider_for(fake) as provider:
        with tracer.start_as_current_span("handler") as parent:
            await provider.get_token()
    [span] = telemetry.spans()
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id


async def test_a_call_inside_a_cooldown_is_a_lookup_with_result_cooldown(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    fake.start_outage(503)
    cooling = pa.RetryPolicy(attempts=1, backoff_base=5.0, deadline=5.0)  # 10-20 s cool-down
    async with make_provider(fake, cache=pa.MemoryTokenCache(), retry=cooling) as provider:
        for _ in range(3):
            with pytest.raises(pa.TokenEndpointUnavailableError):
                await provider.get_token()
    assert len(fake.token_requests) == 1
    assert telemetry.counts("plainid.token.lookups") == {
        key(result="wait"): 1,
        key(result="cooldown"): 2,
    }
    assert telemetry.counts("plainid.token.requests") == {
        key(outcome="failure", reason="cold", **{"http.response.status_code": 503}): 1
    }


async def test_instrument_twice_counts_once(fake: FakePlainID, telemetry: Telemetry) -> None:
    otel.instrument(meter_provider=telemetry.meters, tracer_provider=telemetry.tracers)
    assert len(_events.BUS.listeners) == 1
    async with provider_for(fake) as provider:
        await provider.get_token()
    assert sum(telemetry.counts("plainid.token.requests").values()) == 1
    assert len(telemetry.spans()) == 1


async def test_uninstrument_stops_all_emission(fake: FakePlainID, telemetry: Telemetry) -> None:
    async with provider_for(fake) as provider:
        await provider.get_token()
        assert telemetry.counts("plainid.token.lookups") == {key(result="wait"): 1}
        otel.uninstrument()
        assert _events.BUS.listeners == ()
        await provider.get_token(force_refresh=True)
        await provider.get_token()
    assert sum(telemetry.counts("plainid.token.requests").values()) == 1
    assert telemetry.points("plainid.token.lookups") == []
    assert telemetry.points("plainid.token.remaining") == []
    assert len(telemetry.spans()) == 1
    otel.uninstrument()  # idempotent


async def test_instrumenting_again_resumes_every_instrument(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    async with provider_for(fake) as provider:
        await provider.get_token()
        otel.uninstrument()
        await provider.get_token()  # not counted
        otel.instrument(meter_provider=telemetry.meters, tracer_provider=telemetry.tracers)
        await provider.get_token()
        await provider.get_token(force_refresh=True)
    # the same meter provider hands back its instruments: counts go on rising
    assert telemetry.counts("plainid.token.lookups") == {
        key(result="wait"): 2,
        key(result="hit"): 1,
    }
    assert sum(telemetry.counts("plainid.token.requests").values()) == 2
    [(_, gauge)] = telemetry.points("plainid.token.remaining")
    assert 0 < gauge.value <= fake.expires_in
    assert len(telemetry.spans()) == 2


async def test_no_secret_or_token_in_any_attribute_span_or_event(
    fake: FakePlainID, telemetry: Telemetry
) -> None:
    async with provider_for(fake) as provider, provider.session() as session:
        await provider.cache.store(provider.cache_key, token_with(remaining=40))
        await provider.get_token()
        await settle()
        token = await provider.get_token()
        fake.revoke(token.access_token)
        async with session.get("api/1.0/x") as response:
            assert response.status == 200
        fake.start_outage(503)
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token(force_refresh=True)
        fake.end_outage()
        fake.rotate_secret(fake.client_id, "the-next-secret")
        with pytest.raises(pa.InvalidCredentialsError):
            await provider.get_token(force_refresh=True)
    said: list[str] = []
    for name in (
        "plainid.token.requests",
        "plainid.token.lookups",
        "plainid.token.request.duration",
        "plainid.token.remaining",
    ):
        points = telemetry.points(name)
        assert points, name
        said += [repr(attributes) for attributes, _ in points]
    spans = telemetry.spans()
    assert len(spans) == 4
    for span in spans:
        said += [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        said += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    secrets = [fake.client_secret, "the-next-secret", "preloaded", *fake.issued_tokens]
    assert len(fake.issued_tokens) == 2  # the refresh, and the one after the 401
    for text in said:
        for secret in secrets:
            assert secret not in text


async def test_instrumented_hits_stay_on_the_hot_path_and_are_counted(
    fake: FakePlainID, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """otel hears no HIT event: a cached lookup builds nothing; hits come from the counts."""
    built: list[pa.EventKind] = []
    real = pa.TokenEvent

    def counting(**fields: Any) -> pa.TokenEvent:
        event = real(**fields)
        built.append(event.kind)
        return event

    monkeypatch.setattr(_events, "TokenEvent", counting)
    async with provider_for(fake) as provider:
        for _ in range(6):
            token = await provider.get_token()
        assert provider._hot[0] is token
    async with provider_for(fake) as other:  # a closed provider's hits stay counted
        await other.get_token()
        await other.get_token()
    assert pa.EventKind.HIT not in built
    assert telemetry.counts("plainid.token.lookups") == {
        key(result="wait"): 2,
        key(result="hit"): 6,
    }
