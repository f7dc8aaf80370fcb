"""A delivery whose handling raises is never left unacked: released once, then dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.sandbox import Sandbox
from schemas.events import H_ERROR_CODE, H_ERROR_INFO, H_ERROR_SOURCE
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.workers import WorkerFactory, raising_for

pytestmark = pytest.mark.integration


async def test_raising_once_is_released_then_recalled(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task_id = sandbox.create_task()
    raised = raising_for(monkeypatch, task_id, times=1)
    with capture_logs() as logs:
        async with run_worker() as running:
            await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(1)
    assert raised == [1]
    assert running.settled[0].outcome == "recalled"
    failed = [e for e in logs if e["event"] == "delivery_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "RuntimeError"
    assert failed[0]["exc_info"] is True
    assert [e["reason"] for e in logs if e["event"] == "request_released"] == ["error"]
    assert running.metrics.delivery_failures._value.get() == 1
    assert await broker.count(names.queue) == 0


async def test_raising_again_on_redelivery_is_dead_lettered_locally(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task_id = sandbox.create_task()
    raising_for(monkeypatch, task_id, times=100)
    async with run_worker() as running:
        message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
        await wait_until(lambda: _empty(broker, names.queue), 10, "an empty queue")
    assert sandbox.revoke_calls() == []
    (letter,) = await broker.take(names.dead)
    headers: dict[str, Any] = dict(letter.headers or {})
    assert letter.message_id == message_id
    assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE]) == (99999, "local")
    assert "RuntimeError" in headers[H_ERROR_INFO]
    assert running.settled[0].error_code == 99999


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.count(queue) == 0
