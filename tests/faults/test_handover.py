"""Hand-overs: a rolling restart of two replicas under a backlog, SIGTERM at each moment of the
cycle. The stopping replica sends no call it had not started, hands back what it holds, and the
standby's first call is never closer than the interval to the last one (0 x 90051)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from consumer.sandbox import Sandbox, SandboxConfig
from tests.support.broker import OVERWRITE, Names
from tests.support.faults import (
    FaultBroker,
    event_time,
    events_named,
    ledger,
    min_gap,
    publish_all,
    report,
    request_for,
    wait_until,
)
from tests.support.workers import SpawnWorker, WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

INTERVAL_S = 0.4  # long enough to land a SIGTERM inside the wait for the next slot
LATENCY_S = 0.15  # room for a SIGTERM while a call is in flight
REQUESTS = 24


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=INTERVAL_S))


async def _sigterm(worker: WorkerProcess) -> None:
    worker.process.send_signal(signal.SIGTERM)
    code = await worker.exit_code(timeout=30)
    assert code == 0, f"worker exited {code}:\n{worker.log()[-3000:]}"


def _settled(worker: WorkerProcess) -> int:
    return sum(
        1
        for e in worker.events()
        if e.get("event") in ("request_recalled", "request_dead_lettered")
    )


async def _active(a: WorkerProcess, b: WorkerProcess) -> tuple[WorkerProcess, WorkerProcess]:
    """(active, standby): the one that settles next."""
    before = (_settled(a), _settled(b))
    await wait_until(
        lambda: (_settled(a), _settled(b)) != before, 20, "a replica to settle a request"
    )
    return (a, b) if _settled(a) > before[0] else (b, a)


async def test_rolling_restart_sigterm_mid_wait_mid_call_retry_wait_and_settle(
    broker: FaultBroker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    sandbox.set_latency(LATENCY_S)
    tasks = [sandbox.create_task() for _ in range(REQUESTS)]
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    await broker.declare()
    await publish_all(broker, requests)
    env = {"RECALL_RETRY_INITIAL_S": "2", "RECALL_RETRY_MAX_S": "4"}
    a, b = await spawn_worker(**env), await spawn_worker(**env)
    await a.ready()
    await b.ready()
    stopped: list[tuple[str, WorkerProcess]] = []

    async def roll(moment: str) -> None:
        nonlocal a, b
        if moment == "retry_wait":
            sandbox.fail_next(1, code=91000)  # the next call: a retry wait to stop in
            await wait_until(
                lambda: bool(
                    events_named(a, "retry_scheduled") or events_named(b, "retry_scheduled")
                ),
                30,
                "the retry wait",
            )
            active, standby = (a, b) if events_named(a, "retry_scheduled") else (b, a)
        else:
            active, standby = await _active(a, b)
        calls = len(sandbox.revoke_calls())
        if moment == "mid_call":  # a call has arrived, its answer is LATENCY_S away
            await sandbox.wait_for(lambda c: len(c) > calls, timeout=20)
        elif moment == "mid_wait":  # answered; the pacer waits for the next slot
            await sandbox.wait_for(lambda c: len(c) > calls, timeout=20)
            await asyncio.sleep(LATENCY_S + INTERVAL_S / 3)
        elif moment == "retry_wait":
            await asyncio.sleep(0.2)  # inside the retry wait of at least 2 s
        else:  # settling: right as an answer comes back
            await sandbox.wait_for(lambda c: len(c) > calls, timeout=20)
            await asyncio.sleep(LATENCY_S)
        await _sigterm(active)
        stopped.append((moment, active))
        a, b = standby, await spawn_worker(**env)
        await b.ready()

    await roll("mid_wait")
    await roll("mid_call")
    await roll("settling")
    await roll("retry_wait")
    await wait_until(lambda: len(sandbox.recalled_task_ids()) >= REQUESTS, 60, "every recall")
    for worker in (a, b):
        await _sigterm(worker)

    result = await ledger(broker, sandbox, requests)
    codes = [c.code for c in sandbox.revoke_calls()]
    assert 90051 not in codes, codes
    assert min_gap(sandbox) >= INTERVAL_S
    assert len(result.dead) == 0
    # No call was started after a SIGTERM: every call a stopped replica settled after its
    # signal had arrived at the server before it.
    arrived = {c.task_id: c.wall for c in sandbox.revoke_calls() if c.code == 0}
    for moment, worker in stopped:
        signalled = event_time(events_named(worker, "signal_received")[0])
        after = [e for e in events_named(worker, "request_recalled") if event_time(e) >= signalled]
        assert len(after) <= 1, (moment, after)
        assert all(arrived[e["task_id"]] < signalled for e in after), (moment, after)
    released = sum(len(events_named(w, "request_released")) for _, w in stopped)
    report(
        "rolling_restart",
        **{"moments": [m for m, _ in stopped], "released": released, "min_gap_s": min_gap(sandbox)},
        figures=result.figures(),
    )
