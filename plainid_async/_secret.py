"""The client secret in a wrapper, read from a file that may rotate, and redaction of text.

Error reporters that capture local variables (Sentry's default ``include_local_variables``,
``traceback.TracebackException(..., capture_locals=True)``, rich and loguru tracebacks) show
the ``repr`` of every local of every frame. The secret is therefore held in a
:class:`Secret` whose ``repr`` hides it, and is revealed only inside expressions, never into
a plain local of a frame that may raise.

A secret mounted as a file (a Kubernetes or Docker secret) is replaced while the process
runs: :class:`SecretFile` re-reads it when it changes (checked with ``stat``, at most every
:data:`CHECK_INTERVAL` seconds) and on demand, after the token endpoint rejected it.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Final, NoReturn, final

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "CHECK_INTERVAL",
    "MIN_REDACTABLE",
    "REDACTED",
    "WITHHELD",
    "Secret",
    "SecretFile",
    "read_secret_file",
    "redact",
    "strip_one_newline",
]

#: A secret file is checked for a change at most this often (seconds): kubelet updates a
#: mounted secret within about a minute, PlainID invalidates the old secret at once.
CHECK_INTERVAL: Final = 5.0

#: Secrets shorter than this cannot be told apart from ordinary text: a text that contains
#: one (in any encoding) is withheld as a whole rather than redacted letter by letter.
MIN_REDACTABLE: Final = 8
#: What replaces a secret found in a text.
REDACTED: Final = "[redacted]"
#: What replaces a whole text that contains a secret too short to cut out cleanly.
WITHHELD: Final = "[withheld: the text may contain the client secret]"

_PERCENT_RE: Final = re.compile(r"%[0-9A-F]{2}")


@final
class Secret:
    """A secret string that never shows in ``repr``, ``str``, logs or traceback locals.

    Compare two secrets with ``==`` (constant time); get the value with :meth:`reveal`, in
    the expression that needs it, so no frame holds it in a plain local.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """Wrap ``value``."""
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        self._value: Final = value

    def reveal(self) -> str:
        """The secret itself."""
        return self._value

    def __repr__(self) -> str:
        """Show that there is a secret, never which."""
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Compare with another :class:`Secret` in constant time."""
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        """Hash by value, so equal secrets hash alike."""
        return hash((Secret, self._value))

    def __len__(self) -> int:
        """The length of the secret (telling apart short secrets, see :data:`MIN_REDACTABLE`)."""
        return len(self._value)

    def __reduce__(self) -> NoReturn:
        """Refuse pickling: a pickle would carry the secret in the clear."""
        raise TypeError("a Secret cannot be pickled")


def _forms(value: str) -> set[str]:
    """The spellings of ``value`` a server or a library may echo back."""
    encoded = {
        urllib.parse.quote_plus(value),  # form-urlencoded, as in the request body
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
    }
    lower_hex = {_PERCENT_RE.sub(lambda m: m.group().lower(), form) for form in encoded}
    in_json = json.dumps(value)[1:-1]
    return {value, in_json, in_json.replace("/", "\\/"), *encoded, *lower_hex}


def redact(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Remove every secret from ``text``, literal or URL- or JSON-encoded.

    A secret of :data:`MIN_REDACTABLE` characters or more is replaced by ``[redacted]``
    wherever it occurs. A shorter one is too short to be a real secret and too short to cut
    out without mangling words ("loopback" around a secret "pb"): when the text contains
    it, the whole text is replaced by a fixed notice, so it never shows which letters the
    secret has.

    Args:
        text: Text from outside (a server's message, an exception's text).
        secrets: The secrets to remove; ``None`` and empty entries are skipped.

    Returns:
        The text without any of the secrets.
    """
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if not value:
            continue
        forms = _forms(value)
        if len(value) < MIN_REDACTABLE:
            if any(form in text for form in forms):
                return WITHHELD
            continue
        # Longest first, so the plain form never cuts into its encoded form.
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, REDACTED)
    return text


