"""consumer/core/client.py: what httpx reports becomes an ApiResult, and the request is well
formed."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from consumer.core.client import RevokeClient
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
