"""The producer library against the real broker and a worker: the README's snippet as written,
outcomes by reply, concurrent use, an unroutable request, a timeout, replies nobody waits for,
what the publisher holds (bounded by reply_ttl), and routing by app through a direct exchange."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumer.core.stream import result_message
from consumer.producer import (
    NoOutcomeYet,
    NoSuchApp,
    RecallPublisher,
    RepliesLost,
    Unroutable,
    build_request,
)
from consumer.sandbox import Sandbox
from schemas.recall import InvalidRequest
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.events import event as result_event
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
        assert publisher.pending == 0


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


# What the publisher holds: a reply asked for and not waited for lives reply_ttl s after the
# confirm, a waited one until its wait ends, one published with reply=False not at all. The
# worker's reply is played by `answer` (what a worker sends to reply_to): no sandbox needed.


async def answer(broker: Broker, request: AbstractIncomingMessage) -> None:
    """Reply to a taken request as a worker does: its results event to its reply_to."""
    assert request.reply_to is not None
    body = json.loads(request.body)
    reply = result_event(task_id=body["TaskId"]).model_copy(
        update={"message_id": request.message_id, "correlation_id": request.correlation_id}
    )
    channel = await broker.connection.channel(publisher_confirms=True)
    try:  # not mandatory: 3.10 returns a mandatory publish to Direct Reply-to (see settle.py)
        await channel.default_exchange.publish(result_message(reply), request.reply_to)
    finally:
        await channel.close()


async def test_replies_nobody_waits_for_are_forgotten_after_reply_ttl(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    ttl = 0.5
    async with RecallPublisher(amqp_url, queue=names.queue, reply_ttl=ttl) as publisher:
        receipts = await asyncio.gather(*(publisher.publish(f"t_{i}") for i in range(1000)))
        assert all(r.expects_reply for r in receipts)  # the default: a reply asked for
        assert 0 < publisher.pending <= 1000  # the last ones were confirmed just now
        # Nothing else happens on the publisher: its one timer forgets them, no publish needed.
        await asyncio.sleep(ttl + 0.3)
        assert publisher.pending == 0
        with pytest.raises(ValueError, match=r"reply_ttl \(0.5 s\) passed"):
            await publisher.wait(receipts[0], 1)
    assert await broker.count(names.queue) == 1000


async def test_reply_false_holds_nothing_after_its_confirm(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    async with RecallPublisher(amqp_url, queue=names.queue) as publisher:
        receipt = await publisher.publish("t_1", reply=False)
        assert publisher.pending == 0
        with pytest.raises(ValueError, match="reply=False"):
            await publisher.wait(receipt, 1)
    (message,) = await broker.take(names.queue)
    assert message.reply_to is None
    assert (receipt.queue, receipt.exchange, receipt.routing_key) == (names.queue, "", names.queue)


async def test_a_reply_that_came_before_the_wait_is_held_until_reply_ttl(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    ttl = 1.0
    async with RecallPublisher(amqp_url, queue=names.queue, reply_ttl=ttl) as publisher:
        early, unwaited = [await publisher.publish(t) for t in ("t_early", "t_unwaited")]
        for request in await broker.take(names.queue):
            await answer(broker, request)
        # Both replies are in before anyone waits (held by the publisher, not by a wait).
        held = publisher._expiring
        await wait_until(
            lambda: all(held[r.message_id].future.done() for r in (early, unwaited)), 5
        )
        event = await publisher.wait(early, 0.01)  # no time to wait: it came already
        assert (event.task_id, event.message_id) == ("t_early", early.message_id)
        assert publisher.pending == 1  # the other reply, still within its ttl
        await asyncio.sleep(ttl + 0.2)
        assert publisher.pending == 0
        with pytest.raises(ValueError, match="reply_ttl"):
            await publisher.wait(unwaited, 1)


async def test_a_wait_holds_its_reply_past_reply_ttl_until_it_ends(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    ttl = 0.2
    async with RecallPublisher(amqp_url, queue=names.queue, reply_ttl=ttl) as publisher:
        late, never = [await publisher.publish(t) for t in ("t_late", "t_never")]
        waiting = asyncio.create_task(publisher.wait(late, 10))
        timing_out = asyncio.create_task(publisher.wait(never, 2 * ttl + 0.3))
        await asyncio.sleep(2 * ttl)  # past both deadlines: the waits hold them
        assert publisher.pending == 2
        (request, _) = await broker.take(names.queue)
        await answer(broker, request)
        assert (await waiting).task_id == "t_late"
        with pytest.raises(NoOutcomeYet, match="stays queued"):
            await timing_out
        assert publisher.pending == 0


# Routing by app: the direct exchange, the SDKAppID in decimal as routing key, mandatory.

APP = 1400000001
UNKNOWN_APP = 1400000002


@contextlib.asynccontextmanager
async def serving_app(broker: Broker, app: int = APP) -> AsyncIterator[str]:
    """A direct exchange of this test's own with the test's quorum queue bound for `app`, as a
    worker declares the fleet's routing; yields the exchange's name, deleted afterwards (the
    queue goes with the `broker` fixture)."""
    name = f"{broker.names.queue}.apps"
    channel = await broker.connection.channel()
    try:
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(
            broker.names.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key=str(app))
        yield name
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
        cleanup = await broker.connection.channel()
        with contextlib.suppress(Exception):
            await cleanup.exchange_delete(name)
        with contextlib.suppress(Exception):
            await cleanup.close()


async def test_a_request_for_an_app_is_routed_by_its_sdkappid(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    async with (
        serving_app(broker) as exchange,
        RecallPublisher(amqp_url, app=APP, exchange=exchange) as publisher,
    ):
        receipt = await publisher.publish(
            "t_app", offline_push_info=OVERWRITE, correlation_id="c-app", traceparent=TRACEPARENT
        )
        assert publisher.pending == 1  # a reply asked for, as without an app
    assert (receipt.exchange, receipt.routing_key, receipt.app) == (exchange, str(APP), APP)
    assert receipt.queue is None  # the exchange's bindings chose it
    assert receipt.destination() == f"app {APP} on exchange {exchange!r}"
    (message,) = await broker.take(names.queue)
    assert (message.exchange, message.routing_key) == (exchange, "1400000001")
    assert json.loads(message.body) == {"TaskId": "t_app", "OfflinePushInfo": OVERWRITE}
    assert (message.message_id, message.correlation_id) == (receipt.message_id, "c-app")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert str(message.reply_to).startswith("amq.rabbitmq.reply-to")
    assert message.headers == {"traceparent": TRACEPARENT}


async def test_an_app_no_queue_serves_is_returned_as_no_such_app(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    async with (
        serving_app(broker) as exchange,
        RecallPublisher(amqp_url, app=UNKNOWN_APP, exchange=exchange) as publisher,
    ):
        with pytest.raises(NoSuchApp) as caught:
            await publisher.publish("t_nowhere")
        assert publisher.pending == 0
        channel = publisher._channel
        with pytest.raises(NoSuchApp):
            await publisher.publish("t_nowhere_2", reply=False)
        assert publisher._channel is channel  # a return closes nothing: the channel goes on
    assert isinstance(caught.value, Unroutable)
    assert (caught.value.app, caught.value.exchange) == (UNKNOWN_APP, exchange)
    assert str(caught.value) == (
        f"no such app: {UNKNOWN_APP} (no queue serves it on exchange {exchange!r}; is the app "
        "in the worker's RECALL_APPS_FILE?)"
    )
    assert await broker.count(names.queue) == 0  # nothing was queued for the app served


async def test_a_missing_exchange_is_unroutable_and_the_publisher_recovers(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    name = f"{names.queue}.apps"  # the name serving_app declares, not declared yet
    async with RecallPublisher(amqp_url, app=APP, exchange=name) as publisher:
        with pytest.raises(Unroutable) as caught:
            await publisher.publish("t_before")
        assert not isinstance(caught.value, NoSuchApp)
        assert f"exchange {name!r} does not exist" in str(caught.value)
        assert "a worker declares it at start" in str(caught.value)
        assert publisher.pending == 0
        async with serving_app(broker) as exchange:
            receipt = await publisher.publish("t_after")  # on a new channel: the 404 closed it
            assert receipt.exchange == exchange
    (message,) = await broker.take(names.queue)
    assert json.loads(message.body) == {"TaskId": "t_after"}


def test_an_app_is_a_positive_sdkappid_through_a_named_exchange() -> None:
    url = "amqp://guest:guest@127.0.0.1:1/"
    for app in (0, -1400000001, True):
        with pytest.raises(ValueError, match="SDKAppID"):
            RecallPublisher(url, app=app)
    with pytest.raises(ValueError, match="named exchange"):
        RecallPublisher(url, app=APP, exchange="")
    with pytest.raises(ValueError, match="reply_ttl"):
        RecallPublisher(url, reply_ttl=0)
