"""The consume loop: one delivery at a time through read, parse, prepare, recall, settle, tell."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from typing import Any

import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from structlog.typing import FilteringBoundLogger

from consumer.core import tracing
from consumer.core.backoff import Backoff
from consumer.core.broker import connect
from consumer.core.client import RevokeClient
from consumer.core.envelope import Envelope, minimal_envelope, read_envelope, remaining_s
from consumer.core.errors import BrokerUnavailable
from consumer.core.fence import silent_for
from consumer.core.halt import HaltProbe
from consumer.core.identity import lineage_of, resolve_chain
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.nodes import Connect, NoNodeReachable, connect_first, node_of, split_urls
from consumer.core.pacing import Pacer, sleep_unless_set
from consumer.core.policy import (
    DELIVERY_LIMIT_REACHED,
    EXPIRATION_PASSED,
    HANDLING_FAILED,
    History,
    Outcome,
    Reason,
    halted_again,
)
from consumer.core.prepare import PrepareRules, Refuse, prepare, window_closed
from consumer.core.rebuild import rebuild_memory
from consumer.core.recaller import Recaller, RecallState, RetryRules
from consumer.core.settle import SETTLE_ERRORS, Journal, Settled, Settler, Step, Verdict
from consumer.core.topology import Topology, declare
from schemas.api import ErrorCode
from schemas.events import ResultEvent
from schemas.recall import InvalidRequest, RecallRequest, parse_request

Clock = Callable[[], float]
CONNECT_BACKOFF = Backoff(1.0, 30.0)  # while no node of the list answers
CANCEL_TIMEOUT_S = 5.0
STUCK_MARGIN_S = 120.0  # settle steps retried, a slot waited for: beyond this, not progressing


@dataclass(frozen=True)
class Delivery:
    """The delivery in hand: the message, its journal key, its log and when it came."""

    message: AbstractIncomingMessage
    key: str  # the generation it arrived as (see Envelope.generation)
    log: FilteringBoundLogger
    started: float
    connection_epoch: int  # a delivery is void once the connection it came on is lost
    returns: int = 0  # the broker's x-delivery-count for this delivery


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
    rebuild_budget_s: float = 60.0
    fence_s: float = 45.0  # no call once the broker has been silent this long (see fence.py)


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
        memory: RecallMemory | None = None,
        on_settled: Callable[[ResultEvent], None] | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.memory = memory if memory is not None else RecallMemory()  # an empty one is falsy
        metrics.watch_memory(self.memory)
        self.halted = False
        self._client = client
        self._pacer = pacer
        self._clock = clock
        self._on_settled = on_settled
        self._connect_to = connect  # one attempt at one URL; None: consumer.core.broker.connect
        self._stopping = asyncio.Event()
        self._recaller = Recaller(
            client, pacer, metrics, config.retry, self._stopping, connected=self._broker_connected
        )
        self._probe = HaltProbe(client, pacer, config.halt_probe_initial_s, config.halt_probe_max_s)
        self._busy = asyncio.Lock()
        self._journal = Journal()
        self._handling: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._connection: AbstractConnection | None = None
        self._settler: Settler | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._taken_over = False  # set on the first delivery since subscribing or reconnecting
        self._fenced = False  # the broker has been silent too long: no call
        self._epoch = 0  # connections lost so far
        # When a halt probe last passed: a request that halts after a probe passed since its own
        # latest halt is its own fault (see halted_before_probe).
        self._probe_passed_at: float | None = None
        self._in_hand_since: float | None = None  # monotonic: the delivery in hand came then
        self._last_settled: float | None = None  # monotonic: the last settle that was acked
        self._log = structlog.get_logger().bind(queue=config.topology.queue)
        # A delivery held longer than its retry budget plus its settling is stuck.
        self._stuck_after_s = config.retry.budget_s + STUCK_MARGIN_S

    # ---- lifecycle -------------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """Each readiness condition: connected, consumer registered, not halted, and the
        delivery in hand (if any) not held longer than its retries and settling can take."""
        in_hand = self._in_hand_s()
        return {
            "connected": self._broker_connected(),
            "consuming": self._consumer_tag is not None,
            "not_halted": not self.halted,
            "progressing": in_hand is None or in_hand <= self._stuck_after_s,
        }

    def progress(self) -> dict[str, float | None]:
        """How long the delivery in hand has been held, and since the last settle (seconds)."""
        in_hand = self._in_hand_s()
        last = self._last_settled
        return {
            "in_hand_s": None if in_hand is None else round(in_hand, 3),
            "since_last_settle_s": None if last is None else round(time.monotonic() - last, 3),
        }

    def _in_hand_s(self) -> float | None:
        since = self._in_hand_since
        return None if since is None else time.monotonic() - since

    def liveness(self) -> dict[str, bool]:
        """Each task the worker needs is alive: while halted, the probe that can resume it."""
        return {"halt_probe": not self.halted or self._probe.running()}

    def _broker_connected(self) -> bool:
        """Connected, and heard from recently enough that our delivery is surely still ours."""
        if self._connection is None or self._connection.is_closed:
            return False
        silent = silent_for(self._connection, asyncio.get_running_loop().time())
        fenced = silent > self.config.fence_s
        if fenced != self._fenced:
            self._fenced = fenced
            if fenced:
                self._log.warning("broker_silent_fenced", silent_s=round(silent, 1))
            else:
                self._log.info("broker_heard_again")
        return not fenced

    def stop(self) -> None:
        """Stop taking messages: no new call; a call in flight finishes and is settled."""
        self._stopping.set()

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Connect, declare, consume until `stop()`, reconnecting (through the list of nodes)
        whenever the connection is lost; then close."""
        urls = split_urls(self.config.amqp_url)
        start = 0
        try:
            while not self._stopping.is_set():
                connected = await self._connect(urls, start)
                if connected is None:
                    return  # stopped before a broker could be reached
                connection, index = connected
                await self._serve(connection, node_of(urls[index]), started)
                start = index + 1  # after a loss, the next node first: this one may be dead
        finally:
            self._probe.cancel()
            self._log.info("worker_stopped")

    async def _serve(
        self, connection: AbstractConnection, node: str, started: asyncio.Event | None
    ) -> None:
        """Consume on one connection until `stop()` (then settle, close) or its loss."""
        topology = self.config.topology
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        self._connection = connection
        try:
            await declare(connection, topology)
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._settler = Settler(
                connection,
                publisher,
                topology,
                self._clock,
                on_told=self._remember,
                on_reply=lambda result: self.metrics.replies.labels(result).inc(),
                on_copied=self.metrics.copies.inc,
            )
            consumer_channel = self._consumer_channel = await connection.channel()
            await consumer_channel.set_qos(prefetch_count=1)
            self._queue = await consumer_channel.declare_queue(
                topology.queue, durable=True, arguments=topology.queue_arguments()
            )
            # The broker can end our consumption while the connection lives: a channel closed
            # (a consumer timeout, a refused publish) or a consumer cancelled (its queue
            # deleted). Neither may leave a replica that looks ready and consumes nothing.
            for name, channel in (("consumer", consumer_channel), ("publisher", publisher)):
                channel.close_callbacks.add(self._on_channel_closed(name, connection))
            raw = await consumer_channel.get_underlay_channel()
            raw.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
            self.metrics.connected.set(1)
            self.metrics.node(node)
            self._log.info("broker_reconnected" if self._epoch else "broker_connected", node=node)
            self._pacer.hold()
            if not self.halted:
                await self._start_consuming()
            if started is not None:
                started.set()
            await _first(self._stopping.wait(), closed.wait())
            if self._stopping.is_set() and not closed.is_set():
                async with self._busy:  # the delivery in hand is settled or released first
                    await self._stop_consuming()
                while self._handling:  # deliveries that came meanwhile are released
                    await asyncio.wait(set(self._handling), timeout=30)
        except SETTLE_ERRORS as exc:  # the connection went while we set up or stopped
            self._log.warning("broker_setup_failed", node=node, error=type(exc).__name__)
        finally:
            self._lost()
            if not connection.is_closed:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await connection.close()

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
        return await connect(url, client_properties={"connection_name": "tim-recall"})

    def _on_channel_closed(
        self, name: str, connection: AbstractConnection
    ) -> Callable[[Any, BaseException | None], None]:
        def closed(_: Any, exc: BaseException | None = None) -> None:
            if connection.is_closed or self._stopping.is_set():
                return  # the connection went, or we closed it: handled there
            self._log.warning("broker_channel_closed", channel=name, error=_brief(exc))
            # Start over on a new connection: declare, consume, rebuild the memory.
            task = asyncio.create_task(connection.close(), name="close-after-channel-loss")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return closed

    def _on_consumer_cancelled(self, frame: Any) -> None:
        tag = getattr(frame, "consumer_tag", None)
        if tag is None or tag != self._consumer_tag:
            return
        self._consumer_tag = None
        self.metrics.active.set(0)
        self._log.warning("consumer_cancelled_by_broker", consumer_tag=tag)
        task = asyncio.create_task(self._resubscribe(), name="resubscribe")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resubscribe(self) -> None:
        """Declare the queues again (a deleted queue comes back empty) and consume again; if that
        fails, start over on a new connection. A queue declared with other arguments stops the
        worker with one line (TopologyError), at the reconnect."""
        connection = self._connection
        try:
            assert connection is not None
            await declare(connection, self.config.topology)
            assert self._consumer_channel is not None
            topology = self.config.topology
            self._queue = await self._consumer_channel.declare_queue(
                topology.queue, durable=True, arguments=topology.queue_arguments()
            )
            if not self.halted and not self._stopping.is_set():
                await self._start_consuming()
        except Exception as exc:
            self._log.warning("consumer_resubscribe_failed", error=type(exc).__name__)
            if connection is not None and not connection.is_closed:
                with contextlib.suppress(*SETTLE_ERRORS):
                    await connection.close()

    async def _start_consuming(self) -> None:
        assert self._queue is not None
        self._taken_over = False
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._log.info("consumer_registered", consumer_tag=self._consumer_tag)

    async def _stop_consuming(self) -> None:
        """Cancel our consumer (idempotent): the broker hands the queue to a standby."""
        tag, self._consumer_tag = self._consumer_tag, None
        self.metrics.active.set(0)
        if tag is not None and self._queue is not None:
            try:
                # A robust channel waits for the broker to come back: not forever.
                await asyncio.wait_for(self._queue.cancel(tag), CANCEL_TIMEOUT_S)
            except SETTLE_ERRORS as exc:
                self._log.warning("consumer_cancel_failed", error=type(exc).__name__)

    def _lost(self) -> None:
        """This connection is over: every delivery it brought is void. The first delivery on
        the next one is a takeover (wait one interval, rebuild the memory): another replica
        may have been active meanwhile."""
        self._consumer_tag = None
        self._taken_over = False
        self._epoch += 1
        self.metrics.connected.set(0)
        self.metrics.active.set(0)
        if not self._stopping.is_set():
            self._log.warning("broker_connection_lost")

    # ---- one delivery ----------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika cancels this callback when its channel closes; the handling goes on in a
        # task of ours, so a call in flight finishes and what it learned stays in the journal
        # for the redelivery.
        task = asyncio.create_task(self._handle(message), name="delivery")
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        await asyncio.shield(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        async with self._busy:
            started = time.monotonic()
            self._in_hand_since = started
            log, envelope, delivery = self._log, None, None
            try:
                # Everything a delivery can raise is inside this `try`: whatever its headers or
                # properties hold, it is settled (released once, then dead-lettered).
                envelope = read_envelope(message, self._clock())
                log = self._log.bind(
                    message_id=envelope.message_id,
                    correlation_id=envelope.correlation_id,
                )
                if envelope.trace_id is not None:
                    log = log.bind(trace_id=envelope.trace_id)
                for problem in (envelope.trace_problem, envelope.reply_problem):
                    if problem is not None:  # ignored, never a reason to lose the request
                        log.warning("request_property_ignored", problem=problem)
                # The journal is keyed on this copy (its generation), not the lineage: a copy
                # of the same chain is a delivery of its own and must not be taken for the one
                # it replaced.
                delivery = Delivery(
                    message, envelope.generation, log, started, self._epoch, envelope.delivery_count
                )
                attrs = {
                    "messaging.destination.name": self.config.topology.queue,
                    "messaging.message.id": envelope.message_id,
                    "messaging.message.conversation_id": envelope.correlation_id,
                }
                with tracing.delivery_span(message.headers, attrs):
                    await self._handle_delivery(delivery, envelope)
            except Exception as exc:  # no delivery is ever left unsettled
                log.exception("delivery_failed", error=type(exc).__name__)
                self.metrics.delivery_failures.inc()
                if envelope is None:
                    envelope = minimal_envelope(message, self._clock())
                if delivery is None:
                    delivery = Delivery(message, envelope.generation, log, started, self._epoch)
                await self._after_failure(delivery, envelope, exc)
            finally:
                self._in_hand_since = None

    async def _handle_delivery(self, delivery: Delivery, envelope: Envelope) -> None:
        if not self._taken_over:
            await self._take_over()
        key = delivery.key
        # Only a redelivery can be one this process already worked on (a producer's identical
        # copy is not redelivered); a fresh delivery starts a journal entry of its own.
        progress = self._journal.peek(key) if envelope.redelivered else None
        if progress is not None and progress.verdict is not None and progress.envelope:
            # Our own settlement of this copy stopped with the connection: finish it. Its ack,
            # if we sent one, never arrived (the broker redelivered it).
            progress.done.discard(Step.ACK)
            delivery.log.info("settle_resumed", steps_done=sorted(progress.done))
            await self._settle(delivery, progress.envelope, progress.verdict)
            return
        self._journal.start(key)
        now = self._clock()
        chain = resolve_chain(
            generation=envelope.generation,
            carried=envelope.lineage if envelope.is_copy else None,
            redelivered=envelope.redelivered,
            was_told=lambda lineage: self.memory.was_told(lineage, now),
        )
        envelope = replace(envelope, lineage=chain.lineage)
        delivery = replace(delivery, log=delivery.log.bind(lineage=chain.lineage))
        if chain.told:  # settled and told before: only its ack is owed
            verdict = _no_call(Outcome.ALREADY_SETTLED, Reason.ALREADY_SETTLED, envelope, None)
            await self._settle(delivery, envelope, verdict)
            return
        # A redelivery we have no record of: another process (or this one before a restart)
        # had it and may have called. Our own, we know exactly.
        called = progress.called if progress is not None else envelope.redelivered
        if called:
            envelope = envelope.with_call_sent()
        self._journal.open(key).called = called
        early = self._before_call(delivery, envelope)
        if early is not None:  # refused before any call: the body, or the broker's limit
            await self._settle(delivery, envelope, early)
            return
        if self._stopping.is_set() or self.halted:
            reason = Reason.SHUTDOWN if self._stopping.is_set() else Reason.HALTED
            await self._release(delivery, envelope, reason)
            return
        verdict = await self._decide(delivery, envelope)
        if verdict.outcome is Outcome.HALT:
            if not halted_again(envelope.halted_at, self._probe_passed_at):
                await self._halt(delivery, envelope, verdict)
                return
            # A probe passed after this request's own latest halt, and it halts again: its own
            # answer (a gateway's 403 or 413 for one body), not our configuration. It must not
            # go round until the broker's delivery limit drops it without an event.
            verdict = replace(verdict, outcome=Outcome.DEAD_LETTER, reason=Reason.HALTED_AGAIN)
        if verdict.outcome is Outcome.RELEASED:  # no call was made: stopping, or disconnected
            await self._release(delivery, envelope, verdict.reason)
            return
        learned = replace(envelope, may_have_reached=verdict.may_have_reached)
        await self._settle(delivery, learned, verdict)

    def _before_call(self, delivery: Delivery, envelope: Envelope) -> Verdict | None:
        """What is decided before anything is copied or called: a body that is no request, or a
        delivery the broker would dead-letter unseen at its next return. The request parsed
        (and reused by the call) is kept on the delivery's journal entry."""
        if envelope.delivery_count >= self.config.topology.delivery_limit - 1:
            info = (
                f"returned to the queue {envelope.delivery_count} times (delivery limit "
                f"{self.config.topology.delivery_limit}): dead-lettered before the broker drops "
                "it unseen; see the delivery_failed and settle_failed events"
            )
            refusal = Refuse(DELIVERY_LIMIT_REACHED, info, Reason.DELIVERY_LIMIT)
            return _local(refusal, envelope, None)
        try:
            request = parse_request(delivery.message.body, self.config.max_body_bytes)
        except InvalidRequest as exc:
            return _local(Refuse(ErrorCode.INVALID_JSON, exc.info, Reason.INVALID), envelope, None)
        self._journal.open(delivery.key).request = request
        return None

    async def _settle(self, delivery: Delivery, envelope: Envelope, verdict: Verdict) -> Settled:
        """Settle through the journal; when stopping, hand the queue over before the ack."""
        if self._stopping.is_set():
            # Our call (if any) has finished: only now may a standby take the next delivery.
            await self._stop_consuming()
        assert self._settler is not None
        progress = self._journal.open(delivery.key)
        message, log = delivery.message, delivery.log.bind(task_id=verdict.task_id)
        epoch = delivery.connection_epoch

        def void() -> bool:
            # Its connection was lost (the broker redelivers it), or we are stopping with no
            # broker to settle with (it stays in the queue for the next replica).
            gone = self._stopping.is_set() and not self._broker_connected()
            return self._epoch != epoch or gone

        # This delivery's count, not the envelope's: a resumed settlement carries the envelope of
        # the delivery it started on.
        last_chance = delivery.returns >= self.config.topology.delivery_limit - 1
        settled = await self._settler.settle(
            message, envelope, verdict, log, progress, void=void, last_chance=last_chance
        )
        if settled.done:
            self._last_settled = time.monotonic()
        if settled.done and not progress.told:
            progress.told = True
            duration = time.monotonic() - delivery.started
            self._tell(message, verdict, settled.event, duration, log)
        return settled

    async def _take_over(self) -> None:
        """First delivery since subscribing: we may have just become the active consumer."""
        self._taken_over = True
        self._pacer.hold()  # the replica before us may have called just now
        self.metrics.active.set(1)
        assert self._connection is not None
        report = await rebuild_memory(
            self._connection,
            self.config.topology.results_stream,
            self.memory,
            self._clock(),
            budget_s=self.config.rebuild_budget_s,
        )
        # Without a complete memory we may spend a call on a duplicate; the API still
        # answers 90050, so a partial rebuild is a warning, not a stop.
        event = "memory_rebuilt" if report.complete else "memory_rebuild_incomplete"
        level = self._log.info if report.complete else self._log.warning
        level(event, **report.as_log())

    def _remember(self, event: ResultEvent) -> None:
        self.memory.remember_event(event, self._clock())

    async def _decide(self, delivery: Delivery, envelope: Envelope) -> Verdict:
        progress = self._journal.open(delivery.key)
        request = progress.request
        assert request is not None  # parsed by _before_call
        prepared = prepare(
            request,
            envelope.first_seen,
            self.memory,
            self.config.prepare,
            self._clock(),
            published_at=envelope.published_at,
        )
        if isinstance(prepared, Refuse):
            return _local(prepared, envelope, request)
        log = delivery.log.bind(task_id=request.task_id)

        def sent() -> None:
            progress.called = True

        def ours() -> bool:  # a delivery of a lost connection is void, even once reconnected
            return self._epoch == delivery.connection_epoch

        history = History(calls=envelope.attempts, may_have_reached=envelope.may_have_reached)
        state = await self._recaller.recall(prepared.request, history, log, sent, ours)
        return self._verdict(prepared.request, envelope, state)

    def _verdict(self, request: RecallRequest, envelope: Envelope, state: RecallState) -> Verdict:
        decision = state.decision
        if decision.outcome is Outcome.RETRY:
            if state.sent == 0:  # stopping, or the broker went away, before any call
                reason = Reason.SHUTDOWN if self._stopping.is_set() else Reason.DISCONNECTED
                return _no_call(Outcome.RELEASED, reason, envelope, request)
            # Budget spent or shutting down. A recall whose window surely closed is not sent back.
            closed = window_closed(
                request.task_id,
                envelope.first_seen,
                self.config.prepare,
                self._clock(),
                envelope.published_at,
            )
            if closed is not None:
                history = state.history
                spent = replace(
                    envelope, attempts=history.calls, may_have_reached=history.may_have_reached
                )
                return _local(closed, spent, request)
        return Verdict(
            outcome=decision.outcome,
            code=state.answer_code,
            info=state.info,
            source="api",
            attempts=state.history.calls,
            reason=decision.reason,
            may_have_reached=state.history.may_have_reached,
            task_id=request.task_id,
            has_offline_push_info=request.offline_push_info is not None,
        )

    async def _release(
        self,
        delivery: Delivery,
        envelope: Envelope,
        reason: Reason,
        *,
        halts: int = 0,
        failures: int = 0,
    ) -> None:
        """Hand the request back to the queue's tail, unsettled, saying what we know of it; or,
        when the producer's `expiration` ran out meanwhile, tell it expired instead."""
        now = self._clock()
        released = replace(
            envelope,
            releases=envelope.releases + 1,
            halts=envelope.halts + halts,
            halted_at=now if halts else envelope.halted_at,
            failures=envelope.failures + failures,
        )
        left = remaining_s(envelope, now)
        if left is not None and left <= 0:
            info = "the producer's expiration ran out before the request could be recalled"
            refusal = Refuse(EXPIRATION_PASSED, info, Reason.EXPIRATION_PASSED)
            await self._settle(delivery, released, _local(refusal, released, None))
            return
        verdict = _no_call(Outcome.RELEASED, reason, released, None)
        self.metrics.releases.labels(reason).inc()
        await self._settle(delivery, released, verdict)

    async def _after_failure(self, delivery: Delivery, envelope: Envelope, exc: Exception) -> None:
        """Release once; if handling raised before too, dead-letter it (local 99999)."""
        # Whatever this copy's handling got to, it starts over; what it knew of a call stays.
        progress = self._journal.peek(delivery.key)
        if (progress is not None and progress.called) or envelope.redelivered:
            envelope = envelope.with_call_sent()
        self._journal.close(delivery.key)
        if envelope.lineage is None:  # the copy must continue this chain, whatever raised
            envelope = replace(envelope, lineage=lineage_of(envelope.generation, 0))
        try:
            if envelope.failures >= 1:
                refusal = Refuse(
                    HANDLING_FAILED,
                    f"handling raised {type(exc).__name__} twice (see the delivery_failed events)",
                    Reason.HANDLING_FAILED,
                )
                await self._settle(delivery, envelope, _local(refusal, envelope, None))
            else:
                await self._release(delivery, envelope, Reason.ERROR, failures=1)
        except Exception:  # the last resort must not raise either
            delivery.log.exception("delivery_failure_unsettled")
            if self._settler is not None:
                await self._settler.give_back(delivery.message, delivery.log)

    # ---- halting ---------------------------------------------------------------------------

    async def _halt(self, delivery: Delivery, envelope: Envelope, verdict: Verdict) -> None:
        """Our own configuration is wrong: stop consuming, hand the message back, probe."""
        self.halted = True
        self.metrics.halted.set(1)
        await self._stop_consuming()  # first, so the message does not come straight back
        delivery.log.error(
            "worker_halted",
            code=verdict.code,
            info=verdict.info,
            reason=verdict.reason,
            hint="check TIM_SDKAPPID, TIM_IDENTIFIER, the SecretKey, TIM_REGION/TIM_BASE_URL",
        )
        # Probing starts first: /healthz counts a halted worker without a probe as dead.
        self._probe.start(self._resume, self._stopping)
        # The halting answer refused the call: it cannot have recalled anything.
        reached = replace(envelope, may_have_reached=verdict.may_have_reached)
        await self._release(delivery, reached, Reason.HALTED, halts=1)

    async def _resume(self) -> None:
        if not self._stopping.is_set():
            self._pacer.hold()
            await self._start_consuming()  # raises if the broker is gone: the probe goes on
        self.halted = False
        self._probe_passed_at = self._clock()
        self.metrics.halted.set(0)
        self._log.info("worker_resumed")

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
        if verdict.outcome is Outcome.RELEASED:
            log.info("request_released", **fields)
            return
        if verdict.outcome is Outcome.ALREADY_SETTLED:
            log.info("request_already_settled", **fields)
            return
        tracing.current_span().set(
            **{"tim.outcome": verdict.outcome.value, "tim.code": verdict.code}
        )
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


def _local(refusal: Refuse, envelope: Envelope, request: RecallRequest | None) -> Verdict:
    """A dead letter decided here, with no call (source `local`), with the refusal's code."""
    return replace(
        _no_call(Outcome.DEAD_LETTER, refusal.reason, envelope, request),
        code=refusal.code,
        info=refusal.info,
    )


def _no_call(
    outcome: Outcome, reason: Reason, envelope: Envelope, request: RecallRequest | None
) -> Verdict:
    """An outcome with no call and no answer (source `local`): nothing to say but the reason."""
    return Verdict(
        outcome=outcome,
        code=None,
        info=reason,
        source="local",
        attempts=envelope.attempts,
        reason=reason,
        may_have_reached=envelope.may_have_reached,
        task_id=request.task_id if request else None,
        has_offline_push_info=bool(request and request.offline_push_info is not None),
    )


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
