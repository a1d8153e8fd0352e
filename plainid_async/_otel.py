"""The OpenTelemetry consumer of the event stream; :mod:`plainid_async.otel` is its face."""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from ._checks import check_has_method
from ._events import ALL_KINDS, EventKind, TokenEvent, subscribe
from ._provider import fresh_hits

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = ["instrument", "instrumented", "uninstrument"]

_SCOPE: Final = "plainid_async"
#: What the stream is asked for: every kind but ``HIT``, so a cached lookup stays on the
#: provider's hot path; hits are read from the providers' in-memory counts at collection.
_KINDS: Final = ALL_KINDS - {EventKind.HIT}
_LOOKUP_RESULTS: Final = {
    EventKind.STALE: "stale",
    EventKind.WAIT: "wait",
    EventKind.COOLDOWN: "cooldown",
}
_ENDS: Final = {
    EventKind.FETCH_SUCCEEDED: "success",
    EventKind.FETCH_FAILED: "failure",
    EventKind.FETCH_CANCELLED: "cancelled",
}
#: Histogram buckets in seconds: a token request takes milliseconds, a retried one seconds.
_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Spans of fetches that never ended (their loop died) are dropped past this many.
_MAX_OPEN_SPANS: Final = 10_000


def _version() -> str:
    from importlib.metadata import version  # noqa: PLC0415 (only when instrumenting)

    return version("plainid-async")


class _Instrumentation:
    """The instruments, and the state the stream needs: open spans and tokens per client."""

    def __init__(
        self, meter_provider: MeterProvider | None, tracer_provider: TracerProvider | None
    ) -> None:
        version = _version()
        self.meters = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = self.meters.get_meter(_SCOPE, version)
        self.tracer = trace.get_tracer(_SCOPE, version, tracer_provider=tracer_provider)
        # Lookups happen on every call: counted in memory and observed at collection time,
        # as a synchronous counter's add() would cost the hot path tens of microseconds.
        # Hits are the providers' own counts (fresh_hits), from when this instrumentation
        # began; the other results come from their events. The totals outlive
        # uninstrument(), so a re-instrumented meter provider sees them rise.
        self.lookup_totals = _lookup_totals(self.meters)
        self.hits_from = fresh_hits()
        self.hits = 0  # hits since hits_from, never lower than last seen
        self.requests = meter.create_counter(
            "plainid.token.requests",
            unit="{request}",
            description="Token fetches that sent HTTP requests to PlainID's token endpoint",
        )
        # A meter provider hands back the instrument it already has for a name, with the
        # callbacks of then: so the callbacks find the current instrumentation themselves.
        meter.create_observable_counter(
            "plainid.token.lookups",
            callbacks=[_observer(self.meters, _Instrumentation.observe_lookups)],
            unit="{lookup}",
            description="get_token() calls, by how the cache answered them",
        )
        self.duration = meter.create_histogram(
            "plainid.token.request.duration",
            unit="s",
            description="Duration of token fetches, retries and backoff included",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            "plainid.token.remaining",
            callbacks=[_observer(self.meters, _Instrumentation.observe_remaining)],
            unit="s",
            description="Seconds left on the latest access token seen per client",
        )
        self._lock = threading.Lock()
        self._spans: dict[int, Span] = {}
        self._expiry: dict[str, float] = {}  # client id -> wall-clock expiry
        self.unsubscribe: Callable[[], None] = lambda: None

    def on_event(self, event: TokenEvent) -> None:
        """Turn one event into metrics and span changes."""
        kind = event.kind
        result = _LOOKUP_RESULTS.get(kind)
        if result is not None:
            with self._lock:
                self.lookup_totals[result] = self.lookup_totals.get(result, 0) + 1
            self._seen(event)
        elif kind is EventKind.FETCH_STARTED:
            self._start(event)
        elif kind is EventKind.ATTEMPT_FAILED:
            span = self._span(event, pop=False)
            if span is not None:
                span.add_event("plainid.token.attempt", _attempt_attributes(event, "failure"))
        elif kind in _ENDS:
            self._end(event, _ENDS[kind])

    def _seen(self, event: TokenEvent) -> None:
        if event.client_id is not None and event.expires_at is not None:
            with self._lock:
                self._expiry[event.client_id] = event.expires_at

    def _start(self, event: TokenEvent) -> None:
        if event.fetch_id is None:
            return
        reason = event.reason.value if event.reason is not None else "cold"
        span = self.tracer.start_span(
            "plainid.token.fetch",
            kind=trace.SpanKind.CLIENT,
            attributes={"plainid.token.reason": reason},
        )
        with self._lock:
            if len(self._spans) >= _MAX_OPEN_SPANS:
                self._spans.pop(next(iter(self._spans)))
            self._spans[event.fetch_id] = span

    def _span(self, event: TokenEvent, *, pop: bool) -> Span | None:
        if event.fetch_id is None:
            return None
        with self._lock:
            if pop:
                return self._spans.pop(event.fetch_id, None)
            return self._spans.get(event.fetch_id)

    def _end(self, event: TokenEvent, outcome: str) -> None:
        self._seen(event)
        attempts = event.attempts or 0
        attributes: dict[str, AttributeValue] = {"outcome": outcome}
        if event.reason is not None:
            attributes["reason"] = event.reason.value
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        if attempts and outcome != "cancelled":
            self.requests.add(1, attributes)
            if event.duration is not None:
                self.duration.record(event.duration, attributes)
        span = self._span(event, pop=True)
        if span is None:
            return
        if attempts:
            span.add_event("plainid.token.attempt", _attempt_attributes(event, outcome))
        span.set_attribute("plainid.token.attempts", attempts)
        span.set_attribute("plainid.token.outcome", outcome)
        if event.status is not None:
            span.set_attribute("http.response.status_code", event.status)
        if outcome == "failure":
            if event.error_type is not None:
                span.set_attribute("error.type", event.error_type)
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end()

    def count_hits(self) -> int:
        """Hits since this instrumentation began (never lower than the last count)."""
        hits = fresh_hits() - self.hits_from
        with self._lock:
            # A provider dropped without close() takes its count along: keep the last one.
            self.hits = max(self.hits, hits)
            return self.hits

    def fold_hits(self) -> None:
        """Add this instrumentation's hits to the meter provider's totals (on uninstrument)."""
        hits = self.count_hits()
        with self._lock:
            self.lookup_totals["hit"] = self.lookup_totals.get("hit", 0) + hits

    def observe_lookups(self) -> list[Observation]:
        """Lookups so far, per result."""
        hits = self.count_hits()
        with self._lock:
            totals = dict(self.lookup_totals)
        totals["hit"] = totals.get("hit", 0) + hits
        return [metrics.Observation(n, {"result": result}) for result, n in totals.items() if n]

    def observe_remaining(self) -> list[Observation]:
        """Seconds left on the latest token seen, per client."""
        now = time.time()
        with self._lock:
            expiry = dict(self._expiry)
        return [
            metrics.Observation(max(0.0, at - now), {"plainid.client_id": client})
            for client, at in expiry.items()
        ]


