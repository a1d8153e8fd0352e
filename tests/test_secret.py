"""The secret wrapper and redaction of text that may quote the secret."""

from __future__ import annotations

import pickle
import traceback

import pytest

from plainid_async._secret import MIN_REDACTABLE, REDACTED, WITHHELD, Secret, redact

SECRET = "b64+Secret/Value=="


def test_repr_and_str_hide_the_value() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret!r} {secret}"
    assert secret.reveal() == SECRET


def test_equal_values_are_equal_and_hash_alike() -> None:
    assert Secret(SECRET) == Secret(SECRET)
    assert hash(Secret(SECRET)) == hash(Secret(SECRET))
    assert Secret(SECRET) != Secret("another-secret-value")
    assert Secret(SECRET) != SECRET  # a wrapper is not its plain value


def test_only_strings_are_wrapped() -> None:
    with pytest.raises(TypeError, match="str"):
        Secret(b"bytes")  # type: ignore[arg-type]


def test_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(Secret(SECRET))


def test_a_local_holding_it_shows_no_secret_in_a_traceback_with_locals() -> None:
    def fail(secret: Secret) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError) as info:
        fail(Secret(SECRET))
    frames = traceback.TracebackException.from_exception(info.value, capture_locals=True)
    text = "".join(frames.format())
    assert "Secret('***')" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    "echoed",
    [
        SECRET,
        "b64%2BSecret%2FValue%3D%3D",  # form-urlencoded, as in the request body
        "b64%2bSecret%2fValue%3d%3d",  # the same with lower-case hex
        "b64%2BSecret/Value%3D%3D",  # percent-encoded, '/' kept
        "b64+Secret\\/Value==",  # inside a JSON string
    ],
)
def test_literal_and_encoded_secret_is_redacted(echoed: str) -> None:
    text = f"bad request: grant_type=client_credentials&client_secret={echoed}&x=1"
    redacted = redact(text, [Secret(SECRET)])
    assert redacted == f"bad request: grant_type=client_credentials&client_secret={REDACTED}&x=1"


def test_text_without_the_secret_is_unchanged() -> None:
    text = "the client is not allowed the client_credentials grant"
    assert redact(text, [Secret(SECRET), None, ""]) is text


def test_a_secret_too_short_to_be_real_never_mangles_a_message() -> None:
    short = "pb"
    assert len(short) < MIN_REDACTABLE
    # Plain substitution would give "loo***ack" and show which letters the secret has.
    assert redact("connection to loopback refused", [Secret(short)]) == WITHHELD
    assert redact("connection refused", [Secret(short)]) == "connection refused"


def test_plain_strings_are_accepted_as_secrets() -> None:
    assert redact(f"x {SECRET} y", [SECRET]) == f"x {REDACTED} y"
