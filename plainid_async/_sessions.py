"""The refresher's HTTP sessions: kept alive across fetches, closed with their last provider.

Fetches that run on the refresher's loop (:mod:`plainid_async._refresher`) and have no
``session=`` share one :class:`aiohttp.ClientSession` per transport there: token endpoint
origin, ``ssl=``, ``proxy=`` (with its credentials) and ``trust_env``. A refresh then
reuses the connection (and the TLS session) of the last one instead of a new handshake
each time, and providers with different transport settings never share a connection or a
pool. Only the session's connector is used (see :func:`plainid_async._endpoint.request_token`):
no cookie, header or proxy credential of one request reaches another's.

A session is made on its first fetch and closed, on its loop, when the last provider that
used it closes (:meth:`RefresherSessions.release`) or is collected without closing; the
next fetch makes a new one. Sessions still open when the interpreter exits (providers
never closed) are left to the operating system, which closes their sockets; the fork hook
below holds them to the end of the interpreter, so no finalizer of theirs prints an
"Unclosed client session" warning (``tests/test_sessions.py`` checks it). A child
process made by ``fork`` never uses or closes its parent's sessions (their sockets, and
the selector of the loop they belong to, are the parent's): it makes its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Final

import aiohttp

if TYPE_CHECKING:
    import ssl

    from ._proxy import Proxy

__all__ = ["SESSIONS", "RefresherSessions", "Transport"]

#: What a kept session is shared by: the token endpoint origin, ``ssl=``, ``proxy=`` and
#: ``trust_env`` of the providers using it.
Transport = tuple[str, "ssl.SSLContext | bool | None", "Proxy | None", bool]

#: The longest a close waits for a session to close on the refresher's loop.
CLOSE_TIMEOUT: Final = 10.0


class _Kept:
    """One transport's session, its loop and process, and the providers that used it."""

    __slots__ = ("loop", "pid", "session", "users")

    def __init__(self, session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.loop = loop
        self.pid = os.getpid()
        # By id, as weak references: a provider collected without closing lets go too.
        self.users: dict[int, weakref.ref[object]] = {}

    def unused(self) -> bool:
        """Whether no provider that used it is left."""
        return all(ref() is None for ref in self.users.values())


class RefresherSessions:
    """The kept-alive sessions of the refresher's loop, one per transport."""

    __slots__ = ("_closing", "_kept", "_lock", "_stranded")

    def __init__(self) -> None:
        """Start with no session."""
        self._lock = threading.Lock()  # fetches run on the refresher; close() anywhere
        self._kept: dict[Transport, _Kept] = {}
        # Sessions that can never be closed here: a forked child's copies of its parent's
        # (their sockets, and the loop's selector, are the parent's), or sessions of a
        # refresher loop that stopped. Never used again, and kept from the garbage
        # collector, whose finalizers would close them or warn that they are open.
        self._stranded: list[_Kept] = []
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, transport: Transport, user: object) -> aiohttp.ClientSession:
        """The session for ``transport`` on the running loop, noting that ``user`` uses it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            kept = self._kept.get(transport)
            if kept is not None and kept.loop is not loop:
                self._stranded.append(kept)  # its loop stopped: a new refresher runs
                kept = None
            if kept is None:
                # trust_env=False: the proxy is chosen per request, ~/.netrc never read.
                kept = _Kept(aiohttp.ClientSession(trust_env=False), loop)
                self._kept[transport] = kept
            if id(user) not in kept.users or kept.users[id(user)]() is not user:
                collected = functools.partial(self._collected, transport, kept)
                kept.users[id(user)] = weakref.ref(user, collected)
            return kept.session

    def open_sessions(self) -> int:
        """How many kept sessions are open in this process."""
        with self._lock:
            return sum(not kept.session.closed for kept in self._kept.values())

    async def release(self, user: object) -> None:
        """``user`` closed: close each session it was the last provider to use."""
        with self._lock:
            done = []
            for transport, kept in list(self._kept.items()):
                if kept.users.pop(id(user), None) is not None and kept.unused():
                    del self._kept[transport]
                    done.append(kept)
        for kept in done:
            await self._close(kept)

    async def _close(self, kept: _Kept) -> None:
        """Close ``kept``'s session on its own loop (within :data:`CLOSE_TIMEOUT`)."""
        if kept.session.closed:
            return
        if kept.loop is asyncio.get_running_loop():
            await kept.session.close()
            return
        if not kept.loop.is_running():
            with self._lock:  # its refresher loop stopped: nothing can close it any more
                self._stranded.append(kept)
            return
        closing = asyncio.run_coroutine_threadsafe(kept.session.close(), kept.loop)
        # Shielded: a close() cancelled midway still lets the session finish closing.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(asyncio.wrap_future(closing))

    def _collected(self, transport: Transport, kept: _Kept, _ref: object) -> None:
        # A user was collected without closing. This runs wherever the garbage collector
        # does (maybe inside `with self._lock`): no lock here, the session's loop does it.
        if kept.pid != os.getpid() or kept.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            kept.loop.call_soon_threadsafe(self._prune, transport, kept)

    def _prune(self, transport: Transport, kept: _Kept) -> None:
        """On ``kept``'s loop: close it if no provider that used it is left."""
        with self._lock:
            if self._kept.get(transport) is not kept or not kept.unused():
                return
            del self._kept[transport]
        task = kept.loop.create_task(kept.session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def forked(self) -> None:
        """In a child after ``fork``: the parent's sessions are not ours to use or close."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._stranded.extend(self._kept.values())
        self._kept = {}
        self._closing = set()


#: The one set of the process (the refresher is one per process too).
SESSIONS: Final = RefresherSessions()
os.register_at_fork(after_in_child=SESSIONS.forked)
