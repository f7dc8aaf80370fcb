"""The fault suite's helpers: a broker helper that survives a broker restart, the ledger every
fault test ends with, pacing and process helpers, and stopping/starting the broker's app."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from starlette.responses import Response
from starlette.types import Message, Receive

from consumer.core.stream import read_results
from consumer.sandbox import Sandbox, SandboxConfig
from schemas.events import H_ERROR_CODE, H_ERROR_SOURCE, ResultEvent
from tests.support.broker import Broker, Names, broker_address, wait_until
from tests.support.commands import run_command
from tests.support.workers import WorkerProcess

# ---- a broker helper that can reconnect ---------------------------------------------------------


class FaultBroker(Broker):
    """The integration `Broker`, plus a reconnect (after a broker restart) and bulk publishing."""

    def __init__(
        self, connection: aio_pika.abc.AbstractConnection, names: Names, amqp_url: str
    ) -> None:
        super().__init__(connection, names)
        self.amqp_url = amqp_url

    async def reconnect(self, timeout: float = 60.0) -> None:
        """Replace the connection with a fresh one (the old one died with the broker)."""
        with contextlib.suppress(Exception):
            await self.connection.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connection = await aio_pika.connect(self.amqp_url, timeout=5)
                return
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPException):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish (message_id, body) pairs persistent and mandatory, confirmed, on one channel."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            for message_id, body in messages:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=message_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=self.names.queue,
                    mandatory=True,
                )
        finally:
            await channel.close()

    async def delete(self, *queues: str) -> None:
        """Delete queues; never fails (teardown after a broker restart must not error)."""
        for name in queues:
            with contextlib.suppress(Exception):
                channel = await self.connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()


# ---- what was published, and the ledger ---------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """One request the test published."""

    message_id: str
    body: bytes
    task_id: str | None = None  # the sandbox task the body names (None: names no real task)
    recalled_elsewhere: bool = False  # the test recalled the task behind the worker's back


@dataclass
class Ledger:
    """Where every published request ended up."""

    published: list[Published]
    recalled: dict[str, str]  # message_id -> TaskId, recalled per the sandbox
    dead: dict[str, AbstractIncomingMessage]  # message_id -> its dead letter
    calls: int  # revoke calls the sandbox received
    codes: Counter[int | None]  # the sandbox's answers, by ErrorCode (None: bare HTTP / hang)
    results_events: int  # events in the results stream
    duplicate_events: int  # results events beyond the first for one request

    def dead_codes(self) -> Counter[int]:
        return Counter(int((m.headers or {})[H_ERROR_CODE]) for m in self.dead.values())

    def figures(self) -> str:
        return (
            f"published={len(self.published)} recalled={len(self.recalled)} "
            f"dead_lettered={len(self.dead)} calls={self.calls} "
            f"codes={dict(sorted(self.codes.items(), key=str))} "
            f"dead_codes={dict(self.dead_codes())} results_events={self.results_events} "
            f"duplicate_events={self.duplicate_events}"
        )


_ids = itertools.count()


def request_for(task_id: str | None, body: dict[str, Any] | bytes, **kw: Any) -> Published:
    """A Published record with a fresh message_id (publish it with `publish_all`)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Published(f"msg-{next(_ids):06d}-{time.monotonic_ns()}", raw, task_id, **kw)


async def publish_all(broker: FaultBroker, requests: list[Published]) -> None:
    """Publish the requests, in order, confirmed."""
    await broker.publish_many([(p.message_id, p.body) for p in requests])


async def read_all_results(broker: FaultBroker) -> list[ResultEvent]:
    """Every event in the test's results stream (empty when the stream was never declared)."""
    try:
        return [
            event
            async for event in read_results(
                broker.connection, broker.names.results, "first", idle_timeout=10.0
            )
        ]
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return []


