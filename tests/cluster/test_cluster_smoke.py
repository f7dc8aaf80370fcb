"""The test cluster itself: a quorum queue survives kill -9 of its leader."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aio_pika
import pytest

from tests.support.cluster import NODES, Cluster

pytestmark = pytest.mark.cluster


async def test_a_quorum_queue_survives_kill_9_of_its_leader(cluster: Cluster) -> None:
    name = f"test-cluster-{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(cluster.url("c1"), timeout=15)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(b"survives", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=name,
            mandatory=True,
        )
    finally:
        await connection.close()

    leader = await cluster.leader(name)
    await cluster.kill(leader)
    assert leader not in await cluster.running()
    other = next(n for n in NODES if n != leader)

    message = await get_one(cluster.url(other), name)
    assert message == b"survives", f"the message was lost with {leader}"
    new_leader = await cluster.leader(name)
    assert new_leader != leader
    connection = await aio_pika.connect(cluster.url(other), timeout=15)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


async def get_one(url: str, name: str, timeout: float = 60.0) -> bytes | None:
    """Get and ack one message from the queue through the node at `url`, retrying (and
    reconnecting) while the queue has no leader: the broker answers INTERNAL_ERROR (nodedown)
    and closes the connection until a new leader is elected."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            connection = await aio_pika.connect(url, timeout=10)
            try:
                channel = await connection.channel()
                queue = await channel.get_queue(name, ensure=True)
                message = await queue.get(fail=False, timeout=5)
                if message is not None:
                    await message.ack()
                    return message.body
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
            pass
        await asyncio.sleep(0.5)
    return None
