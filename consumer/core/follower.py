"""The memory of recalls kept current by following the results stream, for every app at once.

A lane that takes an app over must know what every replica told for that app up to that
moment (a chain told just before its replica died is only acked; a TaskId recalled elsewhere is
not called again). Re-reading the last 24 hours at each takeover does not scale to hundreds of
apps, so one consumer per connection reads the stream from 24 hours back and then follows it;
a takeover waits only until the follower has read a marker written after the takeover began
(`caught_up`): a few milliseconds. After a reconnect the follower resumes where it stopped.

The stream is read with a plain aiormq consumer (see rebuild.py for why not aio-pika's queue
iterator), acked one frame per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError

from consumer.core.memory import RECALL_WINDOW_S, RecallMemory
from consumer.core.settle import SETTLE_ERRORS
from consumer.core.stream import (
    LANE_TYPE,
    MARKER_TYPE,
    RESULT_TYPE,
    StreamWriter,
    next_call_of,
)
from schemas.events import LaneEvent, ResultEvent

PREFETCH = 1000
ACK_EVERY = 250
MARKER_WRITE_S = 10.0


class ResultsFollower:
    """Reads the results stream into the memory from 24 hours back, then follows it."""

    def __init__(
        self,
        memory: RecallMemory,
        stream: str,
        clock: Callable[[], float] = time.time,
        *,
        incarnation: str | None = None,
    ) -> None:
        self.memory = memory
        # Events this very process told are in the memory already (remembered when told): not
        # parsed again. Another process of the same replica id (a restart) has another one.
        self.incarnation = incarnation
        self.stream = stream
        self.events = 0  # results events read since start
        self._clock = clock
        self._next_offset: int | None = None  # where to resume after a reconnect
        self._channel: AbstractChannel | None = None
        self._writer: StreamWriter | None = None
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._waiting: list[asyncio.Future[bool]] = []
        self._in_flight: list[asyncio.Future[bool]] = []  # waiting for the marker on its way
        self._writing: asyncio.Task[None] | None = None
        self._unacked = 0
        self._log = structlog.get_logger().bind(stream=stream)

    async def start(self, connection: AbstractConnection) -> None:
        """Consume the stream on `connection`: from 24 hours back, or where it stopped before."""
        self._markers.clear()
        self._unacked = 0
        channel = self._channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        self._writer = StreamWriter(connection, self.stream)
        offset: Any = self._next_offset
        if offset is None:
            offset = datetime.fromtimestamp(self._clock() - RECALL_WINDOW_S, UTC)
        raw = await channel.get_underlay_channel()
        await raw.basic_consume(
            self.stream, self._on_message, arguments={"x-stream-offset": offset}
        )

    async def stop(self) -> None:
        """Stop following (the connection is closing or gone); waiting callers get False."""
        channel, self._channel = self._channel, None
        self._writer = None
        if self._writing is not None:
            self._writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writing
            self._writing = None
        for waiting in [*self._in_flight, *self._waiting]:
            if not waiting.done():
                waiting.set_result(False)
        self._waiting.clear()
        self._in_flight = []
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()

    async def caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109 (the caller's budget)
        """Wait until everything published to the stream before this call is in the memory;
        False when that takes longer than `timeout` or the stream takes no marker."""
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiting)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_markers(), name="results-marker")
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except TimeoutError:
            return False

    async def append(self, message: aio_pika.Message) -> None:
        """Append a record of the fleet's own to the stream (confirmed), through the follower's
        writer (a channel that publishes only to the stream)."""
        if self._writer is None:
            raise RuntimeError("not following the stream")
        await asyncio.wait_for(self._writer.publish(message), MARKER_WRITE_S)

    async def _write_markers(self) -> None:
        # Callers that arrive while a marker is on its way wait for the next one: a marker
        # proves only what was published before it was written.
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self._in_flight = batch
            seen = await self._one_marker()
            for waiting in batch:
                if not waiting.done():
                    waiting.set_result(seen)
            self._in_flight = []

    async def _one_marker(self) -> bool:
        if self._writer is None:
            return False
        marker = uuid.uuid4().hex
        read = self._markers[marker] = asyncio.get_running_loop().create_future()
        message = aio_pika.Message(b"{}", type=MARKER_TYPE, message_id=marker)
        try:
            await asyncio.wait_for(self._writer.publish(message), MARKER_WRITE_S)
            await read  # the callers wait within budgets of their own; `stop` cancels this
        except SETTLE_ERRORS as exc:
            self._log.warning("results_marker_unwritable", error=type(exc).__name__)
            return False
        finally:
            self._markers.pop(marker, None)
        return True

    async def _on_message(self, message: DeliveredMessage) -> None:
        props = message.header.properties
        offset = (props.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self._next_offset = offset + 1
        own = self.incarnation is not None and props.app_id == self.incarnation
        if props.message_type == RESULT_TYPE and not own:
            with contextlib.suppress(ValidationError, ValueError):
                event = ResultEvent.model_validate_json(message.body)
                self.events += 1
                self.memory.remember_event(event, self._clock(), next_call_of(props.headers))
        elif props.message_type == LANE_TYPE and not own:
            with contextlib.suppress(ValidationError, ValueError):
                lane = LaneEvent.model_validate_json(message.body)
                if lane.state == "called":
                    at, next_call = lane.at.timestamp(), next_call_of(props.headers)
                    self.memory.note_call(lane.sdkappid, at, next_call)
        elif props.message_type == MARKER_TYPE:
            read = self._markers.get(props.message_id or "")
            if read is not None and not read.done():
                read.set_result(None)
        self._unacked += 1
        tag = getattr(message.delivery, "delivery_tag", None)
        if self._unacked >= ACK_EVERY and tag is not None:
            self._unacked = 0
            with contextlib.suppress(*SETTLE_ERRORS):
                await message.channel.basic_ack(tag, multiple=True)
