"""One pass over a dead-letter queue, in bounded memory and in order, safe while workers run.

Every tool makes one pass over the N messages the dead-letter queue held when it started (a
passive declare counts them), through one consumer holding at most PREFETCH messages. Each
visited message is acted on (replay: published to its app's recall queue with a confirm, then
acked; purge: acked) or kept: re-published byte for byte (body, properties and headers, less the
broker's delivery counters and `user_id`) to the queue's own tail with a confirm, then acked.
`list` keeps every message and shows the first ones as it goes. After the pass the kept messages
are in their original order, followed only by dead letters that arrived meanwhile (those are
where they arrived, among the kept ones). Memory holds PREFETCH messages (≤ 64 KiB each) at
most, whatever the queue's length.

Why a pass and not a peek that hands messages back: a quorum queue keeps what is handed back
(basic.nack or reject with requeue, or a channel closed with messages unacked) in a returns
queue served before the rest, and RabbitMQ 3.10.8 does not keep the order of that queue: seen
shuffled from 33 messages handed back in one go, and again, intermittently, when handed back
one per round trip. A publish is the one thing a queue keeps in order. So the tools never hand
a message back in normal operation: the acks of the last PREFETCH messages wait until the
consumer is cancelled, so that no message past the N it visits is ever delivered to it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import DeliveryError
from aiormq.abc import DeliveredMessage

from consumer.core.errors import TimRecallError
from consumer.ops.dlq.copies import replayed, requeued

PREFETCH = 256  # messages a pass holds at once (in flight plus waiting)
WINDOW = 128  # publishes awaiting their confirm at once
IDLE_S = 15.0  # a delivery expected but not coming: the queue held fewer than counted


class DlqError(TimRecallError):
    """A dead-letter operation stopped; the text says what was done and where the rest is."""


class _Closed:
    """Put in the buffer when the channel closes."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


Choice = Literal["keep", "drop", "replay"]


@dataclass
class _InFlight:
    """A publish awaiting its confirm: a copy for the tail, or a replay."""

    replay: bool
    index: int
    delivered: DeliveredMessage
    message_id: str | None
    confirm: asyncio.Future[Any]
    queue: str  # where it was published


