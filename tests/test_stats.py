"""Stats and health(): what a provider reports of itself (``plainid_async._stats``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs
import pytest
from _providers import make_provider, recording, token_with

import plainid_async as pa
from plainid_async import _events
from plainid_async.testing import FakePlainID, running_fetches

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield
    assert running_fetches() == []
    assert _events.BUS.listeners == ()  # every test unsubscribed what it subscribed


def test_every_stats_field_is_documented() -> None:
    doc = pa.ProviderStats.__doc__ or ""
    for field in attrs.fields(pa.ProviderStats):
        assert f"{field.name}:" in doc, field.name


# -- health() ---------------------------------------------------------------------------------


async def test_health_in_each_state(fake: FakePlainID) -> None:
    provider, _ = recording(fake, refresh_margin=None)
    async with provider:
        empty = provider.health()
        assert (empty.state, empty.expires_in, empty.refresh_in, empty.source) == (
            None,
            None,
            None,
            "none",
        )
        assert (empty.failures, empty.last_error, empty.last_success) == (0, None, None)
        assert not empty.ready

        await provider.get_token()
        fresh = provider.health()
        assert fresh.state is pa.TokenState.FRESH
        assert fresh.ready
        assert fresh.source == "memory"
        assert fresh.expires_in is not None
        assert fresh.refresh_in is not None
        assert 0 < fresh.refresh_in < fresh.expires_in <= fake.expires_in
        assert fresh.last_success is not None
        assert fresh.failures == 0

        await provider.cache.store(provider.cache_key, token_with(remaining=40))
        stale = provider.health()
        assert (stale.state, stale.refresh_in, stale.ready) == (pa.TokenState.STALE, 0.0, True)

        await provider.cache.store(provider.cache_key, token_with(remaining=5))
        expired = provider.health()
        assert (expired.state, expired.ready) == (pa.TokenState.EXPIRED, False)

        fake.start_outage(503)
        with pytest.raises(pa.TokenEndpointUnavailableError):
            await provider.get_token(force_refresh=True)
        failing = provider.health()
        assert (failing.failures, failing.state, failing.source) == (1, None, "none")
        assert failing.last_error is not None
        assert "HTTP 503" in failing.last_error
        assert failing.last_success == fresh.last_success
        # The key's record in the cache is the truth: another provider on it says the same.
        async with make_provider(fake, cache=provider.cache) as twin:
            assert twin.health() == failing

        fake.end_outage()
        await provider.get_token(force_refresh=True)
        recovered = provider.health()
        assert (recovered.failures, recovered.state) == (0, pa.TokenState.FRESH)
        assert recovered.last_error is None
        assert recovered.last_success is not None
        assert fresh.last_success is not None
        assert recovered.last_success > fresh.last_success
    for report in (empty, fresh, stale, expired, failing, recovered):
        assert fake.client_secret not in repr(report)
        for issued in fake.issued_tokens:
            assert issued not in repr(report)


async def test_health_does_no_io_and_starts_nothing(fake: FakePlainID) -> None:
    provider, seen = recording(fake)
    async with provider:
        await provider.cache.store(provider.cache_key, token_with(remaining=40))
        for _ in range(100):
            assert provider.health().state is pa.TokenState.STALE
    assert fake.token_requests == []
    assert seen.events == []


async def test_health_report_as_json(fake: FakePlainID) -> None:
    provider, _ = recording(fake)
    async with provider:
        await provider.get_token()
        shown = json.loads(json.dumps(provider.health().to_dict()))
    assert shown["ready"] is True
    assert shown["state"] == "fresh"
    assert shown["source"] == "memory"
    assert set(shown) == {"ready", *(f.name for f in attrs.fields(pa.HealthReport))}


def test_health_report_is_immutable() -> None:
    report = pa.TokenProvider("id", "secret", region="us1").health()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        report.failures = 3  # type: ignore[misc]
