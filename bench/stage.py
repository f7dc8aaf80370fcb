"""One scenario's stage: its own sandbox, uuid-named queues, a broker connection and a fleet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from bench.procs import AMQP_URL, Fleet, poll
from consumer.core.topology import Topology, declare
from consumer.ops.publish import Outgoing, amqp_message
from consumer.sandbox import CallRecord, Sandbox, SandboxConfig, serve_sandbox

OVERWRITE = {"Title": "Recalled", "Desc": "This message was recalled."}
PUBLISH_BATCH = 500  # publishes in flight at once when filling a backlog


def body(task_id: str) -> bytes:
    """A valid recall request for `task_id`."""
    return json.dumps({"TaskId": task_id, "OfflinePushInfo": OVERWRITE}).encode()


async def publish_windowed(
    sends: Iterable[Callable[[], Awaitable[Any]]], window: int = PUBLISH_BATCH
) -> None:
    """Run confirmed publishes with at most `window` waiting for their confirm at once, as a
    producer that does not wait for each does; the first failure is raised."""
    pending: set[asyncio.Future[Any]] = set()
    for send in sends:
        pending.add(asyncio.ensure_future(send()))
        if len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()
    if pending:
        await asyncio.gather(*pending)


@dataclass
class Stage:
    """What a scenario works with; `t0` (monotonic) is the scenario's start on the timeline."""

    sandbox: Sandbox
    connection: AbstractConnection
    channel: AbstractChannel  # publisher confirms, mandatory publishes
    queue: str
    fleet: Fleet
    t0: float

    def calls(self) -> list[CallRecord]:
        """Revoke calls the sandbox saw, in arrival order."""
        return self.sandbox.revoke_calls()

    async def wait_calls(
        self, predicate: Callable[[list[CallRecord]], bool], timeout: float
    ) -> None:
        """Wait until predicate(calls) holds (woken by each call)."""
        await self.sandbox.wait_for(predicate, timeout)

    async def wait_count(self, n: int, timeout: float) -> None:
        """Wait for n calls by polling the count: cheap when calls come by the thousand."""
        await poll(lambda: len(self.sandbox.calls) >= n, timeout, f"{n} calls", every=0.02)

    async def publish(self, raw: bytes) -> float:
        """Publish one request (confirmed); returns the wall-clock time taken right before."""
        message = amqp_message(Outgoing(raw, str(uuid.uuid4())))
        sent = time.time()
        await self.channel.default_exchange.publish(message, self.queue, mandatory=True)
        return sent

    async def backlog(self, bodies: Sequence[bytes]) -> None:
        """Publish many requests, PUBLISH_BATCH confirms in flight at a time, in order."""
        exchange = self.channel.default_exchange
        for start in range(0, len(bodies), PUBLISH_BATCH):
            await asyncio.gather(
                *(
                    exchange.publish(
                        amqp_message(Outgoing(raw, str(uuid.uuid4()))), self.queue, mandatory=True
                    )
                    for raw in bodies[start : start + PUBLISH_BATCH]
                )
            )


class BrokerInterrupted(RuntimeError):
    """The broker closed the scenario's connection (restarted?): its figures mean nothing."""


_INTERRUPTED = (
    "the broker closed the connection during the run on {queue} (restarted by someone else?): "
    "its figures are not valid"
)


async def _connect_patiently(timeout: float = 30.0) -> AbstractConnection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await aio_pika.connect(AMQP_URL)
        except (ConnectionError, aiormq.exceptions.AMQPError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def _delete(names: Sequence[str]) -> None:
    """Delete the scenario's queues on a connection of its own (the stage's may be gone)."""
    async with await _connect_patiently() as connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()


@contextlib.asynccontextmanager
async def stage(
    workdir: Path, min_interval: float, *, baseline: bool = False
) -> AsyncIterator[Stage]:
    """A sandbox (min_interval), fresh queues (the worker's topology, or one plain classic queue
    for the baseline), a confirming channel and a fleet; all torn down on exit."""
    sandbox = Sandbox(SandboxConfig(min_interval=min_interval))
    queue = f"bench-{'baseline' if baseline else 'recall'}-{uuid.uuid4().hex[:12]}"
    names = [queue] if baseline else [queue, f"{queue}.dead", f"{queue}.results"]
    async with serve_sandbox(sandbox) as url:
        connection = await aio_pika.connect(
            AMQP_URL, client_properties={"connection_name": f"tim-recall-bench {queue}"}
        )
        lost: list[object] = []  # the broker closed the connection (is_closed does not tell)
        connection.close_callbacks.add(lambda _, exc=None: lost.append(exc))
        try:
            if baseline:
                setup = await connection.channel()
                await setup.declare_queue(queue, durable=True)
                await setup.close()
            else:
                await declare(connection, Topology(queue, names[1], names[2]))
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            async with Fleet(workdir, sandbox, url, queue) as fleet:
                yield Stage(sandbox, connection, channel, queue, fleet, time.monotonic())
        except Exception as exc:
            if lost:
                raise BrokerInterrupted(_INTERRUPTED.format(queue=queue)) from exc
            raise
        else:
            if lost:
                raise BrokerInterrupted(_INTERRUPTED.format(queue=queue))
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
            await _delete(names)
