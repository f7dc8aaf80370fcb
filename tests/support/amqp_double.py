"""An in-memory double of the few aio-pika calls the settle path and the worker make.

Not a broker: only what `Settler`, `Worker`, `topology.declare`, `stream.write_marker` and
`rebuild.rebuild_memory` call, answered as RabbitMQ answers where the ack path depends on it:

- `connect()` (the worker's `connect` seam) opens a connection; it opens channels and tells its
  `close_callbacks` when it is closed or lost (`cut`).
- A channel publishes through the default exchange to a queue by name. With publisher confirms
  the publish returns once the queue holds the message; a mandatory publish no queue takes
  raises `PublishError` (a `DeliveryError`) on a channel opened with `on_return_raises`. The
  next publishes to a queue can be made to be nacked, to hang, or to lose the connection before
  or after the broker takes them (`fail_next`); so can the next acks of a queue's deliveries.
- A queue holds messages in order. Its first consumer (single active consumer) gets them up to
  its prefetch (per consumer, as RabbitMQ applies basic.qos without `global`), as real
  `aio_pika.IncomingMessage`s whose properties went through pamqp's own encoding (headers and
  timestamps come back as a broker sends them). `ack`, `reject(requeue=True)` and a closed or
  lost channel act on the queue: what a channel held unacked goes back to the queue's head,
  redelivered, and a quorum queue counts it in `x-delivery-count`. A consumer callback runs in a
  task of its own, cancelled when its channel closes, as aiormq runs it.
- A stream (`x-queue-type: stream`) keeps every message and serves an aiormq-level consumer
  (`get_underlay_channel().basic_consume`) from an `x-stream-offset` (a timestamp, an offset,
  `first`, `next`), each delivery with its `x-stream-offset` header, as the memory follower
  reads the results stream.

The broker's own hand: `delete_queue` cancels the queue's consumers (basic.cancel, told to the
channel's `on_consumer_cancel_callbacks`); `close_channel_of` closes a consumer's channel as a
consumer timeout does (its `close_callbacks` are told), the connection left open.

Direct exchanges are modelled as far as bindings go (`declare_exchange`, `queue.bind`, a publish
routed by its key, returned when no queue is bound); consumer priorities are taken and ignored.

Not modelled: other exchange types, round-robin among consumers, the delivery
limit and the broker's own dead-lettering, TTLs, `basic.get`, `nack` of a delivery (the code
under test never nacks one), heartbeats (`fence.silent_for` reads 0 here) and credit flow on
streams.

`history` records what the broker did, in order, so a test can check "the dead letter was
confirmed before the ack" by looking at the broker, not by trusting that the code ran.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, cast

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from aio_pika.tools import CallbackCollection
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader

from consumer.core.errors import BrokerUnavailable

Op = Literal["publish", "ack", "reject", "discard", "return"]
DELIVERY_COUNT = "x-delivery-count"


class Fault(StrEnum):
    """What goes wrong with one operation (see `AmqpDouble.fail_next`)."""

    NACK = "nack"  # a publish: the broker refuses it (basic.nack); nothing is stored
    HANG = "hang"  # a publish: no confirm ever comes (a stalled link); nothing is stored
    # The connection dies first: a publish fails; an ack, written to the dead socket, is lost
    # without an error (the delivery comes back redelivered).
    CUT_BEFORE = "cut_before"
    # The broker takes it (a publish stored and confirmed, an ack applied), then the
    # connection dies.
    CUT_AFTER = "cut_after"


@dataclass
class Held:
    """A message as the broker holds it."""

    body: bytes
    properties: spec.Basic.Properties
    appended_at: float  # the broker's clock when it was stored (a stream's offset timestamp)
    redelivered: bool = False
    returns: int = 0  # times it went back to its queue unacked

    @property
    def headers(self) -> dict[str, Any]:
        """The headers it was published with."""
        return dict(self.properties.headers or {})

    @property
    def message_id(self) -> str | None:
        """Its message_id."""
        return self.properties.message_id

    @property
    def message_type(self) -> str | None:
        """Its `type` property."""
        return self.properties.message_type


@dataclass(frozen=True)
class Event:
    """One thing the broker did: stored a publish, or settled or took back a delivery."""

    op: Op  # publish, ack, reject (requeued), discard (rejected, dropped), return (channel lost)
    queue: str
    message_id: str | None


Callback = Callable[[Any], Awaitable[Any]]
Where = Callable[[Held], bool]


@dataclass(eq=False)
class _Rule:
    faults: deque[Fault]
    where: Where | None  # only operations on messages it holds true for


@dataclass(eq=False)
class _Consumer:
    tag: str
    channel: DoubleChannel
    callback: Callback
    raw: bool  # given aiormq's DeliveredMessage (basic_consume), not an IncomingMessage
    position: int = 0  # a stream consumer's next offset


@dataclass(eq=False)
class _Queue:
    name: str
    arguments: dict[str, Any]
    messages: deque[Held] = field(default_factory=deque)  # a stream: all it ever took
    consumers: list[_Consumer] = field(default_factory=list)

    @property
    def stream(self) -> bool:
        return self.arguments.get("x-queue-type") == "stream"

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"


class AmqpDouble:
    """The broker: queues, the connections open to it, what it did, and the faults to come."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.history: list[Event] = []
        self.connections: list[DoubleConnection] = []
        # Exceptions that escaped a consumer callback (aiormq would only log them).
        self.callback_errors: list[BaseException] = []
        self._queues: dict[str, _Queue] = {}
        self.bindings: dict[tuple[str, str], set[str]] = {}  # (exchange, routing key): queues
        self.down = False  # connections refused (a test's hand), as while a node restarts
        self._rules: dict[tuple[str, str], list[_Rule]] = {}
        self._clock = clock

    # ---- what the code under test calls --------------------------------------------------------

    async def connect(self, url: str = "") -> AbstractConnection:
        """A new connection (the signature of the worker's `connect` seam; `url` is ignored);
        BrokerUnavailable while `down` (a broker being restarted)."""
        if self.down:
            raise BrokerUnavailable("cannot reach RabbitMQ at double.test:5672: connection refused")
        connection = DoubleConnection(self)
        self.connections.append(connection)
        return cast(AbstractConnection, connection)

    # ---- a test's hands ------------------------------------------------------------------------

    def declare(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        """Declare a queue as a test's set-up would (idempotent with the same arguments)."""
        self._declare(name, arguments or {})

    def put(
        self,
        queue: str,
        body: bytes | aio_pika.Message,
        *,
        foreign_headers: dict[str, Any] | None = None,
        **properties: Any,
    ) -> str:
        """Publish to `queue` as a producer does (confirmed, mandatory); the message_id.

        `body` is the body, with `properties` as `aio_pika.Message`'s keyword arguments
        (headers, message_id, ...), or a whole `aio_pika.Message`. `foreign_headers` are added
        as they arrive decoded from another client's encoding, which pamqp (and so aio-pika)
        may not be able to encode again: a double (64-bit float), NaN, bytes.
        """
        target = self._queues.get(queue)
        if target is None:
            raise LookupError(f"no queue {queue!r}: declare it first")
        message = (
            body if isinstance(body, aio_pika.Message) else aio_pika.Message(body, **properties)
        )
        held = self._held(message)
        if foreign_headers:
            held.properties.headers = {**(held.properties.headers or {}), **foreign_headers}
        self._store(target, held)
        return cast(str, held.message_id)

    def held(self, queue: str) -> list[Held]:
        """What `queue` holds ready for delivery, in order (a stream: everything it took)."""
        return list(self._queues[queue].messages)

    def unacked(self, queue: str) -> list[Held]:
        """Deliveries of `queue` that an open channel holds unacked, in delivery order."""
        found: list[tuple[int, Held]] = []
        for connection in self.connections:
            for channel in connection.channels:
                found += [
                    (tag, held)
                    for tag, (q, held) in channel.unacked_tags.items()
                    if q.name == queue and not channel.is_closed
                ]
        return [held for _, held in sorted(found, key=lambda pair: pair[0])]

    def ops(self, *queues: str) -> list[tuple[Op, str]]:
        """`history` as (op, queue) pairs, only for `queues` when given."""
        return [(e.op, e.queue) for e in self.history if not queues or e.queue in queues]

    def delete_queue(self, name: str) -> None:
        """Delete a queue (as an operator might, under a running worker): its consumers are
        cancelled by the broker (basic.cancel, which aiormq hands to the channel's
        `on_consumer_cancel_callbacks`), their channels stay open."""
        queue = self._queues.pop(name)
        for bound in self.bindings.values():
            bound.discard(name)
        for consumer in list(queue.consumers):
            consumer.channel.consumers.pop(consumer.tag, None)
            consumer.channel.broker_cancelled(consumer.tag)

    def close_channel_of(self, queue: str, reply: str = "PRECONDITION_FAILED") -> None:
        """Close the channel of `queue`'s consumer from the broker's side while its connection
        lives (a consumer timeout): what it held goes back to the queue, redelivered."""
        (consumer,) = self._queues[queue].consumers
        self._close_channel(consumer.channel, ChannelPreconditionFailed(reply))

    def fail_next(
        self,
        op: Literal["publish", "ack"],
        queue: str,
        *faults: Fault,
        where: Where | None = None,
    ) -> None:
        """The next publishes to `queue` (or acks of its deliveries) meet `faults`, one each;
        with `where`, only those of messages it holds true for (say, a results event and not a
        reader's marker, or the stamped copy and not the original)."""
        if op == "ack" and {Fault.NACK, Fault.HANG} & set(faults):
            raise ValueError("an ack is never confirmed: it can only be cut before or after")
        self._rules.setdefault((op, queue), []).append(_Rule(deque(faults), where))

    def cut(self, connection: DoubleConnection | None = None) -> None:
        """Lose a connection (the newest open one by default) as a dead link loses it: every
        channel closes, what they held unacked goes back to its queue, publishes waiting for a
        confirm fail, and the connection's close callbacks are told."""
        if connection is None:
            connection = next(c for c in reversed(self.connections) if not c.is_closed)
        self._close_connection(connection, ConnectionResetError("connection lost"))

    # ---- inside the broker -----------------------------------------------------------------------

    def _declare(self, name: str, arguments: dict[str, Any]) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name, dict(arguments))
        elif queue.arguments != arguments:
            raise ChannelPreconditionFailed(
                f"PRECONDITION_FAILED - inequivalent arguments for queue {name!r}: "
                f"received {arguments} but current is {queue.arguments}"
            )
        return queue

    def _take_fault(self, op: str, queue: str, held: Held) -> Fault | None:
        for rule in self._rules.get((op, queue), []):
            if rule.faults and (rule.where is None or rule.where(held)):
                return rule.faults.popleft()
        return None

    def _held(self, message: aio_pika.Message) -> Held:
        properties = _through_the_wire(message.properties)
        if not properties.message_id:  # aiormq gives every publish one
            properties.message_id = uuid.uuid4().hex
        return Held(message.body, properties, appended_at=self._clock())

    def _store(self, queue: _Queue, held: Held) -> None:
        queue.messages.append(held)
        self.history.append(Event("publish", queue.name, held.message_id))
        self._dispatch(queue)

    async def _publish(
        self,
        channel: DoubleChannel,
        message: aio_pika.Message,
        routing_key: str,
        mandatory: bool,
    ) -> spec.Basic.Ack | None:
        held = self._held(message)
        fault = self._take_fault("publish", routing_key, held)
        if fault is Fault.CUT_BEFORE:
            self._close_connection(channel.connection, ConnectionResetError("connection lost"))
            raise ConnectionResetError("connection lost before the broker took the publish")
        if fault is Fault.HANG:
            await channel.never_confirmed()  # raises once the channel closes
        tag = channel.next_publish_tag()
        if fault is Fault.NACK:
            raise DeliveryError(None, spec.Basic.Nack(delivery_tag=tag))
        queue = self._queues.get(routing_key)
        if queue is None:
            if mandatory and channel.on_return_raises:
                returned = spec.Basic.Return(312, "NO_ROUTE", "", routing_key)
                header = ContentHeader(0, len(held.body), held.properties)
                raise PublishError(
                    DeliveredMessage(returned, header, held.body, _as_aiormq(channel)), returned
                )
        else:
            self._store(queue, held)
        if fault is Fault.CUT_AFTER:  # the confirm came in just before the link died
            self._close_connection(channel.connection, ConnectionResetError("connection lost"))
        return spec.Basic.Ack(delivery_tag=tag) if channel.publisher_confirms else None

    def _dispatch(self, queue: _Queue) -> None:
        if queue.stream:
            for consumer in list(queue.consumers):
                while consumer.position < len(queue.messages):
                    consumer.position += 1
                    offset = consumer.position - 1
                    self._deliver(consumer, queue, queue.messages[offset], offset=offset)
            return
        while queue.messages and queue.consumers and queue.consumers[0].channel.has_room(queue):
            self._deliver(queue.consumers[0], queue, queue.messages.popleft())

    def _deliver(
        self, consumer: _Consumer, queue: _Queue, held: Held, *, offset: int | None = None
    ) -> None:
        channel = consumer.channel
        tag = channel.hold(queue, held)
        properties = held.properties
        if queue.quorum and held.returns:  # decoded already: only the broker's count is added
            properties = copy.copy(properties)
            properties.headers = {**(properties.headers or {}), DELIVERY_COUNT: held.returns}
        if offset is not None:  # a stream tells each delivery its offset
            properties = copy.copy(properties)
            properties.headers = {**(properties.headers or {}), "x-stream-offset": offset}
        delivered = DeliveredMessage(
            delivery=spec.Basic.Deliver(consumer.tag, tag, held.redelivered, "", queue.name),
            header=ContentHeader(0, len(held.body), properties),
            body=held.body,
            channel=_as_aiormq(channel),
        )
        argument = delivered if consumer.raw else aio_pika.IncomingMessage(delivered)
        channel.run(consumer.callback(argument))

    def _settle(self, channel: DoubleChannel, tag: int, op: Op, *, multiple: bool = False) -> None:
        """Ack or reject the delivery `tag` (and those before it with `multiple`)."""
        if tag not in channel.unacked_tags:
            # RabbitMQ closes the channel: PRECONDITION_FAILED - unknown delivery tag.
            self._close_channel(channel, ChannelInvalidStateError(f"unknown delivery tag {tag}"))
            return
        queue, delivered = channel.unacked_tags[tag]
        fault = (
            None if queue.stream or op != "ack" else self._take_fault("ack", queue.name, delivered)
        )
        if fault is Fault.CUT_BEFORE:  # written to a socket that is already dead
            self._close_connection(channel.connection, ConnectionResetError("connection lost"))
            return
        tags = [t for t in channel.unacked_tags if t <= tag] if multiple else [tag]
        for each in sorted(tags):
            owner, held = channel.unacked_tags.pop(each)
            if owner.stream:
                continue  # a stream keeps its messages: an ack is only credit
            if op == "reject":
                held.redelivered, held.returns = True, held.returns + 1
                owner.messages.appendleft(held)
            self.history.append(Event(op, owner.name, held.message_id))
        if fault is Fault.CUT_AFTER:
            self._close_connection(channel.connection, ConnectionResetError("connection lost"))
        self._dispatch(queue)

    def _close_channel(self, channel: DoubleChannel, error: BaseException) -> None:
        if channel.is_closed:
            return
        channel.is_closed = True
        touched = {id(s.queue): s.queue for s in channel.consumers.values()}
        for subscription in channel.consumers.values():
            subscription.queue.consumers.remove(subscription.consumer)
        channel.consumers.clear()
        held_back = sorted(channel.unacked_tags.items(), key=lambda pair: pair[0])
        channel.unacked_tags.clear()
        for _, (queue, held) in reversed(held_back):  # back at the head, in their order
            if not queue.stream:
                held.redelivered, held.returns = True, held.returns + 1
                queue.messages.appendleft(held)
                touched[id(queue)] = queue
        for _, (queue, held) in held_back:
            if not queue.stream:
                self.history.append(Event("return", queue.name, held.message_id))
        channel.abort(error)
        channel.close_callbacks(error)
        for queue in touched.values():
            if queue.name in self._queues:
                self._dispatch(queue)

    def _close_connection(self, connection: DoubleConnection, error: BaseException | None) -> None:
        if connection.is_closed:
            return
        connection.is_closed = True
        for channel in connection.channels:
            self._close_channel(channel, error or ChannelInvalidStateError("connection closed"))
        connection.close_callbacks(error)  # sync callbacks run now; async ones are scheduled

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.callback_errors.append(cast(BaseException, task.exception()))


