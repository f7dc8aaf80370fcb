"""Prometheus metrics of one worker, in a registry of its own (tests run several per process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumer.core.memory import RecallMemory
from consumer.core.policy import (
    ALREADY_RECALLED,
    PERMANENT_CODES,
    RELEASE_REASONS,
    RETRY_REASONS,
    ReplyResult,
)
from consumer.core.results import FailureKind
from schemas.api import ErrorCode
from schemas.events import SettledOutcome

CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SETTLE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
TRANSPORT_LABELS = tuple(f"transport_{kind.value}" for kind in FailureKind)


class Metrics:
    """Every tim_recall_* series, initialised to 0 where its labels are known in advance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.settled = Counter(
            "tim_recall_requests_settled", "Requests settled, by outcome.", ["outcome"], registry=r
        )
        self.republished = Counter(
            "tim_recall_requests_republished",
            "Requests sent back to the queue's tail after their retry budget was spent.",
            registry=r,
        )
        self.api_calls = Counter(
            "tim_recall_api_calls",
            "Calls to v4/timpush/revoke, by ErrorCode.",
            ["code"],
            registry=r,
        )
        self.api_call_seconds = Histogram(
            "tim_recall_api_call_duration_seconds",
            "Duration of one revoke call.",
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.retries = Counter("tim_recall_retries", "Retries, by reason.", ["reason"], registry=r)
        self.dead_letters = Counter(
            "tim_recall_dead_letters",
            "Dead letters, by ErrorCode and source.",
            ["code", "source"],
            registry=r,
        )
        self.publish_to_settle_seconds = Histogram(
            "tim_recall_publish_to_settle_seconds",
            "From the request's AMQP timestamp to its settlement.",
            buckets=SETTLE_BUCKETS,
            registry=r,
        )
        self.last_recall = Gauge(
            "tim_recall_last_recall_timestamp_seconds",
            "Unix time of the last successful recall (0: none yet).",
            registry=r,
        )
        self.halted = Gauge(
            "tim_recall_halted",
            "Apps whose lane is halted on its own configuration here (a fleet of one: 1 while "
            "halted).",
            registry=r,
        )
        self.active = Gauge(
            "tim_recall_active",
            "Apps this replica is the active consumer of (a lane had a delivery since "
            "subscribing); 0 while it is a standby for all of them.",
            registry=r,
        )
        # Per app: the few series an operator needs app by app (the app label is the SDKAppID).
        self.app_settled = Counter(
            "tim_recall_app_requests_settled",
            "Requests settled, by app and outcome.",
            ["app", "outcome"],
            registry=r,
        )
        self.app_active = Gauge(
            "tim_recall_app_active",
            "1 while this replica is the app's active consumer.",
            ["app"],
            registry=r,
        )
        self.app_halted = Gauge(
            "tim_recall_app_halted",
            "1 while the app's lane is halted on its own configuration.",
            ["app"],
            registry=r,
        )
        self.app_last_recall = Gauge(
            "tim_recall_app_last_recall_timestamp_seconds",
            "Unix time of the app's last successful recall here.",
            ["app"],
            registry=r,
        )
        self.copies = Counter(
            "tim_recall_copies_published",
            "Copies of a request published to the recall queue (a release or a re-publish "
            "after the retry budget); 0 on the normal path, where a request travels once.",
            registry=r,
        )
        self.releases = Counter(
            "tim_recall_requests_released",
            "Requests handed back to the queue's tail with no call of that delivery, by reason.",
            ["reason"],
            registry=r,
        )
        self.replies = Counter(
            "tim_recall_replies",
            "Results events sent to a request's reply_to, by result (sent, unroutable, failed).",
            ["result"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "tim_recall_delivery_failures",
            "Deliveries whose handling raised unexpectedly (released once, then dead-lettered).",
            registry=r,
        )
        self.connected = Gauge(
            "tim_recall_broker_connected", "1 while connected to RabbitMQ.", registry=r
        )
        self.broker_node = Gauge(
            "tim_recall_broker_node",
            "1 for the broker node (host:port) this replica last connected to, 0 for the others.",
            ["node"],
            registry=r,
        )
        self._node: str | None = None
        for outcome in get_args(SettledOutcome):
            self.settled.labels(outcome)
        for error_code in ErrorCode:
            self.api_calls.labels(str(int(error_code)))
        for label in TRANSPORT_LABELS:
            self.api_calls.labels(label)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        for reason in RELEASE_REASONS:
            self.releases.labels(reason)
        for result in ReplyResult:
            self.replies.labels(result)
        # What a dead letter can say without an unknown code: our own refusals, the API's
        local = {ErrorCode.INVALID_JSON, ErrorCode.ALREADY_RECALLED, ErrorCode.WINDOW_PASSED}
        api = PERMANENT_CODES | {ALREADY_RECALLED}
        for codes, source in ((local, "local"), (api, "api")):
            for dl_code in sorted(codes):
                self.dead_letters.labels(str(int(dl_code)), source)

    def node(self, node: str) -> None:
        """Mark `node` as the broker node in use (the previous one goes to 0)."""
        if self._node is not None and self._node != node:
            self.broker_node.labels(self._node).set(0)
        self.broker_node.labels(node).set(1)
        self._node = node

    def watch_memory(self, memory: RecallMemory) -> None:
        """Export the 24-hour memory's size and evictions, by rank, read at each scrape."""
        self.registry.register(_MemoryCollector(memory))


class _MemoryCollector(Collector):
    """tim_recall_memory_entries{rank} and tim_recall_memory_evictions_total{rank}."""

    def __init__(self, memory: RecallMemory) -> None:
        self._memory = memory

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "tim_recall_memory_entries",
            "Entries in the 24-hour memory, by rank (see RECALL_MEMORY_MAX_ENTRIES).",
            labels=["rank"],
        )
        for rank, count in self._memory.sizes().items():
            entries.add_metric([rank], count)
        evictions = CounterMetricFamily(
            "tim_recall_memory_evictions",
            "Entries evicted by the memory's ceiling before their 24 hours, by rank.",
            labels=["rank"],
        )
        for rank, count in self._memory.evicted.items():
            evictions.add_metric([rank], count)
        yield entries
        yield evictions