def _attempt_attributes(event: TokenEvent, outcome: str) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "plainid.token.attempt": event.attempts or 0,
        "plainid.token.outcome": outcome,
    }
    if event.status is not None:
        attributes["http.response.status_code"] = event.status
    if event.error_type is not None:
        attributes["error.type"] = event.error_type
    if event.retry_in is not None:
        attributes["plainid.token.retry_in"] = event.retry_in
    return attributes


def _observer(
    meters: MeterProvider, observe: Callable[[_Instrumentation], list[Observation]]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """A callback for ``meters`` that reads the current instrumentation, if it is theirs."""

    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        state = _current
        if state is None or state.meters is not meters:
            return []
        return observe(state)

    return callback


def _lookup_totals(meters: MeterProvider) -> dict[str, int]:
    try:
        return _LOOKUP_TOTALS.setdefault(meters, {})
    except TypeError:  # a meter provider that takes no weak reference
        return {}


_lock = threading.Lock()
_current: _Instrumentation | None = None
_LOOKUP_TOTALS: weakref.WeakKeyDictionary[MeterProvider, dict[str, int]] = (
    weakref.WeakKeyDictionary()
)


def instrument(
    *, meter_provider: MeterProvider | None = None, tracer_provider: TracerProvider | None = None
) -> None:
    """Emit OpenTelemetry metrics and spans for every token provider in this process.

    Idempotent: while instrumented, another call changes nothing (call
    :func:`uninstrument` first to switch providers).

    Args:
        meter_provider: Where the metrics go; default: the global meter provider.
        tracer_provider: Where the spans go; default: the global tracer provider.

    Raises:
        TypeError: A provider given has no ``get_meter()`` / ``get_tracer()``.
    """
    check_has_method(
        "meter_provider", meter_provider, "get_meter", "an OpenTelemetry MeterProvider"
    )
    check_has_method(
        "tracer_provider", tracer_provider, "get_tracer", "an OpenTelemetry TracerProvider"
    )
    global _current  # noqa: PLW0603 (one instrumentation per process, behind the lock)
    with _lock:
        if _current is not None:
            return
        state = _Instrumentation(meter_provider, tracer_provider)
        state.unsubscribe = subscribe(state.on_event, kinds=_KINDS)
        _current = state


def uninstrument() -> None:
    """Stop emitting: no more measurements, spans or gauge observations. Idempotent."""
    global _current
    with _lock:
        state, _current = _current, None
    if state is not None:
        state.unsubscribe()
        state.fold_hits()


def instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _current is not None
