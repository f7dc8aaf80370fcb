"""Queues tim-recall uses: declared idempotently at start, with a clear error on a mismatch."""

from __future__ import annotations

from dataclasses import dataclass, fields
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
    """Names and arguments of the recall queue, its dead-letter queue and the results stream."""

    queue: str
    dead_letter_queue: str
    results_stream: str
    delivery_limit: int = 20
    results_max_age: str = "7D"

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        """The topology named by the settings."""
        return cls(
            queue=settings.queue,
            dead_letter_queue=settings.dead_letter_queue,
            results_stream=settings.results_stream,
            delivery_limit=settings.delivery_limit,
            results_max_age=settings.results_max_age,
        )

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
    """Declare every queue; raises TopologyError naming a mismatch.

    Each declaration gets its own short-lived channel, since a failed one closes its channel.
    """
    for name, arguments in (
        (topology.dead_letter_queue, topology.dead_letter_arguments()),
        (topology.queue, topology.queue_arguments()),
        (topology.results_stream, topology.results_arguments()),
    ):
        channel = await connection.channel()
        try:
            await _declare(channel, name, arguments)
        finally:
            if not channel.is_closed:
                await channel.close()