def strip_one_newline(text: str) -> str:
    """Drop one trailing line break (LF or CRLF), as editors and ``echo`` add one."""
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text


def read_secret_file(path: str | os.PathLike[str], *, source: str) -> str:
    """Read a client secret from a file, such as a mounted Kubernetes or Docker secret.

    Args:
        path: The file.
        source: What named the file, for messages (an environment variable or a flag).

    Returns:
        The secret, without one trailing newline.

    Raises:
        ConfigurationError: The file cannot be read or holds no secret; the message names
            ``source`` and the path, never the content.
    """
    try:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123 (str and PathLike alike)
            secret = strip_one_newline(file.read())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConfigurationError(f"cannot read {source} {os.fspath(path)!r}: {reason}") from None
    if not secret.strip():
        raise ConfigurationError(f"{source} {os.fspath(path)!r} is empty")
    return secret


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """What tells one version of a file from the next: device, inode, mtime and size.

    ``os.stat`` follows symbolic links, so a kubelet-style swap of the ``..data`` link (the
    file itself never written to) shows as another inode.
    """
    try:
        info = os.stat(path)  # noqa: PTH116 (str and PathLike alike)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


@final
class SecretFile:
    """A client secret read from a file that may be replaced while the process runs.

    The file is read once when this is created (a missing or empty file is a
    :class:`~plainid_async.ConfigurationError` then). Afterwards :meth:`poll` re-reads it
    when ``stat`` shows another version, checking at most every ``interval`` seconds, and
    :meth:`reload` re-reads it at once (after the token endpoint rejected the secret).
    A version that cannot be read (the file briefly missing during a swap, empty) is
    skipped: the last good secret stays, and the next check tries again. Thread-safe.
    """

    __slots__ = (
        "_checked",
        "_clock",
        "_interval",
        "_lock",
        "_path",
        "_secret",
        "_source",
        "_stamp",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: str,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read the secret from ``path``.

        Args:
            path: The file holding the secret (one trailing newline is dropped).
            source: What named the file, for messages (``"client_secret_file"``).
            interval: Seconds between two checks of the file by :meth:`poll`.
            clock: The monotonic clock the interval is measured on.

        Raises:
            ConfigurationError: ``path`` is not a path, or the file cannot be read or holds
                no secret; the message names ``source``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"{source} must be a file path, not {type(path).__name__}")
        if not os.fspath(path):
            raise ConfigurationError(f"{source} must be a file path, not an empty string")
        self._path: Final = os.fspath(path)
        self._source: Final = source
        self._interval: Final = interval
        self._clock: Final = clock
        self._lock: Final = threading.Lock()
        self._stamp = _stamp(self._path)
        self._secret = Secret(read_secret_file(self._path, source=source))
        self._checked = clock()

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def secret(self) -> Secret:
        """The secret last read."""
        return self._secret

    def __repr__(self) -> str:
        """Show the path, never the secret."""
        return f"SecretFile({self._path!r})"

    def poll(self) -> Secret | None:
        """Re-read the file if it changed; at most one ``stat`` per interval.

        Returns:
            The new secret when the file now holds another one, else ``None``.
        """
        with self._lock:
            now = self._clock()
            if now - self._checked < self._interval:
                return None
            self._checked = now
            if _stamp(self._path) == self._stamp:
                return None
            return self._read()

    def reload(self) -> Secret | None:
        """Re-read the file now, whatever the interval (the endpoint rejected the secret).

        Returns:
            The new secret when the file now holds another one, else ``None``.
        """
        with self._lock:
            self._checked = self._clock()
            return self._read()

    def _read(self) -> Secret | None:
        stamp = _stamp(self._path)
        try:
            secret = Secret(read_secret_file(self._path, source=self._source))
        except ConfigurationError:
            return None  # mid-swap or emptied: keep the last good secret, try again later
        self._stamp = stamp
        if secret == self._secret:
            return None
        self._secret = secret
        return secret
