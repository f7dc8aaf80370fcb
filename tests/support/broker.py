"""The tests' RabbitMQ: where it listens, one test's queue names, a helper to publish to and
look into them, and waiting on a condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from consumer.core.topology import Topology, declare

FAST_INTERVAL_S = 0.1
OVERWRITE = {"Title": "Recalled", "Desc": "This message was recalled."}


def broker_address() -> tuple[str, int]:
    """Where the tests' RabbitMQ listens."""
    return os.environ.get("TEST_AMQP_HOST", "127.0.0.1"), int(
        os.environ.get("TEST_AMQP_PORT", "5672")
    )


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str = "condition"
) -> None:
    """Poll `predicate` every 20 ms until true; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Names:
    """One test's own queue names."""

    queue: str = field(default_factory=lambda: f"test-recall-{uuid.uuid4().hex[:12]}")

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"

    @property
    def results(self) -> str:
        return f"{self.queue}.results"


class Broker:
    """Publish to and look into the test's queues through a plain connection."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, names: Names) -> None:
        self.connection = connection
        self.names = names

    async def publish(
        self,
        body: bytes | dict[str, Any],
        *,
        queue: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        **properties: Any,
    ) -> str:
        """Publish one message (confirmed); returns its message_id."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        message_id = message_id or str(uuid.uuid4())
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    raw,
                    message_id=message_id,
                    correlation_id=correlation_id,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    **properties,
                ),
                routing_key=queue or self.names.queue,
                mandatory=True,
            )
        finally:
            await channel.close()
        return message_id

    async def declare(self) -> None:
        """Declare the test's queues as a worker would (to publish before one starts)."""
        await declare(
            self.connection, Topology(self.names.queue, self.names.dead, self.names.results)
        )

    async def count(self, queue: str) -> int:
        """Messages ready in `queue` (passive declare)."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def take(self, queue: str) -> list[AbstractIncomingMessage]:
        """Remove and return every message in `queue`, in order.

        Through a consumer, not basic.get: RabbitMQ refuses basic.get on a queue with a single
        active consumer (RESOURCE_LOCKED).
        """
        expected = await self.count(queue)
        channel = await self.connection.channel()
        taken: list[AbstractIncomingMessage] = []
        try:
            await channel.set_qos(prefetch_count=max(expected, 1))
            q = await channel.get_queue(queue, ensure=False)
            if expected:
                async with q.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        taken.append(message)
                        if len(taken) == expected:
                            break
        finally:
            await channel.close()
        return taken

    async def delete(self, *queues: str) -> None:
        """Delete queues, ignoring those that do not exist."""
        for name in queues:
            channel = await self.connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
