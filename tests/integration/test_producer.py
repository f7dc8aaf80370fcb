"""The producer library against the real broker and a worker: the README's snippet as written,
outcomes by reply, concurrent use, an unroutable request, a timeout, replies nobody waits for."""

from __future__ import annotations

import asyncio
import json
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
from tests.support.broker import OVERWRITE, Broker, Names
from tests.support.workers import WorkerFactory

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


async def cli(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str, str]:
    """`python -m consumer ARGS` with only these RECALL_ settings; exit code, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**clean, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_publish_wait_prints_the_outcome_and_exits_by_it(
    amqp_url: str, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    task_id = sandbox.create_task()
    title = ("--title", "Recalled", "--desc", "This message was recalled.")
    async with run_worker():
        code, out, err = await cli(
            "publish",
            "--task-id",
            task_id,
            *title,
            "--correlation-id",
            "ops-1",
            "--wait",
            env=env,
        )
        assert (code, err) == (0, "")
        header, _rule, row = out.strip().splitlines()
        assert header.split()[:3] == ["settled", "TaskId", "outcome"]
        assert row.split()[2:5] == [task_id, "recalled", "0"]
        code, out, err = await cli(
            "publish",
            "--task-id",
            "no-such-task",
            "--wait",
            "--timeout",
            "30s",
            "--json",
            env=env,
        )
        assert code == 3
        event = json.loads(out)
        assert (event["outcome"], event["error_code"]) == ("dead_lettered", 90049)
        assert "90049" in err
        assert event["error_info"] in err


async def test_publish_file_wait_one_row_each(
    amqp_url: str, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    tasks = [sandbox.create_task() for _ in range(3)]
    lines = "\n".join(
        json.dumps({"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks
    ).encode()
    async with run_worker():
        code, out, err = await cli("publish", "--file", "-", "--wait", env=env, stdin=lines)
    assert (code, err) == (0, "")  # no progress bar: stderr is not a terminal
    rows = out.strip().splitlines()[2:]
    assert sorted(r.split()[2] for r in rows) == sorted(tasks)
    assert all(r.split()[3] == "recalled" for r in rows)


async def test_publish_wait_without_an_outcome_exits_4_and_says_how_to_look_it_up(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()  # no worker: it stays queued
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    code, out, err = await cli(
        "publish",
        "--task-id",
        "t-1",
        "--correlation-id",
        "c-9",
        "--wait",
        "--timeout",
        "1s",
        env=env,
    )
    assert code == 4
    assert "no outcome" in out
    (line,) = err.strip().splitlines()
    assert "stays queued" in line
    assert "tim-recall results --since 1d --correlation-id c-9" in line
    assert await broker.count(names.queue) == 1


@pytest.mark.parametrize("timeout", ["soon", "0s", "-5s", "10x"])
async def test_a_timeout_that_is_not_a_duration_is_one_line_exit_2(
    amqp_url: str, names: Names, timeout: str
) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    code, out, err = await cli("publish", "--task-id", "t", "--wait", "--timeout", timeout, env=env)
    assert (code, out) == (2, "")
    (line,) = err.strip().splitlines()
    assert "--timeout" in line


async def test_publish_unroutable_with_wait_exits_1(amqp_url: str, names: Names) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": f"{names.queue}.missing"}
    code, _, err = await cli("publish", "--task-id", "t", "--wait", env=env)
    assert code == 1
    assert "missing" in err
