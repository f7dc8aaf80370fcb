"""One request's calls: pace, call, classify, retry with tenacity in a budget. No broker here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_before_delay
from tenacity.stop import stop_base

from consumer.core import tracing
from consumer.core.backoff import Backoff
from consumer.core.client import RevokeClient
from consumer.core.metrics import Metrics
from consumer.core.pacing import Pacer, sleep_unless_set
from consumer.core.policy import (
    Decision,
    History,
    Outcome,
    Reason,
    classify,
    may_have_taken_effect,
)
from consumer.core.results import ApiAnswer, ApiResult, TransportFailure, result_code
from schemas.api import ErrorCode
from schemas.recall import RecallRequest


@dataclass(frozen=True)
class RetryRules:
    """How long one delivery may keep retrying, and how the waits grow."""

    budget_s: float = 300.0
    initial_s: float = 1.0
    max_s: float = 30.0


@dataclass
class RecallState:
    """What one delivery's calls for its request came to so far."""

    history: History  # across deliveries: updated by each call
    last: ApiResult | None = None
    decision: Decision = field(default_factory=lambda: Decision(Outcome.RETRY, Reason.NOT_CALLED))
    sent: int = 0  # calls this delivery sent (0: handed back untouched)

    @property
    def code(self) -> int | None:
        """The last ErrorCode answered, None when no answer was read."""
        return result_code(self.last)

    @property
    def answer_code(self) -> int | None:
        """The last ErrorCode, or the HTTP status of a non-200 answer (what a dead letter says)."""
        if isinstance(self.last, TransportFailure):
            return self.last.http_status
        return self.code

    @property
    def info(self) -> str:
        """The last ErrorInfo, or what went wrong below the API."""
        if isinstance(self.last, ApiAnswer):
            return self.last.info
        if isinstance(self.last, TransportFailure):
            return self.last.detail
        return ""


class _StopWhen(stop_base):
    """Stop retrying once `condition()` holds (shutting down, or the delivery is void)."""

    def __init__(self, condition: Callable[[], bool]) -> None:
        self._condition = condition

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._condition()


def metric_code(result: ApiResult) -> str:
    """The `code` label of one call: its ErrorCode, or the kind of transport failure."""
    if isinstance(result, ApiAnswer):
        return str(result.code)
    return f"transport_{result.kind.value}"


class Recaller:
    """Carries out calls for one request at a time; the decisions are `classify`'s."""

    def __init__(
        self,
        client: RevokeClient,
        pacer: Pacer,
        metrics: Metrics,
        rules: RetryRules,
        stopping: asyncio.Event,
        *,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        self._pacer = pacer
        self._metrics = metrics
        self._rules = rules
        self._stopping = stopping
        self._connected = connected
        self._backoff = Backoff(rules.initial_s, rules.max_s, jitter_s=rules.initial_s)

    async def call_once(
        self,
        request: RecallRequest,
        state: RecallState,
        on_send: Callable[[], None] = lambda: None,
        ours: Callable[[], bool] = lambda: True,
    ) -> RecallState:
        """Wait for a slot, make one call, and classify its result.

        No call starts once the worker is stopping: the wait for the slot ends at once.
        `on_send` runs just before the request leaves (the call may reach the server). `ours`
        says whether the delivery is still ours (its connection not lost meanwhile).
        """
        if not await self._wait_for_slot():
            return state
        async with self._pacer.slot() as slot:
            if not self._may_call(ours):
                return state
            on_send()
            state.sent += 1
            started = time.monotonic()
            attempt = state.history.calls + 1
            with tracing.call_span(
                {"tim.task_id": request.task_id, "tim.attempt": attempt}
            ) as span:
                result = await self._client.revoke(request, slot)
                span.set(**{"tim.code": result_code(result), "tim.outcome": metric_code(result)})
            if isinstance(result, ApiAnswer):  # no answer: its arrival is unknown
                slot.answered()
                if result.code == ErrorCode.RECALL_TOO_FREQUENT:
                    slot.too_frequent()
        self._metrics.api_call_seconds.observe(time.monotonic() - started)
        self._metrics.api_calls.labels(metric_code(result)).inc()
        decision = classify(result, state.history, self._pacer.interval_s)
        reached = may_have_taken_effect(result)
        state.history = History(
            calls=state.history.calls + 1,
            may_have_reached=state.history.may_have_reached or reached,
            renewed_usersig=decision.renew_usersig,
        )
        state.last = result
        state.decision = decision
        if decision.renew_usersig:
            self._client.renew_usersig()
        return state

    async def recall(
        self,
        request: RecallRequest,
        history: History,
        log: structlog.typing.FilteringBoundLogger,
        on_send: Callable[[], None] = lambda: None,
        ours: Callable[[], bool] = lambda: True,
    ) -> RecallState:
        """Call until an outcome other than RETRY, the budget is spent, the worker stops, or the
        delivery is no longer `ours`."""
        state = RecallState(history=history)
        started = time.monotonic()
        # The first call outside tenacity: most requests end with it, and a retrying object per
        # request (its state refers back to it) was cyclic garbage the collector had to find,
        # 50 objects a recall, walked in full collections that stalled every lane.
        await self.call_once(request, state, on_send, ours)
        if state.decision.outcome is not Outcome.RETRY:
            return state
        first = True

        async def attempt() -> RecallState:
            nonlocal first
            if first:  # tenacity's first attempt is the call made above: its answer
                first = False
                return state
            if self._stopping.is_set():
                return state  # shutting down: no new call, settle what we have
            return await self.call_once(request, state, on_send, ours)

        def wait(retry_state: RetryCallState) -> float:
            decision = state.decision
            if decision.backoff:
                return max(decision.min_wait_s, self._backoff.wait_s(retry_state.attempt_number))
            return decision.min_wait_s

        def before_sleep(retry_state: RetryCallState) -> None:
            reason = state.decision.reason
            self._metrics.retries.labels(reason).inc()
            wait_s = retry_state.upcoming_sleep
            log.info(
                "retry_scheduled",
                reason=reason,
                code=state.code,
                wait_s=round(wait_s, 3),
                attempts=state.history.calls,
                info=state.info,
            )

        retrying = AsyncRetrying(
            retry=retry_if_result(lambda a: a.decision.outcome is Outcome.RETRY),
            stop=stop_before_delay(self._rules.budget_s - (time.monotonic() - started))
            | _StopWhen(lambda: self._stopping.is_set() or not self._may_call(ours)),
            wait=wait,
            # A retry wait ends early on shutdown, so SIGTERM never waits out a 60 s lockout.
            sleep=lambda seconds: sleep_unless_set(self._stopping, seconds),
            before_sleep=before_sleep,
            retry_error_callback=lambda retry_state: state,
        )
        result: RecallState = await retrying(attempt)
        return result

    async def _wait_for_slot(self) -> bool:
        """Wait until the pacer allows a call; False when the worker stops meanwhile."""
        while not self._stopping.is_set() and (wait := self._pacer.delay()) > 0:
            await sleep_unless_set(self._stopping, wait)
        return not self._stopping.is_set()

    def _may_call(self, ours: Callable[[], bool]) -> bool:
        # Without the broker our delivery is void: it goes to another replica, which calls for
        # it. Calling too would put two callers on one quota (a partition, before the heartbeat
        # notices, is the case that matters). Being connected again is not enough: a delivery
        # of a lost connection stays void (a standby may hold its redelivery), and a reconnect
        # can take milliseconds, well within a wait for the slot.
        return self._connected() and ours()
