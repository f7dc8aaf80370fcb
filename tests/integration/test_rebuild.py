"""consumer/core/rebuild.py against the real broker: complete, bounded by the ceiling and the
budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from structlog.testing import capture_logs

from consumer.core.memory import RANKS, RecallMemory
from consumer.core.rebuild import rebuild_memory
from consumer.core.stream import MARKER_TYPE, result_message
from schemas.events import ResultEvent
from tests.support.broker import Broker
from tests.support.events import event

pytestmark = pytest.mark.integration


def refusal(i: int) -> ResultEvent:
    """A local refusal, as a flood of invalid bodies makes them."""
    return event("dead_lettered", 90001, "local", task_id="", lineage=f"flood-{i}")


async def publish_events(broker: Broker, events: Iterable[ResultEvent], batch: int = 500) -> None:
    """Publish to the test's results stream, confirmed, in batches."""
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        pending: list[Any] = []
        for e in events:
            pending.append(
                channel.default_exchange.publish(
                    result_message(e), routing_key=broker.names.results
                )
            )
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await channel.close()


async def test_a_complete_rebuild_remembers_what_each_event_means(broker: Broker) -> None:
    await broker.declare()
    now = time.time()
    recalled, expired = (
        event(task_id="T-recalled", lineage="L1"),
        event("dead_lettered", 90052, task_id="T-expired", lineage="L2"),
    )
    old = event(task_id="T-old", lineage="L-old", at=now - 25 * 3600)  # settled too long ago
    await publish_events(broker, [recalled, expired, old, refusal(0), refusal(1)])
    memory = RecallMemory()
    memory.remember_told("stale", now, now)  # the rebuild starts from nothing
    report = await rebuild_memory(broker.connection, broker.names.results, memory, now)
    assert report.complete
    assert (report.events, report.entries, report.error, report.evicted) == (5, 6, None, 0)
    assert memory.for_app(None).recalled_at("T-recalled", now) is not None
    assert memory.for_app(None).expired_at("T-expired", now) is not None
    assert memory.for_app(None).recalled_at("T-old", now) is None
    assert all(
        memory.for_app(None).was_told(lineage, now)
        for lineage in ("L1", "L2", "flood-0", "flood-1")
    )
    assert not memory.for_app(None).was_told("stale", now)
    assert report.sizes == {
        "told_local": 2,
        "expired_local": 0,
        "told": 2,
        "expired": 1,
        "recalled": 1,
    }
    assert report.as_log()["recalled"] == 1


async def test_the_ceiling_holds_while_reading_and_keeps_the_recalls(broker: Broker) -> None:
    await broker.declare()
    recalls = [event(task_id=f"R{i}") for i in range(3)]
    await publish_events(broker, [*recalls[:2], *(refusal(i) for i in range(2000)), recalls[2]])
    memory = RecallMemory(max_entries=100)
    now = time.time()
    report = await rebuild_memory(broker.connection, broker.names.results, memory, now)
    assert report.complete
    assert report.events == 2003
    assert report.entries == len(memory) == 100
    assert report.evicted == 2006 - 100
    assert all(memory.for_app(None).recalled_at(f"R{i}", now) is not None for i in range(3))
    assert memory.for_app(None).was_told("flood-1999", now)  # the newest refusals are kept
    assert not memory.for_app(None).was_told("flood-0", now)


async def test_the_budget_stops_the_read_and_says_so(broker: Broker) -> None:
    await broker.declare()
    await publish_events(broker, (refusal(i) for i in range(20_000)))
    memory = RecallMemory(max_entries=1000)
    now = time.time()
    report = await rebuild_memory(
        broker.connection, broker.names.results, memory, now, budget_s=0.3
    )
    assert not report.complete
    assert report.budget_exceeded
    assert report.error is None
    assert report.events < 20_000
    assert len(memory) <= 1000
    assert report.as_log()["budget_exceeded"] is True
    # Deliveries left unread are dropped with the channel, never nacked (a stream would close
    # the whole connection): the worker's connection survives and the next rebuild completes.
    assert not broker.connection.is_closed
    again = await rebuild_memory(broker.connection, broker.names.results, memory, now)
    assert again.complete
    assert again.events == 20_000


@pytest.mark.parametrize("how", ["nack", "no_confirm"])
async def test_a_stream_that_takes_no_marker_is_read_until_idle(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    await broker.declare()
    await publish_events(broker, [event(task_id="T1"), refusal(0)])
    real_publish = aio_pika.Exchange.publish

    async def publish(self: aio_pika.Exchange, message: aio_pika.Message, *a: Any, **k: Any) -> Any:
        if message.type != MARKER_TYPE:
            return await real_publish(self, message, *a, **k)
        if how == "nack":  # what a stream whose leader is gone answers
            raise aiormq.exceptions.DeliveryError(None, None)  # type: ignore[arg-type]
        await asyncio.Event().wait()  # no confirm ever
        return None

    monkeypatch.setattr(aio_pika.Exchange, "publish", publish)
    memory = RecallMemory()
    now = time.time()
    with capture_logs() as captured:
        report = await rebuild_memory(
            broker.connection, broker.names.results, memory, now, idle_s=0.5
        )
    assert report.complete, report
    assert report.events == 2
    assert memory.for_app(None).recalled_at("T1", now) is not None
    assert [e["event"] for e in captured] == ["results_marker_unwritable"]
    assert set(report.sizes) == set(RANKS)
