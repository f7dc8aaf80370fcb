"""The producer library against the real broker and a worker: the README's snippet as written,
outcomes by reply, concurrent use, an unroutable request, a timeout, replies nobody waits for."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from consumer.producer import (
    NoOutcomeYet,
    RecallPublisher,
    RepliesLost,
    Unroutable,
    build_request,
)
from consumer.sandbox import Sandbox
from schemas.recall import InvalidRequest
from tests.integration.conftest import OVERWRITE, Broker, Names, WorkerFactory

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
README_TASK_ID = "660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def readme_snippet() -> str:
    """The Python block of the README's "Python producers" subsection, exactly as printed."""
    text = README.read_text()
    section = text.split("### Python producers", 1)[1].split("\n### ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return str(block)


async def test_the_readme_snippet_runs_as_written(
    amqp_url: str, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    snippet = readme_snippet()
    assert README_TASK_ID in snippet
    assert 'queue="timpush.recall"' in snippet
    task_id = sandbox.create_task()
    # Only the TaskId and the queue name change: this test's sandbox and queues.
    code = snippet.replace(README_TASK_ID, task_id).replace(
        'queue="timpush.recall"', f'queue="{names.queue}"'
    )
    env = {**os.environ, "RECALL_AMQP_URL": amqp_url}
    async with run_worker() as running:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            cwd=str(README.parent),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
        await running.wait_settled(1)
    assert child.returncode == 0, err.decode()
    assert out.decode().split() == ["recalled", "0"]
    assert running.settled[0].correlation_id == "moderation-8812"
    assert sandbox.is_recalled(task_id)


async def test_many_tasks_share_one_publisher(
    amqp_url: str, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    tasks = [sandbox.create_task() for _ in range(5)]
    async with run_worker(), RecallPublisher(amqp_url, queue=names.queue) as publisher:
        connection = publisher._connection
        recalled = asyncio.gather(
            *(
                publisher.recall(t, offline_push_info=OVERWRITE, correlation_id=f"c-{i}")
                for i, t in enumerate(tasks)
            )
        )
        dead = publisher.recall("no-such-task", timeout=30)
        events, lost = await asyncio.gather(recalled, dead)
        assert publisher._connection is connection  # one connection, reused
    assert [(e.task_id, e.outcome, e.correlation_id) for e in events] == [
        (t, "recalled", f"c-{i}") for i, t in enumerate(tasks)
    ]
    assert (lost.outcome, lost.error_code) == ("dead_lettered", 90049)
    assert lost.error_info


async def test_trace_context_and_receipts(
    amqp_url: str, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    task_id = sandbox.create_task()
    async with run_worker(), RecallPublisher(amqp_url, queue=names.queue) as publisher:
        receipt = await publisher.publish(
            task_id, offline_push_info=OVERWRITE, traceparent=TRACEPARENT
        )
        event = await publisher.wait(receipt, 30)
        with pytest.raises(ValueError, match="already waited"):
            await publisher.wait(receipt, 1)
    assert receipt.correlation_id == receipt.message_id  # none given: looked up by its id
    assert (event.message_id, event.correlation_id) == (receipt.message_id, receipt.message_id)
    assert event.trace_id == TRACE_ID


async def test_no_outcome_in_time_names_the_lookup_and_a_late_reply_is_dropped(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    await broker.declare()
    first, second = sandbox.create_task(), sandbox.create_task()
    async with RecallPublisher(amqp_url, queue=names.queue) as publisher:
        receipt = await publisher.publish(
            first, offline_push_info=OVERWRITE, correlation_id="late-1"
        )
        with pytest.raises(NoOutcomeYet) as caught:
            await publisher.wait(receipt, 0.3)
        assert isinstance(caught.value, TimeoutError)
        assert "stays queued" in str(caught.value)
        assert "tim-recall results --since 1d --correlation-id late-1" in str(caught.value)
        async with run_worker() as running:
            await running.wait_settled(1)  # its reply comes to nobody: dropped
            event = await publisher.recall(second, offline_push_info=OVERWRITE, timeout=30)
    assert (event.task_id, event.outcome) == (second, "recalled")
    assert sandbox.is_recalled(first)


async def test_unroutable_raises_and_nothing_waits(amqp_url: str, names: Names) -> None:
    async with RecallPublisher(amqp_url, queue=f"{names.queue}.missing") as publisher:
        with pytest.raises(Unroutable, match=r"missing or refusing \(NO_ROUTE\)"):
            await publisher.publish("some-task")
        assert publisher._pending == {}


async def test_a_broker_list_and_a_lost_connection(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    urls = f"amqp://guest:guest@127.0.0.1:1/,{amqp_url}"  # the first node answers nothing
    async with RecallPublisher(urls, queue=names.queue) as publisher:
        receipt = await publisher.publish("some-task")
        waiting = asyncio.create_task(publisher.wait(receipt, 30))
        assert publisher._connection is not None
        await publisher._connection.close()
        with pytest.raises(RepliesLost, match="correlation-id"):
            await waiting
        again = await publisher.publish("other-task", reply=False)  # reopened by itself
    assert not again.expects_reply
    assert await broker.count(names.queue) == 2


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"task_id": "has space"}, "TaskId"),
        ({"task_id": "t", "offline_push_info": {"PushFlag": 7}}, "PushFlag"),
        ({"task_id": "t", "traceparent": "nope"}, "not a W3C trace context"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    amqp_url: str, names: Names, kwargs: dict[str, object], problem: str
) -> None:
    async with RecallPublisher(amqp_url, queue=f"{names.queue}.never") as publisher:
        with pytest.raises(InvalidRequest, match=problem):
            await publisher.publish(**kwargs)  # type: ignore[arg-type]
    assert build_request("t").task_id == "t"
