"""Fixtures for tests against the real RabbitMQ and the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from consumer.core.client import make_http_client
from consumer.core.metrics import Metrics
from consumer.core.settings import Settings, load_settings
from consumer.core.topology import Topology, declare
from consumer.core.worker import Worker
from consumer.ops.app import build_worker
from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox
from schemas.events import ResultEvent
from tests.conftest import broker_address
from tests.integration.tcp_proxy import TcpProxy

FAST_INTERVAL_S = 0.1
OVERWRITE = {"Title": "Recalled", "Desc": "This message was recalled."}


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str = "condition"
) -> None:
    """Poll `predicate` every 20 ms until true; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Names:
    """One test's own queue names."""

    queue: str = field(default_factory=lambda: f"test-recall-{uuid.uuid4().hex[:12]}")

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"

    @property
    def results(self) -> str:
        return f"{self.queue}.results"


class Broker:
    """Publish to and look into the test's queues through a plain connection."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, names: Names) -> None:
        self.connection = connection
        self.names = names

    async def publish(
        self,
        body: bytes | dict[str, Any],
        *,
        queue: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        **properties: Any,
    ) -> str:
        """Publish one message (confirmed); returns its message_id."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        message_id = message_id or str(uuid.uuid4())
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    raw,
                    message_id=message_id,
                    correlation_id=correlation_id,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    **properties,
                ),
                routing_key=queue or self.names.queue,
                mandatory=True,
            )
        finally:
            await channel.close()
        return message_id

    async def declare(self) -> None:
        """Declare the test's queues as a worker would (to publish before one starts)."""
        await declare(
            self.connection, Topology(self.names.queue, self.names.dead, self.names.results)
        )

    async def count(self, queue: str) -> int:
        """Messages ready in `queue` (passive declare)."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def take(self, queue: str) -> list[AbstractIncomingMessage]:
        """Remove and return every message in `queue`, in order.

        Through a consumer, not basic.get: RabbitMQ refuses basic.get on a queue with a single
        active consumer (RESOURCE_LOCKED).
        """
        expected = await self.count(queue)
        channel = await self.connection.channel()
        taken: list[AbstractIncomingMessage] = []
        try:
            await channel.set_qos(prefetch_count=max(expected, 1))
            q = await channel.get_queue(queue, ensure=False)
            if expected:
                async with q.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        taken.append(message)
                        if len(taken) == expected:
                            break
        finally:
            await channel.close()
        return taken

    async def delete(self, *queues: str) -> None:
        """Delete queues, ignoring those that do not exist."""
        for name in queues:
            channel = await self.connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()


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


def worker_settings(
    amqp_url: str, sandbox: Sandbox, sandbox_url: str, names: Names, **overrides: Any
) -> Settings:
    """Settings for a worker against the sandbox, on the test's queues, at a short interval."""
    values: dict[str, Any] = {
        "sdkappid": sandbox.config.sdkappid,
        "secret_key_value": sandbox.config.secret_key,
        "base_url": sandbox_url,
        "amqp_url": amqp_url,
        "queue": names.queue,
        "interval_s": sandbox.config.min_interval,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "retry_budget_s": 10.0,
        "halt_probe_initial_s": 0.2,
        "halt_probe_max_s": 0.5,
        "http_port": 0,
        "read_timeout_s": 2.0,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class RunningWorker:
    """A worker running in this test's event loop, and what it settled."""

    worker: Worker
    settled: list[ResultEvent]
    metrics: Metrics

    def outcomes(self) -> dict[str | None, tuple[str, int]]:
        return {e.message_id: (e.outcome, e.error_code) for e in self.settled}

    async def wait_settled(self, count: int, timeout: float = 20.0) -> None:
        await wait_until(lambda: len(self.settled) >= count, timeout, f"{count} settled requests")


WorkerFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningWorker]]


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
            worker = build_worker(settings, http, metrics=metrics, on_settled=settled.append)
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
                yield RunningWorker(worker, settled, metrics)
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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """`tim-recall run` as a child process, with its HTTP endpoints on `port`."""

    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until /readyz answers 200."""

        async def check() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(f"worker exited {self.process.returncode}: {self.log()}")
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    answer = await http.get(f"http://127.0.0.1:{self.port}/readyz")
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        await wait_until(check, timeout, "the worker's /readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events the process wrote."""
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    found.append(doc)
        return found

    async def exit_code(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def assert_json_lines(self) -> None:
        """Every complete non-empty line of the log is one JSON object (RECALL_LOG_FORMAT=json)."""
        # What follows the last newline may be a line cut short by a SIGKILL: not counted.
        for number, line in enumerate(self.log().split("\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise AssertionError(
                    f"{self.log_path.name} line {number} is not a JSON object: {line[:500]!r}"
                )


SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


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


async def active_replica(*workers: WorkerProcess, timeout: float = 15.0) -> WorkerProcess:
    """The replica that settled a request (the queue's single active consumer)."""

    def settled_any(worker: WorkerProcess) -> bool:
        return any(e.get("event") == "request_recalled" for e in worker.events())

    await wait_until(lambda: any(settled_any(w) for w in workers), timeout, "a replica to settle")
    (active,) = [w for w in workers if settled_any(w)]  # never two: single active consumer
    return active
