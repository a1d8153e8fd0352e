"""The demo workload behind ``plainid-async demo``: refresh-ahead tokens under load.

An embedded :class:`~plainid_async.testing.FakePlainID` issues short-lived tokens and serves
a protected resource. Workers send requests through :meth:`TokenProvider.session` for a
few seconds, across several token lifetimes and an outage of the token endpoint placed
inside a refresh window. The figures come from both sides, through public API only: the
provider's event stream (``on_event=``), :meth:`~plainid_async.TokenProvider.health` and
:attr:`~plainid_async.TokenProvider.stats`, and what the fake server saw
(``token_requests``, ``resource_requests``), read and never edited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import sys
import textwrap
import time
from typing import IO, TYPE_CHECKING, Final, Self

import aiohttp
import attrs

from ._cache import MemoryTokenCache
from ._endpoint import RetryPolicy
from ._events import EventKind, FetchReason, TokenEvent
from ._log import LOGGER_NAME
from ._provider import TokenProvider
from ._token import min_remaining
from .testing import FakePlainID

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = [
    "OUTAGE_STATUS",
    "PROVIDER_RETRY",
    "PROVIDER_TIMEOUT",
    "RESOURCE_PATH",
    "THINK_TIME",
    "TOKEN_LATENCY",
    "DemoOptions",
    "Snapshot",
    "run_demo",
]

#: The protected resource the workers call, shaped like a PlainID management API path.
RESOURCE_PATH: Final = "policy-mgmt/1.0/policies/demo-env"
#: How long the fake token endpoint takes to answer: a fetch that made requests wait
#: would show in their latency.
TOKEN_LATENCY: Final = 0.05
#: Pause between two requests of one worker.
THINK_TIME: Final = 0.02
#: Status the token endpoint answers during the outage.
OUTAGE_STATUS: Final = 503

#: Token requests: one attempt gets 1 s; a fetch gives up after 3 attempts or 1 s, so the
#: provider's own backoff between fetches decides when a failed refresh is tried again,
#: well inside the refresh window of a 5 s token.
PROVIDER_TIMEOUT: Final = 1.0
PROVIDER_RETRY: Final = RetryPolicy(attempts=3, backoff_base=0.1, backoff_max=0.4, deadline=1.0)


@attrs.frozen
class DemoOptions:
    """What ``plainid-async demo`` runs.

    Attributes:
        seconds: How long the workload runs.
        workers: Concurrent workers, each sending one request at a time.
        expires_in: Lifetime of the fake's tokens, in seconds.
        outage: Whether to inject an outage of the token endpoint in a refresh window.
        plain: Print plain lines even where a rich live view is possible.
    """

    seconds: float = 8.0
    workers: int = 20
    expires_in: float = 5.0
    outage: bool = True
    plain: bool = False


@attrs.define
class _Workload:
    """What the workers saw."""

    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    latencies: list[float] = attrs.field(factory=list)

    def record(self, seconds: float, error: str | None) -> None:
        self.requests += 1
        self.latencies.append(seconds)
        if error is not None:
            self.failures += 1
            self.last_error = error


@attrs.define
class _ServerSide:
    """What the fake PlainID saw, counted as it goes: only the new requests are read."""

    fake: FakePlainID
    token_ok: int = 0
    token_errors: int = 0
    unauthorized: int = 0
    tokens_seen: int = 0
    resources_seen: int = 0

    def update(self) -> None:
        tokens = self.fake.token_requests
        count = len(tokens)
        for request in tokens[self.tokens_seen : count]:
            if request.status == 200:
                self.token_ok += 1
            else:
                self.token_errors += 1
        self.tokens_seen = count
        resources = self.fake.resource_requests
        count = len(resources)
        self.unauthorized += sum(
            1 for r in resources[self.resources_seen : count] if r.status == 401
        )
        self.resources_seen = count


#: Seconds of run kept after the targeted token stops being handed out: the recovery.
_RECOVERY_SHOWN: Final = 0.5


def outage_fits(options: DemoOptions) -> bool:
    """Whether the run is long enough to show the outage and the recovery after it.

    The outage goes where the refresh window of a token opens, and the run must last until
    that token would stop being handed out (so the recovery shows): at least one token's
    usable life from the start. Decided before the run, so the demo never announces an
    outage it then skips.

    Args:
        options: What the demo runs.

    Returns:
        ``True`` when ``options.outage`` is set and the outage fits in ``options.seconds``.
    """
    return options.outage and options.seconds >= _outage_needs(options.expires_in)


def _outage_needs(lifetime: float) -> float:
    """Seconds of run a token fetched at the start needs to show an outage and recovery."""
    return lifetime - min_remaining(lifetime) + _RECOVERY_SHOWN


@attrs.frozen
class _Outage:
    """The injected outage, on the monotonic clock."""

    start: float
    end: float


@attrs.frozen
class Snapshot:
    """The demo's figures at one moment.

    Attributes:
        elapsed: Seconds since the workload started.
        requests: Requests sent so far.
        rate: Requests per second over the last interval.
        failures: Requests that failed (an error or a status other than 200).
        waits: Token lookups that had to wait for a fetch, after the cold start.
        unauthorized: 401 answers of the protected resource (the middleware retries them).
        token_requests: Token requests the fake PlainID received.
        token_ok: Token requests answered with a token.
        token_errors: Token requests answered with an error (the outage).
        tokens_fetched: Fetches that ended with a new token (the provider's count).
        background_refreshes: Refreshes started ahead of expiry.
        refresh_failures: Fetches that failed after their retries.
        p50: Median request latency, milliseconds.
        p99: 99th percentile request latency, milliseconds.
        max: Slowest request, milliseconds.
        endpoint_down: Whether the token endpoint is in its outage now.
        cached: The cached token's state from ``provider.health()``, e.g. ``"fresh"``.
        refresh_in: Seconds until its refresh window opens, from ``provider.health()``.
    """

    elapsed: float
    requests: int
    rate: float
    failures: int
    waits: int
    unauthorized: int
    token_requests: int
    token_ok: int
    token_errors: int
    tokens_fetched: int
    background_refreshes: int
    refresh_failures: int
    p50: float
    p99: float
    max: float
    endpoint_down: bool
    cached: str = "none"
    refresh_in: float | None = None


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class _EventLog:
    """The provider's event stream as short lines (its ``on_event=``), and the demo's notes.

    Lookups (one per request) are only counted by the provider; the lines tell the
    decisions: fetches, failed attempts, cool-downs, the 401 guard, evictions.
    """

    def __init__(self, started: float, token_url: str) -> None:
        self.started = started
        self.events: list[str] = []
        self._token_url = token_url

    def add(self, text: str) -> None:
        self.events.append(f"t={time.monotonic() - self.started:5.2f}s  {text}")

    def __call__(self, event: TokenEvent) -> None:
        """Take one event of the provider (the ``on_event`` callback); any thread."""
        text = _describe(event)
        if text is not None:
            # The URL is the same in every message and makes lines too long to read live.
            self.add(text.replace(f" {self._token_url}", ""))


_STARTED: Final = {
    FetchReason.COLD: "token fetch started: nothing usable cached",
    FetchReason.REFRESH: "background refresh started: the token is STALE, still served",
    FetchReason.FORCED: "forced refresh started",
    FetchReason.UNAUTHORIZED: "token fetch started: the API answered 401",
}


def _describe(event: TokenEvent) -> str | None:  # noqa: PLR0911 (one line per kind)
    """One line for an event worth reading live, or ``None`` (lookups)."""
    kind, number = event.kind, f"#{event.fetch_id}"
    status = "" if event.status is None else f" (HTTP {event.status})"
    if kind is EventKind.FETCH_STARTED and event.reason is not None:
        return f"{_STARTED[event.reason]} {number}"
    if kind is EventKind.ATTEMPT_FAILED:
        return (
            f"attempt {event.attempts} of {number} failed{status}; "
            f"next in {event.retry_in or 0:.2f} s"
        )
    if kind is EventKind.FETCH_SUCCEEDED and event.attempts:
        recovered = f"; recovered after {event.failures} failed" if event.failures else ""
        return (
            f"token fetched {number} in {(event.duration or 0) * 1000:.0f} ms, "
            f"expires in {event.expires_in or 0:g} s{recovered}"
        )
    if kind is EventKind.FETCH_FAILED:
        return (
            f"WARNING: fetch {number} failed after {event.attempts} attempts{status}; "
            f"{event.failures} in a row"
        )
    if kind is EventKind.COOLDOWN_STARTED:
        return f"cool-down: calls fail at once for {event.retry_in or 0:.1f} s"
    if kind is EventKind.UNAUTHORIZED_HELD:
        return "401 inside the 401 guard: token kept, the 401 goes back to the caller"
    if kind is EventKind.EVICTED:
        return "token evicted from the memory cache"
    if kind is EventKind.GAVE_UP:
        return f"a call gave up waiting for fetch {number}"
    return None


# -- views -------------------------------------------------------------------------------

_LIVE_COLUMNS: Final = (
    ("t", 5),
    ("requests", 9),
    ("req/s", 6),
    ("token reqs", 10),
    ("refreshes", 9),
    ("401s", 4),
    ("failed", 6),
    ("waited", 6),
    ("p50 ms", 6),
    ("p99 ms", 6),
    ("max ms", 6),
)


def _live_cells(s: Snapshot) -> list[str]:
    return [
        f"{s.elapsed:.0f}s",
        f"{s.requests:,}",
        f"{s.rate:,.0f}",
        f"{s.token_requests} ({s.token_errors} err)" if s.token_errors else f"{s.token_requests}",
        f"{s.background_refreshes}",
        f"{s.unauthorized}",
        f"{s.failures}",
        f"{s.waits}",
        f"{s.p50:.1f}",
        f"{s.p99:.1f}",
        f"{s.max:.1f}",
    ]


class _PlainView:
    """One line per second and a plain summary table: for pipes, logs and CI."""

    interval = 1.0

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._printed_events = 0

    def __enter__(self) -> Self:
        header = "  ".join(name.rjust(width) for name, width in _LIVE_COLUMNS)
        self._write(f"{header}  token endpoint")
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        self._write(text)

    def events(self, events: list[str]) -> None:
        for event in events[self._printed_events :]:
            self._write(f"  {event}")
        self._printed_events = len(events)

    def update(self, snapshot: Snapshot, events: list[str]) -> None:
        self.events(events)
        cells = _live_cells(snapshot)
        line = "  ".join(
            cell.rjust(width) for cell, (_, width) in zip(cells, _LIVE_COLUMNS, strict=True)
        )
        state = f"DOWN ({OUTAGE_STATUS})" if snapshot.endpoint_down else "up"
        self._write(f"{line}  {state}")

    def summary(self, title: str, rows: list[tuple[str, str, str]], verdict: str) -> None:
        self._write("")
        self._write(title)
        label_width = max(len(label) for label, _, _ in rows)
        value_width = max(len(value) for _, value, _ in rows)
        rule = "-" * (label_width + value_width + 40)
        self._write(rule)
        for label, value, note in rows:
            self._write(f"{label.ljust(label_width)}  {value.rjust(value_width)}  {note}".rstrip())
        self._write(rule)
        self._write(verdict)


class _RichView:
    """A live table and event log on a terminal, with rich."""

    interval = 0.25

    def __init__(self, console: Console, seconds: float) -> None:
        self._console = console
        self._seconds = seconds
        self._live: Live | None = None

    def __enter__(self) -> Self:
        from rich.live import Live  # noqa: PLC0415 (rich is optional)

        self._live = Live(console=self._console, refresh_per_second=8, transient=False)
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def note(self, text: str) -> None:
        self._console.print(text, highlight=False)

    def update(self, snapshot: Snapshot, events: list[str]) -> None:
        if self._live is not None:
            self._live.update(self._render(snapshot, events))

    def _render(self, s: Snapshot, events: list[str]) -> RenderableType:
        from rich.columns import Columns  # noqa: PLC0415
        from rich.console import Group  # noqa: PLC0415
        from rich.panel import Panel  # noqa: PLC0415
        from rich.progress_bar import ProgressBar  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        def panel(title: str, rows: list[tuple[str, RenderableType]]) -> Panel:
            grid = Table.grid(padding=(0, 2))
            grid.add_column()
            grid.add_column(justify="right", style="bold")
            for label, value in rows:
                grid.add_row(label, value)
            return Panel(grid, title=title, title_align="left")

        def count(value: int) -> Text:
            return Text(f"{value:,}", style="red" if value else "green")

        workload = panel(
            "requests",
            [
                ("sent", f"{s.requests:,}"),
                ("per second", f"{s.rate:,.0f}"),
                ("failed", count(s.failures)),
                ("waited on a token", count(s.waits)),
                ("401 answers", f"{s.unauthorized:,}"),
                ("latency p50", f"{s.p50:.1f} ms"),
                ("latency p99", f"{s.p99:.1f} ms"),
                ("latency max", f"{s.max:.1f} ms"),
            ],
        )
        endpoint = (
            Text(f"DOWN ({OUTAGE_STATUS})", style="bold red")
            if s.endpoint_down
            else Text("up", style="green")
        )
        tokens = panel(
            "tokens",
            [
                ("token endpoint", endpoint),
                ("cached token (health)", _state_text(s)),
                ("token requests", f"{s.token_requests:,}"),
                ("  answered with a token", f"{s.token_ok:,}"),
                ("  failed (outage)", f"{s.token_errors:,}"),
                ("background refreshes", f"{s.background_refreshes:,}"),
                ("failed refreshes", f"{s.refresh_failures:,}"),
            ],
        )
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=self._seconds, completed=min(s.elapsed, self._seconds), width=40),
            Text(f"{s.elapsed:4.1f} / {self._seconds:g} s"),
        )
        top = Group(progress, Columns([workload, tokens]))
        # The events panel gets the rows left on the screen: the newest events that fit
        # whole, each wrapped at spaces, so the live view is never cut.
        console = self._console
        used = len(console.render_lines(top, console.options, pad=False))
        rows = console.height - used - 3
        if rows < 1:  # a terminal too small for the events: show the figures only
            return top
        lines = _fit_events(events, width=console.width - 4, rows=rows)
        log = Text("\n".join(lines) or "…", style="dim", no_wrap=True, overflow="ellipsis")
        return Group(top, Panel(log, title="events", title_align="left", border_style="dim"))

    def events(self, events: list[str]) -> None:
        pass  # shown inside the live panel

    def summary(self, title: str, rows: list[tuple[str, str, str]], verdict: str) -> None:
        from rich.table import Table  # noqa: PLC0415

        table = Table(title=title, title_style="bold", show_header=False)
        table.add_column("figure")
        table.add_column("value", justify="right", style="bold")
        table.add_column("what it shows")
        for label, value, note in rows:
            table.add_row(label, value, note)
        self._console.print(table)
        style = "bold green" if verdict.startswith("OK") else "bold red"
        self._console.print(verdict, style=style, highlight=False)


def _state_text(s: Snapshot) -> str:
    """The cached token's state as ``provider.health()`` gave it, e.g. "FRESH, refresh in 1.2 s"."""
    state = s.cached.upper()
    if s.cached == "fresh" and s.refresh_in is not None:
        return f"{state}, refresh in {s.refresh_in:.1f} s"
    return state


def _fit_events(events: list[str], *, width: int, rows: int) -> list[str]:
    """The newest events that fit in ``rows`` lines of ``width``, oldest first.

    Each event is wrapped at spaces only, continuation lines indented under its text; an
    event that does not fit whole is left out, with the older ones.
    """
    shown: list[str] = []
    for event in reversed(events):
        stamp, _, _ = event.partition("  ")
        lines = textwrap.wrap(
            event,
            width=max(width, 20),
            subsequent_indent=" " * (len(stamp) + 2),
            break_long_words=False,
            break_on_hyphens=False,
        )
        if len(shown) + len(lines) > rows:
            break
        shown[:0] = lines
    return shown


def _make_view(options: DemoOptions, out: IO[str]) -> _PlainView | _RichView:
    if options.plain or not out.isatty():
        return _PlainView(out)
    try:
        from rich.console import Console  # noqa: PLC0415 (rich is optional)
    except ImportError:
        return _PlainView(out)
    return _RichView(Console(file=out), options.seconds)


# -- workload ----------------------------------------------------------------------------


async def _worker(session: aiohttp.ClientSession, deadline: float, workload: _Workload) -> None:
    # Start spread out, as real traffic would.
    await asyncio.sleep(random.random() * THINK_TIME)  # noqa: S311 (load shape, not crypto)
    while time.monotonic() < deadline:
        error: str | None = None
        started = time.perf_counter()
        try:
            async with session.get(RESOURCE_PATH) as response:
                await response.read()
                if response.status != 200:
                    error = f"HTTP {response.status}"
        except Exception as exc:  # noqa: BLE001 (a load generator counts every failure)
            error = f"{type(exc).__name__}: {exc}"
        workload.record(time.perf_counter() - started, error)
        await asyncio.sleep(THINK_TIME)


async def _inject_outage(
    provider: TokenProvider,
    fake: FakePlainID,
    *,
    not_before: float,
    deadline: float,
    log: _EventLog,
) -> _Outage | None:
    """Schedule an outage of the token endpoint over the opening of a refresh window.

    It starts just before a token turns STALE, so the first background refresh fails;
    it ends well before the token stops being handed out, so the provider's retry (after
    its backoff) gets a new token in time.
    """
    await asyncio.sleep(max(0.0, not_before - time.monotonic()))
    while True:
        now = time.monotonic()
        if now > deadline:
            return None
        # health() says when this provider will start refreshing the cached token.
        health = provider.health()
        refresh_in, expires_in = health.refresh_in, health.expires_in
        if refresh_in is not None and expires_in is not None and refresh_in >= 0.3:
            break
        await asyncio.sleep(0.05)
    refresh_at = now + refresh_in
    # The token stops being handed out min(30 s, a tenth of its lifetime) before expiry.
    usable_until = now + expires_in - min_remaining(fake.expires_in)
    if usable_until + _RECOVERY_SHOWN > deadline:  # not expected: see _outage_start
        log.add("the outage did not fit in the rest of the run; none was injected")
        return None
    span = usable_until - refresh_at
    outage = _Outage(start=refresh_at - 0.1, end=refresh_at + min(0.6, 0.3 * span))
    fake.outage_between(outage.start - now, outage.end - now, OUTAGE_STATUS)
    log.add(
        f"outage of the token endpoint scheduled from t={outage.start - log.started:.2f}s "
        f"to t={outage.end - log.started:.2f}s, where the refresh window of the current token "
        "opens"
    )
    return outage


def _outage_start(options: DemoOptions) -> float:
    """Seconds into the run from which the outage looks for a refresh window to hit.

    About 40 % in, so normal traffic shows first; but early enough that the token current
    then, or the one after it, still has its whole usable life inside the run.
    """
    lifetime = options.expires_in
    latest = options.seconds - _outage_needs(lifetime) - lifetime / 2 - _RECOVERY_SHOWN
    return max(0.0, min(0.4 * options.seconds - 0.5, latest))


async def _watch(
    view: _PlainView | _RichView,
    snapshot: Callable[[], Snapshot],
    events: _EventLog,
    done: asyncio.Event,
    last_row_before: float,
) -> None:
    """Update the view every interval until ``done``, up to ``last_row_before``.

    From then on only the final row, printed by the caller once the run has drained, tells
    the end: the last second never shows twice.
    """
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), view.interval)
        if not done.is_set() and time.monotonic() < last_row_before:
            view.update(snapshot(), events.events)


