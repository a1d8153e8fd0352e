"""OpenTelemetry metrics and spans for every token provider in the process (extra ``otel``).

Needs only ``opentelemetry-api``; with no SDK configured every call is a no-op. Turn it on
once, at start-up::

    from plainid_async import otel

    otel.instrument()  # the global meter and tracer providers, or pass your own

Instruments (all under the meter ``plainid_async``):

* counter ``plainid.token.requests``: one per fetch that sent at least one HTTP request,
  attributes ``outcome`` (``success`` | ``failure``), ``reason`` (``cold`` | ``refresh`` |
  ``forced`` | ``unauthorized``) and ``http.response.status_code`` of the last answer,
  when there was one;
* counter ``plainid.token.lookups``: one per ``get_token()`` call, attribute ``result``
  (``hit`` | ``stale`` | ``wait`` | ``cooldown``); an observable counter, counted in
  memory and read at collection time, so a cache hit makes no SDK call;
* histogram ``plainid.token.request.duration`` (``s``): how long those fetches took,
  retries and backoff included, with the attributes of ``plainid.token.requests``;
* observable gauge ``plainid.token.remaining`` (``s``): seconds left on the latest token
  seen per client, attribute ``plainid.client_id``.

Span ``plainid.token.fetch`` around each fetch (a child of the span current where the fetch
started), with attributes ``plainid.token.reason``, ``plainid.token.attempts``,
``plainid.token.outcome`` and ``http.response.status_code``, and one span event
``plainid.token.attempt`` per HTTP attempt. No attribute, event or span carries a secret or
a token.
"""

from __future__ import annotations

try:
    from ._otel import instrument, instrumented, uninstrument
except ModuleNotFoundError as _missing:  # pragma: no cover - depends on the installed extras
    if not (_missing.name or "").startswith("opentelemetry"):
        raise
    raise ImportError(
        "plainid_async.otel needs opentelemetry-api: install the extra, "
        "pip install 'plainid-async[otel]'"
    ) from _missing

__all__ = ["instrument", "instrumented", "uninstrument"]
