"""The revoke API sandbox, exercised over real HTTP."""

from __future__ import annotations

import ast
import asyncio
import base64
import graphlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import consumer.sandbox
from consumer.core.usersig import make_usersig
from consumer.sandbox import (
    CallRecord,
    Sandbox,
    SandboxConfig,
    serve_sandbox,
)

FAST = SandboxConfig(min_interval=0.05)
OPI = {"Title": "recall", "Desc": "The other party has recalled a message."}
# What the query and auth checks answer; calls refused with these never reach the rate limiter.
AUTH_CODES = {60002, 60004, 60006, 60012, 70001, 70002, 70003, 70005, 70013, 70014, 90009}
TASK_ID_SHAPE = re.compile(r"[0-9a-f]{8}_[0-9a-f]{8}_[0-9a-f]{15}_[0-9a-f]{8}_[0-9a-f]{6}")


def sig(
    cfg: SandboxConfig = FAST,
    identifier: str = "administrator",
    *,
    key: str | None = None,
    sdkappid: int | None = None,
    expire: int = 3600,
    age: int = 0,
) -> str:
    return make_usersig(
        sdkappid or cfg.sdkappid,
        identifier,
        key or cfg.secret_key,
        expire,
        int(time.time()) - age,
    )


def query(cfg: SandboxConfig = FAST, **overrides: str | None) -> dict[str, str]:
    q: dict[str, str | None] = {
        "usersig": sig(cfg),
        "identifier": "administrator",
        "sdkappid": str(cfg.sdkappid),
        "random": "12345",
        "contenttype": "json",
    }
    q.update(overrides)
    return {k: v for k, v in q.items() if v is not None}


@dataclass
class Env:
    sandbox: Sandbox
    client: httpx.AsyncClient
    url: str

    async def revoke(
        self,
        task_id: str | None,
        *,
        opi: bool = True,
        pace: bool = True,
        body: Any = None,
        timeout: float | None = None,
        **overrides: str | None,
    ) -> httpx.Response:
        """POST a revoke; first wait out the rate limit so the call is judged on its merits."""
        if pace:
            await self.pace()
        if body is None:
            body = {"TaskId": task_id} | ({"OfflinePushInfo": OPI} if opi else {})
        content = body if isinstance(body, bytes) else None
        return await self.client.post(
            "/v4/timpush/revoke",
            params=query(self.sandbox.config, **overrides),
            json=None if content is not None else body,
            content=content,
            **({"timeout": timeout} if timeout else {}),
        )

    async def code(self, task_id: str | None, **kwargs: Any) -> int:
        response = await self.revoke(task_id, **kwargs)
        assert response.status_code == 200
        doc = response.json()
        assert doc["ActionStatus"] == ("OK" if doc["ErrorCode"] == 0 else "FAIL")
        return int(doc["ErrorCode"])

    async def pace(self) -> None:
        """Sleep until the last revoke call is min_interval old (computed, not a blind sleep)."""
        calls = [c for c in self.sandbox.revoke_calls() if counts_as_arrival(c)]
        if calls:
            due = calls[-1].arrived + self.sandbox.config.min_interval + 0.005
            await asyncio.sleep(max(0.0, due - time.monotonic()))


@asynccontextmanager
async def start(config: SandboxConfig) -> AsyncIterator[Env]:
    sandbox = Sandbox(config)
    async with (
        serve_sandbox(sandbox) as url,
        httpx.AsyncClient(base_url=url, timeout=5, verify=False) as c,
    ):
        yield Env(sandbox, c, url)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with start(FAST) as e:
        yield e


def counts_as_arrival(call: CallRecord) -> bool:
    """Whether the call passed the query and auth checks (so the rate limiter saw it)."""
    return call.code not in AUTH_CODES


def codes(calls: list[CallRecord]) -> list[int | None]:
    return [c.code for c in calls]


# --- the happy path and the task checks -------------------------------------------------------