@dataclass
class Walk:
    """One pass over the `total` messages at the head of the queue; `choose` decides for each.

    Publishes are pipelined (WINDOW at most unconfirmed), and each original is acked once its
    copy or replay is confirmed. Two rules keep the order and lose nothing:
    - a copy for the tail waits until every replay before it is confirmed: a refused replay is
      kept, so it must reach the tail before any message after it;
    - two publishes with the same message_id are never in flight while one is a replay (aiormq
      matches a returned message to its publish by message_id).
    The consumer may hold `prefetch` messages; an ack frees room for one more, so the acks of the
    last `prefetch` messages wait until the consumer is cancelled: the pass never receives a
    message past the `total` it visits, and never has to hand one back.
    """

    channel: AbstractChannel
    underlay: aiormq.abc.AbstractChannel
    dlq: str
    total: int
    choose: Callable[[int, DeliveredMessage], Choice]
    # Where "replay" publishes each message: a queue, or None to keep the message instead.
    target: Callable[[DeliveredMessage], str | None] | None = None
    progress: Callable[[int], None] | None = None
    prefetch: int = 1
    visited: int = 0
    moved: int = 0  # dropped or replayed
    rotated: int = 0
    received: int = 0
    refusal: str | None = None
    consumer_tag: str | None = None
    cancelled: bool = False
    buffer: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    deferred: list[int] = field(default_factory=list)
    in_flight: collections.deque[_InFlight] = field(default_factory=collections.deque)
    replays_in_flight: int = 0
    ids_in_flight: collections.Counter[str | None] = field(default_factory=collections.Counter)
    refused: list[tuple[int, DeliveredMessage]] = field(default_factory=list)  # to keep, in order

    async def start(self) -> None:
        """Consume from the queue, holding at most `prefetch` messages (PREFETCH, or fewer)."""
        self.prefetch = max(1, min(PREFETCH, self.total))
        self.channel.close_callbacks.add(self._on_close)
        await self.underlay.basic_qos(prefetch_count=self.prefetch)
        ok = await self.underlay.basic_consume(self.dlq, self._on_delivery)
        self.consumer_tag = ok.consumer_tag

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        self.received += 1
        self.buffer.put_nowait((self.received, delivered))

    def _on_close(self, _: object, exc: BaseException | None = None) -> None:
        self.buffer.put_nowait(_Closed(exc))

    async def _next(self) -> tuple[int, DeliveredMessage] | None:
        try:
            item = await asyncio.wait_for(self.buffer.get(), IDLE_S)
        except TimeoutError:
            return None  # the queue held fewer than counted (another tool took some)
        if isinstance(item, _Closed):
            self.buffer.put_nowait(item)
            raise item.exc or aiormq.exceptions.ChannelInvalidStateError("channel closed")
        index, delivered = item
        return int(index), delivered

    async def run(self) -> None:
        """Visit up to `total` messages, then send the acks held back."""
        while self.visited < self.total:
            if not self.cancelled and self.received >= self.total:
                await self._cancel()
            item = await self._next()
            if item is None:
                break
            index, delivered = item
            choice = self.choose(index, delivered)
            if choice == "replay" and self.refusal is None:
                await self._replay(index, delivered)
            elif choice == "drop":
                await self._ack(index, delivered.delivery_tag)
                self.moved += 1
            else:  # keep (also a replay once one was refused: the order is kept from there)
                await self._rotate(index, delivered)
            self.visited += 1
            if self.progress is not None:
                self.progress(1)
        await self._settle(0)
        await self._keep_refused()
        await self._settle(0)
        await self._cancel()

    async def _cancel(self) -> None:
        """No more deliveries; then the acks held back go."""
        if not self.cancelled and self.consumer_tag is not None:
            await self.underlay.basic_cancel(self.consumer_tag)
        self.cancelled = True
        deferred, self.deferred = self.deferred, []
        for tag in deferred:
            await self.underlay.basic_ack(tag, wait=False)

    async def _ack(self, index: int, tag: int | None) -> None:
        assert tag is not None
        if index > self.total - self.prefetch and not self.cancelled:
            self.deferred.append(tag)
        else:
            await self.underlay.basic_ack(tag, wait=False)

    def _publish(
        self, replay: bool, index: int, delivered: DeliveredMessage, queue: str | None = None
    ) -> None:
        message_id = delivered.header.properties.message_id
        publish: Any
        if replay:
            assert queue is not None
            publish = self.channel.default_exchange.publish(
                replayed(aio_pika.IncomingMessage(delivered)),
                routing_key=queue,
                mandatory=True,
            )
            self.replays_in_flight += 1
        else:
            queue = self.dlq
            publish = self.underlay.basic_publish(
                delivered.body,
                routing_key=queue,
                properties=requeued(delivered.header.properties),
                mandatory=True,
            )
            self.rotated += 1
        self.ids_in_flight[message_id] += 1
        future = asyncio.ensure_future(publish)
        self.in_flight.append(_InFlight(replay, index, delivered, message_id, future, queue))

    async def _replay(self, index: int, delivered: DeliveredMessage) -> None:
        queue = self.target(delivered) if self.target is not None else None
        if queue is None:  # nowhere to replay it: kept, like any other
            await self._rotate(index, delivered)
            return
        if self.ids_in_flight[delivered.header.properties.message_id]:
            await self._settle(0)  # a return must find its own publish
            if self.refusal is not None:
                await self._rotate(index, delivered)
                return
        self._publish(True, index, delivered, queue)
        await self._settle(WINDOW - 1)

    async def _rotate(self, index: int, delivered: DeliveredMessage) -> None:
        if self.replays_in_flight:
            await self._settle(0)  # a refused replay before it must go to the tail first
        await self._keep_refused()
        self._publish(False, index, delivered)
        await self._settle(WINDOW - 1)

    async def _keep_refused(self) -> None:
        refused, self.refused = self.refused, []
        for index, delivered in refused:
            self._publish(False, index, delivered)
            await self._settle(WINDOW - 1)

    async def _settle(self, keep: int) -> None:
        """Wait for the oldest publishes until at most `keep` are unconfirmed; ack each original
        confirmed; a refused replay is kept (moved to the tail in its turn)."""
        while len(self.in_flight) > keep or (self.in_flight and self.in_flight[0].confirm.done()):
            entry = self.in_flight.popleft()
            self.ids_in_flight[entry.message_id] -= 1
            if entry.replay:
                self.replays_in_flight -= 1
            try:
                await entry.confirm
            except DeliveryError as exc:
                if not entry.replay:
                    self.abandon()
                    raise DlqError(
                        f"stopped after visiting {self.visited} of {self.total}: the broker did "
                        f"not take a copy for the tail of {self.dlq!r} ({_refusal(exc)}); "
                        "nothing is lost: the messages not yet moved go back to the queue"
                    ) from None
                if self.refusal is None:
                    self.refusal = (
                        f"the broker did not take dead letter {entry.message_id} for queue "
                        f"{entry.queue!r} ({_refusal(exc)})"
                    )
                self.refused.append((entry.index, entry.delivered))
                continue
            if entry.replay:
                self.moved += 1
            await self._ack(entry.index, entry.delivered.delivery_tag)

    def abandon(self) -> None:
        """Stop: forget the publishes in flight and the acks held back (their messages go back
        to the queue when the channel closes)."""
        for entry in self.in_flight:
            entry.confirm.cancel()
        self.in_flight.clear()
        self.deferred.clear()


def _refusal(exc: DeliveryError) -> str:
    frame = exc.frame
    text = getattr(frame, "reply_text", None) if frame is not None else None
    if text:
        return str(text)
    return "nacked" if frame is not None else "refused"
