"""Telling the caller: the results event to `reply_to` (a queue, or Direct Reply-to), and the
W3C trace context carried through logs, events, replies and dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from consumer.core.stream import RESULT_TYPE
from consumer.sandbox import Sandbox
from schemas.events import ResultEvent
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.faults import read_all_results
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def replies_on(
    broker: Broker, queue: str, count: int, timeout: float = 15.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await broker.connection.channel()
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        q = await channel.get_queue(queue, ensure=False)
        async with q.iterator() as messages:
            async with asyncio.timeout(timeout):
                async for message in messages:
                    await message.ack()
                    got.append(message)
                    if len(got) == count:
                        break
    finally:
        await channel.close()
    return got


async def test_reply_to_gets_the_results_event_with_the_trace_id(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    reply_queue = f"{names.queue}.replies"
    channel = await broker.connection.channel()
    await channel.declare_queue(reply_queue, auto_delete=True)
    task_id = sandbox.create_task()
    with capture_logs() as logs:
        async with run_worker() as running:
            await broker.publish(
                {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
                correlation_id="cms-7",
                reply_to=reply_queue,
                headers={"traceparent": TRACEPARENT},
            )
            (reply,) = await replies_on(broker, reply_queue, 1)
            await running.wait_settled(1)
    await channel.close()
    event = ResultEvent.model_validate_json(reply.body)
    (streamed,) = await read_all_results(broker)  # type: ignore[arg-type]
    assert event == streamed  # the same JSON as on the stream
    assert reply.correlation_id == "cms-7"
    assert reply.type == RESULT_TYPE
    assert (event.outcome, event.trace_id) == ("recalled", TRACE_ID)
    assert running.metrics.replies.labels("sent")._value.get() == 1
    recalled = [e for e in logs if e["event"] == "request_recalled"]
    assert recalled[0]["trace_id"] == TRACE_ID


async def test_direct_reply_to(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    channel = await broker.connection.channel(publisher_confirms=True)
    got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    direct = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    await direct.consume(got.put, no_ack=True)
    async with run_worker() as running:
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps({"TaskId": task_id, "OfflinePushInfo": OVERWRITE}).encode(),
                reply_to="amq.rabbitmq.reply-to",
                correlation_id="ops-1",
                message_id=str(uuid.uuid4()),
            ),
            routing_key=names.queue,
        )
        reply = await asyncio.wait_for(got.get(), 15)
        await running.wait_settled(1)
    await channel.close()
    assert reply.correlation_id == "ops-1"
    assert json.loads(reply.body)["outcome"] == "recalled"
    assert running.metrics.replies.labels("sent")._value.get() == 1
    assert running.metrics.replies.labels("unroutable")._value.get() == 0


async def test_a_reply_nobody_can_receive_changes_nothing(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    with capture_logs() as logs:
        async with run_worker() as running:
            await broker.publish(
                {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
                reply_to=f"{names.queue}.gone",  # the caller's queue is gone
            )
            await running.wait_settled(1)
            await wait_until(lambda: _empty(broker, names.queue), 10, "the ack")
    assert running.settled[0].outcome == "recalled"
    assert running.metrics.replies.labels("unroutable")._value.get() == 1
    assert [e["reply_to"] for e in logs if e["event"] == "reply_unroutable"] == [
        f"{names.queue}.gone"
    ]
    assert len(await read_all_results(broker)) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        ({"headers": {"traceparent": "not-a-trace"}}, "traceparent is not a W3C trace context"),
        ({"reply_to": "bad\x01queue"}, "reply_to is not a valid queue name"),
    ],
)
async def test_bad_properties_are_ignored_with_a_warning(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    properties: dict[str, Any],
    problem: str,
) -> None:
    task_id = sandbox.create_task()
    with capture_logs() as logs:
        async with run_worker() as running:
            await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE}, **properties)
            await running.wait_settled(1)
    assert running.settled[0].outcome == "recalled"
    ignored = [e["problem"] for e in logs if e["event"] == "request_property_ignored"]
    assert problem in ignored


async def test_a_dead_letter_keeps_its_traceparent(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    async with run_worker() as running:
        await broker.publish({"TaskId": "no-such-task"}, headers={"traceparent": TRACEPARENT})
        await running.wait_settled(1)
    (letter,) = await broker.take(names.dead)
    assert (letter.headers or {})["traceparent"] == TRACEPARENT
    assert running.settled[0].trace_id == TRACE_ID


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.count(queue) == 0


async def test_a_redelivery_that_is_only_acked_does_not_reply_twice(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    # The state a crash leaves between the results event (and its reply) and the ack: the
    # chain was told; its redelivery is only acked, with no second reply.
    reply_queue = f"{names.queue}.replies"
    channel = await broker.connection.channel()
    await channel.declare_queue(reply_queue, auto_delete=False)
    task_id = sandbox.create_task()
    async with run_worker() as running:
        await broker.publish(
            {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
            reply_to=reply_queue,
            headers={"x-recall-lineage": "told-chain"},
        )
        await running.wait_settled(1)
    assert await broker.count(reply_queue) == 1  # the first, settling delivery replied
    await broker.publish(
        {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
        reply_to=reply_queue,
        headers={"x-recall-lineage": "told-chain"},
    )
    with capture_logs() as logs:
        async with run_worker():
            await wait_until(
                lambda: any(e["event"] == "request_already_settled" for e in logs), 15, "the ack"
            )
    assert await broker.count(reply_queue) == 1  # no second reply
    assert len(sandbox.revoke_calls()) == 1
    await channel.queue_delete(reply_queue)
    await channel.close()
