"""A partition: the active replica's link to the broker stalls (no FIN, no RST). It stops
calling before the broker hands the queue to the standby, so there are never two callers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Names, broker_address
from tests.support.faults import (
    FaultBroker,
    event_time,
    events_named,
    ledger,
    min_gap,
    publish_all,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import SpawnWorker, free_port

pytestmark = [pytest.mark.faults, pytest.mark.integration]

HEARTBEAT_S = "4"  # the broker closes a silent connection after 8 to 12 s; we fence at 6 s
REQUESTS = 60


@pytest.fixture
async def link() -> AsyncIterator[TcpProxy]:
    host, port = broker_address()
    proxy = TcpProxy(host, port, free_port())
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


async def test_a_stalled_link_never_makes_two_callers(
    broker: FaultBroker,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    amqp_url: str,
    link: TcpProxy,
) -> None:
    tasks = [sandbox.create_task() for _ in range(REQUESTS)]
    stuck = tasks[8]  # in the stalled replica's hands, retrying, when the link stalls
    sandbox.fail_next(100_000, task_id=stuck, code=91000)
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    env = {"RECALL_HEARTBEAT_S": HEARTBEAT_S, "RECALL_INTERVAL_S": "0.2"}
    stalled = await spawn_worker(
        RECALL_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{link.port}/", **env
    )
    await stalled.ready()
    await broker.declare()
    await publish_all(broker, requests)
    await wait_until(
        lambda: bool(events_named(stalled, "retry_scheduled")), 20, "retries of the stuck one"
    )
    standby = await spawn_worker(**env)
    await standby.ready()
    link.stall()
    stalled_at = time.time()
    await wait_until(
        lambda: bool(
            events_named(standby, "retry_scheduled") or events_named(standby, "request_recalled")
        ),
        30,
        "the standby to take over",
    )
    sandbox.clear_faults()
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == REQUESTS, 60, "every recall")
    await link.cut()  # the partition heals as a reset: the stalled replica reconnects
    await stop(standby)
    await stop(stalled)

    result = await ledger(broker, sandbox, requests)
    codes = [c.code for c in sandbox.revoke_calls()]
    assert 90051 not in codes, codes
    assert min_gap(sandbox) >= 0.2
    (fenced,) = events_named(stalled, "broker_silent_fenced")
    fenced_at = event_time(fenced)
    # The stalled replica's last retry came before the fence, within the fence's deadline.
    retries = [event_time(e) for e in events_named(stalled, "retry_scheduled")]
    assert max(retries) <= fenced_at
    assert fenced_at - stalled_at < 2 * float(HEARTBEAT_S)
    report(
        "partition",
        calls=len(codes),
        codes={c: codes.count(c) for c in set(codes)},
        fenced_after_stall_s=round(fenced_at - stalled_at, 2),
        standby_recalled=len(events_named(standby, "request_recalled")),
        min_gap_s=round(min_gap(sandbox), 3),
        figures=result.figures(),
    )
