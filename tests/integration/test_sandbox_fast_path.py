"""The sandbox's cheaper path is as faithful: UserSigs remembered, API paths outside Starlette."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import Message

from consumer.core.usersig import (
    SigFields,
    UserSigError,
    UserSigVerifier,
    make_usersig,
    verify_usersig,
)
from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox
from consumer.sandbox.checks import query_params

T0 = 1_700_000_000
CFG = SandboxConfig(min_interval=0.0)
A, B = CFG.sdkappid, CFG.sdkappid + 1
KEY, OTHER_KEY = CFG.secret_key, "another-secret-key-0123456789abcdef"
OPI = {"Title": "recall", "Desc": "The other party has recalled a message."}


def outcome(check: Any, *args: Any) -> SigFields | tuple[int, str]:
    """What a verification answered: the fields, or the error's code and reason."""
    try:
        return check(*args)  # type: ignore[no-any-return]
    except UserSigError as exc:
        return exc.code, exc.reason


def refused(check: Any, *args: Any) -> int | None:
    """The code a verification refused with, None when it passed."""
    answer = outcome(check, *args)
    return answer[0] if isinstance(answer, tuple) else None


# --- UserSigVerifier: the answers of verify_usersig, the clock checked every time ---------------

CASES = [
    (make_usersig(A, "administrator", KEY, 3600, T0), A, "administrator", KEY),
    (make_usersig(A, "administrator", KEY, 3600, T0), A, "administrator", OTHER_KEY),
    (make_usersig(A, "administrator", KEY, 3600, T0), B, "administrator", KEY),
    (make_usersig(A, "administrator", KEY, 3600, T0), A, "someone-else", KEY),
    (make_usersig(A, "administrator", OTHER_KEY, 3600, T0), A, "administrator", KEY),
    ("%%%not base64%%%", A, "administrator", KEY),
    ("", A, "administrator", KEY),
]


@pytest.mark.parametrize("now", [T0, T0 + 3600, T0 + 3600.001, T0 + 7200])
def test_verifier_answers_as_verify_usersig_every_time(now: float) -> None:
    verifier = UserSigVerifier()
    for usersig, sdkappid, identifier, key in CASES:
        expected = outcome(verify_usersig, usersig, sdkappid, identifier, key, now)
        for _ in range(3):  # the first call, then remembered (or not)
            got = outcome(verifier.verify, usersig, sdkappid, identifier, key, now)
            assert got == expected


def test_a_remembered_usersig_expires_at_time_plus_expire() -> None:
    verifier = UserSigVerifier()
    usersig = make_usersig(A, "administrator", KEY, 60, T0)
    assert isinstance(verifier.verify(usersig, A, "administrator", KEY, T0), SigFields)
    assert len(verifier) == 1
    assert isinstance(verifier.verify(usersig, A, "administrator", KEY, T0 + 60), SigFields)
    with pytest.raises(UserSigError) as expired:
        verifier.verify(usersig, A, "administrator", KEY, T0 + 60.001)
    assert (expired.value.code, expired.value.reason) == (70001, "UserSig expired")
    # A clock that goes back makes it valid again, as it would be unremembered.
    assert isinstance(verifier.verify(usersig, A, "administrator", KEY, T0 + 1), SigFields)


def test_a_remembered_usersig_is_refused_with_another_key_or_app() -> None:
    verifier = UserSigVerifier()
    usersig = make_usersig(A, "administrator", KEY, 3600, T0)
    verifier.verify(usersig, A, "administrator", KEY, T0)
    assert refused(verifier.verify, usersig, A, "administrator", OTHER_KEY, T0) == 70003
    assert refused(verifier.verify, usersig, B, "administrator", KEY, T0) == 70014
    assert refused(verifier.verify, usersig, A, "bob", KEY, T0) == 70013


