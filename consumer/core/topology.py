"""Queues tim-recall uses: declared idempotently at start, with a clear error on a mismatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

from consumer.core.errors import ConfigurationError
from consumer.core.settings import Settings

DLQ_DELIVERY_LIMIT = 1_000_000


class TopologyError(ConfigurationError):
    """A queue exists with other arguments than tim-recall needs, or cannot be declared."""


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

    def queue_arguments(self) -> dict[str, Any]:
        """The recall queue: quorum, one active consumer, dead letters to our queue."""
        return {
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            # RabbitMQ 4 dead-letters after 20 redeliveries by default, 3.10 never: set it on both.
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_letter_queue,
            # What the broker dead-letters itself is kept until the dead-letter queue confirms
            # it (at-least-once needs reject-publish overflow; with no length limit set, that
            # never refuses a publish).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def dead_letter_arguments(self) -> dict[str, Any]:
        """The dead-letter queue: a durable quorum queue that never drops what it holds."""
        # The dlq tools never hand a message back (they re-publish it to the tail), but a tool
        # cut off midway returns what it held, and 4.x drops a message after 20 returns by
        # default: a dead-letter queue must keep its messages however often that happens.
        return {"x-queue-type": "quorum", "x-delivery-limit": DLQ_DELIVERY_LIMIT}

    def results_arguments(self) -> dict[str, Any]:
        """The results stream: append-only, kept for `results_max_age`."""
        return {"x-queue-type": "stream", "x-max-age": self.results_max_age}


async def _declare(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
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
