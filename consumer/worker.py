"""The consume loop: one delivery at a time through parse, prepare, recall, settle, tell."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from structlog.typing import FilteringBoundLogger

from consumer.client import RevokeClient
from consumer.envelope import Envelope, read_envelope
from consumer.halt import HaltProbe
from consumer.memory import RECALL_WINDOW_S, RecallMemory
from consumer.metrics import Metrics
from consumer.pacing import Pacer, sleep_unless_set
from consumer.policy import History, Outcome
from consumer.prepare import (
    AlreadySettled,
    PrepareRules,
    RecalledEarlier,
    Refuse,
    prepare,
    window_closed,
)
from consumer.recaller import Attempts, Recaller, RetryRules
from consumer.settle import SETTLE_ERRORS, Settler, Verdict
from consumer.stream import read_results
from consumer.topology import Topology, declare
from schemas.events import ResultEvent
from schemas.recall import InvalidRequest, RecallRequest, parse_request

Clock = Callable[[], float]


@dataclass(frozen=True)
class WorkerConfig:
    """The parts of the settings the worker follows."""

    amqp_url: str
    topology: Topology
    retry: RetryRules
    prepare: PrepareRules
    max_body_bytes: int = 64 * 1024
    halt_probe_initial_s: float = 5.0
    halt_probe_max_s: float = 300.0


class Worker:
    """Takes recall requests one at a time and settles each exactly once."""

    def __init__(
        self,
        config: WorkerConfig,
        client: RevokeClient,
        pacer: Pacer,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        on_settled: Callable[[ResultEvent], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.memory = RecallMemory()
        self.halted = False
        self._client = client
        self._pacer = pacer
        self._clock = clock
        self._on_settled = on_settled
        self._stopping = asyncio.Event()
        self._recaller = Recaller(
            client, pacer, metrics, config.retry, self._stopping, connected=self._broker_connected
        )
        self._probe = HaltProbe(client, pacer, config.halt_probe_initial_s, config.halt_probe_max_s)
        self._busy = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._settler: Settler | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._taken_over = False  # set on the first delivery since subscribing
        self._log = structlog.get_logger().bind(queue=config.topology.queue)

    # ---- lifecycle -------------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """Each readiness condition: connected, consumer registered, not halted."""
        return {
            "connected": self._broker_connected(),
            "consuming": self._consumer_tag is not None,
            "not_halted": not self.halted,
        }

    def _broker_connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    def stop(self) -> None:
        """Stop taking messages; the call in flight finishes and is settled."""
        self._stopping.set()

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Connect, declare, consume until `stop()`, then close."""
        topology = self.config.topology
        connection = await self._connect()
        if connection is None:
            return  # stopped before the broker could be reached
        self._connection = connection
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_disconnect)
        try:
            await declare(self._connection, topology)
            # The publishing channel first: channels are restored in order after a reconnect,
            # so it is back before the consumer's delivers anything that needs settling.
            publisher = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._settler = Settler(self._connection, publisher, topology, self._clock)
            consumer_channel = await self._connection.channel()
            await consumer_channel.set_qos(prefetch_count=1)
            self._queue = await consumer_channel.declare_queue(
                topology.queue, durable=True, arguments=topology.queue_arguments()
            )
            self.metrics.connected.set(1)
            self._pacer.hold()
            await self._start_consuming()
            if started is not None:
                started.set()
            await self._stopping.wait()
            await self._stop_consuming()
            async with self._busy:  # the delivery in hand is settled before we close
                pass
        finally:
            self._probe.cancel()
            await self._connection.close()
            self.metrics.connected.set(0)
            self._log.info("worker_stopped")

    async def _connect(self) -> AbstractRobustConnection | None:
        """Connect, waiting for the broker with backoff: a worker started during a broker outage
        stays up (live, not ready) rather than crash-looping. Wrong credentials are fatal."""
        wait = 1.0
        while not self._stopping.is_set():
            try:
                return await aio_pika.connect_robust(
                    self.config.amqp_url, client_properties={"connection_name": "tim-recall"}
                )
            except aiormq.exceptions.ProbableAuthenticationError:
                raise
            except (ConnectionError, OSError, aiormq.exceptions.AMQPConnectionError) as exc:
                self._log.warning("broker_unreachable", error=type(exc).__name__, retry_in_s=wait)
            await sleep_unless_set(self._stopping, wait)
            wait = min(wait * 2, 30.0)
        return None

    async def _start_consuming(self) -> None:
        assert self._queue is not None
        self._taken_over = False
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._log.info("consumer_registered", consumer_tag=self._consumer_tag)

    async def _stop_consuming(self) -> None:
        tag, self._consumer_tag = self._consumer_tag, None
        self.metrics.active.set(0)
        if tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(tag)
            except SETTLE_ERRORS as exc:
                self._log.warning("consumer_cancel_failed", error=type(exc).__name__)

    def _on_reconnect(self, *_: object) -> None:
        # Another replica may have been active while we were away: treat the next delivery as a
        # takeover (wait one interval, rebuild the memory).
        self._taken_over = False
        self.metrics.connected.set(1)
        self._log.info("broker_reconnected")

    def _on_disconnect(self, *_: object) -> None:
        self.metrics.connected.set(0)
        self.metrics.active.set(0)

    # ---- one delivery ----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with self._busy:
            if self._stopping.is_set() or self.halted:
                assert self._settler is not None
                await self._settler.release(message, self._log)
                return
            if not self._taken_over:
                await self._take_over()
            started = time.monotonic()
            envelope = read_envelope(message, self._clock())
            log = self._log.bind(
                message_id=message.message_id, correlation_id=message.correlation_id
            )
            verdict = await self._decide(message, envelope, log)
            log = log.bind(task_id=verdict.task_id)
            if verdict.outcome is Outcome.HALT:
                await self._halt(message, verdict, log)
                return
            assert self._settler is not None
            settled = await self._settler.settle(message, envelope, verdict, log)
            if settled.event is not None:
                self.memory.remember_event(settled.event, self._clock())
            if settled.done:
                self._tell(message, verdict, settled.event, time.monotonic() - started, log)

    async def _take_over(self) -> None:
        """First delivery since subscribing: we may have just become the active consumer."""
        self._taken_over = True
        self._pacer.hold()  # the replica before us may have called just now
        self.metrics.active.set(1)
        await self._rebuild_memory()

    async def _rebuild_memory(self) -> None:
        assert self._connection is not None
        now = self._clock()
        since = datetime.fromtimestamp(now - RECALL_WINDOW_S, UTC)
        self.memory.clear()
        count = 0
        try:
            async for event in read_results(
                self._connection, self.config.topology.results_stream, since
            ):
                count += 1
                self.memory.remember_event(event, now)
        except (TimeoutError, *SETTLE_ERRORS) as exc:
            # Without the memory we may spend a call on a duplicate; the API still answers 90050.
            self._log.warning("memory_rebuild_incomplete", error=type(exc).__name__, read=count)
            return
        self._log.info("memory_rebuilt", events=count, recalled=len(self.memory))

    async def _decide(
        self, message: AbstractIncomingMessage, envelope: Envelope, log: FilteringBoundLogger
    ) -> Verdict:
        try:
            request = parse_request(message.body, self.config.max_body_bytes)
        except InvalidRequest as exc:
            return _local(Refuse(90001, exc.info, "invalid"), _history(envelope), None)
        now = self._clock()
        prepared = prepare(
            request,
            envelope.first_seen,
            self.memory,
            self.config.prepare,
            now,
            redelivered=envelope.may_have_reached,
            message_id=envelope.message_id,
        )
        if isinstance(prepared, Refuse):
            return _local(prepared, _history(envelope), request)
        if isinstance(prepared, AlreadySettled):
            return _local(
                Refuse(0, "settled and told before", "already_settled"),
                _history(envelope),
                request,
                Outcome.ALREADY_SETTLED,
            )
        if isinstance(prepared, RecalledEarlier):
            return _local(
                Refuse(90050, prepared.info, "recalled_earlier"),
                _history(envelope),
                request,
                Outcome.RECALLED,
            )
        log = log.bind(task_id=request.task_id)
        attempts = await self._recaller.recall(prepared.request, _history(envelope), log)
        return self._verdict(prepared.request, envelope, attempts)

    def _verdict(self, request: RecallRequest, envelope: Envelope, attempts: Attempts) -> Verdict:
        decision = attempts.decision
        if decision.outcome is Outcome.RETRY:
            # Budget spent or shutting down. A recall whose window surely closed is not sent back.
            closed = window_closed(
                request.task_id, envelope.first_seen, self.config.prepare, self._clock()
            )
            if closed is not None:
                return _local(closed, attempts.history, request)
        return Verdict(
            outcome=decision.outcome,
            code=attempts.code,
            info=attempts.info,
            source="api",
            attempts=attempts.history.attempts,
            reason=decision.reason,
            may_have_reached=attempts.history.may_have_reached,
            task_id=request.task_id,
            has_offline_push_info=request.offline_push_info is not None,
        )

    # ---- halting ---------------------------------------------------------------------------

    async def _halt(
        self, message: AbstractIncomingMessage, verdict: Verdict, log: FilteringBoundLogger
    ) -> None:
        """Our own configuration is wrong: stop consuming, hand the message back, probe."""
        self.halted = True
        self.metrics.halted.set(1)
        await self._stop_consuming()  # first, so the message does not come straight back
        assert self._settler is not None
        await self._settler.release(message, log)
        log.error(
            "worker_halted",
            code=verdict.code,
            info=verdict.info,
            reason=verdict.reason,
            hint="check TIM_SDKAPPID, TIM_IDENTIFIER, the SecretKey, TIM_REGION/TIM_BASE_URL",
        )
        self._probe.start(self._resume, self._stopping)

    async def _resume(self) -> None:
        self.halted = False
        self.metrics.halted.set(0)
        self._log.info("worker_resumed")
        if not self._stopping.is_set():
            self._pacer.hold()
            await self._start_consuming()

    # ---- telling ---------------------------------------------------------------------------

    def _tell(
        self,
        message: AbstractIncomingMessage,
        verdict: Verdict,
        event: ResultEvent | None,
        duration_s: float,
        log: FilteringBoundLogger,
    ) -> None:
        fields = {
            "outcome": verdict.outcome.value,
            "code": verdict.code,
            "source": verdict.source,
            "attempts": verdict.attempts,
            "reason": verdict.reason,
            "duration_s": round(duration_s, 4),
        }
        if verdict.outcome is Outcome.ALREADY_SETTLED:
            log.info("request_already_settled", **fields)
            return
        if event is None:  # re-published to the queue's tail: not settled yet
            self.metrics.republished.inc()
            log.warning("request_republished", info=verdict.info, **fields)
            return
        if event.outcome == "recalled":
            self.metrics.last_recall.set(event.settled_at.timestamp())
            log.info("request_recalled", **fields)
        else:
            self.metrics.dead_letters.labels(str(verdict.code), verdict.source).inc()
            log.warning("request_dead_lettered", info=verdict.info, **fields)
        self.metrics.settled.labels(event.outcome).inc()
        if message.timestamp is not None:
            sent = message.timestamp.replace(tzinfo=message.timestamp.tzinfo or UTC)
            self.metrics.publish_to_settle_seconds.observe(
                max(0.0, (event.settled_at - sent) / timedelta(seconds=1))
            )
        if self._on_settled is not None:
            self._on_settled(event)


def _history(envelope: Envelope) -> History:
    return History(attempts=envelope.attempts, may_have_reached=envelope.may_have_reached)


def _local(
    refusal: Refuse,
    history: History,
    request: RecallRequest | None,
    outcome: Outcome = Outcome.DEAD_LETTER,
) -> Verdict:
    """An outcome decided here, with no call (source `local`): a dead letter by default."""
    return Verdict(
        outcome=outcome,
        code=refusal.code,
        info=refusal.info,
        source="local",
        attempts=history.attempts,
        reason=refusal.reason,
        may_have_reached=history.may_have_reached,
        task_id=request.task_id if request else None,
        has_offline_push_info=bool(request and request.offline_push_info is not None),
    )