@attrs.define
class _Run:
    """One demo run: the parts, and the figures as they stand."""

    options: DemoOptions
    fake: FakePlainID
    provider: TokenProvider
    started: float = 0.0
    baseline_waits: int = 0
    workload: _Workload = attrs.field(factory=_Workload)
    server: _ServerSide = attrs.field(init=False)
    outage: _Outage | None = None
    #: (time, requests) at the last snapshot, for the rate.
    last: tuple[float, int] = (0.0, 0)

    def __attrs_post_init__(self) -> None:
        self.server = _ServerSide(self.fake)

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        self.server.update()
        stats = self.provider.stats
        workload = self.workload
        last_time, last_requests = self.last
        rate = (workload.requests - last_requests) / max(now - last_time, 1e-9)
        self.last = (now, workload.requests)
        health = self.provider.health()
        ordered = sorted(workload.latencies)
        outage = self.outage
        return Snapshot(
            elapsed=now - self.started,
            requests=workload.requests,
            rate=rate,
            failures=workload.failures,
            waits=stats.waits - self.baseline_waits,
            unauthorized=self.server.unauthorized,
            token_requests=self.server.token_ok + self.server.token_errors,
            token_ok=self.server.token_ok,
            token_errors=self.server.token_errors,
            tokens_fetched=stats.tokens_fetched,
            background_refreshes=stats.background_refreshes,
            refresh_failures=stats.failures,
            p50=_percentile(ordered, 0.50) * 1000,
            p99=_percentile(ordered, 0.99) * 1000,
            max=(ordered[-1] * 1000) if ordered else 0.0,
            endpoint_down=outage is not None and outage.start <= now < outage.end,
            cached="none" if health.state is None else health.state.value,
            refresh_in=health.refresh_in,
        )


