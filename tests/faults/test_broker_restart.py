"""RabbitMQ's app stopped and started under a running worker: the robust connection comes back,
the run finishes, nothing is lost, and no task is answered 0 twice.

Stopping the app closes every connection on the broker, including the test's own: the ledger
runs on a fresh one, and the fixture's teardown reconnects. The app is started again in a
`finally` whatever happens. This test disturbs anyone else using the same broker meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime

import pytest

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Names
from tests.support.faults import (
    FaultBroker,
    broker_app_stopped,
    events_named,
    ledger,
    min_gap,
    publish_all,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REQUESTS = 20
DOWN_S = 2.0  # how long the app stays stopped: long enough for the worker to notice


async def test_broker_restart_mid_run(
    broker: FaultBroker, names: Names, sandbox: Sandbox, spawn_worker: SpawnWorker
) -> None:
    tasks = [sandbox.create_task() for _ in range(REQUESTS)]
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    sandbox.set_latency(0.05)
    worker = await spawn_worker()
    await worker.ready()
    await publish_all(broker, requests)

    await sandbox.wait_for(lambda calls: len(calls) >= 5, timeout=20)
    async with broker_app_stopped() as restart:
        calls_at_stop = len(sandbox.revoke_calls())
        await asyncio.sleep(DOWN_S)  # deliberately timed: the broker is down this long
    await broker.reconnect()  # the fixture's connection died with the app

    await wait_until(
        lambda: len(sandbox.recalled_task_ids()) == REQUESTS, 60, "every recall after restart"
    )
    await wait_until(lambda: _queue_empty(broker, names), 30, "an empty recall queue")
    assert worker.process.returncode is None, "the worker died with the broker"
    await stop(worker)

    figures = await ledger(broker, sandbox, requests)
    assert len(figures.recalled) == REQUESTS
    assert figures.dead == {}
    assert set(figures.codes) <= {0, 90050}, figures.codes
    assert figures.codes[0] == REQUESTS  # no TaskId called successfully twice
    assert min_gap(sandbox) >= sandbox.config.min_interval

    reconnected = events_named(worker, "broker_reconnected")
    assert reconnected, "the worker never logged broker_reconnected"
    back_at = datetime.fromisoformat(reconnected[0]["timestamp"]).timestamp()
    settle_trouble = Counter(
        e["event"] for e in worker.events() if str(e.get("event", "")).startswith("settle_")
    )
    walls = [c.wall for c in sandbox.revoke_calls()]
    first_call_back = min(w for w in walls if w > restart.port_open_at)
    calls_while_down = sum(restart.stopped_at < w < restart.port_open_at for w in walls)
    report(
        "broker_restart",
        calls_before_stop=calls_at_stop,
        app_down_s=round(restart.port_open_at - restart.stopped_at, 2),
        reconnect_after_port_open_s=round(back_at - restart.port_open_at, 2),
        reconnect_after_stop_app_s=round(back_at - restart.stopped_at, 2),
        first_call_after_port_open_s=round(first_call_back - restart.port_open_at, 2),
        booted_after_port_open_s=round(restart.booted_at - restart.port_open_at, 2),
        calls_while_down=calls_while_down,
        reconnects=len(reconnected),
        settle_events=dict(settle_trouble),
        ledger=figures.figures(),
    )


async def _queue_empty(broker: FaultBroker, names: Names) -> bool:
    return await broker.count(names.queue) == 0
