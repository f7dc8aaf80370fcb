"""The worker against the real RabbitMQ and the sandbox: each path, as the broker holds it."""

from __future__ import annotations

import json

import pytest

from consumer.sandbox import Sandbox
from schemas.events import (
    H_ATTEMPTS,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
)
from tests.support.broker import OVERWRITE, Broker, Names
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration


async def test_recall_is_acked_told_and_sent_once(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    async with run_worker() as running:
        message_id = await broker.publish(
            {"TaskId": task_id, "OfflinePushInfo": OVERWRITE}, correlation_id="cms-42"
        )
        await running.wait_settled(1)
    assert running.outcomes() == {message_id: ("recalled", 0)}
    assert sandbox.is_recalled(task_id)
    calls = sandbox.revoke_calls()
    assert [c.task_id for c in calls] == [task_id]
    assert calls[0].offline_push_info
    assert await broker.count(names.queue) == 0
    assert await broker.count(names.dead) == 0
    event = running.settled[0]
    assert (event.correlation_id, event.attempts, event.source) == ("cms-42", 1, "api")


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("unknown", 90049),
        ("recalled_elsewhere", 90050),
        ("window_passed", 90052),
        ("no_overwrite", 90053),
    ],
)
async def test_permanent_codes_are_dead_lettered_with_body_and_headers(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    setup: str,
    code: int,
) -> None:
    task_id = sandbox.create_task()
    body: dict[str, object] = {"TaskId": task_id, "OfflinePushInfo": OVERWRITE}
    if setup == "unknown":
        body["TaskId"] = task_id.replace(task_id.split("_")[1], "0badf00d")
    elif setup == "recalled_elsewhere":
        sandbox.mark_recalled(task_id)
    elif setup == "window_passed":
        sandbox.backdate(task_id, 25 * 3600)
    elif setup == "no_overwrite":
        del body["OfflinePushInfo"]
    raw = json.dumps(body, indent=1).encode()  # odd spacing: the dead letter must keep it exactly
    async with run_worker() as running:
        message_id = await broker.publish(
            raw, correlation_id="c-1", headers={"upstream": "cms"}, app_id="cms", type="recall"
        )
        await running.wait_settled(1)
    dead = await broker.take(names.dead)
    assert len(dead) == 1
    letter = dead[0]
    assert letter.body == raw
    assert (letter.message_id, letter.correlation_id, letter.app_id, letter.type) == (
        message_id,
        "c-1",
        "cms",
        "recall",
    )
    headers = letter.headers or {}
    assert headers["upstream"] == "cms"
    assert headers[H_ERROR_CODE] == code
    assert headers[H_ERROR_SOURCE] == "api"
    assert headers[H_ATTEMPTS] == 1
    assert isinstance(headers[H_ERROR_INFO], str)
    assert headers[H_ERROR_INFO]
    assert await broker.count(names.queue) == 0
    assert running.outcomes() == {message_id: ("dead_lettered", code)}
    assert len(sandbox.revoke_calls()) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"TaskId": "x", "OfflinePushinfo": {"Title": "typo"}}',
        b'{"TaskId": ""}',
        b"\xff\xfe\x00",
        b"{" * 70_000,
    ],
    ids=["not-json", "array", "string", "misspelt-field", "empty-task-id", "not-utf8", "oversize"],
)
async def test_invalid_bodies_are_dead_lettered_locally_without_a_call(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory, body: bytes
) -> None:
    async with run_worker() as running:
        await broker.publish(body)
        await running.wait_settled(1)
    dead = await broker.take(names.dead)
    assert [d.body for d in dead] == [body]
    headers = dead[0].headers or {}
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE], headers[H_ATTEMPTS]) == (
        90001,
        "local",
        0,
    )
    assert sandbox.revoke_calls() == []


async def test_misspelt_field_is_named_in_the_dead_letter(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    async with run_worker() as running:
        await broker.publish(b'{"TaskId": "abc", "OfflinePushinfo": {"Title": "t"}}')
        await running.wait_settled(1)
    (letter,) = await broker.take(names.dead)
    assert "OfflinePushinfo" in str((letter.headers or {})[H_ERROR_INFO])
