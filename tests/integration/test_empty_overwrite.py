"""An empty overwrite is no overwrite: `"OfflinePushInfo": {}` or all nulls counts as absent."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from consumer.core.stream import read_results
from consumer.sandbox import Sandbox
from schemas.events import ResultEvent
from tests.support.broker import OVERWRITE, Broker, Names
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration

DEFAULT_OVERWRITE = {"Title": "Recalled", "Desc": "Default replacement text."}
EMPTY: list[dict[str, Any]] = [
    {},
    {"Title": None, "Desc": None},
    {"AndroidInfo": {}, "ApnsInfo": {"Sound": None}, "MultiLanguageContent": []},
]


async def stream_events(amqp_url: str, names: Names) -> dict[str | None, ResultEvent]:
    """The events in the test's results stream, by TaskId."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        return {e.task_id: e async for e in read_results(connection, names.results, "first")}


async def test_an_empty_overwrite_gets_the_default_and_is_told_as_none(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    empty = [sandbox.create_task(online_only=False) for _ in EMPTY]
    own = sandbox.create_task(online_only=False)
    async with run_worker(default_offline_push_info=DEFAULT_OVERWRITE) as running:
        for task_id, info in zip(empty, EMPTY, strict=True):
            await broker.publish({"TaskId": task_id, "OfflinePushInfo": info})
        await broker.publish({"TaskId": own, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(len(EMPTY) + 1)

    bodies = {c.task_id: c.body for c in sandbox.revoke_calls()}
    for task_id in empty:
        assert bodies[task_id] == {"TaskId": task_id, "OfflinePushInfo": DEFAULT_OVERWRITE}
    assert bodies[own] == {"TaskId": own, "OfflinePushInfo": OVERWRITE}
    # The event tells what the producer sent: an empty overwrite, like none, is no overwrite of
    # its own, even though the call carried the default.
    told = {e.task_id: (e.outcome, e.has_offline_push_info) for e in running.settled}
    assert told == {**dict.fromkeys(empty, ("recalled", False)), own: ("recalled", True)}
    published = await stream_events(amqp_url, names)
    assert {t: e.has_offline_push_info for t, e in published.items()} == {
        **dict.fromkeys(empty, False),
        own: True,
    }


async def test_an_empty_overwrite_without_a_default_is_not_sent(
    broker: Broker, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    # A task that kept roaming messages needs an overwrite: {} is none, so the API says 90053.
    roaming = sandbox.create_task(online_only=False)
    online = sandbox.create_task(online_only=True)
    async with run_worker() as running:
        await broker.publish({"TaskId": roaming, "OfflinePushInfo": {}})
        await broker.publish({"TaskId": online, "OfflinePushInfo": {"Title": None}})
        await running.wait_settled(2)
    bodies = {c.task_id: c.body for c in sandbox.revoke_calls()}
    assert bodies == {roaming: {"TaskId": roaming}, online: {"TaskId": online}}
    told = {e.task_id: (e.outcome, e.error_code, e.has_offline_push_info) for e in running.settled}
    assert told == {roaming: ("dead_lettered", 90053, False), online: ("recalled", 0, False)}