class DoubleConnection:
    """A connection: opens channels; `close_callbacks` are told when it closes or is lost."""

    def __init__(self, broker: AmqpDouble) -> None:
        self.broker = broker
        self.is_closed = False
        self.channels: list[DoubleChannel] = []
        self.close_callbacks: CallbackCollection[Any, Any] = CallbackCollection(self)

    async def channel(
        self, *, publisher_confirms: bool = True, on_return_raises: bool = False
    ) -> DoubleChannel:
        """A new channel (aio-pika's defaults: confirms on, returns not raised)."""
        if self.is_closed:
            raise ChannelInvalidStateError("the connection is closed")
        channel = DoubleChannel(self, publisher_confirms, on_return_raises)
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        """Close it: its channels close, what they held goes back to the queues."""
        self.broker._close_connection(self, None)


@dataclass(frozen=True)
class _Subscription:
    consumer: _Consumer
    queue: _Queue


class DoubleChannel:
    """A channel, as aio-pika shows it (declare, qos, publish, consume, close) and as the aiormq
    channel under it (basic_ack, basic_reject, basic_consume), which `IncomingMessage` acks
    through and the memory rebuild reads a stream with (`get_underlay_channel()` is itself)."""

    def __init__(
        self, connection: DoubleConnection, publisher_confirms: bool, on_return_raises: bool
    ) -> None:
        self.connection = connection
        self.broker = connection.broker
        self.publisher_confirms = publisher_confirms
        self.on_return_raises = on_return_raises
        self.is_closed = False
        self.prefetch_count = 0  # 0: no limit
        self.default_exchange = DoubleExchange(self)
        self.unacked_tags: dict[int, tuple[_Queue, Held]] = {}
        self.consumers: dict[str, _Subscription] = {}
        self._delivery_tag = 0
        self._publish_tag = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Future[None]] = set()
        self.close_callbacks: CallbackCollection[Any, Any] = CallbackCollection(self)
        self.on_consumer_cancel_callbacks: set[Callable[[Any], Any]] = set()

    # ---- aio-pika's channel --------------------------------------------------------------------

    async def set_qos(self, prefetch_count: int = 0) -> None:
        """How many deliveries this channel may hold unacked (0: no limit)."""
        self._check_open()
        self.prefetch_count = prefetch_count
        for subscription in list(self.consumers.values()):
            self.broker._dispatch(subscription.queue)

    async def declare_queue(
        self, name: str, *, durable: bool = False, arguments: dict[str, Any] | None = None
    ) -> DoubleQueue:
        """Declare `name` (a queue that exists with other arguments closes the channel)."""
        self._check_open()
        try:
            queue = self.broker._declare(name, dict(arguments or {}))
        except ChannelPreconditionFailed as exc:
            self.broker._close_channel(self, exc)
            raise
        return DoubleQueue(self, queue)

    async def declare_exchange(
        self, name: str, type: Any = "direct", *, durable: bool = False
    ) -> DoubleNamedExchange:
        """Declare a direct exchange (idempotent)."""
        self._check_open()
        return DoubleNamedExchange(self, name)

    async def get_underlay_channel(self) -> DoubleChannel:
        """The aiormq-level channel: this one."""
        self._check_open()
        return self

    async def close(self) -> None:
        """Close it: what it held unacked goes back to the queues."""
        self.broker._close_channel(self, ChannelInvalidStateError("channel closed"))

    # ---- aiormq's channel ----------------------------------------------------------------------

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        """Ack a delivery (fire and forget, as on the wire)."""
        self._check_open()
        self.broker._settle(self, delivery_tag, "ack", multiple=multiple)

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject a delivery: back to its queue's head (redelivered) or dropped."""
        self._check_open()
        self.broker._settle(self, delivery_tag, "reject" if requeue else "discard")

    async def basic_consume(
        self,
        queue: str,
        consumer_callback: Callback,
        *,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str | None = None,
    ) -> spec.Basic.ConsumeOk:
        """Consume `queue` at the aiormq level (the callback gets a `DeliveredMessage`); a
        stream from `x-stream-offset`, a timestamp (all this double reads a stream with).
        A consumer priority in `arguments` is taken and ignored, as by `DoubleQueue.consume`."""
        self._check_open()
        target = self.broker._queues.get(queue)
        if target is None:
            error = ChannelNotFoundEntity(f"NOT_FOUND - no queue {queue!r}")
            self.broker._close_channel(self, error)
            raise error
        consumer = self._subscribe(target, consumer_callback, raw=True, tag=consumer_tag)
        if target.stream:
            offset = (arguments or {}).get("x-stream-offset")
            if isinstance(offset, datetime):
                since = offset.timestamp()
                consumer.position = next(
                    (i for i, held in enumerate(target.messages) if held.appended_at >= since),
                    len(target.messages),
                )
            elif isinstance(offset, int) and not isinstance(offset, bool):
                consumer.position = min(max(offset, 0), len(target.messages))
            elif offset == "first":
                consumer.position = 0
            elif offset in ("next", "last"):
                consumer.position = len(target.messages)
            else:
                raise NotImplementedError(f"the double reads no stream from {offset!r}")
        self.broker._dispatch(target)
        return spec.Basic.ConsumeOk(consumer.tag)

    # ---- the broker's side -----------------------------------------------------------------------

    def has_room(self, queue: _Queue) -> bool:
        """Whether the prefetch allows one more delivery of `queue`: RabbitMQ's prefetch is per
        consumer (basic.qos without `global`), and a queue has one active consumer here."""
        if self.is_closed:
            return False
        held = sum(1 for q, _ in self.unacked_tags.values() if q is queue)
        return self.prefetch_count == 0 or held < self.prefetch_count

    def hold(self, queue: _Queue, held: Held) -> int:
        """Record a delivery of `held`; its delivery tag."""
        self._delivery_tag += 1
        self.unacked_tags[self._delivery_tag] = (queue, held)
        return self._delivery_tag

    def next_publish_tag(self) -> int:
        """The confirm's delivery tag for the next publish."""
        self._publish_tag += 1
        return self._publish_tag

    def run(self, callback: Awaitable[Any]) -> None:
        """Run a consumer callback in a task of its own, cancelled if this channel closes."""
        task = asyncio.ensure_future(callback)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self.broker._on_task_done)

    async def never_confirmed(self) -> None:
        """Wait for a confirm that never comes: raises when the channel closes."""
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.add(waiting)
        try:
            await waiting
        finally:
            self._waiting.discard(waiting)

    def broker_cancelled(self, tag: str) -> None:
        """Tell the channel's consumer-cancel callbacks, as aiormq does on basic.cancel."""
        for callback in list(self.on_consumer_cancel_callbacks):
            callback(spec.Basic.Cancel(consumer_tag=tag))

    def abort(self, error: BaseException) -> None:
        """The channel is closed: fail what waits for a confirm, cancel consumer callbacks."""
        for waiting in list(self._waiting):
            if not waiting.done():
                waiting.set_exception(error)
        for task in list(self._tasks):
            task.cancel()

    def _subscribe(
        self, queue: _Queue, callback: Callback, *, raw: bool, tag: str | None = None
    ) -> _Consumer:
        consumer = _Consumer(tag or f"ctag.{uuid.uuid4().hex[:12]}", self, callback, raw)
        queue.consumers.append(consumer)
        self.consumers[consumer.tag] = _Subscription(consumer, queue)
        return consumer

    def _check_open(self) -> None:
        if self.is_closed:
            raise ChannelInvalidStateError("the channel is closed")