async def ledger(broker: FaultBroker, sandbox: Sandbox, published: list[Published]) -> Ledger:
    """Check that every published request was settled exactly once; return the figures.

    Call it once every worker has stopped (a live worker holds one unacked message that a
    passive declare does not count). Settled means: recalled per the sandbox (each TaskId
    recalled once, never two 0 answers for a task), or in the dead-letter queue (once, with
    the original body byte for byte and an `x-recall-error-code`); none left in the recall
    queue; none lost; no TaskId both recalled and dead-lettered; and the results stream
    agrees with that for every request.
    """
    names = broker.names
    by_id = {p.message_id: p for p in published}
    assert len(by_id) == len(published), "the test published two requests with one message_id"
    task_ids = [p.task_id for p in published if p.task_id is not None]
    assert len(set(task_ids)) == len(task_ids), "the test published one TaskId twice"

    left = await broker.count(names.queue)
    assert left == 0, f"{left} request(s) left in the recall queue"

    letters = await broker.take(names.dead)
    letter_ids = Counter(m.message_id for m in letters)
    assert all(n == 1 for n in letter_ids.values()), f"dead-lettered twice: {letter_ids}"
    dead = {str(m.message_id): m for m in letters}
    unknown = set(dead) - set(by_id)
    assert not unknown, f"dead letters for requests nobody published: {unknown}"
    for message_id, letter in dead.items():
        headers = letter.headers or {}
        assert isinstance(headers.get(H_ERROR_CODE), int), (message_id, headers)
        assert headers.get(H_ERROR_SOURCE) in ("api", "local"), (message_id, headers)
        assert letter.body == by_id[message_id].body, f"dead letter {message_id} body changed"

    recalled_ids = sandbox.recalled_task_ids()
    twice = [t for t, n in Counter(recalled_ids).items() if n > 1]
    assert not twice, f"recalled twice: {twice}"
    stray = set(recalled_ids) - set(task_ids)
    assert not stray, f"recalled tasks that no published request named: {stray}"
    calls = sandbox.revoke_calls()
    zeros = Counter(c.task_id for c in calls if c.code == 0)
    assert all(n == 1 for n in zeros.values()), f"a task answered 0 twice: {zeros}"

    recalled: dict[str, str] = {}
    for p in published:
        was_recalled = (
            p.task_id is not None and sandbox.is_recalled(p.task_id) and not p.recalled_elsewhere
        )
        was_dead = p.message_id in dead
        assert was_recalled or was_dead, f"lost: {p.message_id} task={p.task_id}"
        assert not (was_recalled and was_dead), (
            f"{p.message_id} task={p.task_id} both recalled and dead-lettered "
            f"({dict(dead[p.message_id].headers or {})})"
        )
        if was_recalled:
            assert p.task_id is not None
            recalled[p.message_id] = p.task_id

    events = await read_all_results(broker)
    per_request: dict[str | None, list[ResultEvent]] = {}
    for event in events:
        per_request.setdefault(event.message_id, []).append(event)
    for p in published:
        told = per_request.get(p.message_id, [])
        expected = "recalled" if p.message_id in recalled else "dead_lettered"
        assert told, f"no results event for {p.message_id}"
        assert {e.outcome for e in told} == {expected}, (
            f"results events for {p.message_id} say {[(e.outcome, e.error_code) for e in told]}"
            f", the ledger says {expected}"
        )
    return Ledger(
        published=published,
        recalled=recalled,
        dead=dead,
        calls=len(calls),
        codes=Counter(c.code for c in calls),
        results_events=len(events),
        duplicate_events=sum(len(v) - 1 for v in per_request.values() if v),
    )


async def take_unacked_then_drop(broker: FaultBroker, queue: str) -> str | None:
    """Receive one delivery from `queue` and close the channel without acking it: the message
    goes back to the queue marked redelivered, as when a worker dies holding it. Its message_id."""
    channel = await broker.connection.channel()
    try:
        await channel.set_qos(prefetch_count=1)
        q = await channel.get_queue(queue, ensure=False)
        async with q.iterator() as deliveries:
            async for message in deliveries:
                return message.message_id
    finally:
        await channel.close()
    return None


