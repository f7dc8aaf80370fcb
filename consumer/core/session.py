"""The connection session: nodes, declare, consume and cancel per lane, the fence, the epoch.

One session per process holds one connection at a time (through RECALL_AMQP_URL's list of
nodes, reconnecting with backoff) and everything on it that lanes share: the publisher channel
and its settler, the memory follower, and the consumer channels (at most LANES_PER_CHANNEL
consumers each, prefetch 1 per consumer). Its epoch counts lost connections: a delivery of an
earlier epoch is void, even once connected again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractQueue,
)
from aiormq.abc import DeliveredMessage

from consumer.core.backoff import Backoff
from consumer.core.broker import connect
from consumer.core.errors import BrokerUnavailable
from consumer.core.fence import silent_for
from consumer.core.follower import ResultsFollower
from consumer.core.metrics import Metrics
from consumer.core.nodes import Connect, NoNodeReachable, connect_first, node_of, split_urls
from consumer.core.pacing import sleep_unless_set
from consumer.core.settle import SETTLE_ERRORS, Settler
from consumer.core.stream import lane_message
from consumer.core.topology import Topology, declare_fleet
from schemas.events import LaneEvent, LaneState

if TYPE_CHECKING:
    from consumer.core.lane import Lane

CONNECT_BACKOFF = Backoff(1.0, 30.0)  # while no node of the list answers
CANCEL_TIMEOUT_S = 5.0
LANES_PER_CHANNEL = 64  # RabbitMQ suggests tens of channels per connection, not thousands


@dataclass(frozen=True)
class SessionConfig:
    """What the session follows."""

    amqp_url: str
    topology: Topology  # the fleet's shared queues (a lane's own queue is in its LaneConfig)
    fence_s: float = 45.0  # no call once the broker has been silent this long (see fence.py)
    rebuild_budget_s: float = 60.0  # how long a new connection waits for the memory
    replica_id: str = "tim-recall"


class Session:
    """Connects, declares, consumes for every lane, and says whether a delivery is still ours."""

    def __init__(
        self,
        config: SessionConfig,
        lanes: Mapping[int, Lane],
        follower: ResultsFollower,
        metrics: Metrics,
        *,
        stopping: asyncio.Event,
        settler_hooks: Callable[[], dict[str, Any]] = dict,
        connect: Connect | None = None,
    ) -> None:
        self.config = config
        self.epoch = 0  # connections lost so far
        self.lanes = lanes
        self.follower = follower
        self._metrics = metrics
        self._stopping = stopping
        self._settler_hooks = settler_hooks
        self._connect_to = connect  # one attempt at one URL; None: consumer.core.broker.connect
        self._connection: AbstractConnection | None = None
        self._settler: Settler | None = None
        self._channels: list[AbstractChannel] = []
        self._by_tag: dict[str, tuple[Lane, AbstractQueue, AbstractChannel]] = {}
        self._load: collections.Counter[int] = collections.Counter()  # consumers by channel id
        self._tags = 0
        self._fenced = False
        self.handling: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._log = structlog.get_logger()

    # ---- what lanes ask --------------------------------------------------------------------

    def connected(self) -> bool:
        """Connected, and heard from recently enough that our deliveries are surely ours."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return False
        silent = silent_for(connection, asyncio.get_running_loop().time())
        fenced = silent > self.config.fence_s
        if fenced != self._fenced:
            self._fenced = fenced
            if fenced:
                self._log.warning("broker_silent_fenced", silent_s=round(silent, 1))
            else:
                self._log.info("broker_heard_again")
        return not fenced

    def settler(self) -> Settler:
        """The connection's settler; RuntimeError when there is no connection."""
        if self._settler is None:
            raise RuntimeError("no connection to settle on")
        return self._settler

    async def caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109 (a lane's budget)
        """Wait until the memory holds what every replica told before now."""
        return await self.follower.caught_up(timeout)

    def call_record(self, lane: Lane) -> aio_pika.Message:
        """The record of a call no results event tells, for the lane's settlement to publish."""
        event = LaneEvent(
            sdkappid=lane.app, replica=self.config.replica_id, state="called", at=datetime.now(UTC)
        )
        return lane_message(event, self.follower.incarnation, lane.next_call_at())

    def announce(self, lane: Lane, state: LaneState, reason: str | None = None) -> None:
        """Record on the results stream that this replica's lane for an app changed state (for
        `tim-recall apps`), in the background: it never holds a delivery up."""
        event = LaneEvent(
            sdkappid=lane.app,
            replica=self.config.replica_id,
            state=state,
            reason=reason,
            at=datetime.now(UTC),
        )
        self._spawn(self._append(lane, event), f"announce-{lane.app}")

    async def _append(self, lane: Lane, event: LaneEvent) -> None:
        try:
            await self.follower.append(lane_message(event))
        except (*SETTLE_ERRORS, TimeoutError) as exc:
            lane.log.warning("lane_state_unrecorded", state=event.state, error=type(exc).__name__)

    async def subscribe(self, lane: Lane) -> None:
        """Consume the lane's queue, with its priority, on a channel with room for it."""
        channel = await self._channel_for_lane()
        topology = lane.config.topology
        queue = await channel.declare_queue(
            topology.queue, durable=True, arguments=topology.queue_arguments()
        )
        self._tags += 1
        tag = f"tim-recall.{self.config.replica_id}.{lane.app}.{self._tags}"
        if lane.active:  # its first delivery on this consumer tells it is active again
            lane.lost()
        # Straight on aiormq's channel, as aio-pika's Queue.consume does, without its two
        # extra tasks per delivery (its wrapper's and a shielded wait): see `_on_delivery`.
        raw = await channel.get_underlay_channel()
        await raw.basic_consume(
            topology.queue,
            self._on_delivery(lane),
            arguments={"x-priority": lane.config.priority},
            consumer_tag=tag,
        )
        lane.consumer_tag = tag
        self._by_tag[tag] = (lane, queue, channel)
        self._load[id(channel)] += 1
        lane.log.info("consumer_registered", consumer_tag=lane.consumer_tag)

    async def unsubscribe(self, lane: Lane) -> None:
        """Cancel the lane's consumer (idempotent): the broker hands its queue to a standby."""
        tag, lane.consumer_tag = lane.consumer_tag, None
        if lane.active:
            lane.lost()
        found = self._untrack(tag) if tag is not None else None
        if tag is None or found is None:
            return
        _, queue, _ = found
        try:
            # A channel waiting for a broker that is gone: not forever.
            await asyncio.wait_for(queue.cancel(tag), CANCEL_TIMEOUT_S)
        except SETTLE_ERRORS as exc:
            lane.log.warning("consumer_cancel_failed", error=type(exc).__name__)

    async def add(self, lane: Lane) -> None:
        """A lane added while running: declare its queue and binding, then consume."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return  # the next connection declares and subscribes it
        await declare_fleet(connection, [lane.config.topology])
        if not lane.halted and not self._stopping.is_set():
            await self.subscribe(lane)

    # ---- the connection --------------------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Connect, declare, consume until stopped, reconnecting (through the list of nodes)
        whenever the connection is lost; then close."""
        urls = split_urls(self.config.amqp_url)
        start = 0
        while not self._stopping.is_set():
            connected = await self._connect(urls, start)
            if connected is None:
                return  # stopped before a broker could be reached
            connection, index = connected
            await self._serve(connection, node_of(urls[index]), started)
            start = index + 1  # after a loss, the next node first: this one may be dead

    async def _serve(
        self, connection: AbstractConnection, node: str, started: asyncio.Event | None
    ) -> None:
        """Consume on one connection until stopped (then settle, close) or its loss."""
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        self._connection = connection
        try:
            await self._set_up(connection, node)
            if started is not None:
                started.set()
            await _first(self._stopping.wait(), closed.wait())
            if self._stopping.is_set() and not closed.is_set():
                for lane in list(self.lanes.values()):
                    async with lane.busy:  # the delivery in hand is settled or released first
                        await self.unsubscribe(lane)
                while self.handling:  # deliveries that came meanwhile are released
                    await asyncio.wait(set(self.handling), timeout=30)
        except SETTLE_ERRORS as exc:  # the connection went while we set up or stopped
            self._log.warning("broker_setup_failed", node=node, error=type(exc).__name__)
        finally:
            self._lost()
            await self.follower.stop()
            if not connection.is_closed:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await connection.close()

    async def _set_up(self, connection: AbstractConnection, node: str) -> None:
        lanes = list(self.lanes.values())
        topologies = [lane.config.topology for lane in lanes] or [self.config.topology]
        await declare_fleet(connection, topologies)
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self._settler = Settler(
            connection,
            publisher,
            self.config.topology,
            time.time,
            redeclare=lambda: declare_fleet(connection, topologies),
            app_id=self.follower.incarnation,
            **self._settler_hooks(),
        )
        self._watch(publisher, "publisher", connection)
        self._metrics.connected.set(1)
        self._metrics.node(node)
        self._log.info("broker_reconnected" if self.epoch else "broker_connected", node=node)
        await self._catch_up(connection)
        for lane in lanes:  # each lane's first delivery is a takeover: it places the first call
            if not lane.halted:
                await self.subscribe(lane)

    async def _catch_up(self, connection: AbstractConnection) -> None:
        """Follow the results stream; wait (within the budget) until the memory is current."""
        started = time.monotonic()
        before = self.follower.events
        await self.follower.start(connection)
        complete = await self.follower.caught_up(self.config.rebuild_budget_s)
        memory = self.follower.memory
        fields = {
            "events": self.follower.events - before,
            "entries": len(memory),
            "recalled": memory.sizes().get("recalled", 0),
            "seconds": round(time.monotonic() - started, 3),
        }
        # Without a complete memory we may spend a call on a duplicate; the API still answers
        # 90050, and the follower goes on reading: a warning, not a stop.
        if complete:
            self._log.info("memory_rebuilt", **fields)
        else:
            self._log.warning("memory_rebuild_incomplete", budget_exceeded=True, **fields)

    async def _channel_for_lane(self) -> AbstractChannel:
        assert self._connection is not None
        self._channels = [c for c in self._channels if not c.is_closed]
        for channel in self._channels:
            if self._load[id(channel)] < LANES_PER_CHANNEL:
                return channel
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1)  # per consumer: one request in hand per lane
        self._watch(channel, "consumer", self._connection)
        raw = await channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        self._channels.append(channel)
        return channel

    def _untrack(self, tag: str) -> tuple[Lane, AbstractQueue, AbstractChannel] | None:
        """Forget a consumer: its lane, queue and channel (None if unknown)."""
        found = self._by_tag.pop(tag, None)
        if found is not None:
            self._load[id(found[2])] -= 1
        return found

    def _on_delivery(self, lane: Lane) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_delivery(delivered: DeliveredMessage) -> None:
            # aiormq runs this in a task it cancels when the channel closes; the handling goes
            # on in a task of ours, so a call in flight finishes and what it learned stays in
            # the journal for the redelivery. (Prefetch 1 bounds the tasks: one per lane.)
            message = aio_pika.IncomingMessage(delivered, no_ack=False)
            task = asyncio.create_task(lane.handle(message), name=f"delivery-{lane.app}")
            self.handling.add(task)
            task.add_done_callback(self.handling.discard)

        return on_delivery

    def _watch(self, channel: AbstractChannel, name: str, connection: AbstractConnection) -> None:
        """The broker can end consumption while the connection lives: a channel closed (a
        consumer timeout, a refused publish). It must not leave a replica that looks ready and
        consumes nothing: start over on a new connection."""

        def closed(_: Any, exc: BaseException | None = None) -> None:
            if connection.is_closed or self._stopping.is_set():
                return  # the connection went, or we closed it: handled there
            self._log.warning("broker_channel_closed", channel=name, error=_brief(exc))
            self._spawn(connection.close(), "close-after-channel-loss")

        channel.close_callbacks.add(closed)

    def _on_consumer_cancelled(self, frame: Any) -> None:
        # The broker cancelled a consumer (its queue deleted): declare and consume again.
        found = self._untrack(getattr(frame, "consumer_tag", None) or "")
        if found is None:
            return
        lane = found[0]
        lane.consumer_tag = None
        lane.lost()
        lane.log.warning("consumer_cancelled_by_broker", consumer_tag=frame.consumer_tag)
        self._spawn(self._resubscribe(lane), f"resubscribe-{lane.app}")

    async def _resubscribe(self, lane: Lane) -> None:
        """Declare the lane's queue and binding again (a deleted queue comes back empty) and
        consume again; if that fails, start over on a new connection (a queue with other
        arguments then stops the worker with one line, TopologyError)."""
        connection = self._connection
        try:
            assert connection is not None
            await declare_fleet(connection, [lane.config.topology])
            if not lane.halted and not self._stopping.is_set():
                await self.subscribe(lane)
        except Exception as exc:
            lane.log.warning("consumer_resubscribe_failed", error=type(exc).__name__)
            if connection is not None and not connection.is_closed:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await connection.close()

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lost(self) -> None:
        """This connection is over: every delivery it brought is void. The first delivery of
        each lane on the next one is a takeover: another replica may have been active."""
        self.epoch += 1
        # The settler stays: a settlement under way finds its delivery void (its epoch is over)
        # at its next step and stops there, keeping the journal for the redelivery.
        self._channels = []
        self._by_tag.clear()
        self._load.clear()
        for lane in self.lanes.values():
            lane.lost()
        self._metrics.connected.set(0)
        if not self._stopping.is_set():
            self._log.warning("broker_connection_lost")

    async def _connect(self, urls: list[str], start: int) -> tuple[AbstractConnection, int] | None:
        """Connect to the first node that answers, waiting with backoff while none does: a
        worker started during a broker outage stays up (live, not ready) rather than
        crash-looping. Our own configuration (a refused login, a certificate) is fatal."""
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            wait = CONNECT_BACKOFF.wait_s(attempt)
            try:
                return await connect_first(
                    urls, self._open, start=start, retry_on=(BrokerUnavailable,)
                )
            except NoNodeReachable as exc:
                self._log.warning(
                    "broker_unreachable",
                    reason=str(exc),
                    nodes=[f.node for f in exc.failures],
                    retry_in_s=wait,
                )
            await sleep_unless_set(self._stopping, wait)
        return None

    async def _open(self, url: str) -> AbstractConnection:
        # A refused login or a certificate that does not verify is a ConfigurationError, raised
        # through: `tim-recall run` exits 2 with one line instead of retrying forever.
        if self._connect_to is not None:  # a test's in-memory broker
            return await self._connect_to(url)
        name = f"tim-recall {self.config.replica_id}"
        return await connect(url, client_properties={"connection_name": name})


def _brief(exc: BaseException | None) -> str | None:
    """An exception as one short line (the broker's reply text), for a log field."""
    if exc is None:
        return None
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of `waits` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
