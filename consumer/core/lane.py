"""One app's lane: its deliveries, one at a time, read, prepared, paced, called, decided, settled.

A lane owns what is the app's own: its pacer (1 call per interval as the app's server sees it),
its client (key and UserSig cache), its halt state and probe, its journal. What it shares it
reaches through the session (`LaneHost`): the connection's epoch and fence, the settler, the
consumer, the memory follower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage
from structlog.typing import FilteringBoundLogger

from consumer.core import tracing
from consumer.core.client import RevokeClient
from consumer.core.envelope import Envelope, minimal_envelope, read_envelope, remaining_s
from consumer.core.halt import HaltProbe
from consumer.core.identity import lineage_of, resolve_chain
from consumer.core.memory import AppMemory
from consumer.core.observer import Observer
from consumer.core.pacing import Pacer
from consumer.core.policy import (
    EXPIRATION_PASSED,
    HANDLING_FAILED,
    Action,
    History,
    Outcome,
    Reason,
    action_for,
)
from consumer.core.prepare import PrepareRules, Refuse, prepare
from consumer.core.recaller import Recaller, RetryRules
from consumer.core.settle import Journal, Settled, Settler, Step
from consumer.core.takeover import first_call
from consumer.core.topology import Topology
from consumer.core.verdict import Verdict, before_call, decide, halting, local, no_call
from schemas.events import LaneState

STUCK_MARGIN_S = 120.0  # settle steps retried, a slot waited for: beyond this, not progressing


@dataclass(frozen=True)
class LaneConfig:
    """What one app's lane follows."""

    sdkappid: int
    topology: Topology  # the app's queue, and the fleet's dead-letter queue and stream
    retry: RetryRules
    prepare: PrepareRules
    max_body_bytes: int = 64 * 1024
    halt_probe_initial_s: float = 5.0
    halt_probe_max_s: float = 300.0
    takeover_budget_s: float = 60.0  # how long a takeover waits for the memory to catch up
    priority: int = 0  # its consumer priority (RabbitMQ 4: the highest subscriber is active)


class LaneHost(Protocol):
    """What a lane uses of its session."""

    epoch: int

    def connected(self) -> bool:
        """Connected, and the broker heard from recently enough (the fence)."""

    def settler(self) -> Settler:
        """The connection's settler (raises if none)."""

    async def subscribe(self, lane: Lane) -> None:
        """Consume the lane's queue."""

    async def unsubscribe(self, lane: Lane) -> None:
        """Cancel the lane's consumer (idempotent)."""

    async def caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the memory holds what was told before now."""

    def announce(self, lane: Lane, state: LaneState, reason: str | None = None) -> None:
        """Record the lane's new state on the results stream, in the background."""

    def call_record(self, lane: Lane) -> aio_pika.Message:
        """The record of a call no results event tells."""


@dataclass(frozen=True)
class Delivery:
    """The delivery in hand: the message, its journal key, its log and when it came."""

    message: AbstractIncomingMessage
    key: str  # the generation it arrived as (see Envelope.generation)
    log: FilteringBoundLogger
    started: float
    connection_epoch: int  # a delivery is void once the connection it came on is lost
    returns: int = 0  # the broker's x-delivery-count for this delivery


