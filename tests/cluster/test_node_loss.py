"""Node loss in a three-node cluster: kill -9 the node that leads the recall queue, or the node
the active replica is connected to. Two replicas, a backlog, RECALL_AMQP_URL as the list of the
three nodes: every request settled exactly once, nothing left, 0 x 90051, no gap under the
interval, and the results stream complete."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from consumer.core.topology import Topology, declare
from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Names
from tests.support.cluster import NODES, Cluster
from tests.support.faults import (
    FaultBroker,
    events_named,
    ledger,
    min_gap,
    publish_all,
    read_all_results,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker

pytestmark = [pytest.mark.cluster, pytest.mark.faults, pytest.mark.integration]

REQUESTS = 40


@pytest.fixture
async def on_node(cluster: Cluster, names: Names) -> AsyncIterator[dict[str, FaultBroker]]:
    """A helper connection per node (the test uses one that survives the kill)."""
    helpers: dict[str, FaultBroker] = {}
    for short in NODES:
        url = cluster.url(short)
        helpers[short] = FaultBroker(await aio_pika.connect(url, timeout=15), names, url)
    await declare(helpers[NODES[0]].connection, Topology(names.queue, names.dead, names.results))
    try:
        yield helpers
    finally:
        for short, helper in helpers.items():
            if short in await cluster.running():
                if helper.connection.is_closed:
                    await helper.reconnect(timeout=30)
                await helper.delete(names.queue, names.dead, names.results)
                break
        for helper in helpers.values():
            with contextlib.suppress(Exception):  # a connection to a killed node
                await helper.connection.close()


def longest_pause(sandbox: Sandbox, around: float) -> float:
    """The longest gap between accepted calls (answered 0) within 30 s after `around`."""
    arrivals = [c.arrived for c in sandbox.revoke_calls() if c.code == 0]
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if around - 5 <= b <= around + 30]
    return max(gaps, default=0.0)


@pytest.mark.parametrize("kill", ["leader", "connected"])
async def test_kill_9_of_a_node_loses_nothing(
    cluster: Cluster,
    names: Names,
    sandbox: Sandbox,
    spawn_worker: SpawnWorker,
    on_node: dict[str, FaultBroker],
    kill: str,
) -> None:
    leader = await cluster.leader(names.queue)
    others = [n for n in NODES if n != leader]
    # The replicas connect to a node that does not lead the queue (the list is tried in order),
    # so the two kills are different events.
    connected, spare = others
    victim = leader if kill == "leader" else connected
    survivor = spare
    order = [connected, spare, leader]
    env = {"RECALL_AMQP_URL": ",".join(cluster.url(n) for n in order), "RECALL_HEARTBEAT_S": "5"}

    tasks = [sandbox.create_task() for _ in range(REQUESTS)]
    requests = [request_for(t, {"TaskId": t, "OfflinePushInfo": OVERWRITE}) for t in tasks]
    broker = on_node[survivor]
    await publish_all(broker, requests)
    a, b = await spawn_worker(**env), await spawn_worker(**env)
    await a.ready(timeout=40)
    await b.ready(timeout=40)
    await sandbox.wait_for(lambda calls: len(calls) >= 8, timeout=40)
    killed_at = time.monotonic()
    await cluster.kill(victim)
    await wait_until(lambda: len(sandbox.recalled_task_ids()) == REQUESTS, 120, "every recall")
    await wait_until(lambda: _empty(broker, names.queue), 30, "the recall queue to drain")
    await stop(a)
    await stop(b)

    async def all_told() -> bool:
        # A replica of the results stream may lag its new leader for a moment after the kill.
        told = {e.message_id for e in await read_all_results(broker)}
        return told >= {r.message_id for r in requests}

    await wait_until(all_told, 60, "every results event readable from a surviving node")
    result = await ledger(broker, sandbox, requests)
    codes = [c.code for c in sandbox.revoke_calls()]
    assert 90051 not in codes, codes
    assert min_gap(sandbox) >= sandbox.config.min_interval
    assert result.results_events >= REQUESTS
    pause = longest_pause(sandbox, killed_at)
    reconnects = sum(len(events_named(w, "broker_reconnected")) for w in (a, b))
    report(
        f"cluster_kill_{kill}",
        victim=victim,
        pause_s=round(pause, 2),
        reconnects=reconnects,
        min_gap_s=round(min_gap(sandbox), 3),
        figures=result.figures(),
    )


async def _empty(broker: FaultBroker, queue: str) -> bool:
    return await broker.count(queue) == 0
