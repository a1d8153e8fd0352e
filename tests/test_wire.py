"""The wire without the I/O (``_wire.py``): parsing, ``Retry-After``, sanitized causes.

The typed errors for statuses and transport failures are checked through a request in
``test_endpoint.py``; here, the pure parsers, on literal bodies and on generated ones.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from plainid_async._wire import (
    MAX_BODY_SIZE,
    parse_retry_after,
    parse_token_response,
    sanitized_cause,
)
from plainid_async.exceptions import InvalidTokenResponseError

ACCESS = "eyJhbGciOiJIUzI1NiJ9.payload-of-the-token.signature"
GOOD = {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600}


# -- parse_token_response ------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


def test_valid_response_gives_the_token() -> None:
    token = parse_token_response(body(), sent_at=1000.0, sent_at_monotonic=10.0)
    assert token.access_token == ACCESS
    assert token.token_type == "Bearer"
    assert token.expires_in == 3600.0
    assert token.expires_at == 4600.0
    assert token.expires_at_monotonic == 3610.0


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [(3600, 3600.0), (86400, 86400.0), (1.5, 1.5), ("3600", 3600.0), (" 60 ", 60.0), ("7.5", 7.5)],
)
def test_expires_in_may_be_a_number_or_a_numeric_string(expires_in: Any, seconds: float) -> None:
    assert parse_token_response(body(expires_in=expires_in)).expires_in == seconds


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_token_type_is_bearer_in_any_case(token_type: str) -> None:
    assert parse_token_response(body(token_type=token_type)).token_type == token_type


def test_unknown_fields_are_ignored() -> None:
    token = parse_token_response(body(scope="all", refresh_token=None, extra={"a": [1]}))
    assert token.access_token == ACCESS


def test_body_of_exactly_the_size_limit_is_accepted() -> None:
    raw = body()
    padded = raw[:-1] + b" " * (MAX_BODY_SIZE - len(raw)) + b"}"
    assert len(padded) == MAX_BODY_SIZE
    assert parse_token_response(padded).access_token == ACCESS


def test_expiry_defaults_to_now_when_no_send_time_is_given() -> None:
    before = time.monotonic()
    token = parse_token_response(body(expires_in=100))
    after = time.monotonic()
    assert before + 100 <= token.expires_at_monotonic <= after + 100


MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"<html>oops</html>"),
    ("empty", b""),
    ("not UTF-8", b"\xff\xfe\xfa"),
    ("JSON array", json.dumps([GOOD]).encode()),
    ("JSON string", b'"token"'),
    ("JSON null", b"null"),
    ("missing access_token", json.dumps({"token_type": "Bearer", "expires_in": 60}).encode()),
    ("empty access_token", body(access_token="")),
    ("numeric access_token", body(access_token=12345)),
    ("null access_token", body(access_token=None)),
    ("list access_token", body(access_token=[ACCESS])),
    ("space in access_token", body(access_token=ACCESS[:10] + " " + ACCESS[10:])),
    ("CR in access_token", body(access_token=ACCESS + "\r")),
    ("LF in access_token", body(access_token=ACCESS + "\nX-Evil: 1")),
    ("non-ASCII access_token", body(access_token=ACCESS + "é")),
    ("huge access_token", body(access_token="a" * 20_000)),
    ("missing token_type", json.dumps({"access_token": ACCESS, "expires_in": 60}).encode()),
    ("MAC token_type", body(token_type="mac")),
    ("null token_type", body(token_type=None)),
    ("missing expires_in", json.dumps({"access_token": ACCESS, "token_type": "Bearer"}).encode()),
    ("zero expires_in", body(expires_in=0)),
    ("zero string expires_in", body(expires_in="0")),
    ("negative expires_in", body(expires_in=-60)),
    ("negative string expires_in", body(expires_in="-60")),
    ("true expires_in", body(expires_in=True)),
    ("false expires_in", body(expires_in=False)),
    ("null expires_in", body(expires_in=None)),
    ("NaN expires_in", b'{"access_token": "t", "token_type": "Bearer", "expires_in": NaN}'),
    ("Infinity", b'{"access_token": "t", "token_type": "Bearer", "expires_in": Infinity}'),
    ("-Infinity", b'{"access_token": "t", "token_type": "Bearer", "expires_in": -Infinity}'),
    ("1e400 expires_in", b'{"access_token": "t", "token_type": "Bearer", "expires_in": 1e400}'),
    ("10**400 expires_in", body(expires_in=10**400)),
    ("absurd expires_in", body(expires_in=400 * 24 * 3600)),
    ("abc expires_in", body(expires_in="abc")),
    ("exponent string expires_in", body(expires_in="1e5")),
    ("NaN string expires_in", body(expires_in="NaN")),
    ("infinity string expires_in", body(expires_in="inf")),
    ("nested object expires_in", body(expires_in={"seconds": 60})),
    ("list expires_in", body(expires_in=[60])),
    ("oversized body", body(padding="x" * MAX_BODY_SIZE)),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
]


@pytest.mark.parametrize("raw", [raw for _, raw in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_response_is_an_invalid_token_response_error(raw: bytes) -> None:
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(raw)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.status == 200
    assert error.retryable is False
    assert ACCESS not in str(error)
    assert ACCESS[:20] not in str(error)
    assert ACCESS not in repr(error)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_token_or_an_invalid_token_response_error(raw: bytes) -> None:
    try:
        token = parse_token_response(raw)
    except InvalidTokenResponseError:
        return
    assert math.isfinite(token.expires_in)
    assert token.expires_in > 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@given(
    access_token=json_values | st.just(ACCESS),
    token_type=json_values | st.just("Bearer"),
    expires_in=json_values | st.integers(min_value=1, max_value=10**6),
)
def test_any_json_fields_give_a_valid_token_or_an_error_without_the_token(
    access_token: Any, token_type: Any, expires_in: Any
) -> None:
    raw = json.dumps(
        {"access_token": access_token, "token_type": token_type, "expires_in": expires_in}
    ).encode()
    try:
        token = parse_token_response(raw)
    except InvalidTokenResponseError as error:
        message = str(error)
    else:
        assert token.access_token == access_token
        assert token.token_type.lower() == "bearer"
        assert 0 < token.expires_in <= 366 * 24 * 3600
        return
    if access_token == ACCESS:
        assert ACCESS not in message


# -- parse_retry_after ---------------------------------------------------------------------

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
HTTP_DATE_TS = 1445412480.0


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("0007", 7.0)]
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    assert parse_retry_after(HTTP_DATE, now=HTTP_DATE_TS - 30) == 30.0


def test_retry_after_as_an_http_date_in_another_zone() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 09:28:00 +0200", now=HTTP_DATE_TS - 5) == 5.0


def test_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after(HTTP_DATE, now=HTTP_DATE_TS + 3600) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "5s",
        "0x10",
        "٣",  # a non-ASCII digit
        "Wed, 99 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 07:28:00 -0000",  # no usable zone
        "Wed, 21 Oct 99999 07:28:00 GMT",
        "9" * 65,
        "9" * 100_000,
    ],
)
def test_unparsable_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value, now=HTTP_DATE_TS) is None


def test_absent_retry_after_is_none() -> None:
    assert parse_retry_after(None) is None


def test_huge_digit_string_does_not_raise() -> None:
    assert parse_retry_after("9" * 64) == float("9" * 64)


@given(st.text(max_size=80))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    seconds = parse_retry_after(value, now=HTTP_DATE_TS)
    assert seconds is None or seconds >= 0


# -- sanitized_cause -----------------------------------------------------------------------


def raised(error: BaseException) -> BaseException:
    """``error`` as it is caught: with a traceback, and a context of its own."""

    def underneath() -> None:
        raise OSError("underneath")

    try:
        try:
            underneath()
        except OSError:
            raise error  # noqa: B904 (the implicit context is what is under test)
    except BaseException as caught:  # noqa: BLE001 (any error)
        return caught
    raise AssertionError("unreachable")


def test_a_refused_connect_is_chained_as_a_copy_without_proxy_authorization() -> None:
    basic = "Basic dXNlcjpwcjB4eS1QYTU1"
    info = aiohttp.RequestInfo(
        URL("http://proxy.internal:3128"),
        "CONNECT",
        CIMultiDictProxy(CIMultiDict({"Host": "api.us1.plainid.io", "Proxy-Authorization": basic})),
        URL("http://proxy.internal:3128"),
    )
    original = raised(aiohttp.ClientHttpProxyError(info, (), status=407, message="Auth"))
    assert basic in repr(original)  # what aiohttp's own error shows
    cause = sanitized_cause(original)
    assert isinstance(cause, aiohttp.ClientHttpProxyError)
    assert (cause.status, cause.message) == (407, "Auth")
    assert cause.request_info.headers == {"Host": "api.us1.plainid.io"}
    assert basic not in repr(cause)
    assert cause.__traceback__ is None
    assert cause.__context__ is None
    assert cause.__cause__ is None


def test_a_transport_error_is_chained_without_its_traceback_or_chain() -> None:
    underneath = ConnectionRefusedError(111, "refused")
    original = raised(aiohttp.ClientOSError(underneath))
    underneath.__traceback__ = raised(ValueError()).__traceback__
    assert original.__traceback__ is not None
    assert original.__context__ is not None
    cause = sanitized_cause(original)
    assert cause is original  # the same error, its type and text kept
    assert cause.__traceback__ is None
    assert cause.__context__ is None
    assert cause.__suppress_context__
    assert underneath.__traceback__ is None  # an error it holds in args: no frames either
