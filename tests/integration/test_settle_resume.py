"""A lost connection at each step of a settlement: the redelivery makes no second call, no second
dead letter, no second live copy and no second results event."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.core.settle import Settler, Step
from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.faults import read_all_results
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration


def cut_after(
    monkeypatch: pytest.MonkeyPatch, proxy: TcpProxy, target: Step, nth: int = 1
) -> list[Step]:
    """Cut the worker's connection once, right after the `nth` confirmed `target` step."""
    original = Settler._step
    seen: list[Step] = []

    async def step(
        self: Settler,
        name: Step,
        run: Callable[[], Awaitable[None]],
        message: Any,
        log: Any,
        void: Any,
        **more: Any,
    ) -> bool:
        done = await original(self, name, run, message, log, void, **more)
        if done:
            seen.append(name)
            if seen.count(target) == nth and name is target:
                await proxy.cut()  # as a dead link: every connection aborted
                await proxy.start()  # and the broker reachable again for the reconnect
        return done

    monkeypatch.setattr(Settler, "_step", step)
    return seen


def through(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


async def events_for(broker: Broker) -> list[Any]:
    return await read_all_results(broker)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "nth"),
    [(Step.RESULT_EVENT, 1), (Step.ACK, 1)],
    ids=["result-event-confirmed", "ack-sent"],
)
async def test_cut_while_recalling(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
    target: Step,
    nth: int,
) -> None:
    task_id = sandbox.create_task()
    seen = cut_after(monkeypatch, proxy, target, nth)
    with capture_logs() as logs:
        async with run_worker(amqp_url=through(proxy)) as running:
            message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(1)
            await wait_until(lambda: _drained(broker, names), 20, "the queue to drain")
    assert seen.count(target) >= nth, seen
    assert [c.code for c in sandbox.revoke_calls()] == [0]
    events = await events_for(broker)
    assert [(e.message_id, e.outcome) for e in events] == [(message_id, "recalled")]
    assert await broker.count(names.dead) == 0
    names_ = [e["event"] for e in logs]
    lost = names_.index("broker_connection_lost")
    if target is not Step.ACK:  # (a sent ack may well have arrived: then no redelivery)
        # The first delivery after the reconnect is a takeover: the memory is rebuilt again.
        assert "memory_rebuilt" in names_[lost:]


async def test_cut_after_the_dead_letter_is_confirmed(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cut_after(monkeypatch, proxy, Step.DEAD_LETTER)
    with capture_logs() as logs:
        async with run_worker(amqp_url=through(proxy)) as running:
            message_id = await broker.publish({"TaskId": "660cc447_no_such_task"})
            await running.wait_settled(1)
            await wait_until(lambda: _drained(broker, names), 20, "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [90049]
    assert await broker.count(names.dead) == 1
    events = await events_for(broker)
    assert [(e.message_id, e.error_code) for e in events] == [(message_id, 90049)]
    resumed = [e for e in logs if e["event"] == "settle_resumed"]
    assert resumed, "the redelivery did not resume the settlement"
    assert resumed[0]["steps_done"] == ["dead_letter"]


async def test_cut_after_a_re_publish_is_confirmed_leaves_one_live_copy(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(3, task_id=task_id, code=91000)  # the budget runs out: re-published
    cut_after(monkeypatch, proxy, Step.COPY, nth=2)  # the first copy is the stamp
    async with run_worker(amqp_url=through(proxy), retry_budget_s=0.3) as running:
        message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await running.wait_settled(1, timeout=30)
        await wait_until(lambda: _drained(broker, names), 20, "the queue to drain")
    codes = [c.code for c in sandbox.revoke_calls()]
    assert codes.count(0) == 1, codes
    assert 90050 not in codes, codes  # no second live copy called after the recall
    events = await events_for(broker)
    assert [(e.message_id, e.outcome) for e in events] == [(message_id, "recalled")]
    assert await broker.count(names.dead) == 0


async def test_cut_mid_call_the_answer_is_kept_and_not_asked_again(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    proxy: TcpProxy,
) -> None:
    task_id = sandbox.create_task()
    sandbox.set_latency(0.5)
    async with run_worker(amqp_url=through(proxy)) as running:
        message_id = await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
        await sandbox.wait_for(lambda calls: len(calls) == 1, timeout=10)
        await proxy.cut()
        await proxy.start()
        await running.wait_settled(1)
        await wait_until(lambda: _drained(broker, names), 20, "the queue to drain")
    assert [c.code for c in sandbox.revoke_calls()] == [0]  # the answer came after the cut
    events = await events_for(broker)
    assert [(e.message_id, e.outcome) for e in events] == [(message_id, "recalled")]


async def _drained(broker: Broker, names: Names) -> bool:
    return await broker.count(names.queue) == 0


async def test_a_delivery_waiting_for_its_slot_when_the_connection_goes_is_never_called(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    proxy: TcpProxy,
) -> None:
    """The active replica loses its connection while a delivery waits for the next slot, and is
    connected again at once; the standby takes the queue and gets the redelivery. The void
    delivery must not be called for by the replica that held it (before the fix it was: its
    worker was connected again by then, and two calls for one request came some milliseconds
    apart, one answered 90051: seen with kill -9 of the node the replicas were connected to)."""
    first, second = sandbox.create_task(), sandbox.create_task()
    slow = {"interval_s": 1.0}  # the sandbox refuses calls under 0.1 s apart
    async with (
        run_worker(amqp_url=through(proxy), **slow) as active,
        run_worker(**slow) as standby,
    ):
        await broker.publish({"TaskId": first, "OfflinePushInfo": OVERWRITE})
        await broker.publish({"TaskId": second, "OfflinePushInfo": OVERWRITE})
        await active.wait_settled(1)  # `second` now waits about a second for its slot
        await proxy.cut()
        await proxy.start()  # the active replica is connected again at once
        await standby.wait_settled(1, timeout=10)
        await asyncio.sleep(1.5)  # a call for the void delivery would come by now
        await wait_until(lambda: _drained(broker, names), 20, "the queue to drain")
    calls = sandbox.revoke_calls()
    assert [(c.task_id, c.code) for c in calls] == [(first, 0), (second, 0)], calls
    assert [e.task_id for e in standby.settled] == [second]