async def test_recall_then_repeat_is_90050(env: Env) -> None:
    task = env.sandbox.create_task()
    assert not env.sandbox.is_recalled(task)
    response = await env.revoke(task)
    assert response.json() == {"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}
    assert env.sandbox.is_recalled(task)
    assert await env.code(task) == 90050
    calls = env.sandbox.revoke_calls()
    assert codes(calls) == [0, 90050]
    assert all(c.task_id == task and c.offline_push_info and c.random == 12345 for c in calls)
    assert env.sandbox.recalled_task_ids() == [task]


async def test_recalled_by_someone_else(env: Env) -> None:
    task = env.sandbox.create_task()
    env.sandbox.mark_recalled(task)
    assert env.sandbox.is_recalled(task)
    assert env.sandbox.calls == []
    assert await env.code(task) == 90050
    with pytest.raises(KeyError):
        env.sandbox.mark_recalled("unknown")


async def test_unknown_missing_or_malformed_task(env: Env) -> None:
    assert await env.code("660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e") == 90049
    assert await env.code(None, body={"OfflinePushInfo": OPI}) == 90049
    assert await env.code(None, body={"TaskId": 123, "OfflinePushInfo": OPI}) == 90049
    assert await env.code(None, body=b"{not json") == 90001
    assert await env.code(None, body=b"[1, 2]") == 90001
    assert env.sandbox.recalled_task_ids() == []


async def test_recall_window(env: Env) -> None:
    late, in_time = env.sandbox.create_task(), env.sandbox.create_task()
    env.sandbox.backdate(late, 86400 + 1)
    env.sandbox.backdate(in_time, 86400 - 60)
    assert await env.code(late) == 90052
    assert await env.code(in_time) == 0
    assert not env.sandbox.is_recalled(late)


async def test_window_follows_the_injected_clock() -> None:
    now = [1_700_000_000.0]
    sandbox = Sandbox(FAST, clock=lambda: now[0])
    task = sandbox.create_task()
    assert task.startswith(f"{1_700_000_000:08x}_")
    async with serve_sandbox(sandbox) as url, httpx.AsyncClient(base_url=url) as client:
        now[0] += 86400 + 1
        # The UserSig is checked against the same clock: sign it at the fake "now".
        params = query(
            usersig=make_usersig(FAST.sdkappid, "administrator", FAST.secret_key, 60, int(now[0]))
        )
        response = await client.post(
            "/v4/timpush/revoke", params=params, json={"TaskId": task, "OfflinePushInfo": OPI}
        )
    assert response.json()["ErrorCode"] == 90052


async def test_offline_push_info_needed_for_roaming_tasks(env: Env) -> None:
    roaming, online = env.sandbox.create_task(), env.sandbox.create_task(online_only=True)
    assert await env.code(roaming, opi=False) == 90053
    bad = {"TaskId": roaming, "OfflinePushInfo": "not an object"}
    assert await env.code(None, body=bad) == 90053
    assert await env.code(roaming, opi=True) == 0
    assert await env.code(online, opi=False) == 0
    assert [c.offline_push_info for c in env.sandbox.revoke_calls()] == [False, False, True, False]
    assert env.sandbox.recalled_task_ids() == [roaming, online]


# --- the frequency limit ----------------------------------------------------------------------


async def test_rate_limit_counts_every_arrival() -> None:
    interval = 0.3
    async with start(SandboxConfig(min_interval=interval)) as env:
        a, b, c, d = (env.sandbox.create_task() for _ in range(4))
        assert await env.code(a) == 0
        first = env.sandbox.revoke_calls()[0].arrived
        await asyncio.sleep(first + 0.5 * interval - time.monotonic())
        assert await env.code(b, pace=False) == 90051
        # 1.1 intervals after the first call, but only 0.6 after the refused one: refused calls
        # count as arrivals too.
        await asyncio.sleep(first + 1.1 * interval - time.monotonic())
        assert await env.code(c, pace=False) == 90051
        assert await env.code(d) == 0  # paced: a full interval after the last arrival
        calls = env.sandbox.revoke_calls()
        assert codes(calls) == [0, 90051, 90051, 0]
        gaps = [y.arrived - x.arrived for x, y in itertools.pairwise(calls)]
        assert gaps[0] < interval
        assert gaps[1] < interval
        assert gaps[2] >= interval
        assert env.sandbox.recalled_task_ids() == [a, d]


async def test_concurrent_calls_one_wins() -> None:
    async with start(SandboxConfig(min_interval=0.2)) as env:
        tasks = [env.sandbox.create_task() for _ in range(5)]
        results = await asyncio.gather(*(env.code(t, pace=False) for t in tasks))
        assert sorted(results) == [0] + [90051] * 4
        assert len(env.sandbox.recalled_task_ids()) == 1
        calls = env.sandbox.revoke_calls()
        assert [c.arrived for c in calls] == sorted(c.arrived for c in calls)
        assert codes(calls)[0] == 0  # the first to arrive is the one let through


async def test_rejected_auth_is_not_an_arrival() -> None:
    async with start(SandboxConfig(min_interval=10)) as env:
        task = env.sandbox.create_task()
        assert await env.code(task, pace=False, usersig="garbage") == 70005
        assert (
            await env.code(task, pace=False, identifier="bob", usersig=sig(identifier="bob"))
            == 90009
        )
        assert await env.code(task, pace=False) == 0


# --- request and auth checks ------------------------------------------------------------------


# Each case: a query parameter changed (None: left out), and the ErrorCode expected.
QUERY_CASES: list[tuple[str, str | None, int]] = [
    ("contenttype", None, 60002),
    ("contenttype", "JSON", 60002),
    ("sdkappid", None, 60012),
    ("sdkappid", "abc", 60006),
    ("sdkappid", "1400000001", 60006),
    ("identifier", None, 60004),
    ("usersig", None, 70002),
    ("usersig", "", 70002),
    ("random", None, 60002),
    ("random", "-1", 60002),
    ("random", "1.5", 60002),
    ("random", "4294967296", 60002),
    ("random", "4294967295", 0),
    ("random", "0", 0),
]


async def test_query_checks(env: Env) -> None:
    got, recalled = {}, {}
    for name, value, _ in QUERY_CASES:
        task = env.sandbox.create_task()
        got[name, value] = await env.code(task, **{name: value})
        recalled[name, value] = env.sandbox.is_recalled(task)
    assert got == {(name, value): code for name, value, code in QUERY_CASES}
    assert recalled == {(name, value): code == 0 for name, value, code in QUERY_CASES}
    assert codes(env.sandbox.revoke_calls()) == [code for *_, code in QUERY_CASES]


async def test_usersig_checks(env: Env) -> None:
    cases = {
        "signed with another key": (sig(key="not-the-key"), 70003),
        "expired an hour ago": (sig(age=7200, expire=3600), 70001),
        "signed for someone else": (sig(identifier="someone-else"), 70013),
        "signed for another app": (sig(sdkappid=1400000001), 70014),
        "not base64": ("%%%not base64%%%", 70005),
        "not zlib": (base64.b64encode(b"plain text").decode(), 70005),
        "empty": ("", 70002),
    }
    task = env.sandbox.create_task()
    got = {}
    for name, (usersig, _) in cases.items():
        answer = (await env.revoke(task, usersig=usersig)).json()
        assert answer["ActionStatus"] == "FAIL"
        assert answer["ErrorInfo"]
        got[name] = answer["ErrorCode"]
    assert got == {name: code for name, (_, code) in cases.items()}
    assert not env.sandbox.is_recalled(task)


async def test_non_admin(env: Env) -> None:
    task = env.sandbox.create_task()
    assert await env.code(task, identifier="bob", usersig=sig(identifier="bob")) == 90009
    push = await env.client.post(
        "/v4/timpush/push", params=query(identifier="bob", usersig=sig(identifier="bob")), json={}
    )
    assert push.json()["ErrorCode"] == 60010
    assert "TaskId" not in push.json()


async def test_methods_and_paths(env: Env) -> None:
    assert (await env.client.get("/v4/timpush/revoke", params=query())).status_code == 405
    assert (await env.client.post("/v4/timpush/nope", params=query())).status_code == 404
    assert env.sandbox.calls == []


# --- faults -----------------------------------------------------------------------------------


async def test_fail_next_with_code(env: Env) -> None:
    a, b = env.sandbox.create_task(), env.sandbox.create_task()
    env.sandbox.fail_next(1)  # 91000 unless told otherwise
    env.sandbox.fail_next(1, task_id=b, code=70169)
    assert await env.code(a) == 91000
    assert await env.code(a) == 0  # the task-specific fault does not touch task a
    assert await env.code(b) == 70169
    assert await env.code(b) == 0
    assert codes(env.sandbox.revoke_calls()) == [91000, 0, 70169, 0]


async def test_fail_next_with_http_status(env: Env) -> None:
    task = env.sandbox.create_task()
    env.sandbox.fail_next(2, http_status=502)
    for _ in range(2):
        response = await env.revoke(task)
        assert response.status_code == 502
        with pytest.raises(ValueError):
            response.json()
    assert not env.sandbox.is_recalled(task)
    assert await env.code(task) == 0
    calls = env.sandbox.revoke_calls()
    assert [(c.code, c.http_status) for c in calls] == [(None, 502), (None, 502), (0, 200)]


async def test_fail_next_hang(env: Env) -> None:
    task = env.sandbox.create_task()
    env.sandbox.fail_next(1, hang=0.15)
    sent = time.monotonic()
    response = await env.revoke(task)
    assert response.status_code == 504
    assert time.monotonic() - sent >= 0.15
    env.sandbox.fail_next(1, hang=30)
    with pytest.raises(httpx.ReadTimeout):
        await env.revoke(task, timeout=0.1)
    assert not env.sandbox.is_recalled(task)
    assert [(c.code, c.http_status) for c in env.sandbox.revoke_calls()] == [(None, 504)] * 2


async def test_outage(env: Env) -> None:
    task = env.sandbox.create_task()
    env.sandbox.outage(0.3)
    until = time.monotonic() + 0.3
    assert (await env.revoke(task)).status_code == 502
    assert (await env.revoke(task)).status_code == 502
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    assert await env.code(task) == 0
    env.sandbox.outage(60, hang=0.05)
    assert (await env.revoke(task)).status_code == 504
    env.sandbox.clear_faults()
    assert await env.code(task) == 90050
    calls = env.sandbox.revoke_calls()
    assert [(c.code, c.http_status) for c in calls] == [
        (None, 502),
        (None, 502),
        (0, 200),
        (None, 504),
        (90050, 200),
    ]


async def test_latency_applies_after_recording(env: Env) -> None:
    task = env.sandbox.create_task()
    env.sandbox.set_latency(0.5)
    with pytest.raises(httpx.ReadTimeout):
        await env.revoke(task, timeout=0.1)
    # The client gave up, yet the server had already recalled the task.
    assert env.sandbox.is_recalled(task)
    assert codes(env.sandbox.revoke_calls()) == [0]
    env.sandbox.set_latency(0.1)
    sent = time.monotonic()
    assert await env.code(task) == 90050
    assert time.monotonic() - sent >= 0.1
    env.sandbox.clear_faults()
    assert await env.code(task) == 90050


# --- push, task ids, admin endpoints, waiting -------------------------------------------------


async def test_push_creates_tasks(env: Env) -> None:
    before = time.time()
    pushed = await env.client.post(
        "/v4/timpush/push", params=query(), json={"From_Account": "administrator", "MsgRandom": 1}
    )
    online = await env.client.post("/v4/timpush/push", params=query(), json={"OnlineOnlyFlag": 1})
    bad = await env.client.post("/v4/timpush/push", params=query(), json={"OnlineOnlyFlag": 2})
    assert pushed.json()["ErrorCode"] == 0
    assert online.json()["ErrorCode"] == 0
    assert bad.json()["ErrorCode"] == 90001
    task = pushed.json()["TaskId"]
    assert TASK_ID_SHAPE.fullmatch(task)
    assert abs(int(task.split("_")[0], 16) - before) <= 2
    assert await env.code(task, opi=False) == 90053  # pushes keep roaming messages by default
    assert await env.code(online.json()["TaskId"], opi=False) == 0
    assert [c.path for c in env.sandbox.calls][:3] == ["/v4/timpush/push"] * 3
    assert env.sandbox.calls[0].task_id == task


def test_task_ids() -> None:
    sandbox = Sandbox()
    ids = {sandbox.create_task() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(TASK_ID_SHAPE.fullmatch(t) for t in ids)
    old = sandbox.create_task(started_at=0x660CC447)
    assert old.startswith("660cc447_")
    sandbox.add_task("any string at all")
    with pytest.raises(ValueError):
        sandbox.add_task("any string at all")
    with pytest.raises(KeyError):
        sandbox.backdate("unknown", 1)
    with pytest.raises(ValueError):
        sandbox.fail_next(1, code=91000, http_status=502)


async def test_admin_endpoints(env: Env) -> None:
    c = env.client
    assert (await c.get("/sandbox/health")).json() == {"ok": True}
    task = (await c.post("/sandbox/tasks", json={"online_only": True})).json()["TaskId"]
    old = (await c.post("/sandbox/tasks", json={"backdate_s": 90000})).json()["TaskId"]
    named = (await c.post("/sandbox/tasks", json={"task_id": "a/b c"})).json()["TaskId"]
    assert named == "a/b c"
    assert (await c.post("/sandbox/tasks", json={"task_id": "a/b c"})).status_code == 400
    assert (await c.post("/sandbox/tasks", json={"bogus": 1})).status_code == 400
    assert (await c.post("/sandbox/tasks/a%2Fb%20c/backdate", json={"seconds": 90000})).json() == {
        "ok": True
    }
    assert (await c.post("/sandbox/tasks/nope/backdate", json={"seconds": 1})).status_code == 404
    assert await env.code(task, opi=False) == 0
    assert await env.code(old) == 90052
    assert await env.code(named) == 90052

    assert (await c.post("/sandbox/faults", json={"n": 1, "code": 91000})).status_code == 200
    assert (await c.post("/sandbox/faults", json={"n": 1, "code": 1, "hang": 1})).status_code == 400
    assert await env.code(task) == 91000
    await c.post("/sandbox/faults", json={"n": 5, "http_status": 503})
    await c.post("/sandbox/outage", json={"seconds": 60})
    await c.post("/sandbox/latency", json={"seconds": 2})
    assert (await c.delete("/sandbox/faults")).json() == {"ok": True}
    assert await env.code(task, timeout=1) == 90050  # no fault, no outage, no latency left

    listed = {t["task_id"]: t for t in (await c.get("/sandbox/tasks")).json()}
    assert listed[task]["recalled"]
    assert not listed[old]["recalled"]
    calls = (await c.get("/sandbox/calls")).json()
    assert [x["code"] for x in calls] == [0, 90052, 90052, 91000, 90050]
    assert set(calls[0]) == set(CallRecord.__dataclass_fields__)

    assert (await c.post("/sandbox/reset")).json() == {"ok": True}
    assert (await c.get("/sandbox/calls")).json() == []
    assert (await c.get("/sandbox/tasks")).json() == []


async def test_reset_forgets_rate_limit_memory() -> None:
    async with start(SandboxConfig(min_interval=10)) as env:
        assert await env.code("x", pace=False) == 90049
        env.sandbox.reset()
        env.sandbox.add_task("x")
        assert await env.code("x", pace=False) == 0


async def test_wait_for(env: Env) -> None:
    task = env.sandbox.create_task()

    async def later() -> None:
        await asyncio.sleep(0.05)
        await env.revoke(task)

    caller = asyncio.create_task(later())
    await env.sandbox.wait_for(lambda calls: any(c.code == 0 for c in calls), timeout=2)
    await caller
    assert env.sandbox.is_recalled(task)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"after 0.1s; 1 call"):
        await env.sandbox.wait_for(lambda calls: len(calls) > 1, timeout=0.1)
    assert 0.09 <= time.monotonic() - started < 1


async def test_shutdown_does_not_wait_for_hanging_calls() -> None:
    sandbox = Sandbox(FAST)
    sandbox.fail_next(1, hang=60)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as client:
        async with serve_sandbox(sandbox) as url:
            pending = asyncio.create_task(
                client.post(f"{url}/v4/timpush/revoke", params=query(), json={"TaskId": "x"})
            )
            await sandbox.wait_for(lambda calls: len(calls) == 1, timeout=2)
        assert time.monotonic() - started < 2
        # Shutting down cut the hang short: the call got its 504 instead of a dropped line.
        assert (await pending).status_code == 504


def test_modules_import_one_way_and_only_core() -> None:
    """No import cycle among the sandbox's modules (TYPE_CHECKING imports count too), and of the
    rest of the project only consumer.core."""
    graph: dict[str, set[str]] = {}
    for path in Path(consumer.sandbox.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        ours = {n for n in names if n.split(".")[0] == "consumer"}
        assert all(n.startswith(("consumer.core.", "consumer.sandbox")) for n in ours), path
        module = "consumer.sandbox" + ("" if path.stem == "__init__" else f".{path.stem}")
        graph[module] = {n for n in ours if n.startswith("consumer.sandbox")}
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names the cycle