class RecordingSandbox(Sandbox):
    """The sandbox, also keeping what each revoke call carried: its UserSig and its body."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        super().__init__(config)
        self.received: list[Received] = []

    async def _revoke(self, query: Mapping[str, str], receive: Receive) -> Response:
        chunks: list[bytes] = []

        async def recording() -> Message:  # what the sandbox reads, kept as it reads it
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        response = await super()._revoke(query, recording)
        self.received.append(Received(query.get("usersig", ""), b"".join(chunks)))
        return response


@dataclass(frozen=True)
class Received:
    """One revoke call's UserSig and body, as the sandbox received them."""

    usersig: str
    body: bytes


# ---- pacing, processes, logs ---------------------------------------------------------------------


def min_gap(sandbox: Sandbox) -> float:
    """The smallest time between two revoke arrivals, as the server saw them."""
    arrivals = [c.arrived for c in sandbox.revoke_calls()]
    return min((b - a for a, b in itertools.pairwise(arrivals)), default=float("inf"))


def event_time(event: dict[str, Any]) -> float:
    """A JSON log event's timestamp as unix seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def events_named(worker: WorkerProcess, name: str) -> list[dict[str, Any]]:
    """The JSON log events called `name` a worker process wrote."""
    return [e for e in worker.events() if e.get("event") == name]


async def stop(worker: WorkerProcess) -> None:
    """SIGTERM a worker process; it must finish its delivery and exit 0."""
    worker.process.send_signal(signal.SIGTERM)
    code = await worker.exit_code(timeout=30)
    assert code == 0, f"worker exited {code}:\n{worker.log()[-3000:]}"


async def kill(worker: WorkerProcess) -> None:
    """SIGKILL a worker process and reap it."""
    worker.process.kill()
    await worker.exit_code(timeout=10)


def report(test: str, **figures: Any) -> None:
    """Print the figures of a run (shown with `pytest -s` or `-rP`)."""
    print(f"\n[faults] {test}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


# ---- the broker's app, stopped and started -------------------------------------------------------


async def rabbitmqctl(*args: str, timeout: float = 120.0) -> str:
    """Run `rabbitmqctl args`; AssertionError with its output when it fails. The command is
    TEST_RABBITMQCTL when set (split like a shell would), e.g. `scripts/rabbitmq4.sh ctl` for
    the RabbitMQ 4 node of `make test-rabbitmq4`."""
    command = shlex.split(os.environ.get("TEST_RABBITMQCTL", "rabbitmqctl"))
    try:
        code, text = await run_command([*command, *args], timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} took more than {timeout} s") from None
    assert code == 0, f"rabbitmqctl {' '.join(args)} failed: {text}"
    return text


def _port_open() -> bool:
    host, port = broker_address()
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def start_broker_app(restart: BrokerRestart | None = None) -> None:
    """`rabbitmqctl start_app`, then wait until the AMQP port answers and the node is booted."""
    await rabbitmqctl("start_app")
    await wait_until(_port_open, 60, "RabbitMQ's AMQP port after start_app")
    if restart is not None:
        restart.port_open_at = time.time()
    await rabbitmqctl("await_startup", "--timeout", "60")


@dataclass
class BrokerRestart:
    """When the broker's app was stopped and started again (time.time())."""

    stopped_at: float = 0.0  # `stop_app` returned
    port_open_at: float = 0.0  # the AMQP port answered after `start_app`
    booted_at: float = 0.0  # `await_startup` returned


@contextlib.asynccontextmanager
async def broker_app_stopped() -> AsyncIterator[BrokerRestart]:
    """Stop RabbitMQ's app for the body of the block; it is ALWAYS started again on the way out,
    whatever happened (and the port waited for), so a failed test never leaves the broker down."""
    restart = BrokerRestart()
    try:
        await rabbitmqctl("stop_app")
        restart.stopped_at = time.time()
        yield restart
    finally:
        try:
            await start_broker_app(restart)
        except AssertionError:
            await asyncio.sleep(2)
            await start_broker_app(restart)  # one more try before giving up loudly
        restart.booted_at = time.time()