def _summary(
    run: _Run, final: Snapshot, cold: float
) -> tuple[str, list[tuple[str, str, str]], list[str]]:
    """Build the summary rows, and the list of claims that did not hold."""
    options = run.options
    lifetime = options.expires_in
    window = min(lifetime / 2, 3600.0)
    refreshes_ok = final.tokens_fetched - 1
    one_per_refresh = (
        final.token_ok == final.tokens_fetched
        and refreshes_ok <= final.background_refreshes
        and final.tokens_fetched >= 1
    )
    failed: list[str] = []
    if final.failures:
        failed.append(f"{final.failures} requests failed (last: {run.workload.last_error})")
    if final.waits:
        failed.append(f"{final.waits} requests waited on a token fetch")
    if not one_per_refresh:
        failed.append(
            f"{final.token_ok} token requests succeeded for {final.tokens_fetched} tokens "
            f"fetched and {final.background_refreshes} background refreshes"
        )

    def mark(ok: bool) -> str:  # noqa: FBT001 (a local helper)
        return "ok" if ok else "NOT OK"

    rate = final.requests / max(final.elapsed, 1e-9)
    rows = [
        (
            "requests through provider.session()",
            f"{final.requests:,}",
            f"{rate:,.0f}/s from {options.workers} concurrent workers",
        ),
        ("failed requests", f"{final.failures}", mark(not final.failures)),
        (
            "requests that waited on a token",
            f"{final.waits}",
            (
                f"{mark(not final.waits)}: only the cold fetch before the workload waited "
                f"({cold * 1000:.0f} ms)"
            ),
        ),
        ("401 answers from the API", f"{final.unauthorized}", "no request ever sent a stale token"),
        (
            "latency p50 / p99 / max",
            f"{final.p50:.1f} / {final.p99:.1f} / {final.max:.1f} ms",
            f"a token fetch takes {TOKEN_LATENCY * 1000:.0f} ms or more; no request waited for one",
        ),
        (
            "token lifetime",
            f"{lifetime:g} s",
            f"refresh window opens {window:g} s before expiry",
        ),
        (
            "tokens fetched",
            f"{final.tokens_fetched}",
            f"1 cold + {refreshes_ok} from background refreshes, while requests went on",
        ),
        (
            "background refreshes",
            f"{final.background_refreshes}",
            (
                "started ahead of expiry, as in the live view"
                + (
                    f"; of these, {final.refresh_failures} failed in the outage (tried "
                    "again after a backoff)"
                    if final.refresh_failures
                    else ""
                )
            ),
        ),
        (
            "token requests answered with a token",
            f"{final.token_ok}",
            (
                f"{mark(one_per_refresh)}: one token request per refresh, not one per request "
                "or per worker"
            ),
        ),
    ]
    if run.outage is not None:
        outage = run.outage
        rows.append(
            (
                "token requests failed in the outage",
                f"{final.token_errors}",
                (
                    f"HTTP {OUTAGE_STATUS} for {outage.end - outage.start:.1f} s from "
                    f"t={outage.start - run.started:.1f}s, inside a refresh window"
                ),
            )
        )
        rows.append(
            (
                "refreshes that failed, then recovered",
                f"{final.refresh_failures}",
                "retried with backoff while the cached token stayed valid; no request noticed"
                if final.refresh_failures
                else "the refresh got its token on a retry within its own backoff",
            )
        )
    title = (
        f"plainid-async demo: {final.elapsed:.1f} s, {options.workers} workers, "
        f"{lifetime:g} s tokens"
    )
    return title, rows, failed


