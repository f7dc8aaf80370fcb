"""consumer/core/follower.py on the in-memory broker: the memory follows the results stream, a
takeover's wait ends at a marker written after it began, a reconnect resumes where it stopped,
and a stop never leaves a caller waiting."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from consumer.core.follower import ResultsFollower
from consumer.core.memory import RecallMemory
from consumer.core.stream import MARKER_TYPE, result_message
from consumer.core.topology import Topology
from schemas.events import ResultEvent
from tests.support.amqp_double import AmqpDouble, Fault

STREAM = "recall.results"
TOPOLOGY = Topology("recall", "recall.dead", STREAM)


def event(task_id: str, app: int = 1) -> ResultEvent:
    now = datetime.now(UTC)
    return ResultEvent(
        sdkappid=app,
        task_id=task_id,
        outcome="recalled",
        error_code=0,
        source="api",
        attempts=1,
        lineage=f"{task_id}#0",
        first_seen=now,
        settled_at=now,
    )


def stream() -> AmqpDouble:
    broker = AmqpDouble()
    broker.declare(STREAM, TOPOLOGY.results_arguments())
    return broker


async def test_the_memory_follows_what_every_replica_tells() -> None:
    broker = stream()
    broker.put(STREAM, result_message(event("before")))
    memory = RecallMemory()
    follower = ResultsFollower(memory, STREAM)
    await follower.start(await broker.connect())
    assert await follower.caught_up(5)
    assert memory.for_app(1).recalled_at("before", time.time()) is not None
    broker.put(STREAM, result_message(event("told-elsewhere", app=2)))  # another replica's
    assert await follower.caught_up(5)  # its marker comes after that event
    assert memory.for_app(2).recalled_at("told-elsewhere", time.time()) is not None
    assert memory.for_app(1).recalled_at("told-elsewhere", time.time()) is None
    await follower.stop()


async def test_callers_that_arrive_together_share_one_marker() -> None:
    broker = stream()
    follower = ResultsFollower(RecallMemory(), STREAM)
    await follower.start(await broker.connect())
    results = await asyncio.gather(*(follower.caught_up(5) for _ in range(50)))
    assert all(results)
    markers = [h for h in broker.held(STREAM) if h.message_type == MARKER_TYPE]
    assert len(markers) <= 2  # the first caller's marker, and one for all who came meanwhile
    await follower.stop()


async def test_a_reconnect_resumes_after_the_last_event_read() -> None:
    broker = stream()
    memory = RecallMemory()
    follower = ResultsFollower(memory, STREAM)
    await follower.start(await broker.connect())
    broker.put(STREAM, result_message(event("one")))
    assert await follower.caught_up(5)
    read = follower.events
    await follower.stop()
    broker.cut()
    broker.put(STREAM, result_message(event("two")))  # told while this replica was away
    await follower.start(await broker.connect())
    assert await follower.caught_up(5)
    assert follower.events == read + 1  # only the new one: not the last 24 hours again
    assert memory.for_app(1).recalled_at("two", time.time()) is not None
    await follower.stop()


async def test_a_stop_answers_every_waiting_caller_at_once() -> None:
    broker = stream()
    broker.fail_next("publish", STREAM, Fault.HANG)  # the marker never confirmed
    follower = ResultsFollower(RecallMemory(), STREAM)
    await follower.start(await broker.connect())
    waiting = asyncio.ensure_future(follower.caught_up(60))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await follower.stop()
    assert await waiting is False
    assert time.monotonic() - started < 1
