"""The sandbox serving many Chat apps, over real HTTP: each its own key, admins, limit and tasks."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from consumer.core.usersig import make_usersig
from consumer.sandbox import CallRecord, Sandbox, SandboxApp, SandboxConfig, serve_sandbox

FAST = SandboxConfig(min_interval=0.05)
SLOW = SandboxConfig(min_interval=10.0)  # no test waits this out: a second call is 90051
A = FAST.sdkappid  # the default app's
B = A + 1
OPI = {"Title": "recall", "Desc": "The other party has recalled a message."}
# What the query and auth checks answer; calls refused with these never reach a rate limiter.
AUTH_CODES = {60002, 60004, 60006, 60012, 70001, 70002, 70003, 70005, 70013, 70014, 90009}
TASK_ID_SHAPE = re.compile(r"[0-9a-f]{8}_[0-9a-f]{8}_[0-9a-f]{15}_[0-9a-f]{8}_[0-9a-f]{6}")
KEY_SHAPE = re.compile(r"[0-9a-f]{64}")


def sig(
    app: SandboxApp,
    identifier: str = "administrator",
    *,
    key: str | None = None,
    sdkappid: int | None = None,
) -> str:
    return make_usersig(
        sdkappid or app.sdkappid, identifier, key or app.secret_key, 3600, int(time.time())
    )


def query(app: SandboxApp, **overrides: str) -> dict[str, str]:
    """A query signed for `app` by its admin, unless overridden."""
    q = {
        "usersig": sig(app),
        "identifier": "administrator",
        "sdkappid": str(app.sdkappid),
        "random": "12345",
        "contenttype": "json",
    }
    return q | overrides


@dataclass
class Env:
    sandbox: Sandbox
    client: httpx.AsyncClient
    a: SandboxApp  # the default app
    b: SandboxApp  # an added one, with its own key

    async def code(
        self, app: SandboxApp, task_id: str, *, pace: bool = True, **overrides: str
    ) -> int:
        """Revoke `task_id` through `app`, first waiting out that app's own rate limit."""
        if pace:
            await self.pace(app)
        response = await self.client.post(
            "/v4/timpush/revoke",
            params=query(app, **overrides),
            json={"TaskId": task_id, "OfflinePushInfo": OPI},
        )
        assert response.status_code == 200
        return int(response.json()["ErrorCode"])

    async def pace(self, app: SandboxApp) -> None:
        """Sleep until the app's last counted revoke call is min_interval old."""
        calls = [c for c in self.sandbox.revoke_calls(app.sdkappid) if counts(c)]
        if calls:
            due = calls[-1].arrived + app.min_interval + 0.005
            await asyncio.sleep(max(0.0, due - time.monotonic()))


@asynccontextmanager
async def start(config: SandboxConfig) -> AsyncIterator[Env]:
    sandbox = Sandbox(config)
    b = sandbox.add_app(B, secret_key="app-b-secret-key")
    async with (
        serve_sandbox(sandbox) as url,
        httpx.AsyncClient(base_url=url, timeout=5) as client,
    ):
        yield Env(sandbox, client, config.app(), b)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with start(FAST) as e:
        yield e


def counts(call: CallRecord) -> bool:
    """Whether the call passed the query and auth checks (so its app's limiter saw it)."""
    return call.code not in AUTH_CODES


def codes(calls: list[CallRecord]) -> list[int | None]:
    return [c.code for c in calls]


# --- keys, admins, tasks: each app its own ------------------------------------------------------


async def test_each_app_recalls_its_own_tasks(env: Env) -> None:
    assert env.sandbox.apps() == [env.a, env.b]
    assert env.a.secret_key != env.b.secret_key
    mine_a, mine_b = env.sandbox.create_task(), env.sandbox.create_task(sdkappid=B)
    assert await env.code(env.a, mine_a) == 0
    assert await env.code(env.b, mine_b) == 0
    assert await env.code(env.b, mine_b) == 90050
    assert [(c.sdkappid, c.task_id, c.code) for c in env.sandbox.revoke_calls()] == [
        (A, mine_a, 0),
        (B, mine_b, 0),
        (B, mine_b, 90050),
    ]
    assert codes(env.sandbox.revoke_calls(A)) == [0]
    assert codes(env.sandbox.revoke_calls(B)) == [0, 90050]
    assert env.sandbox.revoke_calls(B + 1) == []
    assert env.sandbox.recalled_task_ids(A) == [mine_a]
    assert env.sandbox.recalled_task_ids(B) == [mine_b]
    assert [t["task_id"] for t in env.sandbox.task_records(B)] == [mine_b]
    assert env.sandbox.task_records(B)[0]["sdkappid"] == B


