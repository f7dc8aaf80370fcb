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
EVERY_S = 0.02  # each publisher starts a publish this often, confirms pipelined, across the kill
CONFIRM_S = 15.0  # as settle.STEP_TIMEOUT_S: a publish with no confirm this long has failed


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
    properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
    version = str(properties["version"])
    shared = await connection.channel(publisher_confirms=True)
    for _ in range(EARLIER):
        await shared.default_exchange.publish(aio_pika.Message(b"copy"), routing_key=queue)
    writer = StreamWriter(connection, stream)

    async def shared_publish(message: aio_pika.Message) -> None:
        await shared.default_exchange.publish(message, routing_key=stream, mandatory=True)

    sends = {"shared": shared_publish, "writer": writer.publish}
    published: dict[str, list[str]] = {"shared": [], "writer": []}
    stop = asyncio.Event()

    async def append(who: str) -> list[str]:
        """Publish every EVERY_S until `stop`, the confirms in flight together (some are in
        flight when the channel learns of the new leader: those are re-sent); the ids confirmed.
        """
        pending: dict[str, asyncio.Task[None]] = {}
        while not stop.is_set():
            message_id = f"{who}-{len(pending):04d}"
            message = aio_pika.Message(b"{}", message_id=message_id)
            pending[message_id] = asyncio.create_task(
                asyncio.wait_for(sends[who](message), CONFIRM_S)
            )
            published[who].append(message_id)
            await asyncio.sleep(EVERY_S)
        await asyncio.wait(pending.values())
        return [m for m, t in pending.items() if not t.cancelled() and t.exception() is None]

    try:
        appenders = [asyncio.create_task(append(who)) for who in sends]
        await asyncio.sleep(0.5)
        await cluster.kill(leader)
        await asyncio.sleep(3.0)
        stop.set()
        shared_ok, writer_ok = await asyncio.gather(*appenders)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    confirmed = {"shared": shared_ok, "writer": writer_ok}

    in_stream = set(await read_ids(cluster.url(reader), stream))
    lost = {who: [m for m in ids if m not in in_stream] for who, ids in confirmed.items()}
    print(
        f"\n[cluster] stream leader {leader} killed, RabbitMQ {version}: "
        + ", ".join(
            f"{who}: {len(published[who])} published, {len(confirmed[who])} confirmed, "
            f"{len(lost[who])} of those missing"
            for who in sends
        )
    )
    assert not lost["writer"], f"confirmed through a StreamWriter, missing: {lost['writer']}"
    assert confirmed["writer"] == published["writer"], "a StreamWriter publish got no confirm"
    # The shared channel's losses (the reason StreamWriter exists: 40 of about 170 on 3.10.8 in
    # most runs) are printed above, not asserted: they need a publish in flight at the leader
    # change, and under CI load the kill has caught none (170 of 170 kept in one run).


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
