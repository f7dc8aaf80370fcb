"""Rebuild the 24-hour memory from the results stream, bounded in time and in memory.

The stream is read with a plain consumer, not `read_results`: a rebuild stopped by its budget
leaves deliveries unread, and aio-pika's queue iterator nacks those on close, which a stream
answers by closing the whole connection (540 NOT_IMPLEMENTED). Closing the channel instead
drops them harmlessly. Acks go one frame per batch, which also makes the read several times
faster (a takeover may read a day of a flood).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection
from aiormq.abc import DeliveredMessage
from pydantic import ValidationError

from consumer.core.memory import RECALL_WINDOW_S, RecallMemory
from consumer.core.settle import SETTLE_ERRORS
from consumer.core.stream import MARKER_TYPE, RESULT_TYPE, write_marker
from schemas.events import ResultEvent

# Without a marker (a stream that takes no writes), the read ends after this long with nothing.
IDLE_S = 3.0
PREFETCH = 1000
ACK_EVERY = 250


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild read and kept."""

    events: int
    entries: int
    seconds: float
    complete: bool
    error: str | None = None  # the error's type when the read failed
    evicted: int = 0  # entries evicted by the ceiling while reading
    budget_exceeded: bool = False
    sizes: dict[str, int] = field(default_factory=dict)  # entries kept, per rank

    def as_log(self) -> dict[str, Any]:
        """Fields for the memory_rebuilt (or memory_rebuild_incomplete) event."""
        fields: dict[str, Any] = {
            "events": self.events,
            "entries": self.entries,
            "recalled": self.sizes.get("recalled", 0),
            "evicted": self.evicted,
            "seconds": round(self.seconds, 3),
        }
        if self.budget_exceeded:
            fields["budget_exceeded"] = True
        if self.error is not None:
            fields["error"] = self.error
        return fields


class _Reader:
    """Feeds each results event of one consumer into the memory until the marker."""

    def __init__(self, memory: RecallMemory, now: float, marker: str | None) -> None:
        self.memory, self.now, self.marker = memory, now, marker
        self.events = 0
        self.done = asyncio.Event()
        self.last_seen = time.monotonic()
        self._unacked = 0

    async def on_message(self, message: DeliveredMessage) -> None:
        if self.done.is_set():
            return  # delivered after we stopped: the channel is closing, nothing to ack
        self.last_seen = time.monotonic()
        props = message.header.properties
        if props.message_type == MARKER_TYPE and props.message_id == self.marker:
            self.done.set()
            return
        if props.message_type == RESULT_TYPE:
            with contextlib.suppress(ValidationError):
                event = ResultEvent.model_validate_json(message.body)
                self.events += 1
                self.memory.remember_event(event, self.now)
        self._unacked += 1
        tag = message.delivery.delivery_tag if hasattr(message.delivery, "delivery_tag") else None
        if self._unacked >= ACK_EVERY and tag is not None:
            self._unacked = 0
            await message.channel.basic_ack(tag, multiple=True, wait=False)


async def rebuild_memory(
    connection: AbstractConnection,
    stream: str,
    memory: RecallMemory,
    now: float,
    *,
    budget_s: float = 60.0,
    idle_s: float = IDLE_S,
) -> RebuildReport:
    """Clear `memory` and read the last 24 h of `stream` into it, within `budget_s`.

    The memory's ceiling holds while reading (least useful entries go first). The stream is
    read oldest first, so a rebuild stopped by its budget misses the newest events; the API
    still answers 90050 for a duplicate then, so an incomplete rebuild is a warning, not a stop.
    If the stream takes no marker, the read ends once `idle_s` passes with nothing new.
    """
    started = time.monotonic()
    since = datetime.fromtimestamp(now - RECALL_WINDOW_S, UTC)
    memory.clear()
    evicted_before = sum(memory.evicted.values())
    reader: _Reader | None = None
    error: str | None = None
    over = False
    channel = None
    try:
        async with asyncio.timeout(budget_s):
            channel = await connection.channel(publisher_confirms=True)
            marker = await write_marker(channel, stream, idle_s)
            if channel.is_closed:
                channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            reader = _Reader(memory, now, marker)
            raw = await channel.get_underlay_channel()
            await raw.basic_consume(stream, reader.on_message, arguments={"x-stream-offset": since})
            error = await _wait(reader, idle_s)
    except TimeoutError:
        over = True
    except SETTLE_ERRORS as exc:
        error = type(exc).__name__
    finally:
        if reader is not None:
            reader.done.set()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*SETTLE_ERRORS):
                await channel.close()
    return RebuildReport(
        events=reader.events if reader else 0,
        entries=len(memory),
        seconds=time.monotonic() - started,
        complete=error is None and not over,
        error=error,
        evicted=sum(memory.evicted.values()) - evicted_before,
        budget_exceeded=over,
        sizes=memory.sizes(),
    )


async def _wait(reader: _Reader, idle_s: float) -> str | None:
    """Until the marker comes back (None), or `idle_s` with nothing new: without a marker that
    is the end, with one it is an error (the marker was lost)."""
    while True:
        left = reader.last_seen + idle_s - time.monotonic()
        if left <= 0:
            return None if reader.marker is None else "MarkerNotSeen"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await reader.done.wait()
                return None
