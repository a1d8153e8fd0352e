"""The client secret in a wrapper, and redaction of text that may quote it.

Error reporters that capture local variables (Sentry's default ``include_local_variables``,
``traceback.TracebackException(..., capture_locals=True)``, rich and loguru tracebacks) show
the ``repr`` of every local of every frame. The secret is therefore held in a
:class:`Secret` whose ``repr`` hides it, and is revealed only inside expressions, never into
a plain local of a frame that may raise.
"""

from __future__ import annotations

import hmac
import json
import re
import urllib.parse
from typing import TYPE_CHECKING, Final, NoReturn, final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["MIN_REDACTABLE", "REDACTED", "WITHHELD", "Secret", "redact"]

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