def test_refused_usersigs_are_not_remembered_and_the_size_is_bounded() -> None:
    verifier = UserSigVerifier(max_size=3)
    bad = make_usersig(A, "administrator", OTHER_KEY, 3600, T0)
    assert refused(verifier.verify, bad, A, "administrator", KEY, T0) == 70003
    assert len(verifier) == 0
    sigs = [make_usersig(A, "administrator", KEY, 3600, T0 + i) for i in range(10)]
    for usersig in sigs:
        verifier.verify(usersig, A, "administrator", KEY, T0 + 10)
    assert len(verifier) == 3
    for usersig in sigs:  # evicted or not, each still passes
        assert isinstance(verifier.verify(usersig, A, "administrator", KEY, T0 + 10), SigFields)
    with pytest.raises(ValueError, match="max_size"):
        UserSigVerifier(max_size=0)


# --- over HTTP: remembered UserSigs in the sandbox ----------------------------------------------


class Env:
    def __init__(self, sandbox: Sandbox, client: httpx.AsyncClient, now: list[float]) -> None:
        self.sandbox, self.client, self.now = sandbox, client, now

    async def code(self, usersig: str, sdkappid: int = A, **extra: str) -> int:
        task = self.sandbox.create_task(sdkappid=sdkappid)
        params = {
            "usersig": usersig,
            "identifier": "administrator",
            "sdkappid": str(sdkappid),
            "random": "7",
            "contenttype": "json",
        } | extra
        body = {"TaskId": task, "OfflinePushInfo": OPI}
        response = await self.client.post("/v4/timpush/revoke", params=params, json=body)
        assert response.status_code == 200
        return int(response.json()["ErrorCode"])


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    now = [float(T0)]
    sandbox = Sandbox(CFG, clock=lambda: now[0])
    async with (
        serve_sandbox(sandbox) as url,
        httpx.AsyncClient(base_url=url, timeout=5) as client,
    ):
        yield Env(sandbox, client, now)


async def test_a_cached_usersig_still_expires_on_the_sandbox_clock(env: Env) -> None:
    usersig = make_usersig(A, "administrator", KEY, 60, T0)
    assert await env.code(usersig) == 0
    assert await env.code(usersig) == 0  # remembered now
    env.now[0] = T0 + 60
    assert await env.code(usersig) == 0
    env.now[0] = T0 + 61
    assert await env.code(usersig) == 70001
    assert await env.code(make_usersig(A, "administrator", KEY, 60, T0 + 61)) == 0


async def test_one_apps_cached_usersig_is_refused_by_another(env: Env) -> None:
    env.sandbox.add_app(B, secret_key=OTHER_KEY)
    for_a = make_usersig(A, "administrator", KEY, 3600, T0)
    assert await env.code(for_a) == 0
    assert await env.code(for_a, B) == 70014  # signed for A
    # Signed as B but with A's key: A's key is not B's.
    assert await env.code(make_usersig(B, "administrator", KEY, 3600, T0), B) == 70003
    assert await env.code(make_usersig(B, "administrator", OTHER_KEY, 3600, T0), B) == 0


async def test_a_new_key_refuses_what_was_cached_under_the_old(env: Env) -> None:
    old = make_usersig(A, "administrator", KEY, 3600, T0)
    assert await env.code(old) == 0
    env.sandbox.config = replace(CFG, secret_key=OTHER_KEY)  # the setter: same app, new key
    assert await env.code(old) == 70003
    assert await env.code(make_usersig(A, "administrator", OTHER_KEY, 3600, T0)) == 0
    # The default app renamed away, then A served again by add_app with yet another key.
    env.sandbox.config = replace(CFG, sdkappid=A + 100, secret_key=OTHER_KEY)
    env.sandbox.add_app(A, secret_key="a-third-secret-key-0123456789abcdef")
    assert await env.code(old) == 70003
    assert await env.code(make_usersig(A, "administrator", OTHER_KEY, 3600, T0)) == 70003
    third = make_usersig(A, "administrator", "a-third-secret-key-0123456789abcdef", 3600, T0)
    assert await env.code(third) == 0


# --- the API paths outside Starlette answer as through it ---------------------------------------

QUERY_TEXT = st.text(alphabet="ab=&;+%20 7éx_*-", max_size=40)