async def test_usersig_and_admins_are_checked_per_app() -> None:
    async with start(SLOW) as env:
        ops = env.sandbox.add_app(B + 1, admins={"ops"})
        task_b, task_ops = (
            env.sandbox.create_task(sdkappid=B),
            env.sandbox.create_task(sdkappid=ops.sdkappid),
        )
        got = {
            # A's UserSig, sent to B: signed for another SDKAppID.
            "A's UserSig at B": await env.code(env.b, task_b, pace=False, usersig=sig(env.a)),
            # Signed for B's SDKAppID, but with A's key.
            "A's key at B": await env.code(
                env.b, task_b, pace=False, usersig=sig(env.b, key=env.a.secret_key)
            ),
            # A's admin is not an admin of the app whose admin is "ops".
            "A's admin at ops": await env.code(ops, task_ops, pace=False),
            "an app not served": await env.code(
                env.a, task_b, pace=False, sdkappid=str(B + 2), usersig=sig(env.a, sdkappid=B + 2)
            ),
            # None of the refusals was an arrival at B or ops: their first counted calls pass.
            "B's own UserSig": await env.code(env.b, task_b, pace=False),
            "ops's own admin": await env.code(
                ops, task_ops, pace=False, identifier="ops", usersig=sig(ops, "ops")
            ),
        }
        assert got == {
            "A's UserSig at B": 70014,
            "A's key at B": 70003,
            "A's admin at ops": 90009,
            "an app not served": 60006,
            "B's own UserSig": 0,
            "ops's own admin": 0,
        }
        recorded = [c.sdkappid for c in env.sandbox.revoke_calls()]
        assert recorded == [B, B, ops.sdkappid, B + 2, B, ops.sdkappid]
        assert env.sandbox.recalled_task_ids() == [task_b, task_ops]


async def test_sdkappid_recorded_only_when_it_is_a_number(env: Env) -> None:
    task = env.sandbox.create_task()
    assert await env.code(env.a, task, sdkappid="abc") == 60006
    assert await env.code(env.a, task, sdkappid="") == 60012
    assert [c.sdkappid for c in env.sandbox.revoke_calls()] == [None, None]
    assert env.sandbox.revoke_calls(A) == []


async def test_a_task_is_recalled_only_through_its_app(env: Env) -> None:
    task_a, task_b = env.sandbox.create_task(), env.sandbox.create_task(sdkappid=B)
    assert await env.code(env.b, task_a) == 90049  # B never pushed it: no push record
    assert await env.code(env.a, task_b) == 90049
    assert env.sandbox.recalled_task_ids() == []
    assert await env.code(env.a, task_a) == 0
    assert await env.code(env.b, task_b) == 0

    pushed = await env.client.post("/v4/timpush/push", params=query(env.b), json={})
    assert pushed.json()["ErrorCode"] == 0
    task = pushed.json()["TaskId"]
    assert TASK_ID_SHAPE.fullmatch(task)
    assert env.sandbox.calls[-1].sdkappid == B
    assert await env.code(env.a, task) == 90049
    assert await env.code(env.b, task) == 0
    assert env.sandbox.recalled_task_ids(B) == [task_b, task]

    # TaskIds are unique across apps: one app cannot take another's.
    with pytest.raises(ValueError, match="already exists"):
        env.sandbox.add_task(task_a, sdkappid=B)


# --- the rate limit, per app --------------------------------------------------------------------


