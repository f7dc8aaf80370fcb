"""Many apps in one process, on the in-memory broker and the multi-app sandbox in process: each
app its own lane (pacer, key, halt state), one app's backlog never delays another's, a wrong key
halts one app alone, apps added and removed while running. The integration tier runs the same
against RabbitMQ (tests/integration/test_apps.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aio_pika
import httpx
import pytest
from structlog.testing import capture_logs

from consumer.core.client import RevokeClient
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.pacing import Pacer
from consumer.core.secret_key import SecretKeySource
from consumer.core.settings import load_settings
from consumer.core.stream import RESULT_TYPE
from consumer.core.topology import Topology
from consumer.core.usersig import UserSigCache
from consumer.core.worker import AppLane, Worker
from consumer.ops.app import worker_config
from consumer.sandbox import Sandbox, SandboxApp, SandboxConfig
from schemas.events import H_SDKAPPID, ResultEvent
from tests.support.amqp_double import AmqpDouble
from tests.support.broker import wait_until

INTERVAL_S = 0.05
QUEUE = "recall"
FLEET = Topology(QUEUE, f"{QUEUE}.dead", f"{QUEUE}.results", exchange="tim-recall")
DLQ, RESULTS = FLEET.dead_letter_queue, FLEET.results_stream
OVERWRITE = {"Title": "Recalled", "Desc": "This message was recalled."}


def queue_of(app: int) -> str:
    return f"{QUEUE}.{app}"


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    await wait_until(predicate, timeout, what)


@dataclass
class Fleet:
    worker: Worker
    settled: list[ResultEvent]
    http: httpx.AsyncClient
    sandbox: Sandbox

    def lane_for(self, app: SandboxApp, key: str | None = None) -> AppLane:
        keys = SecretKeySource(key or app.secret_key)
        usersigs = UserSigCache(app.sdkappid, "administrator", keys)
        client = RevokeClient(
            self.http, "http://sandbox.test", app.sdkappid, "administrator", usersigs
        )
        return AppLane(app.sdkappid, client, Pacer(app.min_interval), queue=queue_of(app.sdkappid))


@contextlib.asynccontextmanager
async def fleet(
    broker: AmqpDouble, sandbox: Sandbox, apps: list[SandboxApp], keys: dict[int, str] | None = None
) -> AsyncIterator[Fleet]:
    settings = load_settings(
        sdkappid=apps[0].sdkappid,
        secret_key_value=apps[0].secret_key,
        amqp_url="amqp://guest:guest@double.test:5672/",
        queue=QUEUE,
        interval_s=INTERVAL_S,
        retry_initial_s=0.02,
        retry_max_s=0.1,
        retry_budget_s=10.0,
        halt_probe_initial_s=30.0,
        http_port=0,
    )
    settled: list[ResultEvent] = []
    transport = httpx.ASGITransport(app=sandbox.app())
    async with httpx.AsyncClient(transport=transport) as http:
        parts = Fleet(None, settled, http, sandbox)  # type: ignore[arg-type]
        lanes = [parts.lane_for(app, (keys or {}).get(app.sdkappid)) for app in apps]
        worker = Worker(
            worker_config(settings),
            lanes,
            Metrics(),
            memory=RecallMemory(),
            on_settled=settled.append,
            connect=broker.connect,
        )
        parts.worker = worker
        started = asyncio.Event()
        task = asyncio.create_task(worker.run(started))
        await until(lambda: started.is_set() or task.done(), "the worker to start")
        if task.done():
            task.result()
        try:
            yield parts
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert broker.callback_errors == []


def body(task_id: str) -> bytes:
    return json.dumps({"TaskId": task_id, "OfflinePushInfo": OVERWRITE}).encode()


async def route(broker: AmqpDouble, app: int, raw: bytes) -> None:
    """Publish as a producer does: to the fleet's exchange, the SDKAppID as routing key."""
    connection = await broker.connect()
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange("tim-recall", durable=True)  # type: ignore[attr-defined]
    await exchange.publish(aio_pika.Message(raw), str(app), mandatory=True)
    await connection.close()


def events(broker: AmqpDouble) -> list[ResultEvent]:
    return [
        ResultEvent.model_validate_json(held.body)
        for held in broker.held(RESULTS)
        if held.message_type == RESULT_TYPE
    ]


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(min_interval=INTERVAL_S))


@pytest.fixture
def apps(sandbox: Sandbox) -> list[SandboxApp]:
    return [sandbox.config.app(), *sandbox.add_apps(2)]


