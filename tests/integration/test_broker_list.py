"""RECALL_AMQP_URL as a list: the first node that answers, the next one when it goes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names, broker_address, wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import WorkerFactory, free_port

pytestmark = pytest.mark.integration
CONNECTED = ("broker_connected", "broker_reconnected")


@pytest.fixture
async def two_paths() -> AsyncIterator[tuple[TcpProxy, TcpProxy]]:
    """Two ways to the broker, standing for two nodes of a cluster."""
    host, port = broker_address()
    first, second = TcpProxy(host, port, free_port()), TcpProxy(host, port, free_port())
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.cut()
        await second.cut()


def url(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


async def test_the_first_node_that_answers_then_the_next_when_it_goes(
    broker: Broker,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
    two_paths: tuple[TcpProxy, TcpProxy],
) -> None:
    first, second = two_paths
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # a node that is down
    nodes = f"{closed}, {url(first)},{url(second)}"
    tasks = [sandbox.create_task() for _ in range(2)]
    with capture_logs() as logs:
        async with run_worker(amqp_url=nodes) as running:
            connected = [e["node"] for e in logs if e["event"] in CONNECTED]
            assert connected == [f"127.0.0.1:{first.port}"]
            assert running.metrics.broker_node.labels(connected[0])._value.get() == 1
            await broker.publish({"TaskId": tasks[0], "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(1)
            await first.cut()  # that node dies
            await wait_until(
                lambda: len([e for e in logs if e["event"] in CONNECTED]) == 2,
                20,
                "a connection to the next node",
            )
            await broker.publish({"TaskId": tasks[1], "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(2)
    connected = [(e["event"], e["node"]) for e in logs if e["event"] in CONNECTED]
    assert connected == [
        ("broker_connected", f"127.0.0.1:{first.port}"),
        ("broker_reconnected", f"127.0.0.1:{second.port}"),
    ]
    assert running.metrics.broker_node.labels(connected[0][1])._value.get() == 0
    assert sorted(sandbox.recalled_task_ids()) == sorted(tasks)
    lost = [e for e in logs if e["event"] == "broker_connection_lost"]
    assert len(lost) == 1
    assert not any("guest:guest" in str(e) for e in logs)  # no credentials in any event