async def test_rate_limit_is_per_app() -> None:
    async with start(SLOW) as env:
        a1, b1, a2, b2 = (env.sandbox.create_task(sdkappid=s) for s in (A, B, A, B))
        assert await env.code(env.a, a1, pace=False) == 0
        await asyncio.sleep(0.01)
        assert await env.code(env.b, b1, pace=False) == 0  # 10 ms after A's: another app
        await asyncio.sleep(0.01)
        assert await env.code(env.a, a2, pace=False) == 90051  # 10 ms after B's: A's second
        assert await env.code(env.b, b2, pace=False) == 90051
        calls = env.sandbox.revoke_calls()
        assert [(c.sdkappid, c.code) for c in calls] == [(A, 0), (B, 0), (A, 90051), (B, 90051)]
        a_then_b = calls[1].arrived - calls[0].arrived  # both answered 0
        a_then_a = calls[2].arrived - calls[0].arrived  # the second answered 90051
        assert 0.01 <= a_then_b < a_then_a < 1
        assert env.sandbox.recalled_task_ids() == [a1, b1]


async def test_many_apps_called_at_once_each_pass_once() -> None:
    async with start(SLOW) as env:
        apps = env.sandbox.add_apps(50)
        assert [a.sdkappid for a in apps] == list(range(B + 1, B + 51))
        tasks = {a.sdkappid: env.sandbox.create_task(sdkappid=a.sdkappid) for a in apps}
        first = await asyncio.gather(*(env.code(a, tasks[a.sdkappid], pace=False) for a in apps))
        again = await asyncio.gather(*(env.code(a, tasks[a.sdkappid], pace=False) for a in apps))
        assert first == [0] * 50  # no app's call made another app's too frequent
        assert again == [90051] * 50  # each app's own limiter still holds
        assert all(codes(env.sandbox.revoke_calls(a.sdkappid)) == [0, 90051] for a in apps)


# --- faults, reset, config ----------------------------------------------------------------------


async def test_fail_next_can_target_one_app(env: Env) -> None:
    task_a, task_b = env.sandbox.create_task(), env.sandbox.create_task(sdkappid=B)
    env.sandbox.fail_next(1, code=70169, sdkappid=B)
    assert await env.code(env.a, task_a) == 0  # A's call does not use B's fault
    assert await env.code(env.b, task_b) == 70169
    assert await env.code(env.b, task_b) == 0
    assert codes(env.sandbox.revoke_calls(B)) == [70169, 0]


async def test_reset_keeps_apps_and_forgets_every_limiter() -> None:
    async with start(SLOW) as env:
        extra = env.sandbox.add_app(B + 1, min_interval=30)
        before = env.sandbox.apps()
        for app in before:
            task = env.sandbox.create_task(sdkappid=app.sdkappid)
            assert await env.code(app, task, pace=False) == 0
        env.sandbox.fail_next(5, sdkappid=B)
        env.sandbox.reset()
        assert env.sandbox.apps() == before
        assert env.sandbox.calls == []
        assert env.sandbox.task_records() == []
        assert extra.min_interval == 30
        for app in before:  # within every app's interval of its last call: forgotten
            task = env.sandbox.create_task(sdkappid=app.sdkappid)
            assert await env.code(app, task, pace=False) == 0
        assert [c.sdkappid for c in env.sandbox.revoke_calls()] == [A, B, B + 1]


async def test_a_new_config_renames_the_default_app(env: Env) -> None:
    task = env.sandbox.create_task()
    renamed = replace(FAST, sdkappid=A + 100, secret_key="renamed-key")
    env.sandbox.config = renamed
    assert env.sandbox.apps() == [renamed.app(), env.b]
    assert await env.code(env.a, task) == 60006  # A's SDKAppID is no longer served
    assert await env.code(renamed.app(), task) == 0  # its tasks moved with it
    with pytest.raises(ValueError, match="already served"):
        env.sandbox.config = replace(FAST, sdkappid=B)


