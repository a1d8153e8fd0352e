"""The refresher: one daemon thread with its own event loop, where token fetches run.

A fetch that runs on the caller's loop dies with it: ``asyncio.run`` cancels every task it
leaves behind, so a refresh started by one short-lived loop (a Django, Flask or Celery
handler calling ``asyncio.run`` or ``async_to_sync``) never lands. Fetches run here
instead, on a loop that lives as long as the process, as google-auth's
``_refresh_worker`` runs refreshes on a worker thread. Callers on any loop wait for them
through a :class:`concurrent.futures.Future`, each with its own time budget.

The thread starts on the first fetch, is a daemon (it never holds up interpreter exit), and
is started anew in a child process after ``fork``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Coroutine

__all__ = ["on_refresher_thread", "refresher_loop", "run_in_refresher", "running_refresher_loop"]

_T = TypeVar("_T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_thread_id: int | None = None


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    global _thread_id  # noqa: PLW0603 (set by the one refresher thread, before it is ready)
    _thread_id = threading.get_ident()
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def refresher_loop() -> asyncio.AbstractEventLoop:
    """The refresher's event loop, starting its thread if needed."""
    global _loop, _pid  # one refresher per process, fenced by _lock
    loop = running_refresher_loop()
    if loop is not None:
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid() or not _loop.is_running():
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=_serve, args=(loop, ready), name="plainid-async refresher", daemon=True
            )
            thread.start()
            ready.wait()
            _loop, _pid = loop, os.getpid()
        return _loop


def running_refresher_loop() -> asyncio.AbstractEventLoop | None:
    """The refresher's event loop if it runs in this process; never starts it."""
    loop = _loop
    if loop is not None and _pid == os.getpid() and loop.is_running():
        return loop
    return None


def run_in_refresher(coro: Coroutine[object, object, _T]) -> concurrent.futures.Future[_T]:
    """Run ``coro`` on the refresher's loop; cancelling the future cancels it."""
    return asyncio.run_coroutine_threadsafe(coro, refresher_loop())


def is_refresher_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is the refresher's."""
    return loop is _loop


def on_refresher_thread() -> bool:
    """Whether this thread is the refresher's (one look, for every event emitted)."""
    return threading.get_ident() == _thread_id


def _forget_after_fork() -> None:
    """In a forked child: the parent's refresher thread is gone, and its lock may be held."""
    global _lock, _loop, _pid, _thread_id  # noqa: PLW0603 (the child's own refresher)
    parents = _loop
    _lock = threading.Lock()
    _loop = _pid = _thread_id = None
    if parents is not None:
        _cut_off(parents)


def _cut_off(loop: asyncio.AbstractEventLoop) -> None:
    """In a forked child: keep the parent's loop object from changing the parent's selector.

    The child inherits the epoll (or kqueue) instance of the parent's refresher loop, and
    the sockets registered in it. Whatever the child closes of the parent's (a Redis
    connection finalized at the child's exit, say) would unregister its socket there, and
    so for the parent too, whose loop would then never hear from that socket again. A
    selector of the child's own takes its place; the inherited one is closed, which only
    closes the child's copy of its descriptor.
    """
    inherited = getattr(loop, "_selector", None)  # asyncio's selector loops; not uvloop
    if isinstance(inherited, selectors.BaseSelector):
        loop._selector = selectors.SelectSelector()  # type: ignore[attr-defined]  # noqa: SLF001
        inherited.close()


os.register_at_fork(after_in_child=_forget_after_fork)
