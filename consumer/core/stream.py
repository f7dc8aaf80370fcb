"""The results stream: publish one event per settled request (through a channel of its own);
read events back from an offset."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, FieldValue
from aio_pika.exceptions import ChannelInvalidStateError
from pydantic import ValidationError

from consumer.core.envelope import seconds_from_ms
from schemas.events import H_NEXT_CALL_MS, LaneEvent, ResultEvent

RESULT_TYPE = "tim-recall.result"
MARKER_TYPE = "tim-recall.marker"  # written by a reader to know where "now" is in the stream
LANE_TYPE = "tim-recall.lane"  # a replica's lane for an app changed state (schemas.LaneEvent)

CLOSE_TIMEOUT_S = 10.0  # closing a writer's channel that failed, in the background
Offset = str | int | datetime  # "first", "last", "next", an offset, or a timestamp


def result_message(
    event: ResultEvent, app_id: str | None = None, next_call: float | None = None
) -> aio_pika.Message:
    """The AMQP message of one results event; `app_id` names the process that told it, and
    `next_call` (unix seconds) when it would call for the app next."""
    return aio_pika.Message(
        headers=next_call_header(next_call),
        body=event.to_json_bytes(),
        content_type="application/json",
        type=RESULT_TYPE,
        correlation_id=event.correlation_id,
        message_id=event.message_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=event.settled_at,
        app_id=app_id,
    )


def lane_message(
    event: LaneEvent, app_id: str | None = None, next_call: float | None = None
) -> aio_pika.Message:
    """The AMQP message of one lane record; `app_id` names the process that wrote it."""
    return aio_pika.Message(
        headers=next_call_header(next_call),
        body=event.to_json_bytes(),
        content_type="application/json",
        type=LANE_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=event.at,
        app_id=app_id,
    )


def next_call_header(next_call: float | None) -> dict[str, FieldValue] | None:
    """The headers that carry `next_call` (unix seconds) as integer ms, if known."""
    return None if next_call is None else {H_NEXT_CALL_MS: int(next_call * 1000)}


def next_call_of(headers: Mapping[str, object] | None) -> float | None:
    """The next slot a stream message carries (unix seconds), None when it has none."""
    return seconds_from_ms((headers or {}).get(H_NEXT_CALL_MS))


def parse_result(message: AbstractIncomingMessage) -> ResultEvent | None:
    """The event a stream message holds, or None for markers and foreign messages."""
    if message.type != RESULT_TYPE:
        return None
    try:
        return ResultEvent.model_validate_json(message.body)
    except ValidationError:
        return None


async def read_results(
    connection: AbstractConnection,
    stream: str,
    offset: Offset,
    *,
    follow: bool = False,
    idle_timeout: float = 10.0,
    prefetch: int = 500,
) -> AsyncIterator[ResultEvent]:
    """Yield results events from `offset`: up to now (a marker we write), or forever with `follow`
    (see `read_stream`)."""
    async for message in read_stream(
        connection, stream, offset, follow=follow, idle_timeout=idle_timeout, prefetch=prefetch
    ):
        event = parse_result(message)
        if event is not None:
            yield event


async def read_stream(
    connection: AbstractConnection,
    stream: str,
    offset: Offset,
    *,
    follow: bool = False,
    idle_timeout: float = 10.0,
    prefetch: int = 500,
) -> AsyncIterator[AbstractIncomingMessage]:
    """Yield the stream's messages (not markers) from `offset`: up to now, or forever with
    `follow`.

    A stream has no end-of-data signal in AMQP 0.9.1, so the reader appends a marker first and
    stops when it reads it back: every message published before the call is then seen. If the
    stream takes no marker (its leader is down, a nack, no confirm in `idle_timeout`), reading
    must not depend on it: the reader then stops after `idle_timeout` with nothing new.
    """
    channel = await connection.channel(publisher_confirms=True)
    marker: str | None = None
    try:
        if not follow:
            marker = await write_marker(channel, stream, idle_timeout)
            if marker is None and channel.is_closed:
                channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(stream, ensure=False)
        async with queue.iterator(arguments={"x-stream-offset": offset}) as messages:
            while True:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), timeout=idle_timeout)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if follow:
                        continue
                    if marker is None:
                        return  # no marker to wait for: idle means up to date
                    raise TimeoutError(
                        f"no marker back from stream {stream!r} in {idle_timeout} s"
                    ) from None
                await message.ack()
                if message.type == MARKER_TYPE:
                    if message.message_id == marker:
                        return
                    continue
                yield message
    finally:
        if not channel.is_closed:
            await channel.close()


async def write_marker(channel: AbstractChannel, stream: str, wait_s: float) -> str | None:
    """Append a marker (confirmed); its id, or None when the stream does not take it."""
    marker = str(uuid.uuid4())
    message = aio_pika.Message(b"{}", type=MARKER_TYPE, message_id=marker)
    try:
        await asyncio.wait_for(
            channel.default_exchange.publish(message, routing_key=stream), wait_s
        )
    except (aiormq.exceptions.AMQPError, ChannelInvalidStateError, TimeoutError) as exc:
        structlog.get_logger().warning(
            "results_marker_unwritable", stream=stream, error=type(exc).__name__
        )
        return None
    return marker


async def publish_confirmed(
    channel: AbstractChannel, message: aio_pika.Message, routing_key: str, *, mandatory: bool = True
) -> None:
    """Publish through the default exchange, mandatory, and wait for the broker's confirm."""
    await channel.default_exchange.publish(message, routing_key=routing_key, mandatory=mandatory)


class StreamWriter:
    """Appends to one stream through a confirm channel of its own, replaced after a failure.

    RabbitMQ 3.10 re-sends a publish that was in flight when the stream's leader changed with the
    channel's confirm sequence number in place of its stream sequence number (3.10.8's
    `rabbit_stream_queue:resend_all/1`; 4.0 sends the right one). On a channel that published
    anything else first, the confirm number is ahead: the new leader takes the re-sent message
    as a writer's jump forward, the re-sent message never gets its confirm, and every later
    publish up to that number is dropped as a duplicate *and confirmed*. Seen with kill -9 of
    the leader: 31 of 40 confirmed results events missing. On a channel that publishes only to
    this stream, every publish confirmed or failed with it, the two numbers are the same and the
    re-send is right. So the stream gets a channel of its own, and a fresh one (both numbers
    from 1) after any publish that did not end in a confirm: a return, a nack or a wait cut
    short may leave them apart. The old channel is closed in the background.
    """

    def __init__(self, connection: AbstractConnection, stream: str) -> None:
        self.stream = stream
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def publish(self, message: aio_pika.Message) -> None:
        """Publish `message` to the stream, mandatory, and wait for its confirm."""
        channel = self._channel
        if channel is None or channel.is_closed:
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
        confirmed = False
        try:
            await publish_confirmed(channel, message, self.stream)
            confirmed = True
        finally:  # also when the caller's timeout cancels the wait
            if not confirmed:
                self._discard(channel)

    def _discard(self, channel: AbstractChannel) -> None:
        if self._channel is channel:
            self._channel = None
        if not channel.is_closed:
            task = asyncio.get_running_loop().create_task(_close_quietly(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_S)