async def run_demo(options: DemoOptions, out: IO[str] | None = None) -> int:
    """Run the demo and print its live progress and summary.

    Args:
        options: What to run.
        out: Where to print; defaults to :data:`sys.stdout`.

    Returns:
        0 when no request failed and none waited on a token fetch after the cold start;
        1 otherwise.
    """
    stream = sys.stdout if out is None else out
    view = _make_view(options, stream)
    async with FakePlainID(expires_in=options.expires_in, latency=TOKEN_LATENCY) as fake:
        events = _EventLog(time.monotonic(), str(fake.token_url))
        provider = TokenProvider(
            fake.client_id,
            fake.client_secret,
            base_url=fake.base_url,
            cache=MemoryTokenCache(),
            timeout=PROVIDER_TIMEOUT,
            retry=PROVIDER_RETRY,
            on_event=events,
        )
        run = _Run(options, fake, provider)
        if outage_fits(options):
            outage_note = "; an outage of it is injected in a refresh window"
        elif options.outage:
            outage_note = (
                f"; the run is too short for an outage of it (that needs --seconds "
                f"{math.ceil(_outage_needs(options.expires_in)):d} or more), so none is injected"
            )
        else:
            outage_note = ""
        view.note(
            f"plainid-async demo: {options.workers} workers for {options.seconds:g} s "
            f"through TokenProvider.session(), against an embedded FakePlainID at "
            f"{fake.base_url}\ntokens live {options.expires_in:g} s; the token endpoint "
            f"answers in {TOKEN_LATENCY * 1000:.0f} ms{outage_note}"
        )
        with _quiet_library_log():
            async with provider, provider.session(timeout=aiohttp.ClientTimeout(total=5)) as s:
                return await _drive(run, s, view, events)


