"""FakePlainID, exercised through a real aiohttp.ClientSession over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from _servers import client_tls, server_tls

from plainid_async.testing import TOKEN_PATH, FakePlainID, FakeResponse, TokenRequest, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import trustme
    from multidict import CIMultiDictProxy
    from yarl import URL

SECRET = "test-secret"
FORM = {"grant_type": "client_credentials", "client_id": "test-client", "client_secret": SECRET}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.frozen
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakePlainID]:
    async with FakePlainID(clock=clock) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post_token(
    session: aiohttp.ClientSession,
    url: URL,
    data: Any = FORM,
    **kwargs: Any,
) -> Answer:
    async with session.post(url, data=data, allow_redirects=False, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.text())


async def get_token(session: aiohttp.ClientSession, fake: FakePlainID, **form: str) -> str:
    answer = await post_token(session, fake.token_url, data={**FORM, **form})
    assert answer.status == 200, answer.text
    token = answer.json()["access_token"]
    assert isinstance(token, str)
    return token


async def call(
    session: aiohttp.ClientSession,
    url: URL,
    token: str | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with session.request(method, url, headers=sent, allow_redirects=False) as resp:
        return Answer(resp.status, resp.headers, await resp.text())


# -- token endpoint ---------------------------------------------------------------------------


async def test_success_shape(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    answer = await post_token(
        session, fake.token_url, headers={"Accept": "application/json"}, ssl=False
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert type(body["expires_in"]) is int
    assert len(body["access_token"]) >= 32
    assert fake.issued_tokens == [body["access_token"]]
    assert fake.is_valid(body["access_token"])
    [request] = fake.token_requests
    assert request == TokenRequest(
        client_id="test-client",
        grant_type="client_credentials",
        content_type="application/x-www-form-urlencoded",
        accept="application/json",
        query="",
        authorization_header=False,
        status=200,
        form=FORM,
    )


async def test_urls(fake: FakePlainID) -> None:
    assert fake.base_url.scheme == "http"
    assert fake.base_url.host == "127.0.0.1"
    assert fake.base_url.port not in {None, 0}
    assert fake.token_url == fake.base_url / "api/1.0/api-key/token"
    assert TOKEN_PATH == "api/1.0/api-key/token"


@pytest.mark.parametrize(("expires_in", "expected"), [(60.0, 60), (1.5, 1.5), (86400, 86400)])
async def test_expires_in_int_when_whole(
    fake: FakePlainID, session: aiohttp.ClientSession, expires_in: float, expected: float
) -> None:
    fake.expires_in = expires_in
    body = (await post_token(session, fake.token_url)).json()
    assert body["expires_in"] == expected
    assert type(body["expires_in"]) is type(expected)


async def test_token_type_knob(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.token_type = "bearer"
    assert (await post_token(session, fake.token_url)).json()["token_type"] == "bearer"


@pytest.mark.parametrize(
    "data", [{**FORM, "client_secret": "wrong"}, {**FORM, "client_id": "nobody"}]
)
async def test_wrong_credentials_401_without_secret(
    fake: FakePlainID, session: aiohttp.ClientSession, data: dict[str, str]
) -> None:
    answer = await post_token(session, fake.token_url, data=data)
    assert answer.status == 401
    body = answer.json()
    assert set(body) == {"id", "status", "name", "message"}
    assert body["status"] == 401
    assert body["name"] == "Unauthorized"
    assert data["client_secret"] not in answer.text
    assert SECRET not in answer.text
    assert fake.token_requests[-1].status == 401
    assert fake.issued_tokens == []


async def test_credentials_in_query_400(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    url = fake.token_url.with_query(client_id="test-client", client_secret=SECRET)
    answer = await post_token(session, url)
    assert answer.status == 400
    assert answer.json()["status"] == 400
    assert SECRET not in answer.text
    request = fake.token_requests[-1]
    assert request.status == 400
    assert request.query == f"client_id=test-client&client_secret={SECRET}"
    assert fake.issued_tokens == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": FORM}, "application/x-www-form-urlencoded"),
        ({"data": b"grant_type=client_credentials", "headers": {}}, "form"),
        ({"data": {**FORM, "grant_type": "password"}}, "grant_type"),
        ({"data": {"client_id": "test-client", "client_secret": SECRET}}, "grant_type"),
        ({"data": {"grant_type": "client_credentials", "client_id": "test-client"}}, "client_"),
        ({"data": {**FORM, "client_secret": ""}}, "client_"),
        ({"data": [*FORM.items(), ("client_id", "other")]}, "more than once"),
    ],
)
async def test_malformed_requests_400(
    fake: FakePlainID, session: aiohttp.ClientSession, kwargs: dict[str, Any], message: str
) -> None:
    if "json" in kwargs:
        kwargs = {"data": None, **kwargs}
    answer = await post_token(session, fake.token_url, **kwargs)
    assert answer.status == 400, answer.text
    assert message in answer.json()["message"]
    assert SECRET not in answer.text
    assert fake.token_requests[-1].status == 400


async def test_json_body_recorded(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    await post_token(session, fake.token_url, data=None, json=FORM)
    request = fake.token_requests[-1]
    assert request.content_type == "application/json"
    assert request.client_id is None
    assert request.form == {}


async def test_basic_auth_header_recorded(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    await post_token(session, fake.token_url, headers={"Authorization": "Basic dGVzdDp0ZXN0"})
    assert fake.token_requests[-1].authorization_header is True


async def test_get_on_token_path_is_the_protected_resource(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    assert (await call(session, fake.token_url)).status == 401
    assert fake.token_requests == []


# -- scripted failures --------------------------------------------------------------------------


async def test_fail_next_in_order(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.fail_next(503, FakeResponse(status=429, headers={"Retry-After": "7"}))
    fake.fail_next(
        FakeResponse(body="<html>oops</html>", content_type="text/html"),
        FakeResponse(body={"token_type": "Bearer", "expires_in": 60}),
        FakeResponse(status=302, headers={"Location": "http://127.0.0.1:1/x"}),
        FakeResponse(body=b"\x00" * 100_000, content_type="application/octet-stream"),
        204,
    )
    answers = [await post_token(session, fake.token_url) for _ in range(8)]
    assert [a.status for a in answers] == [503, 429, 200, 200, 302, 200, 204, 200]
    assert answers[0].json()["status"] == 503
    assert answers[0].json()["name"] == "Service Unavailable"
    assert answers[1].headers["Retry-After"] == "7"
    assert answers[2].text == "<html>oops</html>"
    assert answers[2].headers["Content-Type"].startswith("text/html")
    assert answers[3].json() == {"token_type": "Bearer", "expires_in": 60}
    assert answers[4].headers["Location"] == "http://127.0.0.1:1/x"
    assert len(answers[5].text) == 100_000
    assert answers[6].text == ""
    assert "access_token" in answers[7].json()
    assert [r.status for r in fake.token_requests] == [503, 429, 200, 200, 302, 200, 204, 200]
    assert len(fake.issued_tokens) == 1


async def test_fail_next_wins_over_bad_credentials(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    fake.fail_next(500)
    answer = await post_token(session, fake.token_url, data={**FORM, "client_secret": "bad"})
    assert answer.status == 500


def test_fail_next_rejects_bad_status() -> None:
    fake = FakePlainID()
    with pytest.raises(ValueError, match="status"):
        fake.fail_next(99)
    with pytest.raises(ValueError, match="status"):
        FakeResponse(status=600)


async def test_outage_start_end(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.start_outage(retry_after="3")
    first = await post_token(session, fake.token_url)
    second = await post_token(session, fake.token_url)
    assert (first.status, second.status) == (503, 503)
    assert first.headers["Retry-After"] == "3"
    assert first.json()["status"] == 503
    fake.start_outage(502)
    assert (await post_token(session, fake.token_url)).status == 502
    fake.end_outage()
    assert (await post_token(session, fake.token_url)).status == 200
    assert [r.status for r in fake.token_requests] == [503, 503, 502, 200]


async def test_fail_next_before_outage(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.start_outage(503)
    fake.fail_next(FakeResponse(status=200, body={"scripted": True}))
    assert (await post_token(session, fake.token_url)).json() == {"scripted": True}
    assert (await post_token(session, fake.token_url)).status == 503


async def test_outage_between(
    fake: FakePlainID, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    fake.outage_between(10, 20, 500, retry_after="1")
    statuses = []
    for now in (1000.0, 1009.9, 1010.0, 1019.9, 1020.0):
        clock.now = now
        statuses.append((await post_token(session, fake.token_url)).status)
    assert statuses == [200, 200, 500, 500, 200]
    with pytest.raises(ValueError, match="after"):
        fake.outage_between(5, 5)
    fake.outage_between(0, 1)
    fake.end_outage()
    assert (await post_token(session, fake.token_url)).status == 200


async def test_outage_between_real_clock(session: aiohttp.ClientSession) -> None:
    async with FakePlainID() as fake:
        fake.outage_between(0, 30)
        assert (await post_token(session, fake.token_url)).status == 503
        fake.outage_between(-60, -30, 500)  # already over
        fake.end_outage()
        assert (await post_token(session, fake.token_url)).status == 200


async def test_hang_until_client_gives_up(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    fake.hang = True
    with pytest.raises(TimeoutError):
        await post_token(session, fake.token_url, timeout=aiohttp.ClientTimeout(total=0.2))
    assert [r.status for r in fake.token_requests] == [0]
    fake.hang = False
    assert (await post_token(session, fake.token_url)).status == 200


async def test_close_releases_hanging_requests(session: aiohttp.ClientSession) -> None:
    fake = FakePlainID()
    await fake.start()
    fake.hang = True
    pending = asyncio.create_task(post_token(session, fake.token_url))
    while not fake.token_requests:  # noqa: ASYNC110 - the fake has no arrival event: poll
        await asyncio.sleep(0.01)
    await asyncio.wait_for(fake.close(), 2)
    answer = await asyncio.wait_for(pending, 2)
    assert answer.status == 503


async def test_latency(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    fake.latency = 0.1
    started = loop.time()
    assert (await post_token(session, fake.token_url)).status == 200
    assert loop.time() - started >= 0.09
    fake.latency = 0.0
    fake.fail_next(FakeResponse(status=503, delay=0.1))
    started = loop.time()
    assert (await post_token(session, fake.token_url)).status == 503
    assert loop.time() - started >= 0.09


async def test_latency_times_out_client(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.latency = 5
    with pytest.raises(TimeoutError):
        await post_token(session, fake.token_url, timeout=aiohttp.ClientTimeout(total=0.1))
    assert [r.status for r in fake.token_requests] == [200]


# -- tokens -------------------------------------------------------------------------------------


async def test_revoke_and_is_valid(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    first, second = await get_token(session, fake), await get_token(session, fake)
    assert first != second
    assert fake.is_valid(first)
    assert fake.is_valid(second)
    assert not fake.is_valid("made-up")
    fake.revoke(first)
    fake.revoke("made-up")
    assert not fake.is_valid(first)
    assert fake.is_valid(second)
    assert (await call(session, fake.base_url / "x", first)).status == 401
    assert (await call(session, fake.base_url / "x", second)).status == 200
    fake.revoke_all()
    assert not fake.is_valid(second)
    third = await get_token(session, fake)
    assert fake.is_valid(third)
    assert fake.issued_tokens == [first, second, third]


async def test_expiry_on_the_fake_clock(
    fake: FakePlainID, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    fake.expires_in = 60
    token = await get_token(session, fake)
    clock.now += 59.9
    assert fake.is_valid(token)
    assert (await call(session, fake.base_url / "x", token)).status == 200
    clock.now += 0.1
    assert not fake.is_valid(token)
    assert (await call(session, fake.base_url / "x", token)).status == 401


async def test_expiry_with_tiny_lifetime(session: aiohttp.ClientSession) -> None:
    async with FakePlainID(expires_in=0.05) as fake:
        token = await get_token(session, fake)
        await asyncio.sleep(0.06)
        assert not fake.is_valid(token)


async def test_rotate_secret(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    old_token = await get_token(session, fake)
    fake.rotate_secret("test-client", "new-secret")
    assert fake.client_secret == "new-secret"
    assert (await post_token(session, fake.token_url)).status == 401
    new_token = await get_token(session, fake, client_secret="new-secret")
    assert fake.is_valid(old_token)
    assert fake.is_valid(new_token)
    with pytest.raises(KeyError):
        fake.rotate_secret("nobody", "x")
    with pytest.raises(ValueError, match="empty"):
        fake.rotate_secret("test-client", "")


async def test_add_client(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    fake.add_client("other", "other-secret")
    token = await get_token(session, fake, client_id="other", client_secret="other-secret")
    assert fake.is_valid(token)
    assert await get_token(session, fake)  # the first client still works
    wrong = {**FORM, "client_id": "other"}
    assert (await post_token(session, fake.token_url, data=wrong)).status == 401


# -- protected resource, websocket, redirect ---------------------------------------------------


async def test_resource(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, fake)
    ok = await call(session, fake.base_url / "api/1.0/policies-search/env", token, "POST")
    assert ok.status == 200
    assert ok.json() == {"ok": True, "method": "POST", "path": "/api/1.0/policies-search/env"}
    assert token not in ok.text
    missing = await call(session, fake.base_url / "x")
    basic = await call(session, fake.base_url / "x", headers={"Authorization": f"Basic {token}"})
    bogus = await call(session, fake.base_url / "x", "bogus")
    for answer in (missing, basic, bogus):
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert answer.json()["status"] == 401
        assert token not in answer.text
    assert [(r.status, r.authorized, r.authorization_header) for r in fake.resource_requests] == [
        (200, True, True),
        (401, False, False),
        (401, False, True),
        (401, False, True),
    ]
    assert fake.resource_requests[0].method == "POST"
    assert fake.resource_requests[0].path == "/api/1.0/policies-search/env"


async def test_resource_records_body(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, fake)
    headers = {"Authorization": f"Bearer {token}"}
    async with session.put(fake.base_url / "p", data=b"payload", headers=headers) as resp:
        assert resp.status == 200
    assert fake.resource_requests[-1].body == b"payload"
    assert "payload" not in repr(fake.resource_requests[-1])


async def test_ws(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await session.ws_connect(fake.base_url / "ws")
    assert excinfo.value.status == 401
    token = await get_token(session, fake)
    headers = {"Authorization": f"Bearer {token}"}
    async with session.ws_connect(fake.base_url / "ws", headers=headers) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=2) == "hello"
        await ws.send_bytes(b"\x01")
        assert await ws.receive_bytes(timeout=2) == b"\x01"
    assert [(r.path, r.status) for r in fake.resource_requests] == [("/ws", 401), ("/ws", 101)]
    assert (await call(session, fake.base_url / "ws", token)).status == 400


async def test_close_with_open_ws(session: aiohttp.ClientSession) -> None:
    fake = FakePlainID()
    await fake.start()
    token = await get_token(session, fake)
    headers = {"Authorization": f"Bearer {token}"}
    async with session.ws_connect(fake.base_url / "ws", headers=headers) as ws:
        await asyncio.wait_for(fake.close(), 2)
        message = await ws.receive(timeout=2)
        assert message.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}


async def test_redirect(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    redirect = fake.base_url / "redirect"
    target = str(fake.base_url / "somewhere")
    found = await call(session, redirect.with_query(to=target))
    assert found.status == 302
    assert found.headers["Location"] == target
    kept = await call(session, redirect.with_query(to="/local", status="307"), method="POST")
    assert (kept.status, kept.headers["Location"]) == (307, "/local")
    for query in (
        {"to": "https://example.com/"},
        {"to": "http://127.0.0.1.example.com/"},
        {"to": "//example.com/"},
        {"to": "ftp://127.0.0.1/"},
        {"to": target, "status": "200"},
        {},
    ):
        assert (await call(session, redirect.with_query(query))).status == 400, query
    assert fake.resource_requests == []
    token = await get_token(session, fake)
    async with session.get(
        redirect.with_query(to=target), headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        assert str(resp.url) == target


# -- configuration, lifecycle, repr ------------------------------------------------------------


async def test_path_prefix(session: aiohttp.ClientSession) -> None:
    async with FakePlainID(path_prefix="/plainid/") as fake:
        assert fake.base_url.path == "/plainid"
        assert fake.token_url.path == "/plainid/api/1.0/api-key/token"
        token = await get_token(session, fake)
        ok = await call(session, fake.base_url / "x", token)
        assert ok.json()["path"] == "/plainid/x"
        outside = fake.base_url.with_path("/api/1.0/api-key/token")
        assert (await post_token(session, outside)).status == 404
    with pytest.raises(ValueError, match="path_prefix"):
        FakePlainID(path_prefix="/{bad}")


async def test_https(session: aiohttp.ClientSession, ca: trustme.CA) -> None:
    async with FakePlainID(ssl_context=server_tls(ca)) as fake:
        assert fake.base_url.scheme == "https"
        answer = await post_token(session, fake.token_url, ssl=client_tls(ca))
        assert answer.status == 200


async def test_lifecycle() -> None:
    fake = FakePlainID()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url
    await fake.close()  # before start: nothing to do
    fake = FakePlainID(port=0)
    await fake.start()
    with pytest.raises(RuntimeError, match="already"):
        await fake.start()
    url = fake.base_url
    await fake.close()
    await fake.close()
    assert fake.base_url == url
    with pytest.raises(RuntimeError, match="already"):
        await fake.start()


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="latency"):
        FakePlainID(latency=-1)
    with pytest.raises(ValueError, match="empty"):
        FakePlainID(client_secret="")


async def test_repr_hides_secret_and_tokens(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    fake.rotate_secret("test-client", "sup3r-s3cret")
    token = await get_token(session, fake, client_secret="sup3r-s3cret")
    await call(session, fake.base_url / "x", token)
    text = repr(fake)
    assert str(fake.base_url) in text
    assert "token_requests=1" in text
    assert "resource_requests=1" in text
    assert "issued_tokens=1" in text
    assert "sup3r-s3cret" not in text
    assert token not in text
    assert "sup3r-s3cret" not in repr(fake.token_requests)
    assert "sup3r-s3cret" in fake.token_requests[0].form["client_secret"]
    assert token not in repr(fake.resource_requests)
    assert "base_url=None" in repr(FakePlainID())


async def test_records_keep_only_the_newest_max_records(session: aiohttp.ClientSession) -> None:
    async with FakePlainID(max_records=10) as fake:
        for _ in range(25):
            async with session.get(fake.base_url / "x") as response:
                assert response.status == 401
        kept = len(fake.resource_requests)
        assert 10 <= kept <= 11
        assert len(fake.token_requests) == 0


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_records"):
        FakePlainID(max_records=0)


# -- a token request on a wrong path, the scripting hook, free_port ---------------------------


@pytest.mark.parametrize(
    "path",
    ["plainid/api/1.0/api-key/token", "api/1.0/token", "api/1.0/api-key/token/extra"],
    ids=["token-path-under-another-prefix", "another-path", "token-path-plus-a-segment"],
)
async def test_token_request_on_a_wrong_path_is_404_not_401(
    fake: FakePlainID, session: aiohttp.ClientSession, path: str
) -> None:
    answer = await post_token(session, fake.base_url / path)
    assert answer.status == 404
    assert "bearer token" not in answer.text
    assert SECRET not in answer.text
    assert fake.token_requests == []
    assert [r.status for r in fake.resource_requests] == [404]


async def test_a_plain_post_to_another_path_is_still_the_protected_resource(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    answer = await call(session, fake.base_url / "api/1.0/policies-search/env", method="POST")
    assert answer.status == 401


async def test_hook_holds_token_requests_until_an_event_and_counts_them(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    seen: list[TokenRequest] = []
    in_flight = {"now": 0, "most": 0}
    both_arrived = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(request: TokenRequest) -> AsyncIterator[FakeResponse | None]:
        seen.append(request)
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        if in_flight["now"] == 2:
            both_arrived.set()
        try:
            await release.wait()
            yield None
        finally:
            in_flight["now"] -= 1

    fake.on_token_request = hold
    calls = [asyncio.create_task(post_token(session, fake.token_url)) for _ in range(2)]
    await asyncio.wait_for(both_arrived.wait(), 10)
    assert not any(task.done() for task in calls)
    assert fake.token_requests == []  # held: not answered, not recorded yet
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert [a.status for a in answers] == [200, 200]
    assert in_flight == {"now": 0, "most": 2}
    assert [(r.client_id, r.status) for r in seen] == [("test-client", 0)] * 2
    assert [r.status for r in fake.token_requests] == [200, 200]


async def test_hook_answers_with_the_response_it_yields(
    fake: FakePlainID, session: aiohttp.ClientSession
) -> None:
    @contextlib.asynccontextmanager
    async def answer(_request: TokenRequest) -> AsyncIterator[FakeResponse | None]:
        yield FakeResponse(status=429, headers={"Retry-After": "7"})

    fake.fail_next(503)  # a queued answer is left for a request the hook lets through
    fake.on_token_request = answer
    scripted = await post_token(session, fake.token_url)
    assert (scripted.status, scripted.headers["Retry-After"]) == (429, "7")
    fake.on_token_request = None
    assert (await post_token(session, fake.token_url)).status == 503
    assert [r.status for r in fake.token_requests] == [429, 503]


async def test_client_of_and_in_outage(fake: FakePlainID, session: aiohttp.ClientSession) -> None:
    token = await get_token(session, fake)
    assert fake.client_of(token) == "test-client"
    assert fake.client_of("never-issued") is None
    states = [fake.in_outage]
    fake.start_outage()
    states.append(fake.in_outage)
    fake.end_outage()
    states.append(fake.in_outage)
    assert states == [False, True, False]


async def test_free_port_refuses_connections() -> None:
    port = free_port()
    assert 0 < port < 65536
    with pytest.raises(OSError, match=r"Connect call failed|refused"):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
