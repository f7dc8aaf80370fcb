"""Fixtures shared by every tier: the broker (tests that need it fail loudly when it is not
there), one test's queues, the sandbox over HTTP, workers in-process or as child processes.

The tiers: every test that needs a broker (it asks for `amqp_url`, directly or through another
fixture, or starts its own nodes) is marked `broker` here, so `make unit` (`-m "not broker"`) runs
everything else, the sandbox's own tests included, with no RabbitMQ at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from consumer.core.client import make_http_client
from consumer.core.metrics import Metrics
from consumer.ops.app import build_worker
from consumer.ops.lanes import fleet_apps
from consumer.ops.reload import AppsReloader
from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox
from schemas.events import ResultEvent
from tests.support.broker import FAST_INTERVAL_S, Broker, Names, broker_address
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import (
    RunningWorker,
    SpawnWorker,
    WorkerFactory,
    WorkerProcess,
    free_port,
    worker_settings,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need RabbitMQ `broker`: the tier marker `make unit` leaves out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if (
            "amqp_url" in fixtures
            or item.get_closest_marker("cluster")
            or (item.get_closest_marker("tls"))
        ):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker URL; fails (not skips) when nothing listens: CI must not pass without it."""
    host, port = broker_address()
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not answering on {host}:{port} ({exc}); run `make broker`")
    return f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture(scope="session")
def broker_version(amqp_url: str) -> tuple[int, ...]:
    """The tests' RabbitMQ version, e.g. (3, 10, 8) or (4, 0, 5), from a connection's
    server_properties: for tests whose expectations differ by version (delivery limit and
    counting, x-death, defaults). `make test` runs on 3.10, `make test-rabbitmq4` on 4.0."""

    async def read() -> str:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        try:
            properties = connection.transport.connection.server_properties
            return str(properties.get("version", "0"))
        finally:
            await connection.close()

    text = asyncio.run(read())
    return tuple(
        int(part) for part in text.split("+")[0].split("-")[0].split(".") if part.isdigit()
    )


@pytest.fixture
def names() -> Names:
    return Names()


@pytest.fixture
async def broker(amqp_url: str, names: Names) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(amqp_url)
    helper = Broker(connection, names)
    try:
        yield helper
    finally:
        await helper.delete(names.queue, names.dead, names.results)
        await connection.close()


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=FAST_INTERVAL_S))


@pytest.fixture
async def sandbox_url(sandbox: Sandbox) -> AsyncIterator[str]:
    async with serve_sandbox(sandbox) as url:
        yield url


@pytest.fixture
def run_worker(amqp_url: str, sandbox: Sandbox, sandbox_url: str, names: Names) -> WorkerFactory:
    """`async with run_worker(**setting_overrides) as running:` runs a worker in-process."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningWorker]:
        url = overrides.pop("amqp_url", amqp_url)  # e.g. through a cuttable proxy
        settings = worker_settings(url, sandbox, sandbox_url, names, **overrides)
        settled: list[ResultEvent] = []
        metrics = Metrics()
        async with make_http_client(settings.connect_timeout_s, settings.read_timeout_s) as http:
            apps = fleet_apps(settings)
            worker = build_worker(
                settings, http, metrics=metrics, on_settled=settled.append, apps=apps
            )
            reloader = AppsReloader(worker, settings, http, apps)
            started = asyncio.Event()
            task = asyncio.create_task(worker.run(started))
            done, _ = await asyncio.wait(
                [task, asyncio.create_task(started.wait())],
                timeout=15,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if task in done:
                task.result()  # raises why the worker could not start
            try:
                yield RunningWorker(worker, settled, metrics, reloader)
            finally:
                worker.stop()
                await asyncio.wait_for(task, timeout=30)

    return start


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A path to the broker the test can cut or stall; cut again at the end whatever happened."""
    host, port = broker_address()
    path = TcpProxy(host, port, free_port())
    await path.start()
    try:
        yield path
    finally:
        await path.cut()


@pytest.fixture
async def spawn_worker(
    amqp_url: str, sandbox: Sandbox, sandbox_url: str, names: Names, tmp_path: Path
) -> AsyncIterator[SpawnWorker]:
    """`await spawn_worker(**env)` starts `python -m consumer run` against the sandbox."""
    children: list[WorkerProcess] = []

    async def spawn(**env_overrides: str) -> WorkerProcess:
        port = free_port()
        key_file = tmp_path / f"secret-{len(children)}"
        key_file.write_text(sandbox.config.secret_key + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
        env.update(
            {
                "TIM_SDKAPPID": str(sandbox.config.sdkappid),
                "TIM_SECRET_KEY_FILE": str(key_file),
                "TIM_BASE_URL": sandbox_url,
                "TIM_READ_TIMEOUT_S": "5",
                "RECALL_AMQP_URL": amqp_url,
                "RECALL_QUEUE": names.queue,
                "RECALL_INTERVAL_S": str(sandbox.config.min_interval),
                "RECALL_RETRY_INITIAL_S": "0.05",
                "RECALL_RETRY_MAX_S": "0.5",
                "RECALL_HTTP_HOST": "127.0.0.1",
                "RECALL_HTTP_PORT": str(port),
                "RECALL_LOG_FORMAT": "json",
            }
        )
        env.update(env_overrides)
        log_path = tmp_path / f"worker-{len(children)}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer", "run", env=env, stdout=log, stderr=log
            )
        child = WorkerProcess(process, port, log_path)
        children.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in children:
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
    for child in children:  # one log stream: library records, crashes and all (issue 10)
        child.assert_json_lines()
