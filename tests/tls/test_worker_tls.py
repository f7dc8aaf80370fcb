"""The worker over TLS: amqps:// with the CA (and a client certificate) as files in the URL; a
certificate that does not verify is our configuration: one line, exit 2, no retry loop."""

from __future__ import annotations

import aio_pika
import pytest

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names
from tests.support.tls import TlsNode
from tests.support.workers import SpawnWorker, WorkerFactory

pytestmark = [pytest.mark.tls, pytest.mark.integration]


async def test_a_worker_recalls_over_tls_with_a_client_certificate(
    tls_node: TlsNode,
    names: Names,
    sandbox: Sandbox,
    run_worker: WorkerFactory,
) -> None:
    url = tls_node.url(client_cert=True)
    connection = await aio_pika.connect(url, timeout=15)
    broker = Broker(connection, names)
    task_id = sandbox.create_task()
    try:
        async with run_worker(amqp_url=url) as running:
            await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(1)
        assert running.settled[0].outcome == "recalled"
        assert sandbox.is_recalled(task_id)
        assert await broker.count(names.queue) == 0
    finally:
        await broker.delete(names.queue, names.dead, names.results)
        await connection.close()


async def test_a_certificate_that_does_not_verify_exits_2_with_one_line(
    tls_node: TlsNode,
    spawn_worker: SpawnWorker,
) -> None:
    worker = await spawn_worker(RECALL_AMQP_URL=tls_node.wrong_ca_url)
    assert await worker.exit_code(timeout=30) == 2
    log = worker.log()
    assert "certificate" in log.lower()
    assert "Traceback" not in log
    assert "guest:guest" not in log
