"""Settling a delivery, the only code that acks: publish first (confirmed), then ack."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from structlog.typing import FilteringBoundLogger

from consumer.core.backoff import Backoff
from consumer.core.envelope import Envelope, dead_letter_message, republish_message
from consumer.core.policy import Action, Outcome, ReplyResult, action_for
from consumer.core.stream import StreamWriter, publish_confirmed, result_message
from consumer.core.topology import Topology, declare
from consumer.core.verdict import Verdict
from schemas.events import ResultEvent
from schemas.recall import RecallRequest

# What a broker operation raises when the broker refuses it or the connection is lost. aio-pika
# raises a plain RuntimeError for an operation on a closed connection ("Connection was not
# opened" when opening a channel): that is a lost connection too, never a reason to forget
# what the journal knows of a call.
SETTLE_ERRORS = (
    ChannelInvalidStateError,
    DeliveryError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,
)
STEP_TRIES = 6  # with waits of 0.25 s doubling to 4 s: about 12 s on a live connection
STEP_BACKOFF = Backoff(0.25, 4.0)
# A stalled link gives no confirm at all: a step that hangs this long is treated as failed.
STEP_TIMEOUT_S = 15.0
REPLY_TIMEOUT_S = 5.0
DIRECT_REPLY_TO = (
    "amq.rabbitmq.reply-to"  # a reply is a courtesy: it never holds a settlement up for long
)
JOURNAL_SIZE = 1024  # lineages whose settlement is under way; one is in hand at a time


class Step(StrEnum):
    """The steps of a settlement, in the order they run."""

    DEAD_LETTER = "dead_letter"
    # A call that counted against the app's limit and is told by no results event (a copy
    # follows): its time, on the results stream, for a replica that takes the app over.
    CALL_RECORD = "call_record"
    COPY = "copy"  # the request again at the queue's tail: a re-publish or a release
    RESULT_EVENT = "result_event"
    REPLY = "reply"  # the results event to the request's reply_to, when it has one
    ACK = "ack"


def result_event(
    message: AbstractIncomingMessage,
    envelope: Envelope,
    verdict: Verdict,
    now: float,
    sdkappid: int | None = None,
) -> ResultEvent:
    """The results event of a settled request."""
    return ResultEvent(
        sdkappid=sdkappid,
        task_id=verdict.task_id,
        outcome="recalled" if verdict.outcome is Outcome.RECALLED else "dead_lettered",
        error_code=verdict.code if verdict.code is not None else 0,
        error_info=verdict.info,
        source=verdict.source,
        attempts=verdict.attempts,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        lineage=envelope.lineage,
        trace_id=envelope.trace_id,
        first_seen=datetime.fromtimestamp(envelope.first_seen, UTC),
        settled_at=datetime.fromtimestamp(now, UTC),
        has_offline_push_info=verdict.has_offline_push_info,
    )


@dataclass
class Progress:
    """What is known of one lineage's handling in this process: whether a call was sent, the
    verdict, and which settle steps the broker confirmed. It outlives a lost connection, so the
    redelivery resumes where the settlement stopped instead of calling and publishing again."""

    called: bool = False
    request: RecallRequest | None = None  # the body, parsed once
    verdict: Verdict | None = None
    envelope: Envelope | None = None  # as settled (a copy carries these headers)
    event: ResultEvent | None = None
    done: set[Step] = field(default_factory=set)
    # Logged and counted: an ack lost without an error makes a redelivery settle it again,
    # and that one must not be told a second time.
    told: bool = False


class Journal:
    """Progress by generation (see `Envelope.generation`), the most recent `size` of them.

    An entry outlives the ack: an ack written to a connection that is already dead is lost
    without an error, and the redelivery must find what was done. Only a redelivery looks an
    entry up; a fresh delivery always starts a new one.
    """

    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, Progress] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, lineage: str) -> Progress | None:
        """The progress of `lineage`, if this process has any."""
        return self._entries.get(lineage)

    def start(self, key: str) -> Progress:
        """A new, empty progress for `key` (replacing any)."""
        self._entries.pop(key, None)
        progress = self._entries[key] = Progress()
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return progress

    def open(self, key: str) -> Progress:
        """The progress of `key`, new if none."""
        progress = self._entries.get(key)
        return progress if progress is not None else self.start(key)

    def close(self, key: str) -> None:
        """Forget `key`."""
        self._entries.pop(key, None)


@dataclass(frozen=True)
class Settled:
    """Whether the delivery was acked, and the results event once it was told (even if the ack
    then failed: the redelivery must not tell it again)."""

    done: bool
    event: ResultEvent | None = None


class Settler:
    """Carries out `action_for(outcome)` on a delivery, step by step, each step retried.

    Steps already done (recorded in the delivery's `Progress`) are not repeated. If the
    delivery's channel or connection is gone, it is not ours any more: the broker redelivers
    it and we stop there; the redelivery resumes from `Progress`, so a lost connection never
    doubles a dead letter, a copy or an event.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        publisher: AbstractChannel,
        topology: Topology,
        clock: Callable[[], float],
        *,
        on_told: Callable[[ResultEvent], None] = lambda _: None,
        on_reply: Callable[[ReplyResult], None] = lambda _: None,
        on_copied: Callable[[], None] = lambda: None,
        redeclare: Callable[[], Awaitable[None]] | None = None,
        app_id: str | None = None,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        # Results events never go through `publisher`: see StreamWriter (RabbitMQ 3.10).
        self._results = StreamWriter(connection, topology.results_stream)
        self._topology = topology  # the fleet's shared queues (and a default recall queue)
        self._redeclare = redeclare or (lambda: declare(connection, topology))
        self._clock = clock
        self._app_id = app_id  # this process, on its results events (the follower skips them)
        self._on_told = on_told
        self._on_reply = on_reply
        self._on_copied = on_copied

    async def settle(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope,
        verdict: Verdict,
        log: FilteringBoundLogger,
        progress: Progress | None = None,
        *,
        void: Callable[[], bool] = lambda: False,
        last_chance: bool = False,
        queue: str | None = None,
        sdkappid: int | None = None,
        before_ack: Callable[[], Awaitable[None]] | None = None,
        call_record: aio_pika.Message | None = None,
        next_call: float | None = None,
    ) -> Settled:
        """Settle the delivery; with the results event when it is recalled or dead-lettered.

        `envelope` is what a copy (re-publish, release) carries in its headers, to `queue` (the
        app's; the topology's by default); `sdkappid` is named in the event and dead letter.
        `before_ack` runs once every other step is done (a stopping lane cancels its consumer
        there: the next delivery goes to a standby only after this one was told); a
        `call_record` goes to the results stream before a copy (a call no event tells). On its
        `last_chance` (one more return and the broker dead-letters it unseen) a delivery is
        never given back: its steps are tried until they pass or the connection goes.
        `next_call` (unix seconds), when the app's next call may come, goes with the event.
        """
        progress = progress or Progress()
        progress.verdict, progress.envelope = verdict, envelope
        action = action_for(verdict.outcome)
        steps: list[tuple[Step, Callable[[], Awaitable[None]]]] = []
        if action in (Action.REPUBLISH, Action.RELEASE):
            if call_record is not None:
                stream = self._topology.results_stream
                steps.append((Step.CALL_RECORD, lambda: self._publish(call_record, stream, log)))
            again = republish_message(
                message, envelope, attempts=verdict.attempts, now=self._clock()
            )
            tail = queue or self._topology.queue
            steps.append((Step.COPY, lambda: self._publish(again, tail, log)))
        elif action in (Action.ACK, Action.DEAD_LETTER):
            now = self._clock()
            if action is Action.DEAD_LETTER:
                dead = dead_letter_message(
                    message,
                    code=verdict.code if verdict.code is not None else 0,
                    info=verdict.info,
                    source=verdict.source,
                    attempts=verdict.attempts,
                    first_seen=envelope.first_seen,
                    now=now,
                    sdkappid=sdkappid,
                )
                dlq = self._topology.dead_letter_queue
                steps.append((Step.DEAD_LETTER, lambda: self._publish(dead, dlq, log)))
            if progress.event is None:
                progress.event = result_event(message, envelope, verdict, now, sdkappid)
            news = result_message(progress.event, self._app_id, next_call)
            stream = self._topology.results_stream
            steps.append((Step.RESULT_EVENT, lambda: self._publish(news, stream, log)))
            if envelope.reply_to is not None:
                reply = result_message(progress.event)
                to = envelope.reply_to
                steps.append((Step.REPLY, lambda: self._reply(reply, to, log)))
        steps.append((Step.ACK, message.ack))
        for name, step in steps:
            if name in progress.done:
                continue
            if name is Step.ACK and before_ack is not None:
                await before_ack()
            if void():  # not ours any more: whoever gets the redelivery settles it
                log.warning("settle_abandoned_redelivery_expected", step=name.value)
                return Settled(done=False, event=_told(progress))
            if not await self._step(name, step, message, log, void, last_chance=last_chance):
                return Settled(done=False, event=_told(progress))
            progress.done.add(name)
            if name is Step.COPY:
                self._on_copied()
            if name is Step.RESULT_EVENT and progress.event is not None:
                self._on_told(progress.event)  # at once: a lost ack must not hide it
        return Settled(done=True, event=_told(progress))

    async def give_back(self, message: AbstractIncomingMessage, log: FilteringBoundLogger) -> None:
        """The last resort when nothing else could settle a delivery on a live channel.

        `reject(requeue)` counts toward the delivery limit on every RabbitMQ version (4.3 stopped
        counting `nack`), so a message that can never be settled ends in the dead-letter queue
        through the broker instead of looping.
        """
        with contextlib.suppress(*SETTLE_ERRORS):
            await message.reject(requeue=True)
            log.error("delivery_given_back")

    async def _step(
        self,
        name: Step,
        step: Callable[[], Awaitable[None]],
        message: AbstractIncomingMessage,
        log: FilteringBoundLogger,
        void: Callable[[], bool],
        *,
        last_chance: bool = False,
    ) -> bool:
        attempt = 0
        while True:
            attempt += 1
            try:
                # asyncio.timeout, not wait_for: no task of its own for every step (3.11)
                async with asyncio.timeout(STEP_TIMEOUT_S):
                    await step()
                return True
            except SETTLE_ERRORS as exc:
                if void() or _channel_gone(message):
                    # The delivery died with its channel or its connection (delivery tags do
                    # not survive a reconnect): the broker redelivers the request, and the
                    # redelivery resumes from the progress recorded so far.
                    log.warning(
                        "settle_abandoned_redelivery_expected",
                        step=name.value,
                        error=type(exc).__name__,
                    )
                    return False
                log.warning(
                    "settle_step_retry", step=name.value, attempt=attempt, error=type(exc).__name__
                )
                if attempt >= STEP_TRIES and not last_chance:
                    break  # give it back at once
                await asyncio.sleep(STEP_BACKOFF.wait_s(min(attempt, STEP_TRIES)))
        # Never leave a delivery held on a live channel: hand it back so it is tried again (the
        # broker counts that toward its delivery limit; the last chance is never given back).
        log.error("settle_failed", step=name.value, tries=STEP_TRIES)
        await self.give_back(message, log)
        return False

    async def _reply(
        self, message: aio_pika.Message, reply_to: str, log: FilteringBoundLogger
    ) -> None:
        """Send the results event to the caller's queue; never blocks or changes the settlement
        (the stream is the record): a reply nobody can receive is logged and counted."""
        # RabbitMQ 3.10 returns a mandatory publish to a Direct Reply-to address as NO_ROUTE
        # even when it delivers it: those go without `mandatory` (a gone caller drops it).
        mandatory = not reply_to.startswith(DIRECT_REPLY_TO)
        try:
            await asyncio.wait_for(
                publish_confirmed(self._publisher, message, reply_to, mandatory=mandatory),
                REPLY_TIMEOUT_S,
            )
        except DeliveryError:
            self._on_reply(ReplyResult.UNROUTABLE)
            log.warning("reply_unroutable", reply_to=reply_to)
            return
        except SETTLE_ERRORS as exc:
            self._on_reply(ReplyResult.FAILED)
            log.warning("reply_failed", reply_to=reply_to, error=type(exc).__name__)
            return
        self._on_reply(ReplyResult.SENT)

    async def _publish(
        self, message: aio_pika.Message, routing_key: str, log: FilteringBoundLogger
    ) -> None:
        try:
            await self._send(message, routing_key)
        except PublishError:
            # Returned unroutable: a queue was deleted under us. Declare the topology again and
            # retry once. (A nack is a plain DeliveryError: the step's own retry handles it.)
            log.warning("queue_missing_redeclaring", routing_key=routing_key)
            await self._redeclare()
            await self._send(message, routing_key)

    async def _send(self, message: aio_pika.Message, routing_key: str) -> None:
        """A results event through the stream's own writer, anything else through `publisher`."""
        if routing_key == self._results.stream:
            await self._results.publish(message)
        else:
            await publish_confirmed(self._publisher, message, routing_key)


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:  # aio-pika raises rather than answer for a closed one
        return True


def _told(progress: Progress) -> ResultEvent | None:
    return progress.event if Step.RESULT_EVENT in progress.done else None
