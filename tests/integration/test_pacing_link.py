"""Pacing over a link: workers behind a delaying, jittering link, judged by the sandbox.

A backlog; a standby taking over from a worker stopped mid-backlog; a rolling restart through
three workers; a halt, its probes and the resume: whatever happens, the sandbox (which stamps
arrivals behind the link, as Tencent would) never sees two calls closer than the interval and
never answers 90051. Orderings and counts only: no assertion on how long anything took.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from consumer.core.halt import PROBE_BODY
from consumer.sandbox import CallRecord, Sandbox, SandboxConfig, serve_sandbox
from consumer.sandbox.link import LinkConfig, sandbox_link
from tests.support.broker import OVERWRITE, Broker, wait_until
from tests.support.workers import RunningWorker, WorkerFactory

pytestmark = pytest.mark.integration

INTERVAL_S = 0.25  # short, so that a backlog is quick; the link is long relative to it
LINK = LinkConfig(one_way_s=0.04, jitter_s=0.01, seed=14)
BACKLOG = 16
RULES = ["send", "finish"]
PROBE_TASK = "tim-recall-configuration-probe"
assert PROBE_TASK.encode() in PROBE_BODY


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=INTERVAL_S))


@pytest.fixture
async def sandbox_url(sandbox_url_direct: str) -> AsyncIterator[str]:
    """The sandbox as the workers reach it: through an 80 ms ±20 ms round-trip link."""
    async with sandbox_link(sandbox_url_direct, LINK) as url:
        yield url


@pytest.fixture
async def sandbox_url_direct(sandbox: Sandbox) -> AsyncIterator[str]:
    async with serve_sandbox(sandbox) as url:
        yield url


def settings(rule: str) -> dict[str, object]:
    return {"pacing": rule, "interval_s": INTERVAL_S, "retry_budget_s": 30.0}


async def backlog(broker: Broker, sandbox: Sandbox, n: int = BACKLOG) -> list[str]:
    await broker.declare()
    tasks = [sandbox.create_task() for _ in range(n)]
    for task_id in tasks:
        await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
    return tasks


def recalled(calls: list[CallRecord]) -> int:
    return len({c.task_id for c in calls if c.code in (0, 90050) and c.task_id != PROBE_TASK})


async def drained(sandbox: Sandbox, n: int = BACKLOG) -> None:
    await sandbox.wait_for(lambda calls: recalled(calls) >= n, timeout=n * INTERVAL_S * 4 + 20)


def assert_paced(sandbox: Sandbox) -> list[CallRecord]:
    """No 90051 and no two arrivals closer than the interval, as the sandbox saw them."""
    calls = sandbox.revoke_calls()
    assert [c.code for c in calls].count(90051) == 0, [c.code for c in calls]
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(calls)]
    assert all(gap >= INTERVAL_S for gap in gaps), min(gaps)
    return calls


def active(*workers: RunningWorker) -> RunningWorker:
    """The one worker that is the queue's active consumer (it has had a delivery)."""
    (found,) = [w for w in workers if w.metrics.active._value.get() == 1]
    return found


@pytest.mark.parametrize("rule", RULES)
async def test_a_backlog_over_a_link_never_arrives_closer_than_the_interval(
    run_worker: WorkerFactory, broker: Broker, sandbox: Sandbox, rule: str
) -> None:
    tasks = await backlog(broker, sandbox)
    async with run_worker(**settings(rule)) as running:
        await running.wait_settled(BACKLOG, timeout=BACKLOG * INTERVAL_S * 4 + 15)
    calls = assert_paced(sandbox)
    assert len(calls) == BACKLOG
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert sorted(c.task_id for c in calls) == sorted(tasks)


@pytest.mark.parametrize("rule", RULES)
async def test_a_standby_taking_over_mid_backlog_keeps_the_interval(
    run_worker: WorkerFactory, broker: Broker, sandbox: Sandbox, rule: str
) -> None:
    tasks = await backlog(broker, sandbox)
    async with run_worker(**settings(rule)) as first, run_worker(**settings(rule)) as second:
        await sandbox.wait_for(lambda calls: recalled(calls) >= BACKLOG // 3, timeout=30)
        stopped = active(first, second)
        standby = second if stopped is first else first
        assert standby.settled == []
        stopped.worker.stop()  # mid-backlog: its call in flight finishes, the standby goes on
        await drained(sandbox)
        assert active(standby) is standby
    calls = assert_paced(sandbox)
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert stopped.settled
    assert standby.settled
    assert len(stopped.settled) + len(standby.settled) == BACKLOG
    # the standby's calls all come after the stopped worker's last one
    last_of_stopped = max(i for i, c in enumerate(calls) if c.task_id in _ids(stopped))
    first_of_standby = min(i for i, c in enumerate(calls) if c.task_id in _ids(standby))
    assert last_of_stopped < first_of_standby


@pytest.mark.parametrize("rule", RULES)
async def test_a_rolling_restart_through_three_workers_keeps_the_interval(
    run_worker: WorkerFactory, broker: Broker, sandbox: Sandbox, rule: str
) -> None:
    tasks = await backlog(broker, sandbox, 2 * BACKLOG)
    async with run_worker(**settings(rule)) as a, run_worker(**settings(rule)) as b:
        await sandbox.wait_for(lambda calls: recalled(calls) >= BACKLOG // 2, timeout=30)
        old = active(a, b)
        new = b if old is a else a
        old.worker.stop()  # the first of the old replicas goes; a new one comes up beside
        async with run_worker(**settings(rule)) as c:
            await wait_until(lambda: new.metrics.active._value.get() == 1, 30, "a takeover")
            done = recalled(sandbox.revoke_calls())
            await sandbox.wait_for(lambda calls: recalled(calls) >= done + 4, timeout=30)
            new.worker.stop()  # and the second: the newest takes over
            await drained(sandbox, 2 * BACKLOG)
            assert active(c) is c
    assert_paced(sandbox)
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    assert all(w.settled for w in (old, new, c))
    assert sum(len(w.settled) for w in (old, new, c)) == 2 * BACKLOG


@pytest.mark.parametrize("rule", RULES)
async def test_a_halt_its_probes_and_the_resume_keep_the_interval(
    run_worker: WorkerFactory, broker: Broker, sandbox: Sandbox, rule: str
) -> None:
    tasks = await backlog(broker, sandbox)
    async with run_worker(**settings(rule)) as running:
        await sandbox.wait_for(lambda calls: recalled(calls) >= BACKLOG // 3, timeout=30)
        sandbox.fail_next(3, code=70003)  # the key is wrong: the worker halts and probes
        await wait_until(lambda: running.worker.halted, 30, "the worker to halt")
        await drained(sandbox)
        assert not running.worker.halted
    calls = assert_paced(sandbox)
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    codes = [(c.task_id == PROBE_TASK, c.code) for c in calls]
    halted_at = codes.index((False, 70003))  # a request halted the worker
    assert codes[halted_at + 1 : halted_at + 3] == [(True, 70003)] * 2  # probes, still failing
    assert codes[halted_at + 3] == (True, 90049)  # the probe that passed: no such task
    assert all(not probe for probe, _ in codes[halted_at + 4 :])  # then requests again
    assert len(running.settled) == BACKLOG


def _ids(worker: RunningWorker) -> set[str | None]:
    return {e.task_id for e in worker.settled}