async def test_one_apps_backlog_never_delays_another_app(
    sandbox: Sandbox, apps: list[SandboxApp]
) -> None:
    broker = AmqpDouble()
    busy, idle = apps[0].sdkappid, apps[1].sdkappid
    async with fleet(broker, sandbox, apps) as running:
        for _ in range(10):
            await route(broker, busy, body(sandbox.create_task(sdkappid=busy)))
        await until(lambda: len(sandbox.revoke_calls(busy)) >= 2, "the backlog under way")
        await route(broker, idle, body(sandbox.create_task(sdkappid=idle)))
        await until(lambda: len(running.settled) >= 11, "every request")
    busy_calls, (idle_call,) = sandbox.revoke_calls(busy), sandbox.revoke_calls(idle)
    # The idle app's request went straight through, between the busy app's calls.
    assert idle_call.arrived < busy_calls[5].arrived
    assert all(c.code == 0 for c in [*busy_calls, idle_call])
    # Each app paced at its own interval, as its server saw it.
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(busy_calls)]
    assert min(gaps) >= INTERVAL_S
    assert {e.sdkappid for e in events(broker)} == {busy, idle}


async def test_a_wrong_key_halts_its_app_alone(sandbox: Sandbox, apps: list[SandboxApp]) -> None:
    broker = AmqpDouble()
    wrong, right = apps[0].sdkappid, apps[1].sdkappid
    async with fleet(broker, sandbox, apps, keys={wrong: "not-the-key"}) as running:
        await route(broker, wrong, body(sandbox.create_task(sdkappid=wrong)))
        await until(lambda: running.worker.lanes[wrong].halted, "the wrong app halted")
        await route(broker, right, body(sandbox.create_task(sdkappid=right)))
        await until(lambda: len(running.settled) == 1, "the right app's recall")
        state = {a["sdkappid"]: a for a in running.worker.apps()}
        assert state[wrong]["state"] == "halted"
        assert "70003" in (state[wrong]["halt_reason"] or "")
        assert state[right]["state"] == "active"
        assert running.worker.readiness()["not_halted"]  # the replica still serves others
    assert [e.sdkappid for e in running.settled] == [right]
    assert len(broker.held(queue_of(wrong))) == 1  # handed back, waiting for the fixed key


async def test_the_same_task_id_in_two_apps_is_two_tasks(
    sandbox: Sandbox, apps: list[SandboxApp]
) -> None:
    broker = AmqpDouble()
    a, b = apps[0].sdkappid, apps[1].sdkappid
    task_a = sandbox.create_task(sdkappid=a)
    async with fleet(broker, sandbox, apps) as running:
        await route(broker, a, body(task_a))
        await until(lambda: len(running.settled) == 1, "app a's recall")
        await route(broker, b, body(task_a))  # the same TaskId, another app: not a duplicate
        await until(lambda: len(running.settled) == 2, "app b's answer")
    assert [(c.sdkappid, c.code) for c in sandbox.revoke_calls()] == [(a, 0), (b, 90049)]
    (letter,) = broker.held(DLQ)
    assert letter.headers[H_SDKAPPID] == b


async def test_apps_added_and_removed_while_running(
    sandbox: Sandbox, apps: list[SandboxApp]
) -> None:
    broker = AmqpDouble()
    first, later = apps[0], apps[2]
    async with fleet(broker, sandbox, [first]) as running:
        with capture_logs() as logs:
            await running.worker.serve_apps([running.lane_for(first), running.lane_for(later)])
        await route(broker, later.sdkappid, body(sandbox.create_task(sdkappid=later.sdkappid)))
        await until(lambda: len(running.settled) == 1, "the added app's recall")
        await running.worker.serve_apps([running.lane_for(later)])  # the first one removed
        assert set(running.worker.lanes) == {later.sdkappid}
        task_id = sandbox.create_task(sdkappid=first.sdkappid)
        await route(broker, first.sdkappid, body(task_id))
        await asyncio.sleep(0.2)  # nothing may take it: the app is no longer served here
        assert sandbox.revoke_calls(first.sdkappid) == []
    assert [e["event"] for e in logs if e["event"].startswith("app_")] == ["app_added"]
    assert len(broker.held(queue_of(first.sdkappid))) == 1  # kept for whoever serves it


async def test_a_request_for_an_app_nobody_serves_is_returned(
    sandbox: Sandbox, apps: list[SandboxApp]
) -> None:
    broker = AmqpDouble()
    async with fleet(broker, sandbox, apps[:1]):
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await route(broker, 999, body("660cc447_x"))


async def test_lanes_share_a_few_consumer_channels_and_one_session(
    sandbox: Sandbox, apps: list[SandboxApp]
) -> None:
    broker = AmqpDouble()
    more = sandbox.add_apps(20)
    async with fleet(broker, sandbox, [*apps, *more]) as running:
        await until(lambda: running.worker.readiness()["consuming"], "every lane consuming")
        (connection,) = [c for c in broker.connections if not c.is_closed]
        # The publisher, the follower's two channels, and one consumer channel for 23 lanes.
        assert len([c for c in connection.channels if not c.is_closed]) <= 5
        assert running.worker.readiness()["consuming"]