@contextlib.contextmanager
def _quiet_library_log() -> Iterator[None]:
    """Mute the library's log for the duration: the event stream tells the same story."""
    library = logging.getLogger(LOGGER_NAME)
    saved = (library.level, library.propagate)
    handler = logging.NullHandler()
    library.addHandler(handler)
    library.setLevel(logging.CRITICAL)
    library.propagate = False
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(saved[0])
        library.propagate = saved[1]


async def _drive(
    run: _Run,
    session: aiohttp.ClientSession,
    view: _PlainView | _RichView,
    events: _EventLog,
) -> int:
    options = run.options
    # t=0 is the cold fetch: its event lines and every later one share one clock, in order.
    run.started = events.started = cold_started = time.monotonic()
    await run.provider.get_token()
    cold = time.monotonic() - cold_started
    run.baseline_waits = run.provider.stats.waits
    workload_started = time.monotonic()
    run.last = (workload_started, 0)  # the rate starts here
    deadline = workload_started + options.seconds
    outage_task = None
    if outage_fits(options):
        outage_task = asyncio.create_task(
            _inject_outage(
                run.provider,
                run.fake,
                not_before=run.started + _outage_start(options),
                deadline=deadline,
                log=events,
            )
        )
        outage_task.add_done_callback(
            lambda task: setattr(run, "outage", None if task.cancelled() else task.result())
        )
    done = asyncio.Event()
    with view:
        watcher = asyncio.create_task(
            _watch(view, run.snapshot, events, done, deadline - view.interval / 2)
        )
        workers = [
            asyncio.create_task(_worker(session, deadline, run.workload))
            for _ in range(options.workers)
        ]
        await asyncio.gather(*workers)
        # Let a refresh still on the wire land, so both sides count it.
        await asyncio.sleep(2 * TOKEN_LATENCY + 0.1)
        done.set()
        await watcher
        final = run.snapshot()
        # The last live line is the final state, so it agrees with the summary; its rate is
        # the whole run's (the last interval only drained what was in flight).
        final = attrs.evolve(final, rate=final.requests / max(final.elapsed, 1e-9))
        view.update(final, events.events)
    if outage_task is not None and not outage_task.done():
        outage_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await outage_task
    view.events(events.events)
    title, rows, failed = _summary(run, final, cold)
    verdict = (
        "OK: no request failed and none waited on a token refresh."
        if not failed
        else "NOT OK: " + "; ".join(failed)
    )
    view.summary(title, rows, verdict)
    return 0 if not failed else 1
