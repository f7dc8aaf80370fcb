"""Many apps against RabbitMQ and the multi-app sandbox: routed by SDKAppID through the fleet's
exchange, each app its own queue and lane, the apps file reloaded while running, and (RabbitMQ
4) the apps spread over replicas by consumer priority."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.core.spread import owner
from consumer.producer import NoSuchApp, RecallPublisher
from consumer.sandbox import Sandbox, SandboxApp
from tests.integration.test_cli import cli
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.faults import read_all_results
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration


def write_apps(path: Path, apps: list[SandboxApp], sandbox_url: str, keys: Path) -> Path:
    """The apps file (JSON is YAML) for `apps`, each key in a file of its own."""
    entries = []
    for app in apps:
        key = keys / f"{app.sdkappid}.key"
        key.write_text(app.secret_key + "\n")
        entries.append(
            {"sdkappid": app.sdkappid, "secret_key_file": str(key), "base_url": sandbox_url}
        )
    path.write_text(json.dumps({"apps": entries}))
    return path


@pytest.fixture
async def apps(sandbox: Sandbox, broker: Broker, names: Names) -> AsyncIterator[list[SandboxApp]]:
    served = [sandbox.config.app(), *sandbox.add_apps(3)]
    try:
        yield served
    finally:  # each app's queue, besides the test's own
        await broker.delete(*(f"{names.queue}.{app.sdkappid}" for app in served))


async def recall(publisher: RecallPublisher, sandbox: Sandbox, app: SandboxApp) -> str:
    task_id = sandbox.create_task(sdkappid=app.sdkappid)
    await publisher.publish(task_id, offline_push_info=OVERWRITE, reply=False)
    return task_id


async def test_requests_are_routed_to_each_apps_own_queue_and_lane(
    amqp_url: str,
    apps: list[SandboxApp],
    sandbox: Sandbox,
    sandbox_url: str,
    run_worker: WorkerFactory,
    names: Names,
    broker: Broker,
    tmp_path: Path,
) -> None:
    path = write_apps(tmp_path / "apps.yaml", apps[:3], sandbox_url, tmp_path)
    exchange = f"ex-{names.queue}"
    async with run_worker(apps_file=path, exchange=exchange) as running:
        recalled = []
        for app in apps[:3]:
            async with RecallPublisher(amqp_url, app=app.sdkappid, exchange=exchange) as pub:
                recalled += [await recall(pub, sandbox, app) for _ in range(2)]
        async with RecallPublisher(amqp_url, app=apps[3].sdkappid, exchange=exchange) as pub:
            with pytest.raises(NoSuchApp):  # not in the file: no queue serves it
                await pub.publish("660cc447_x", offline_push_info=OVERWRITE, reply=False)
        await running.wait_settled(6)
    assert sorted(sandbox.recalled_task_ids()) == sorted(recalled)
    for app in apps[:3]:
        assert [c.code for c in sandbox.revoke_calls(app.sdkappid)] == [0, 0]
        assert await broker.count(f"{names.queue}.{app.sdkappid}") == 0
    events = await read_all_results(broker)  # type: ignore[arg-type]
    assert sorted(e.sdkappid or 0 for e in events) == sorted(a.sdkappid for a in apps[:3] * 2)


async def test_the_apps_file_is_reloaded_while_running(
    amqp_url: str,
    apps: list[SandboxApp],
    sandbox: Sandbox,
    sandbox_url: str,
    run_worker: WorkerFactory,
    names: Names,
    tmp_path: Path,
) -> None:
    path = write_apps(tmp_path / "apps.yaml", apps[:1], sandbox_url, tmp_path)
    exchange = f"ex-{names.queue}"
    overrides: dict[str, Any] = {"apps_file": path, "exchange": exchange, "apps_reload_s": 0.2}
    with capture_logs() as logs:
        async with run_worker(**overrides) as running:
            # An app added: it starts serving.
            write_apps(path, apps[:2], sandbox_url, tmp_path)
            await running.reload_apps()
            async with RecallPublisher(amqp_url, app=apps[1].sdkappid, exchange=exchange) as pub:
                await recall(pub, sandbox, apps[1])
            await running.wait_settled(1)
            # A broken file keeps the last good one and says why.
            path.write_text("apps: [{sdkappid: 5}]")
            await running.reload_apps()
            assert set(running.worker.lanes) == {apps[0].sdkappid, apps[1].sdkappid}
            # An app removed: it stops.
            write_apps(path, apps[1:2], sandbox_url, tmp_path)
            await running.reload_apps()
            assert set(running.worker.lanes) == {apps[1].sdkappid}
    invalid = [e for e in logs if e["event"] == "apps_file_invalid"]
    assert invalid
    assert "secret_key_file: Field required" in invalid[0]["reason"]
    reloaded = [(e["added"], e["removed"]) for e in logs if e["event"] == "apps_reloaded"]
    assert reloaded == [([apps[1].sdkappid], []), ([], [apps[0].sdkappid])]


async def test_apps_spread_over_replicas_by_priority_on_rabbitmq_4(
    amqp_url: str,
    apps: list[SandboxApp],
    sandbox: Sandbox,
    sandbox_url: str,
    run_worker: WorkerFactory,
    names: Names,
    broker_version: tuple[int, ...],
    tmp_path: Path,
) -> None:
    path = write_apps(tmp_path / "apps.yaml", apps, sandbox_url, tmp_path)
    exchange = f"ex-{names.queue}"
    replicas = ["replica-a", "replica-b"]
    common: dict[str, Any] = {"apps_file": path, "exchange": exchange}
    async with (
        run_worker(replica_id=replicas[0], **common) as a,
        run_worker(replica_id=replicas[1], **common) as b,
    ):
        await asyncio.sleep(0.5)  # both subscribed before any request
        for app in apps:
            async with RecallPublisher(amqp_url, app=app.sdkappid, exchange=exchange) as pub:
                await recall(pub, sandbox, app)
        await wait_until(lambda: len(a.settled) + len(b.settled) == len(apps), 20, "all apps")
    served = {r.worker.config.replica_id: {e.sdkappid for e in r.settled} for r in (a, b)}
    if broker_version >= (4, 0):
        # The replica with the highest priority for each app serves it: RabbitMQ 4.
        expected = {
            r: {x.sdkappid for x in apps if owner(x.sdkappid, replicas) == r} for r in replicas
        }
        assert served == expected
    else:  # 3.x ignores consumer priorities: the first subscriber of each queue stays active
        assert served[replicas[0]] == {x.sdkappid for x in apps}


async def test_the_apps_command_shows_backlog_server_and_halts(
    amqp_url: str,
    apps: list[SandboxApp],
    sandbox: Sandbox,
    sandbox_url: str,
    run_worker: WorkerFactory,
    names: Names,
    broker: Broker,
    tmp_path: Path,
) -> None:
    path = write_apps(tmp_path / "apps.yaml", apps[:3], sandbox_url, tmp_path)
    exchange = f"ex-{names.queue}"
    wrong, served, idle = apps[0], apps[1], apps[2]
    (tmp_path / f"{wrong.sdkappid}.key").write_text("not-this-apps-key\n")
    env = {
        "RECALL_AMQP_URL": amqp_url,
        "RECALL_QUEUE": names.queue,
        "RECALL_APPS_FILE": str(path),
        "RECALL_EXCHANGE": exchange,
    }
    common: dict[str, Any] = {"apps_file": path, "exchange": exchange, "replica_id": "replica-x"}
    async with run_worker(**common) as running:
        for app in (wrong, served):
            async with RecallPublisher(amqp_url, app=app.sdkappid, exchange=exchange) as pub:
                await recall(pub, sandbox, app)
        await running.wait_settled(1)
        await wait_until(lambda: running.worker.lanes[wrong.sdkappid].halted, 15, "the halt")
        await asyncio.sleep(0.3)  # the lane records are appended in the background
        code, out, err = await cli("apps", "--json", env=env)
    assert code == 0, err
    rows = {row["sdkappid"]: row for row in map(json.loads, out.splitlines())}
    assert rows[wrong.sdkappid]["state"] == "halted"
    assert "70003" in rows[wrong.sdkappid]["reason"]
    assert rows[wrong.sdkappid]["backlog"] == 1  # handed back, waiting for the key
    assert (rows[served.sdkappid]["state"], rows[served.sdkappid]["replica"]) == (
        "active",
        "replica-x",
    )
    assert rows[served.sdkappid]["outcomes"] == {"recalled": 1}
    assert rows[idle.sdkappid]["state"] is None  # no delivery yet: no lane record
    assert rows[idle.sdkappid]["consumers"] == 1  # subscribed, standing by for a delivery
    code, out, _ = await cli("apps", env=env)
    assert code == 0
    assert "1 halted" in out