@settings(max_examples=300, deadline=None)
@given(QUERY_TEXT)
def test_query_params_reads_as_starlette(text: str) -> None:
    raw = text.encode("latin-1")
    assert query_params(raw) == dict(QueryParams(raw).items())


def revoke_requests(sandbox: Sandbox) -> list[tuple[str, bytes]]:
    """Query strings and bodies: valid, odd, duplicated, encoded, broken."""
    usersig = make_usersig(A, "administrator", KEY, 3600, T0)
    base = httpx.QueryParams(
        {
            "usersig": usersig,
            "identifier": "administrator",
            "sdkappid": str(A),
            "random": "9",
            "contenttype": "json",
        }
    )

    def good() -> bytes:
        return json.dumps({"TaskId": sandbox.create_task(), "OfflinePushInfo": OPI}).encode()

    return [
        (str(base), good()),
        (str(base), json.dumps({"TaskId": sandbox.create_task()}).encode()),
        (str(base) + "&random=10", good()),  # repeated: the last one counts
        (str(base).replace("contenttype=json", "contenttype=JSON"), good()),
        (str(base).replace("identifier=administrator", "identifier=admin%69strator"), good()),
        (str(base).replace("random=9", "random="), good()),
        (str(base) + "&sdkappid=", good()),
        (str(base), b"not json"),
        (str(base), b"[1, 2]"),
        ("", good()),
    ]


async def test_front_answers_as_the_starlette_route() -> None:
    """The same calls through Front and through Starlette's routing (the rest of the app)."""
    answers: list[list[Any]] = []
    for through_starlette in (False, True):
        sandbox = Sandbox(CFG, clock=lambda: float(T0))
        app = sandbox.app()
        asgi = app.rest if through_starlette else app
        transport = httpx.ASGITransport(app=asgi)
        seen = []
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            for query, body in revoke_requests(sandbox):
                response = await client.post(f"/v4/timpush/revoke?{query}", content=body)
                seen.append((response.status_code, sorted(response.headers.items()), response.text))
            for method, path in [("GET", "/v4/timpush/revoke"), ("POST", "/v4/timpush/nope")]:
                response = await client.request(method, path)
                seen.append((response.status_code, sorted(response.headers.items()), response.text))
        records = [replace(c, arrived=0.0, wall=0.0, task_id=None) for c in sandbox.calls]
        body_free = [replace(r, body=None) if r.body and "TaskId" in r.body else r for r in records]
        answers.append([seen, body_free])
    assert answers[0] == answers[1]
    codes = [json.loads(text)["ErrorCode"] for status, _, text in answers[0][0][:10]]
    assert codes == [0, 90053, 0, 60002, 0, 60002, 60012, 90001, 90001, 60002]


async def test_the_answer_is_starlettes_json_response() -> None:
    sandbox = Sandbox(CFG)
    task = sandbox.create_task()
    async with serve_sandbox(sandbox) as url, httpx.AsyncClient(base_url=url) as client:
        params = {
            "usersig": make_usersig(A, "administrator", KEY, 3600, int(sandbox.now())),
            "identifier": "administrator",
            "sdkappid": str(A),
            "random": "1",
            "contenttype": "json",
        }
        response = await client.post(
            "/v4/timpush/revoke", params=params, json={"TaskId": task, "OfflinePushInfo": OPI}
        )
    expected = JSONResponse({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0})
    assert response.content == expected.body
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(expected.body))


async def test_a_client_gone_before_its_body_is_not_recorded() -> None:
    sandbox = Sandbox(CFG)
    usersig = make_usersig(A, "administrator", KEY, 3600, int(sandbox.now()))
    query = f"usersig={usersig}&identifier=administrator&sdkappid={A}&random=1&contenttype=json"
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v4/timpush/revoke",
        "query_string": query.encode(),
        "headers": [],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(ClientDisconnect):
        await sandbox.app()(scope, receive, send)
    assert sandbox.calls == []
    assert sent[0]["status"] == 500  # what Starlette's error middleware answered too
