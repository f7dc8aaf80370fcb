"""consumer/core/client.py: what httpx reports becomes an ApiResult, and the request is well
formed."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from consumer.core.client import RevokeClient, with_query
from consumer.core.results import ApiAnswer, ApiResult, FailureKind, TransportFailure
from consumer.core.usersig import UserSigCache
from schemas.recall import RecallRequest

APP = 1400000000
KEY = "secret-key-123456"
BASE = "https://console.tim.qq.com"
REQUEST = RecallRequest.model_validate(
    {
        "TaskId": "660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e",
        "OfflinePushInfo": {"Title": "recall title", "Desc": "d", "New": {"x": [1]}},
    }
)
Handler = Callable[[httpx.Request], httpx.Response]


def usersigs() -> UserSigCache:
    return UserSigCache(APP, "administrator", KEY, clock=lambda: 1_712_112_711.0)


async def call(handler: Handler, times: int = 1) -> list[ApiResult]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RevokeClient(http, BASE + "/", APP, "administrator", usersigs())
        return [await client.revoke(REQUEST) for _ in range(times)]


def answer(code: int, info: str = "") -> Handler:
    doc = {"ActionStatus": "OK" if code == 0 else "FAIL", "ErrorInfo": info, "ErrorCode": code}
    return lambda request: httpx.Response(200, json=doc)


def raising(exc_type: type[httpx.RequestError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed {request.url}", request=request)

    return handler


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (answer(0), ApiAnswer(0, "")),
        (answer(90049, "TaskId illegal"), ApiAnswer(90049, "TaskId illegal")),
        (lambda r: httpx.Response(502, text="bad gateway"), (FailureKind.HTTP_STATUS, 502)),
        (lambda r: httpx.Response(404, json={"ErrorCode": 0}), (FailureKind.HTTP_STATUS, 404)),
        (lambda r: httpx.Response(200, text="<html>hi</html>"), (FailureKind.BAD_BODY, None)),
        (lambda r: httpx.Response(200, json={"ActionStatus": "OK"}), (FailureKind.BAD_BODY, None)),
        (lambda r: httpx.Response(200, json=[1, 2]), (FailureKind.BAD_BODY, None)),
        (raising(httpx.ConnectError), (FailureKind.CONNECT, None)),
        (raising(httpx.ConnectTimeout), (FailureKind.CONNECT, None)),
        (raising(httpx.ReadTimeout), (FailureKind.TIMEOUT, None)),
        (raising(httpx.WriteTimeout), (FailureKind.TIMEOUT, None)),
        (raising(httpx.RemoteProtocolError), (FailureKind.NETWORK, None)),
        (raising(httpx.ReadError), (FailureKind.NETWORK, None)),
    ],
    ids=[
        "ok",
        "error-code",
        "502",
        "404",
        "not-json",
        "no-error-code",
        "json-array",
        "connect-error",
        "connect-timeout",
        "read-timeout",
        "write-timeout",
        "protocol-error",
        "read-error",
    ],
)
async def test_translation(handler: Handler, expected: ApiAnswer | tuple[FailureKind, int]) -> None:
    (result,) = await call(handler)
    if isinstance(expected, ApiAnswer):
        assert result == expected
        return
    assert isinstance(result, TransportFailure)
    assert (result.kind, result.http_status) == expected
    assert result.detail


async def test_request_is_a_post_with_all_query_params_and_the_api_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})

    await call(handler, times=3)
    expected_sig = usersigs().get()
    randoms = []
    for request in seen:
        assert request.method == "POST"
        assert str(request.url).startswith(BASE + "/v4/timpush/revoke?")
        params = request.url.params
        assert set(params) == {"usersig", "identifier", "sdkappid", "random", "contenttype"}
        assert params["usersig"] == expected_sig
        assert params["identifier"] == "administrator"
        assert params["sdkappid"] == str(APP)
        assert params["contenttype"] == "json"
        assert 0 <= int(params["random"]) <= 2**32 - 1
        randoms.append(params["random"])
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == REQUEST.api_body()
    assert len(set(randoms)) == 3


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
async def test_failure_detail_never_carries_the_usersig(exc_type: type[httpx.RequestError]) -> None:
    (result,) = await call(raising(exc_type))
    sig = usersigs().get()
    assert isinstance(result, TransportFailure)
    assert sig not in result.detail
    assert sig[:20] not in result.detail
    assert KEY not in result.detail


async def test_error_info_echoing_the_usersig_is_scrubbed() -> None:
    sig = usersigs().get()
    (result,) = await call(answer(70003, f"bad sig usersig={sig} / {sig}"))
    assert isinstance(result, ApiAnswer)
    assert result.code == 70003
    assert sig not in result.info


@pytest.mark.parametrize(
    "url",
    [
        BASE + "/v4/timpush/revoke?usersig=eJw1zV%2Bz&identifier=admin&sdkappid=1&contenttype=json",
        "http://127.0.0.1:8080/v4/timpush/revoke?a=1",
        "http://[::1]:8080/x/y",
    ],
)
def test_with_query_is_what_a_full_parse_gives(url: str) -> None:
    # with_query skips httpx's parse of the signed part: it must give the very URL a full
    # parse of the whole string gives, whatever httpx's version keeps inside a URL.
    added = with_query(httpx.URL(url), "random=4294967295")
    sep = "&" if "?" in url else "?"
    full = httpx.URL(f"{url}{sep}random=4294967295")
    assert added == full
    assert (added.raw_path, added.netloc, added.scheme) == (full.raw_path, full.netloc, full.scheme)
    assert str(added) == str(full)


def test_with_query_checks_what_it_adds() -> None:
    with pytest.raises(httpx.InvalidURL):
        with_query(httpx.URL(BASE + "/x?a=1"), "random=1\n")


@pytest.mark.parametrize("more", ["b=x y", "b=%41", "b=a/b?c", "b=~._-", "b=(1)"])
def test_with_query_of_anything_else_is_httpx_own(more: str) -> None:
    url = BASE + "/x?a=1"
    assert with_query(httpx.URL(url), more) == httpx.URL(url, query=f"a=1&{more}".encode())


async def test_request_is_what_build_request_with_content_would_make() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, headers={"X-Team": "recall"}) as http:
        await RevokeClient(http, BASE, APP, "administrator", usersigs()).revoke(REQUEST)
        (request,) = seen
        built = http.build_request(
            "POST", request.url, content=REQUEST.api_bytes(), headers={"Content-Type": "x"}
        )
    built.headers["Content-Type"] = "application/json"
    assert sorted(request.headers.multi_items()) == sorted(built.headers.multi_items())
    assert request.headers["x-team"] == "recall"
    assert request.headers["host"] == "console.tim.qq.com"
    assert request.content == REQUEST.api_bytes() == built.content
    assert request.extensions["timeout"] == http.timeout.as_dict()
