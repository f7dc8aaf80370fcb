"""Why results events have a channel of their own (consumer.stream.StreamWriter), shown on the
broker itself: kill -9 the leader of a stream while two publishers append to it through a node
that survives, one through a confirm channel that published to a queue before (as the worker's
one publisher channel did: stamps, copies, dead letters), one through a StreamWriter.

RabbitMQ 3.10.8 re-sends the publish in flight at the leader change with the channel's confirm
sequence number as its stream sequence number (`rabbit_stream_queue:resend_all/1`, fixed in
4.0): on the first channel that number is ahead, the new leader drops the publishes after it as
duplicates and confirms them. Every message the StreamWriter got a confirm for is in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aio_pika
import pytest

from consumer.core.stream import StreamWriter
from tests.support.cluster import NODES, Cluster

pytestmark = pytest.mark.cluster

EARLIER = 40  # publishes to a queue on the shared channel first: its confirm numbers run ahead
BEFORE, AFTER = 5, 20  # stream publishes before and after the kill, on each channel
CONFIRM_S = 15.0  # as settle.STEP_TIMEOUT_S: a publish with no confirm this long is retried


async def test_only_a_channel_of_its_own_keeps_a_stream_complete_over_a_leader_kill(
    cluster: Cluster,
) -> None:
    stream = f"test-stream-{uuid.uuid4().hex[:12]}"
    queue = f"{stream}.q"
    admin = await aio_pika.connect(cluster.url(NODES[0]), timeout=15)
    channel = await admin.channel()
    await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    await admin.close()
    leader = await cluster.leader(stream)
    through, reader = (n for n in NODES if n != leader)

    connection = await aio_pika.connect(cluster.url(through), timeout=15)
    version = str(connection.transport.connection.server_properties["version"])  # type: ignore[union-attr]
    shared = await connection.channel(publisher_confirms=True)
    for _ in range(EARLIER):
        await shared.default_exchange.publish(aio_pika.Message(b"copy"), routing_key=queue)
    writer = StreamWriter(connection, stream)
    confirmed: dict[str, list[str]] = {"shared": [], "writer": []}

    async def shared_publish(message: aio_pika.Message) -> None:
        await shared.default_exchange.publish(message, routing_key=stream, mandatory=True)

    async def append(who: str, first: int, count: int) -> None:
        send = shared_publish if who == "shared" else writer.publish
        for i in range(first, first + count):
            message_id = f"{who}-{i:03d}"
            for _ in range(3):
                try:
                    await asyncio.wait_for(
                        send(aio_pika.Message(b"{}", message_id=message_id)), CONFIRM_S
                    )
                except (TimeoutError, aio_pika.exceptions.AMQPError):
                    await asyncio.sleep(0.25)
                    continue
                confirmed[who].append(message_id)
                break
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(append("shared", 0, BEFORE), append("writer", 0, BEFORE))
        await cluster.kill(leader)
        started = time.monotonic()
        await asyncio.gather(append("shared", BEFORE, AFTER), append("writer", BEFORE, AFTER))
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(Exception):
            await connection.close()

    in_stream = await read_ids(cluster.url(reader), stream)
    lost = {who: [m for m in ids if m not in in_stream] for who, ids in confirmed.items()}
    print(
        f"\n[cluster] stream leader {leader} killed, RabbitMQ {version}: "
        f"confirmed shared={len(confirmed['shared'])} writer={len(confirmed['writer'])}, "
        f"confirmed but missing shared={len(lost['shared'])} writer={len(lost['writer'])}, "
        f"{took:.1f} s for the publishes after the kill"
    )
    assert len(confirmed["writer"]) == BEFORE + AFTER, confirmed["writer"]
    assert not lost["writer"], f"confirmed through a StreamWriter, missing: {lost['writer']}"
    # The shared channel's losses (the reason StreamWriter exists) are reported, not asserted:
    # they need a publish in flight at the moment of the leader change, which a kill does not
    # always catch (seen: 19 of 25 lost in one run, none in another, on 3.10.8).


async def read_ids(url: str, stream: str, idle_s: float = 5.0) -> list[str]:
    """The message ids in the stream, read from its first offset until idle; then deletes it.
    Retried while the stream has no leader yet."""
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=15)
            try:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=1000)
                queue = await channel.get_queue(stream, ensure=False)
                ids: list[str] = []
                async with queue.iterator(arguments={"x-stream-offset": "first"}) as messages:
                    while True:
                        try:
                            message = await asyncio.wait_for(messages.__anext__(), idle_s)
                        except TimeoutError:
                            break
                        ids.append(str(message.message_id))
                        await message.ack()
                channel = await connection.channel()
                await channel.queue_delete(stream)
                await channel.queue_delete(f"{stream}.q")
                return ids
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()
        except (aio_pika.exceptions.AMQPError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read stream {stream}: {exc!r}") from exc
            await asyncio.sleep(1)
