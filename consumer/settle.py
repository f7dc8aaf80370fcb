"""Settling a delivery, the only code that acks: publish first (confirmed), then ack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError
from structlog.typing import FilteringBoundLogger

from consumer.envelope import Envelope, dead_letter_message, republish_message
from consumer.policy import Action, Outcome, action_for
from consumer.stream import publish_confirmed, result_message
from consumer.topology import Topology, declare
from schemas.events import ResultEvent

SETTLE_ERRORS = (
    ChannelInvalidStateError,
    DeliveryError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    asyncio.TimeoutError,
)
STEP_TRIES = 6  # with waits of 0.25 s doubling to 4 s: about 12 s, plus waits for a reconnect
RECONNECT_WAIT_S = 30.0


@dataclass(frozen=True)
class Verdict:
    """What one delivery came to, ready to be settled and told."""

    outcome: Outcome
    code: int | None
    info: str
    source: Literal["api", "local"]
    attempts: int
    reason: str
    may_have_reached: bool
    task_id: str | None
    has_offline_push_info: bool = False


def result_event(
    message: AbstractIncomingMessage, envelope: Envelope, verdict: Verdict, now: float
) -> ResultEvent:
    """The results event of a settled request."""
    return ResultEvent(
        task_id=verdict.task_id,
        outcome="recalled" if verdict.outcome is Outcome.RECALLED else "dead_lettered",
        error_code=verdict.code if verdict.code is not None else 0,
        error_info=verdict.info,
        source=verdict.source,
        attempts=verdict.attempts,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        first_seen=datetime.fromtimestamp(envelope.first_seen, UTC),
        settled_at=datetime.fromtimestamp(now, UTC),
        has_offline_push_info=verdict.has_offline_push_info,
    )


@dataclass(frozen=True)
class Settled:
    """Whether the delivery was acked, and the results event once it was told (even if the ack
    then failed: the redelivery must not tell it again)."""

    done: bool
    event: ResultEvent | None = None


class Settler:
    """Carries out `action_for(outcome)` on a delivery, step by step, each step retried.

    A step that failed because the broker went away is tried again once the connection is
    back; steps already done are not repeated, so a reconnect never doubles a dead letter.
    If the delivery's own channel is gone, the broker redelivers it and we stop there.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: AbstractChannel,
        topology: Topology,
        clock: Callable[[], float],
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._topology = topology
        self._clock = clock

    async def settle(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope,
        verdict: Verdict,
        log: FilteringBoundLogger,
    ) -> Settled:
        """Settle the delivery; with the results event when it is recalled or dead-lettered."""
        action = action_for(verdict.outcome)
        now = self._clock()
        if action is Action.RELEASE:
            await self.release(message, log)
            return Settled(done=False)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        event: ResultEvent | None = None
        if action is Action.ACK_ONLY:
            pass
        elif action is Action.REPUBLISH:
            again = republish_message(
                message,
                attempts=verdict.attempts,
                first_seen=envelope.first_seen,
                may_have_reached=verdict.may_have_reached,
            )
            steps.append(("republish", lambda: self._publish(again, self._topology.queue, log)))
        else:
            if action is Action.DEAD_LETTER:
                dead = dead_letter_message(
                    message,
                    code=verdict.code if verdict.code is not None else 0,
                    info=verdict.info,
                    source=verdict.source,
                    attempts=verdict.attempts,
                    first_seen=envelope.first_seen,
                    now=now,
                )
                dlq = self._topology.dead_letter_queue
                steps.append(("dead_letter", lambda: self._publish(dead, dlq, log)))
            event = result_event(message, envelope, verdict, now)
            news = result_message(event)
            stream = self._topology.results_stream
            steps.append(("result_event", lambda: self._publish(news, stream, log)))
        steps.append(("ack", message.ack))
        told: ResultEvent | None = None
        for name, step in steps:
            if not await self._step(name, step, message, log):
                return Settled(done=False, event=told)
            if name == "result_event":
                told = event
        return Settled(done=True, event=told)

    async def release(self, message: AbstractIncomingMessage, log: FilteringBoundLogger) -> None:
        """Hand a delivery back unsettled (halting, stopping); counts as a delivery attempt."""
        try:
            await message.nack(requeue=True)
        except SETTLE_ERRORS as exc:
            log.warning("release_failed", error=type(exc).__name__)

    async def _step(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        message: AbstractIncomingMessage,
        log: FilteringBoundLogger,
    ) -> bool:
        wait = 0.25
        for attempt in range(1, STEP_TRIES + 1):
            try:
                await step()
                return True
            except SETTLE_ERRORS as exc:
                if message.channel.is_closed:
                    # The delivery died with its channel: the broker redelivers the request,
                    # and a redelivery answered 90050 counts as ours.
                    log.warning(
                        "settle_abandoned_redelivery_expected", step=name, error=type(exc).__name__
                    )
                    return False
                log.warning(
                    "settle_step_retry", step=name, attempt=attempt, error=type(exc).__name__
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._connection.connected.wait(), RECONNECT_WAIT_S)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 4.0)
        # Never leave a delivery held on a live channel: hand it back so it is tried again.
        log.error("settle_failed", step=name, tries=STEP_TRIES)
        await self.release(message, log)
        return False

    async def _publish(
        self, message: aio_pika.Message, routing_key: str, log: FilteringBoundLogger
    ) -> None:
        try:
            await publish_confirmed(self._publisher, message, routing_key)
        except DeliveryError:
            # Unroutable: a queue was deleted under us. Declare the topology again, retry once.
            log.warning("queue_missing_redeclaring", routing_key=routing_key)
            await declare(self._connection, self._topology)
            await publish_confirmed(self._publisher, message, routing_key)