class Lane:
    """Takes one app's recall requests one at a time and settles each exactly once."""

    def __init__(
        self,
        config: LaneConfig,
        client: RevokeClient,
        pacer: Pacer,
        *,
        host: LaneHost,
        memory: AppMemory,
        observer: Observer,
        stopping: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.app = config.sdkappid
        self.client = client
        self.pacer = pacer
        self.memory = memory
        self.halted = False
        self.halt_reason: str | None = None
        self.consumer_tag: str | None = None
        self.active = False  # had a delivery since subscribing: the broker's active consumer
        self._host = host
        self._observer = observer
        self._stopping = stopping
        self._clock = clock
        self._recaller = Recaller(
            client, pacer, observer.metrics, config.retry, stopping, connected=host.connected
        )
        self._probe = HaltProbe(client, pacer, config.halt_probe_initial_s, config.halt_probe_max_s)
        self.busy = asyncio.Lock()
        self._journal = Journal()
        self._probe_passed_at: float | None = None  # see policy.halted_again
        self._in_hand_since: float | None = None
        self._last_settled: float | None = None
        # The broker says nothing when it gives the queue to another consumer (a replica of
        # higher priority): a lane knows it was active until its last delivery, no longer.
        self.last_delivery: float | None = None
        # A call was made that no results event has told yet: if its delivery goes back to the
        # queue (a copy), its time is recorded on the stream first, for a replica taking over.
        self._untold_call = False
        self._stuck_after_s = config.retry.budget_s + STUCK_MARGIN_S
        self.log = structlog.get_logger().bind(queue=config.topology.queue, sdkappid=self.app)

    # ---- state -----------------------------------------------------------------------------

    def in_hand_s(self) -> float | None:
        """How long the delivery in hand has been held (None: none)."""
        since = self._in_hand_since
        return None if since is None else time.monotonic() - since

    def since_last_settle_s(self) -> float | None:
        """Seconds since the last delivery was settled (None: none yet)."""
        last = self._last_settled
        return None if last is None else time.monotonic() - last

    def progressing(self) -> bool:
        """No delivery held longer than its retries and settling can take."""
        held = self.in_hand_s()
        return held is None or held <= self._stuck_after_s

    def probe_alive(self) -> bool:
        """While halted, the probe that can resume the lane is alive."""
        return not self.halted or self._probe.running()

    def lost(self) -> None:
        """The connection is over: the first delivery on the next one is a takeover."""
        self.consumer_tag = None
        if self.active:
            self.active = False
            self._observer.active(self.app, False)

    def close(self) -> None:
        """The lane is going away: its probe stops."""
        self._probe.cancel()

    # ---- one delivery ----------------------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Settle one delivery of the lane's queue; nothing raised escapes."""
        async with self.busy:
            started = time.monotonic()
            self._in_hand_since = self.last_delivery = started
            log, envelope, delivery = self.log, None, None
            try:
                # Everything a delivery can raise is inside this `try`: whatever its headers or
                # properties hold, it is settled (released once, then dead-lettered).
                envelope = read_envelope(message, self._clock())
                log = self.log.bind(
                    message_id=envelope.message_id, correlation_id=envelope.correlation_id
                )
                if envelope.trace_id is not None:
                    log = log.bind(trace_id=envelope.trace_id)
                for problem in (envelope.trace_problem, envelope.reply_problem):
                    if problem is not None:  # ignored, never a reason to lose the request
                        log.warning("request_property_ignored", problem=problem)
                # The journal is keyed on this copy (its generation), not the lineage.
                delivery = Delivery(
                    message,
                    envelope.generation,
                    log,
                    started,
                    self._host.epoch,
                    envelope.delivery_count,
                )
                attrs = {
                    "messaging.destination.name": self.config.topology.queue,
                    "messaging.message.id": envelope.message_id,
                    "messaging.message.conversation_id": envelope.correlation_id,
                }
                with tracing.delivery_span(message.headers, attrs):
                    await self._handle(delivery, envelope)
            except Exception as exc:  # no delivery is ever left unsettled
                log.exception("delivery_failed", error=type(exc).__name__)
                self._observer.metrics.delivery_failures.inc()
                if envelope is None:
                    envelope = minimal_envelope(message, self._clock())
                if delivery is None:
                    epoch = self._host.epoch
                    delivery = Delivery(message, envelope.generation, log, started, epoch)
                await self._after_failure(delivery, envelope, exc)
            finally:
                self._in_hand_since = None

    async def _handle(self, delivery: Delivery, envelope: Envelope) -> None:
        if not self.active:
            await self._take_over(redelivered=envelope.redelivered)
        key = delivery.key
        # Only a redelivery can be one this process already worked on; a fresh delivery starts
        # a journal entry of its own.
        progress = self._journal.peek(key) if envelope.redelivered else None
        if progress is not None and progress.verdict is not None and progress.envelope:
            # Our own settlement of this copy stopped with the connection: finish it.
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
            verdict = no_call(Outcome.ALREADY_SETTLED, Reason.ALREADY_SETTLED, envelope, None)
            await self._settle(delivery, envelope, verdict)
            return
        # A redelivery we have no record of: another process (or this one before a restart)
        # had it and may have called. Our own, we know exactly.
        called = progress.called if progress is not None else envelope.redelivered
        if called:
            envelope = envelope.with_call_sent()
        entry = self._journal.open(key)
        entry.called = called
        parsed = before_call(
            envelope,
            delivery.message.body,
            delivery_limit=self.config.topology.delivery_limit,
            max_body_bytes=self.config.max_body_bytes,
        )
        if isinstance(parsed, Verdict):  # refused before any call: the body, or the limit
            await self._settle(delivery, envelope, parsed)
            return
        entry.request = parsed
        if self._stopping.is_set() or self.halted:
            reason = Reason.SHUTDOWN if self._stopping.is_set() else Reason.HALTED
            await self._release(delivery, envelope, reason)
            return
        verdict = halting(await self._call(delivery, envelope), envelope, self._probe_passed_at)
        if verdict.outcome is Outcome.HALT:
            await self._halt(delivery, envelope, verdict)
            return
        if verdict.outcome is Outcome.RELEASED:  # no call was made: stopping, or disconnected
            await self._release(delivery, envelope, verdict.reason)
            return
        learned = replace(envelope, may_have_reached=verdict.may_have_reached)
        await self._settle(delivery, learned, verdict)

    async def _call(self, delivery: Delivery, envelope: Envelope) -> Verdict:
        progress = self._journal.open(delivery.key)
        request = progress.request
        assert request is not None  # parsed by before_call
        now = self._clock()
        rules = self.config.prepare
        prepared = prepare(
            request,
            envelope.first_seen,
            self.memory,
            rules,
            now,
            published_at=envelope.published_at,
        )
        if isinstance(prepared, Refuse):
            return local(prepared, envelope, request)
        log = delivery.log.bind(task_id=request.task_id)

        def sent() -> None:
            progress.called = True
            self._untold_call = True

        def ours() -> bool:  # a delivery of a lost connection is void, even once reconnected
            return self._host.epoch == delivery.connection_epoch

        history = History(calls=envelope.attempts, may_have_reached=envelope.may_have_reached)
        state = await self._recaller.recall(prepared.request, history, log, sent, ours)
        stopping = self._stopping.is_set()
        return decide(prepared.request, envelope, state, rules, self._clock(), stopping=stopping)

    async def _settle(self, delivery: Delivery, envelope: Envelope, verdict: Verdict) -> Settled:
        """Settle through the journal; when stopping, hand the queue over before the ack: after
        the results event, so that a standby's first (fresh) delivery comes after it was told
        (the standby places its first call one interval after the last settle told)."""

        async def hand_over() -> None:
            await self._host.unsubscribe(self)

        progress = self._journal.open(delivery.key)
        message, log = delivery.message, delivery.log.bind(task_id=verdict.task_id)
        epoch, host = delivery.connection_epoch, self._host

        def void() -> bool:
            # Its connection was lost (the broker redelivers it), or we are stopping with no
            # broker to settle with (it stays in the queue for the next replica).
            gone = self._stopping.is_set() and not host.connected()
            return host.epoch != epoch or gone

        # This delivery's count, not the envelope's: a resumed settlement carries the envelope of
        # the delivery it started on.
        last_chance = delivery.returns >= self.config.topology.delivery_limit - 1
        goes_back = action_for(verdict.outcome) in (Action.REPUBLISH, Action.RELEASE)
        record = self._host.call_record(self) if goes_back and self._untold_call else None
        settled = await self._host.settler().settle(
            message,
            envelope,
            verdict,
            log,
            progress,
            void=void,
            last_chance=last_chance,
            queue=self.config.topology.queue,
            sdkappid=self.app,
            before_ack=hand_over if self._stopping.is_set() else None,
            call_record=record,
            next_call=self.next_call_at(),
        )
        if Step.RESULT_EVENT in progress.done or Step.CALL_RECORD in progress.done:
            self._untold_call = False
        if settled.done:
            self._last_settled = time.monotonic()
        if settled.done and not progress.told:
            progress.told = True
            duration = time.monotonic() - delivery.started
            self._observer.told(
                self.app, message, verdict, event=settled.event, duration_s=duration, log=log
            )
        return settled

    def next_call_at(self) -> float:
        """When this lane may call next (unix seconds): told with each settle, for a takeover."""
        return self._clock() + self.pacer.delay()

    async def _take_over(self, *, redelivered: bool) -> None:
        """First delivery since subscribing: we may have just become the app's active consumer,
        and the replica before us may have called just now. Its first call waits as
        consumer/core/takeover.py decides: one interval after the last settle told for the app
        (an app idle for a while is called for at once), or, for a redelivery that may have been
        called for, one interval from its receipt."""
        self.active = True
        received, waiting_from = self._clock(), self.pacer.now()
        self._observer.active(self.app, True)
        # A chain the replica before us told just before it died must be in the memory.
        current = await self._host.caught_up(self.config.takeover_budget_s)
        first = first_call(
            redelivered=redelivered,
            received=received,
            memory_current=current,
            last_told=self.memory.last_told_at(),
            next_call=self.memory.next_call_at(),
            interval_s=self.pacer.interval_s,
        )
        # On the pacer's clock, counted from the receipt (catching up took some of the wait).
        self.pacer.not_before(waiting_from + first.at - received)
        self.log.debug("lane_first_call", rule=first.rule, wait_s=round(first.at - received, 3))
        recalled = self.memory.memory.sizes().get("recalled", 0)
        self._host.announce(self, "active")
        if current:
            self.log.info("lane_taken_over", recalled=recalled)
        else:  # the API still answers 90050 for a duplicate: a warning, not a stop
            self.log.warning("lane_taken_over_memory_behind", recalled=recalled)

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
            await self._settle(delivery, released, local(refusal, released, None))
            return
        self._observer.released(reason)
        await self._settle(delivery, released, no_call(Outcome.RELEASED, reason, released, None))

    async def _after_failure(self, delivery: Delivery, envelope: Envelope, exc: Exception) -> None:
        """Release once; if handling raised before too, dead-letter it (local 99999)."""
        if self._host.epoch != delivery.connection_epoch:
            # Its connection is gone: the broker redelivers it, and the journal (kept as it is)
            # tells the redelivery what was done.
            delivery.log.warning("settle_abandoned_redelivery_expected", step="after_failure")
            return
        # Whatever this copy's handling got to, it starts over; what it knew of a call stays.
        progress = self._journal.peek(delivery.key)
        called = (progress is not None and progress.called) or envelope.redelivered
        if called:
            envelope = envelope.with_call_sent()
        self._journal.close(delivery.key)
        self._journal.open(delivery.key).called = called
        if envelope.lineage is None:  # the copy must continue this chain, whatever raised
            envelope = replace(envelope, lineage=lineage_of(envelope.generation, 0))
        try:
            if envelope.failures >= 1:
                refusal = Refuse(
                    HANDLING_FAILED,
                    f"handling raised {type(exc).__name__} twice (see the delivery_failed events)",
                    Reason.HANDLING_FAILED,
                )
                await self._settle(delivery, envelope, local(refusal, envelope, None))
            else:
                await self._release(delivery, envelope, Reason.ERROR, failures=1)
        except Exception:  # the last resort must not raise either
            delivery.log.exception("delivery_failure_unsettled")
            try:
                settler = self._host.settler()
            except RuntimeError:
                return  # no connection: the broker redelivers it
            await settler.give_back(delivery.message, delivery.log)

    # ---- halting ---------------------------------------------------------------------------

    async def _halt(self, delivery: Delivery, envelope: Envelope, verdict: Verdict) -> None:
        """The app's configuration is wrong: stop consuming, hand the message back, probe."""
        self.halted = True
        self.halt_reason = f"{verdict.code}: {verdict.info}"[:300]
        self._observer.halted(self.app, True)
        await self._host.unsubscribe(self)  # first, so the message does not come straight back
        delivery.log.error(
            "worker_halted",
            code=verdict.code,
            info=verdict.info,
            reason=verdict.reason,
            hint="check the app's SDKAppID, identifier, SecretKey, region or base URL",
        )
        self._host.announce(self, "halted", self.halt_reason)
        # Probing starts first: /healthz counts a halted lane without a probe as dead.
        self._probe.start(self._resume, self._stopping)
        # The halting answer refused the call: it cannot have recalled anything.
        reached = replace(envelope, may_have_reached=verdict.may_have_reached)
        await self._release(delivery, reached, Reason.HALTED, halts=1)

    async def _resume(self) -> None:
        if not self._stopping.is_set():
            self.pacer.hold()
            await self._host.subscribe(self)  # raises if the broker is gone: the probe goes on
        self.halted = False
        self.halt_reason = None
        self._probe_passed_at = self._clock()
        self._observer.halted(self.app, False)
        self._host.announce(self, "resumed")
        self.log.info("worker_resumed")