class DoubleExchange:
    """The default exchange: routes a publish to the queue its routing key names."""

    def __init__(self, channel: DoubleChannel) -> None:
        self._channel = channel

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool = True
    ) -> spec.Basic.Ack | None:
        """Publish; with confirms, return once the broker holds it (see `Fault` for failures)."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError("the channel is closed")
        return await self._channel.broker._publish(self._channel, message, routing_key, mandatory)


class DoubleNamedExchange:
    """A durable direct exchange: routes a publish to the queues bound with its routing key."""

    def __init__(self, channel: DoubleChannel, name: str) -> None:
        self.name = name
        self._channel = channel

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool = True
    ) -> spec.Basic.Ack | None:
        """Publish to every bound queue; with none and `mandatory`, returned (PublishError)."""
        queues = sorted(self._channel.broker.bindings.get((self.name, routing_key), ()))
        if not queues:  # the default exchange's path returns it: a name no queue has
            return await self._channel.broker._publish(
                self._channel, message, f"\x00unbound:{routing_key}", mandatory
            )
        ack = None
        for queue in queues:
            ack = await self._channel.broker._publish(self._channel, message, queue, mandatory)
        return ack


class DoubleQueue:
    """A declared queue, as aio-pika's `Queue`: consume and cancel."""

    def __init__(self, channel: DoubleChannel, queue: _Queue) -> None:
        self.name = queue.name
        self._channel = channel
        self._queue = queue

    async def consume(
        self,
        callback: Callback,
        *,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str | None = None,
    ) -> str:
        """Register `callback` for deliveries (each an `IncomingMessage`); its consumer tag.
        `arguments` (a consumer priority) are taken and ignored: the first subscriber stays
        the active one, as on RabbitMQ 3.x."""
        self._channel._check_open()
        consumer = self._channel._subscribe(self._queue, callback, raw=False, tag=consumer_tag)
        self._channel.broker._dispatch(self._queue)
        return consumer.tag

    async def bind(self, exchange: DoubleNamedExchange, routing_key: str) -> None:
        """Bind the queue to a direct exchange with `routing_key`."""
        self._channel._check_open()
        self._channel.broker.bindings.setdefault((exchange.name, routing_key), set()).add(self.name)

    async def cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer; what it holds unacked stays held (as `basic.cancel` leaves it)."""
        self._channel._check_open()
        subscription = self._channel.consumers.pop(consumer_tag, None)
        if subscription is not None:
            self._queue.consumers.remove(subscription.consumer)
            self._channel.broker._dispatch(self._queue)  # single active consumer hands over


def _through_the_wire(
    properties: spec.Basic.Properties, headers: dict[str, Any] | None = None
) -> spec.Basic.Properties:
    """`properties` as they arrive off the wire (pamqp's encoding there and back), with
    `headers` added (a broker's own, such as x-delivery-count)."""
    raw = pamqp_frame.marshal(ContentHeader(0, 0, properties), 1)
    _, _, decoded = pamqp_frame.unmarshal(raw)
    copy = cast(ContentHeader, decoded).properties
    if headers:
        copy.headers = {**(copy.headers or {}), **headers}
    return copy


def _as_aiormq(channel: DoubleChannel) -> aiormq.abc.AbstractChannel:
    return cast(aiormq.abc.AbstractChannel, channel)
