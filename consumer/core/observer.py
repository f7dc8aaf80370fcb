"""Logs and metrics of what lanes did: one observer of outcomes, not lines sprinkled in them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta

from aio_pika.abc import AbstractIncomingMessage
from structlog.typing import FilteringBoundLogger

from consumer.core import tracing
from consumer.core.metrics import Metrics
from consumer.core.policy import Outcome, Reason
from consumer.core.verdict import Verdict
from schemas.events import ResultEvent


class Observer:
    """Tells each settled delivery (a log event, the metrics, the `on_settled` hook) and keeps
    the fleet's gauges of lanes active and halted."""

    def __init__(
        self, metrics: Metrics, on_settled: Callable[[ResultEvent], None] | None = None
    ) -> None:
        self.metrics = metrics
        self._on_settled = on_settled
        self._active: set[int] = set()
        self._halted: set[int] = set()

    def serve(self, app: int) -> None:
        """`app` is served here from now on: its series start at 0 (an idle app is visible)."""
        self.metrics.app_active.labels(str(app)).set(0)
        self.metrics.app_halted.labels(str(app)).set(0)

    def active(self, app: int, active: bool) -> None:
        """Whether this replica is the active consumer of `app`'s queue (it had a delivery)."""
        self._mark(self._active, app, active)
        self.metrics.app_active.labels(str(app)).set(1 if active else 0)
        self.metrics.active.set(len(self._active))

    def halted(self, app: int, halted: bool) -> None:
        """Whether `app`'s lane is halted on its own configuration."""
        self._mark(self._halted, app, halted)
        self.metrics.app_halted.labels(str(app)).set(1 if halted else 0)
        self.metrics.halted.set(len(self._halted))

    def forget(self, app: int) -> None:
        """`app` is no longer served here: its series go."""
        self.active(app, False)
        self.halted(app, False)
        for gauge in (self.metrics.app_active, self.metrics.app_halted):
            gauge.remove(str(app))

    @staticmethod
    def _mark(members: set[int], app: int, on: bool) -> None:
        if on:
            members.add(app)
        else:
            members.discard(app)

    def released(self, reason: Reason) -> None:
        """A delivery handed back to its queue's tail with no call of its own."""
        self.metrics.releases.labels(reason).inc()

    def told(
        self,
        app: int,
        message: AbstractIncomingMessage,
        verdict: Verdict,
        *,
        event: ResultEvent | None,
        duration_s: float,
        log: FilteringBoundLogger,
    ) -> None:
        """A delivery's settlement is done: one log event, its metrics, and the hook."""
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
        label = str(app)
        if event.outcome == "recalled":
            at = event.settled_at.timestamp()
            self.metrics.last_recall.set(at)
            self.metrics.app_last_recall.labels(label).set(at)
            log.info("request_recalled", **fields)
        else:
            self.metrics.dead_letters.labels(str(verdict.code), verdict.source).inc()
            log.warning("request_dead_lettered", info=verdict.info, **fields)
        self.metrics.settled.labels(event.outcome).inc()
        self.metrics.app_settled.labels(label, event.outcome).inc()
        if message.timestamp is not None:
            sent = message.timestamp.replace(tzinfo=message.timestamp.tzinfo or UTC)
            self.metrics.publish_to_settle_seconds.observe(
                max(0.0, (event.settled_at - sent) / timedelta(seconds=1))
            )
        if self._on_settled is not None:
            self._on_settled(event)