def test_adding_apps() -> None:
    sandbox = Sandbox(SandboxConfig(min_interval=0.5))
    added = sandbox.add_app(1400000100)
    assert KEY_SHAPE.fullmatch(added.secret_key)
    assert added.admins == frozenset({"administrator"})
    assert added.min_interval == 0.5  # the config's, unless given
    assert sandbox.add_app(1400000101, min_interval=2).min_interval == 2
    for taken in (SandboxConfig().sdkappid, 1400000100):
        with pytest.raises(ValueError, match="already served"):
            sandbox.add_app(taken)
    with pytest.raises(ValueError, match="admins"):
        sandbox.add_app(1400000200, admins="administrator")
    with pytest.raises(ValueError, match="positive"):
        sandbox.add_app(0)
    many = sandbox.add_apps(3)  # past the highest served
    assert [a.sdkappid for a in many] == [1400000102, 1400000103, 1400000104]
    assert len({a.secret_key for a in sandbox.apps()}) == 6
    with pytest.raises(ValueError, match="1400000104"):
        sandbox.add_apps(3, first=1400000103)
    assert len(sandbox.apps()) == 6  # all or none: 1400000105 was not added either
    assert sandbox.apps()[0] == sandbox.config.app()
    with pytest.raises(ValueError, match="no app"):
        sandbox.create_task(sdkappid=1)


# --- the admin endpoints and the command --------------------------------------------------------


async def test_admin_endpoints_for_apps(env: Env) -> None:
    c = env.client
    listed = (await c.get("/sandbox/apps")).json()
    assert [x["sdkappid"] for x in listed] == [A, B]
    assert listed[1] == {
        "sdkappid": B,
        "secret_key": env.b.secret_key,
        "admins": ["administrator"],
        "min_interval": FAST.min_interval,
    }
    made = (await c.post("/sandbox/apps", json={"sdkappid": B + 1, "admins": ["ops"]})).json()
    assert made["admins"] == ["ops"]
    assert KEY_SHAPE.fullmatch(made["secret_key"])
    assert (await c.post("/sandbox/apps", json={"sdkappid": B})).status_code == 400
    assert (await c.post("/sandbox/apps", json={"sdkappid": B + 2, "bogus": 1})).status_code == 400

    task_b = (await c.post("/sandbox/tasks", json={"sdkappid": B})).json()["TaskId"]
    task_a = (await c.post("/sandbox/tasks", json={})).json()["TaskId"]
    assert (await c.post("/sandbox/tasks", json={"sdkappid": 1})).status_code == 400
    assert [t["task_id"] for t in (await c.get("/sandbox/tasks?sdkappid=" + str(B))).json()] == [
        task_b
    ]
    assert (await c.get("/sandbox/tasks?sdkappid=x")).status_code == 400

    assert (await c.post("/sandbox/faults", json={"n": 1, "sdkappid": B})).status_code == 200
    assert await env.code(env.a, task_a) == 0
    assert await env.code(env.b, task_b) == 91000
    calls: list[dict[str, Any]] = (await c.get(f"/sandbox/calls?sdkappid={B}")).json()
    assert [(x["sdkappid"], x["code"]) for x in calls] == [(B, 91000)]
    assert len((await c.get("/sandbox/calls")).json()) == 2

    assert (await c.post("/sandbox/reset")).json() == {"ok": True}
    assert [x["sdkappid"] for x in (await c.get("/sandbox/apps")).json()] == [A, B, B + 1]


async def test_command_serves_several_apps() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "sandbox",
        "--port",
        "0",
        "--apps",
        "3",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines = [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(3)]
        fields = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in lines]
        url = lines[0].split()[3]
        assert lines[0].startswith(f"tim-recall sandbox at {url} sdkappid={A} ")
        assert [int(f["sdkappid"]) for f in fields] == [A, A + 1, A + 2]
        assert fields[0]["secret_key"] == SandboxConfig().secret_key
        apps = [SandboxApp(int(f["sdkappid"]), f["secret_key"], frozenset(), 1.0) for f in fields]
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            got = [
                (
                    await client.post("/v4/timpush/revoke", params=query(app), json={"TaskId": "x"})
                ).json()["ErrorCode"]
                for app in apps
            ]
            signed_for_another = await client.post(
                "/v4/timpush/revoke",
                params=query(apps[2], usersig=sig(apps[1])),
                json={"TaskId": "x"},
            )
        assert got == [90049] * 3  # each app's key and admin accepted: no such task
        assert signed_for_another.json()["ErrorCode"] == 70014
    finally:
        process.terminate()
        await process.wait()
