"""Queues tim-recall uses: declared idempotently at start, with a clear error on a mismatch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldValue

from consumer.core.errors import ConfigurationError
from consumer.core.settings import Settings

DLQ_DELIVERY_LIMIT = 1_000_000


class TopologyError(ConfigurationError):
    """A queue exists with other arguments than tim-recall needs, or cannot be declared."""


@dataclass(frozen=True)
class QueueArguments:
    """The `x-` arguments tim-recall declares its queues with, typed; None leaves one unset."""

    queue_type: Literal["quorum", "stream"]
    single_active_consumer: bool | None = None
    delivery_limit: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    dead_letter_strategy: Literal["at-least-once", "at-most-once"] | None = None
    overflow: Literal["reject-publish", "drop-head"] | None = None
    max_age: str | None = None  # a stream's retention, e.g. "7D"

    def as_table(self) -> dict[str, FieldValue]:
        """The AMQP argument table: `queue_type` becomes `x-queue-type`, and so on."""
        return {
            "x-" + field.name.replace("_", "-"): value
            for field in fields(self)
            if (value := getattr(self, field.name)) is not None
        }


@dataclass(frozen=True)
class Topology:
    """Names and arguments of one app's recall queue and what the fleet shares: the dead-letter
    queue, the results stream and the direct exchange producers publish to (the app's queue
    bound with its SDKAppID, in decimal, as routing key)."""

    queue: str
    dead_letter_queue: str
    results_stream: str
    delivery_limit: int = 20
    results_max_age: str = "7D"
    exchange: str | None = None  # None: the queue is reached by name only (a test's own)
    routing_key: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, queue: str | None = None, sdkappid: int | None = None
    ) -> Topology:
        """The topology named by the settings, for the app `sdkappid` served from `queue`."""
        return cls(
            queue=queue or settings.queue,
            dead_letter_queue=settings.dead_letter_queue,
            results_stream=settings.results_stream,
            delivery_limit=settings.delivery_limit,
            results_max_age=settings.results_max_age,
            exchange=settings.exchange if sdkappid is not None else None,
            routing_key=str(sdkappid) if sdkappid is not None else None,
        )

    def for_app(self, queue: str, sdkappid: int) -> Topology:
        """The same fleet's topology for another app's queue."""
        return replace(self, queue=queue, routing_key=str(sdkappid))

    def queue_arguments(self) -> dict[str, FieldValue]:
        """The recall queue: quorum, one active consumer, dead letters to our queue."""
        return QueueArguments(
            queue_type="quorum",
            single_active_consumer=True,
            # RabbitMQ 4 dead-letters after 20 redeliveries by default, 3.10 never: set it on both.
            delivery_limit=self.delivery_limit,
            dead_letter_exchange="",
            dead_letter_routing_key=self.dead_letter_queue,
            # What the broker dead-letters itself is kept until the dead-letter queue confirms
            # it (at-least-once needs reject-publish overflow; with no length limit set, that
            # never refuses a publish).
            dead_letter_strategy="at-least-once",
            overflow="reject-publish",
        ).as_table()

    def dead_letter_arguments(self) -> dict[str, FieldValue]:
        """The dead-letter queue: a durable quorum queue that never drops what it holds."""
        # The dlq tools never hand a message back (they re-publish it to the tail), but a tool
        # cut off midway returns what it held, and 4.x drops a message after 20 returns by
        # default: a dead-letter queue must keep its messages however often that happens.
        return QueueArguments(queue_type="quorum", delivery_limit=DLQ_DELIVERY_LIMIT).as_table()

    def results_arguments(self) -> dict[str, FieldValue]:
        """The results stream: append-only, kept for `results_max_age`."""
        return QueueArguments(queue_type="stream", max_age=self.results_max_age).as_table()


async def _declare(
    channel: AbstractChannel, name: str, arguments: dict[str, FieldValue]
) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # The broker's text names the argument: "inequivalent arg 'x-queue-type' ... received
        # 'quorum' but current is 'classic'". Say what we wanted alongside it.
        raise TopologyError(
            f"queue {name!r} exists with other arguments than tim-recall needs "
            f"({_broker_text(exc)}); wanted {arguments}. Delete or rename the queue, or point "
            "RECALL_QUEUE elsewhere."
        ) from None


def _broker_text(exc: aiormq.exceptions.AMQPError) -> str:
    args = [str(a) for a in exc.args if a]
    return args[-1] if args else type(exc).__name__


async def declare(connection: aio_pika.abc.AbstractConnection, topology: Topology) -> None:
    """Declare every queue (and the exchange and binding); raises TopologyError naming a
    mismatch."""
    await declare_fleet(connection, [topology])


async def declare_fleet(
    connection: aio_pika.abc.AbstractConnection, topologies: Sequence[Topology]
) -> None:
    """Declare what the fleet shares once, then each app's queue and binding; raises
    TopologyError naming a mismatch. A failed declaration closes its channel, so the channel
    is only reused while declarations pass."""
    if not topologies:
        return
    shared = topologies[0]
    wanted: list[tuple[str, dict[str, FieldValue]]] = [
        (shared.dead_letter_queue, shared.dead_letter_arguments()),
        (shared.results_stream, shared.results_arguments()),
    ]
    wanted += [(t.queue, t.queue_arguments()) for t in topologies]
    channel = await connection.channel()
    try:
        exchanges = {t.exchange for t in topologies if t.exchange is not None}
        declared = {
            name: await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
            for name in sorted(exchanges)
        }
        for name, arguments in wanted:
            queue = await _declare(channel, name, arguments)
            for topology in topologies:
                if topology.queue == name and topology.exchange and topology.routing_key:
                    await queue.bind(declared[topology.exchange], topology.routing_key)
    finally:
        if not channel.is_closed:
            await channel.close()
