"""One trip through the queue, against the real broker: what identity.py relies on (a redelivery
is the same bytes, the broker counts it), the delivery limit never reached silently, and a
consumer the broker cancels noticed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from structlog.testing import capture_logs

from consumer.core.envelope import message_generation, read_envelope
from consumer.core.topology import Topology
from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.faults import read_all_results
from tests.support.workers import WorkerFactory, raising_for

pytestmark = pytest.mark.integration

ODD_HEADERS = {
    "text": "x",
    "bytes": bytearray(b"\x00\xff"),
    "int": 2**40,
    "negative": -7,
    "float": 0.25,
    "decimal": Decimal("1.5"),
    "bool": True,
    "none": None,
    "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "list": [1, "two", [3]],
    "table": {"b": 1, "a": {"z": "y"}},
}


async def hand_back(amqp_url: str, queue: str, times: int) -> list[AbstractIncomingMessage]:
    """Take the head of `queue` and drop the channel holding it, `times` times (a worker that
    dies holding it); returns each delivery."""
    seen: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        for _ in range(times):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            q = await channel.get_queue(queue, ensure=False)
            await q.consume(got.put)
            seen.append(await asyncio.wait_for(got.get(), 10))
            await channel.close()  # unacked: back to the queue, redelivered
    finally:
        await connection.close()
    return seen


async def test_a_redelivery_is_the_same_generation_and_is_counted(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    stamp = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    await broker.publish(
        b'{"TaskId":"t"}',
        headers=ODD_HEADERS,
        correlation_id="c",
        timestamp=stamp,
        expiration=3600,
        priority=3,
        content_type="application/json",
        app_id="cms",
    )
    first, second, third = await hand_back(amqp_url, names.queue, 3)
    assert not first.redelivered
    assert second.redelivered
    assert third.redelivered
    assert len({message_generation(m) for m in (first, second, third)}) == 1
    envelopes = [read_envelope(m, stamp.timestamp() + 10) for m in (first, second, third)]
    # The broker's own count of returns, on 3.10 and 4.x: what the delivery limit counts.
    assert [e.delivery_count for e in envelopes] == [0, 1, 2]
    assert {e.expires_at for e in envelopes} == {stamp.timestamp() + 3600}


async def test_a_request_one_return_from_the_delivery_limit_is_dead_lettered_and_told(
    amqp_url: str,
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
) -> None:
    # Each return is a worker killed holding it (a poison message): before the broker drops it
    # at the limit without a results event, the worker dead-letters it itself, and tells it.
    limit = Topology(names.queue, names.dead, names.results).delivery_limit
    await broker.declare()
    task_id = sandbox.create_task()
    message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    await hand_back(amqp_url, names.queue, limit - 1)
    async with run_worker() as running:
        await running.wait_settled(1)
    assert sandbox.revoke_calls() == []
    (event,) = await read_all_results(broker)  # type: ignore[arg-type]
    assert (event.message_id, event.outcome, event.error_code) == (
        message_id,
        "dead_lettered",
        99997,
    )
    (letter,) = await broker.take(names.dead)
    assert (letter.headers or {})["x-recall-error-code"] == 99997


async def test_a_queue_deleted_under_a_running_worker_is_declared_and_consumed_again(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    async with run_worker() as running:
        with capture_logs() as logs:
            await broker.delete(names.queue)  # the broker cancels the worker's consumer
            await wait_until(
                lambda: [e["event"] for e in logs].count("consumer_registered") >= 1,
                15,
                "a new consumer",
            )
        task_id = sandbox.create_task()
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1)
    assert "consumer_cancelled_by_broker" in [e["event"] for e in logs]
    assert [c.code for c in sandbox.revoke_calls()] == [0]


async def test_odd_headers_are_carried_through_a_release_and_the_request_recalled(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every AMQP type aio-pika sends, in foreign headers and in ours with the wrong types; its
    # handling raises once, so a release copy of it must be published (and then a recall).
    await broker.declare()
    task_id = sandbox.create_task()
    raising_for(monkeypatch, task_id, times=1)
    odd = {
        **ODD_HEADERS,
        "x-recall-attempts": "many",
        "x-recall-lineage": ["not", "text"],
        "x-recall-halted-at-ms": 1e30,
        "x-delivery-count": "x",
        "traceparent": 42,
    }
    message_id = await broker.publish(
        {"TaskId": task_id, "OfflinePushInfo": OVERWRITE},
        headers=odd,
        content_type="text/plain; charset=utf-8",
        priority=9,
    )
    async with run_worker() as running:
        await running.wait_settled(1)
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    (event,) = await read_all_results(broker)  # type: ignore[arg-type]
    assert (event.message_id, event.outcome) == (message_id, "recalled")
    assert await broker.count(names.queue) == 0
