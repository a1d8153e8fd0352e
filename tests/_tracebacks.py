"""What an error reporter sees of an exception: every frame's locals, the chain, Sentry's event.

``traceback.TracebackException(..., capture_locals=True)`` and a default Sentry event (its
``include_local_variables`` is on by default), built in-process with a transport that sends
nothing, so a test can search them for a secret.
"""

from __future__ import annotations

import json
import traceback
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.transport import Transport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from sentry_sdk.envelope import Envelope


class NoNetwork(Transport):
    """A Sentry transport that keeps envelopes in memory and sends nothing."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def sentry_event(error: BaseException) -> dict[str, Any]:
    """The event Sentry's SDK builds for ``error`` with its default options, in-process."""
    events: list[dict[str, Any]] = []

    def keep(event: Any, _hint: Any) -> None:
        events.append(event)

    client = sentry_sdk.Client(
        dsn="http://public@127.0.0.1:9/1",  # never contacted: the transport keeps events
        transport=NoNetwork,
        before_send=keep,
        default_integrations=False,  # no global patching of the test process
    )
    try:
        with sentry_sdk.isolation_scope() as scope:
            scope.set_client(client)
            scope.capture_exception(error)
    finally:
        client.close()
    [event] = events
    return event


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception its ``__cause__`` and ``__context__`` lead to."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def with_locals(error: BaseException) -> str:
    """The traceback of ``error`` and its chain, each frame with its locals."""
    report = traceback.TracebackException(
        type(error), error, error.__traceback__, capture_locals=True
    )
    return "".join(report.format())


async def failure_of(awaitable: Awaitable[object]) -> BaseException:
    """What ``awaitable`` raised, caught in this frame: the test's own locals are not in it."""
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 (any failure: its frames are what is checked)
        return exc
    raise AssertionError("it did not fail")


def raised_by(call: Callable[[], object]) -> BaseException:
    """What ``call()`` raised, caught in this frame: the test's own locals are not in it."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 (any failure: its frames are what is checked)
        return exc
    raise AssertionError("it did not fail")


def everything_reported(error: BaseException) -> str:
    """All a reporter may show of ``error``: locals, each exception's repr and args, Sentry's event.

    Asserts that locals were captured at all, so a search of the result means something.
    """
    parts = [with_locals(error)]
    for current in chain(error):
        parts += [
            with_locals(current),
            repr(current),
            repr(current.args),
            repr(getattr(current, "__dict__", {})),
        ]
    event = json.dumps(sentry_event(error), default=repr)
    assert '"vars"' in event  # Sentry captured frame locals (its default)
    return "\n".join([*parts, event])
