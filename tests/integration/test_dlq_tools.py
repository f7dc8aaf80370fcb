"""The dead-letter tools read anything and keep the queue's order (issue 10, point 3).

Against the real broker: every dead letter the worker can produce (deep nesting, invalid UTF-8,
64 KiB bodies, missing or wrong-typed headers, the broker's own dead letters) goes through
`dlq list`, `replay` and `purge`; the order of what stays is checked by draining the queue at the
end, including after a refused replay and after the tool is killed midway. A fleet's dead letters
are filtered by app and replayed each to its own app's queue. The 100,000-message case is in the
benchmark (bench/dlq.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from consumer.core.errors import TimRecallError
from consumer.core.topology import Topology
from consumer.ops.dlq import PREFETCH, list_dead_letters, matcher, move_dead_letters
from consumer.sandbox import Sandbox
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FIRST_SEEN,
    H_LINEAGE,
    H_RELEASES,
    H_REPLAY,
    H_SDKAPPID,
)
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration

NOW = int(time.time())
CODES = (90053, 90049, 90001)


def letter(i: int, code: int | None, body: bytes | None = None, **headers: Any) -> aio_pika.Message:
    """A dead letter as the worker writes it (message_id m-00042 for i=42)."""
    ours: dict[str, Any] = {
        H_ATTEMPTS: 1,
        H_FIRST_SEEN: NOW - 60,
        H_DEAD_LETTERED_AT: NOW,
        H_ERROR_SOURCE: "api",
        H_ERROR_INFO: f"dead letter {i}",
    }
    if code is not None:
        ours[H_ERROR_CODE] = code
    return aio_pika.Message(
        body if body is not None else json.dumps({"TaskId": f"t_{i}"}).encode(),
        headers={**ours, **headers},
        message_id=f"m-{i:05d}",
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def mixed(count: int) -> list[aio_pika.Message]:
    """`count` dead letters whose codes cycle through CODES."""
    return [letter(i, CODES[i % len(CODES)]) for i in range(count)]


async def fill(broker: Broker, queue: str, messages: list[aio_pika.Message]) -> list[str]:
    """Publish in order, confirmed in batches; returns the message_ids in order."""
    channel = await broker.connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        for start in range(0, len(messages), 200):
            batch = messages[start : start + 200]
            await asyncio.gather(
                *[
                    channel.default_exchange.publish(m, routing_key=queue, mandatory=True)
                    for m in batch
                ]
            )
    finally:
        await channel.close()
    return [m.message_id or "" for m in messages]


async def ids(broker: Broker, queue: str) -> list[str]:
    """Drain `queue`: the message_ids in the order the broker hands them out."""
    return [m.message_id or "" for m in await broker.take(queue)]


async def tool(
    amqp_url: str, names: Names, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**clean, "RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert b"Traceback" not in out + err, err.decode()
    return process.returncode or 0, out.decode(), err.decode()


async def ok(amqp_url: str, names: Names, *args: str, **kw: Any) -> str:
    code, out, err = await tool(amqp_url, names, *args, **kw)
    assert code == 0, err
    assert err == ""  # not a terminal: no progress bar, no log line
    return out


def listed(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_list_keeps_the_order_whatever_was_listed_before(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    original = await fill(broker, names.dead, mixed(300))
    for limit in ("50", "7", "1", "120", "3", "300", "50"):
        out = await ok(amqp_url, names, "dlq", "list", "--json", "--limit", limit)
        assert [d["message_id"] for d in listed(out)] == original[: int(limit)]
    out = await ok(amqp_url, names, "dlq", "list", "--limit", "5")
    lines = out.splitlines()
    assert lines[0].split() == ["TaskId", "code", "info", "source", "attempts", "when", "app"]
    assert lines[2].split()[:2] == ["t_0", "90053"]
    assert lines[-1] == f"5 dead letter(s) shown from {names.dead}"
    assert await ids(broker, names.dead) == original


async def test_a_listing_piped_to_head_still_keeps_the_order(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    original = await fill(broker, names.dead, mixed(300))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    command = f"{sys.executable} -m consumer dlq list --json --limit 300 | head -n 1"
    process = await asyncio.create_subprocess_shell(
        command,
        env={**clean, "RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert err == b""
    assert json.loads(out)["message_id"] == original[0]
    assert await ids(broker, names.dead) == original


async def test_a_nested_brackets_dead_letter_goes_through_all_three_tools(
    amqp_url: str, broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory
) -> None:
    # Issue 10: after a body of 100,000 nested brackets was dead-lettered 90001, list, replay
    # and purge all crashed with a RecursionError. Here the worker dead-letters it for real.
    bare_a = sandbox.create_task(online_only=False)
    bare_b = sandbox.create_task(online_only=False)
    unknown = bare_a.replace(bare_a.split("_")[1], "0badf00d")
    nested_in_object = b'{"TaskId": "t_x", "a": ' + b"[" * 60_000  # under 64 KiB
    async with run_worker() as running:
        sent = [
            await broker.publish({"TaskId": bare_a}),
            await broker.publish(b"[" * 100_000),
            await broker.publish({"TaskId": unknown, "OfflinePushInfo": OVERWRITE}),
            await broker.publish(nested_in_object),
            await broker.publish({"TaskId": bare_b}),
        ]
        await running.wait_settled(5)
    assert await broker.count(names.dead) == 5

    out = await ok(amqp_url, names, "dlq", "list")
    rows = out.splitlines()[2:-1]
    assert [row.split()[1] for row in rows] == ["90053", "90001", "90049", "90001", "90053"]
    assert rows[1].split()[0] == "-"  # TaskId unknown
    assert rows[3].split()[0] == "-"
    letters = listed(await ok(amqp_url, names, "dlq", "list", "--json"))
    assert [d["message_id"] for d in letters] == sent
    assert [d["task_id"] for d in letters] == [bare_a, None, unknown, None, bare_b]

    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90001", "--dry-run")
    assert "2 dead letter(s) would be replayed; 3 left in place, in order" in out
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90053")
    assert "2 dead letter(s) replayed; 3 left in place, in order" in out
    letters = listed(await ok(amqp_url, names, "dlq", "list", "--json"))
    assert [d["message_id"] for d in letters] == [sent[1], sent[2], sent[3]]
    out = await ok(amqp_url, names, "dlq", "purge", "--code", "90001", "--yes")
    assert "2 dead letter(s) purged; 1 left in place, in order" in out
    assert await ids(broker, names.dead) == [sent[2]]
    assert sorted(await ids(broker, names.queue)) == sorted([sent[0], sent[4]])


async def test_letters_the_worker_never_wrote_are_read_too(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    # The broker's own dead letter: no consumer, a 1 ms TTL on the recall queue.
    await broker.publish({"TaskId": "expired-in-queue"}, message_id="m-expired", expiration=0.001)
    await wait_until(lambda: _count_is(broker, names.dead, 1), 10, "the broker's dead letter")
    big = b'{"TaskId": "t_big", "OfflinePushInfo": {"Desc": "' + b"x" * 65_400 + b'"}}'
    odd = [
        letter(1, 90001, body=b'{"TaskId": "t_\xff\xfe"}'),  # invalid UTF-8
        aio_pika.Message(b'{"TaskId": "t_bare"}', message_id="m-00002"),  # no headers at all
        letter(
            3,
            None,
            **{H_ERROR_CODE: "90053", H_ATTEMPTS: bytearray(b"x"), H_DEAD_LETTERED_AT: 10**15},
        ),
        letter(4, None, **{"x-death": "not a list", "x-first-death-reason": "rejected"}),
        letter(5, None, **{"x-death": ["not a table", 7]}),
        letter(6, 90053, body=big),  # 64 KiB
        letter(7, 90049, body=b"\x00\x01binary"),
    ]
    expected = ["m-expired", *await fill(broker, names.dead, odd)]
    letters = listed(await ok(amqp_url, names, "dlq", "list", "--json"))
    assert [d["message_id"] for d in letters] == expected
    by_id = {d["message_id"]: d for d in letters}
    assert by_id["m-expired"]["source"] == "broker:expired"
    assert by_id["m-expired"]["task_id"] == "expired-in-queue"
    assert by_id["m-00001"]["task_id"] is None
    assert by_id["m-00002"]["code"] is None
    assert by_id["m-00002"]["source"] == "unknown"
    assert by_id["m-00003"]["code"] == 90053
    assert by_id["m-00003"]["when"] is None
    assert by_id["m-00004"]["source"] == "broker:rejected"
    assert by_id["m-00005"]["source"] == "broker:unknown"
    assert by_id["m-00006"]["task_id"] == "t_big"
    assert by_id["m-00007"]["task_id"] is None
    table = await ok(amqp_url, names, "dlq", "list")
    assert len(table.splitlines()) == 2 + len(expected) + 1

    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90053")
    assert "2 dead letter(s) replayed; 6 left in place, in order" in out
    out = await ok(amqp_url, names, "dlq", "purge", "--code", "90001", "--yes")
    assert "1 dead letter(s) purged; 5 left in place, in order" in out
    assert await ids(broker, names.dead) == [
        "m-expired",
        "m-00002",
        "m-00004",
        "m-00005",
        "m-00007",
    ]
    replayed = await broker.take(names.queue)
    assert [m.message_id for m in replayed] == ["m-00003", "m-00006"]
    assert replayed[1].body == big


async def _count_is(broker: Broker, queue: str, count: int) -> bool:
    return await broker.count(queue) == count


async def test_replay_moves_the_matching_ones_in_order_as_new_requests(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    chain = {H_LINEAGE: "old-lineage", H_RELEASES: 2, "x-acquired-count": 3, "x-custom": "kept"}
    messages = [letter(i, CODES[i % 3], **chain) for i in range(300)]
    original = await fill(broker, names.dead, messages)
    await ok(amqp_url, names, "dlq", "list", "--limit", "7")  # some handed back already
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90053")
    assert "100 dead letter(s) replayed; 200 left in place, in order" in out
    assert await ids(broker, names.dead) == [m for i, m in enumerate(original) if i % 3]
    replayed = await broker.take(names.queue)
    assert [m.message_id for m in replayed] == original[::3]
    for message in replayed:
        headers = dict(message.headers or {})
        assert len(headers.pop(H_REPLAY)) == 32  # a replay id of its own: unique bytes
        assert headers == {H_ATTEMPTS: 1, H_FIRST_SEEN: NOW - 60, "x-custom": "kept"}


async def test_a_limit_keeps_the_rest_in_order(amqp_url: str, broker: Broker, names: Names) -> None:
    await broker.declare()
    letters = [letter(i, 90001 if i < 40 else 90049) for i in range(400)]
    original = await fill(broker, names.dead, letters)
    summary = await move_dead_letters(amqp_url, names.dead, None, matcher(90001, None), limit=30)
    assert (summary.matched, summary.kept, summary.visited, summary.rotated) == (30, 370, 400, 370)
    summary = await move_dead_letters(amqp_url, names.dead, names.queue, matcher(90049, None))
    assert (summary.matched, summary.kept, summary.rotated) == (360, 10, 10)
    assert await ids(broker, names.dead) == original[30:40]
    assert await ids(broker, names.queue) == original[40:]


async def test_a_replay_to_a_missing_queue_leaves_every_dead_letter_in_place_in_order(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    original = await fill(broker, names.dead, mixed(200))  # a 90049 second: moved to the tail
    await broker.delete(names.queue)
    for code in ("90049", "90053"):  # refused after one went round; refused first thing
        rc, out, err = await tool(amqp_url, names, "dlq", "replay", "--code", code)
        assert rc == 1
        (line,) = err.splitlines()
        assert line.startswith("tim-recall: stopped after 0 replayed: the broker did not take")
        assert repr(names.queue) in line
        assert "every other dead letter is in the queue, in order" in line
        assert out == ""
    assert await ids(broker, names.dead) == original


async def test_a_replay_refused_midway_stops_there_and_keeps_the_order(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    original = await fill(broker, names.dead, mixed(200))
    await broker.delete(names.queue)
    # The recall queue takes five messages, then refuses (a full queue nacks the publish).
    channel = await broker.connection.channel()
    await channel.declare_queue(
        names.queue, durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    await channel.close()
    rc, _, err = await tool(amqp_url, names, "dlq", "replay", "--code", "90001")
    assert rc == 1
    (line,) = err.splitlines()
    assert line.startswith("tim-recall: stopped after 5 replayed: the broker did not take")
    moved = original[2::3][:5]
    assert await ids(broker, names.queue) == moved
    assert await ids(broker, names.dead) == [m for m in original if m not in moved]


async def bodies(broker: Broker, queue: str) -> list[bytes]:
    return [m.body for m in await broker.take(queue)]


async def test_replays_in_a_row_refused_midway_keep_the_rest_in_order(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    # Every dead letter matches, so replays go out many at a time; pairs share a message_id
    # (the same request dead-lettered twice), which a returned publish is matched by.
    await broker.declare()
    messages = [letter(i, 90001) for i in range(120)]
    for i, message in enumerate(messages):
        message.message_id = f"m-{i // 2:05d}"
    await fill(broker, names.dead, messages)
    original = [m.body for m in messages]
    await broker.delete(names.queue)
    channel = await broker.connection.channel()
    await channel.declare_queue(
        names.queue, durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    await channel.close()
    rc, _, err = await tool(amqp_url, names, "dlq", "replay", "--code", "90001")
    assert rc == 1
    assert err.startswith("tim-recall: stopped after 5 replayed")
    assert await bodies(broker, names.queue) == original[:5]
    assert await bodies(broker, names.dead) == original[5:]
    await broker.delete(names.queue)  # now every replay is returned: nothing moves
    await fill(broker, names.dead, messages)
    rc, _, err = await tool(amqp_url, names, "dlq", "replay", "--code", "90001")
    assert rc == 1
    assert err.startswith("tim-recall: stopped after 0 replayed")
    assert await bodies(broker, names.dead) == original


async def test_a_dry_run_moves_nothing(amqp_url: str, broker: Broker, names: Names) -> None:
    await broker.declare()
    original = await fill(broker, names.dead, mixed(90))
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90049", "--dry-run")
    assert "30 dead letter(s) would be replayed; 60 left in place, in order" in out
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90049", "--dry-run", "--limit", "4")
    assert "4 dead letter(s) would be replayed" in out
    assert await broker.count(names.queue) == 0
    assert [d.message_id for d in await list_dead_letters(amqp_url, names.dead, None)] == original
    assert await ids(broker, names.dead) == original


async def test_a_tool_killed_midway_loses_nothing_and_the_order_is_a_rotation(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    total = 3000
    original = await fill(broker, names.dead, mixed(total))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *("dlq", "purge", "--code", "90049", "--yes"),
        env={**clean, "RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: _at_most(broker, names.dead, total - 100), 60, "a purge begun")
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await asyncio.sleep(0.5)  # the broker takes back what the killed tool held
    messages = await broker.take(names.dead)
    after = [m.message_id or "" for m in messages]
    kept = [m for i, m in enumerate(original) if i % 3 != 1]
    assert set(kept) <= set(after)  # nothing lost
    assert set(after) <= set(original)
    duplicates = len(after) - len(set(after))
    assert duplicates <= PREFETCH  # copies confirmed whose ack the kill lost
    # What the tool held went back to the returns, served first (in an order RabbitMQ does not
    # promise); everything else, never delivered or a copy at the tail, is the original order
    # rotated: the unvisited ones, then the kept ones moved to the tail.
    held = [m.message_id for m in messages if m.redelivered]
    assert len(held) <= PREFETCH
    assert all(m.redelivered for m in messages[: len(held)])
    rest = list(dict.fromkeys(m.message_id or "" for m in messages if not m.redelivered))
    rest = [m for m in rest if m not in held]
    order = [m for m in original if m in set(rest)]
    start = order.index(rest[0])
    assert rest == order[start:] + order[:start]


async def _at_most(broker: Broker, queue: str, count: int) -> bool:
    return await broker.count(queue) <= count


async def test_the_functions_raise_only_the_error_tree(amqp_url: str, names: Names) -> None:
    with pytest.raises(TimRecallError, match="does not exist"):
        await list_dead_letters(amqp_url, names.dead, 5)
    with pytest.raises(TimRecallError, match="does not exist"):
        await move_dead_letters(amqp_url, names.dead, None, matcher(1, None))


APP_A, APP_B, UNSERVED = 1400000001, 1400000002, 1400000009
KEY = "0123456789abcdef" * 4


@pytest.fixture
async def app_queues(broker: Broker, names: Names) -> AsyncIterator[dict[int, str]]:
    """A queue of the test's own for each of two apps, declared as a worker declares it."""
    queues = {app: f"{names.queue}.{app}" for app in (APP_A, APP_B)}
    channel = await broker.connection.channel()
    try:
        for queue in queues.values():
            arguments = Topology(queue, names.dead, names.results).queue_arguments()
            await channel.declare_queue(queue, durable=True, arguments=arguments)
    finally:
        await channel.close()
    try:
        yield queues
    finally:
        await broker.delete(*queues.values())


def write_apps(tmp_path: Path, queues: dict[int, str]) -> Path:
    """An apps file (JSON is YAML) serving `queues`' apps, each from its queue."""
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    path = tmp_path / "apps.yaml"
    entries = [{"sdkappid": a, "secret_key_file": str(key), "queue": q} for a, q in queues.items()]
    path.write_text(json.dumps({"apps": entries}))
    return path


def of_app(i: int, app: int | None, code: int = 90053) -> aio_pika.Message:
    """A dead letter as the worker writes it for `app` (None: as written before they named it)."""
    return letter(i, code) if app is None else letter(i, code, **{H_SDKAPPID: app})


async def test_a_replay_sends_each_letter_to_its_apps_queue_and_keeps_an_unserved_apps(
    amqp_url: str, broker: Broker, names: Names, app_queues: dict[int, str], tmp_path: Path
) -> None:
    await broker.declare()
    cycle = (APP_A, APP_B, UNSERVED, None)  # None: a dead letter from before apps
    made = [(cycle[i % 4], 90049 if i in (5, 7) else 90053) for i in range(24)]
    original = await fill(broker, names.dead, [of_app(i, a, c) for i, (a, c) in enumerate(made)])
    letters = [(m, a, c) for m, (a, c) in zip(original, made, strict=True)]
    env = {"RECALL_APPS_FILE": str(write_apps(tmp_path, app_queues))}

    def where(app: int | None, code: int | None = None) -> list[str]:
        return [m for m, a, c in letters if a == app and code in (None, c)]

    out = await ok(amqp_url, names, "dlq", "list", "--json", "--app", str(APP_B), env=env)
    assert [(d["message_id"], d["sdkappid"]) for d in listed(out)] == [
        (m, APP_B) for m in where(APP_B)
    ]
    table = (await ok(amqp_url, names, "dlq", "list", "--app", str(APP_B), env=env)).splitlines()
    assert table[-1] == f"6 dead letter(s) for app {APP_B} shown from {names.dead}"
    assert [row.split()[-1] for row in table[2:-1]] == [str(APP_B)] * 6

    out = await ok(amqp_url, names, "dlq", "replay", "--app", str(APP_A), "--dry-run", env=env)
    assert out == "6 dead letter(s) would be replayed; 18 left in place, in order\n"
    out = await ok(amqp_url, names, "dlq", "replay", "--app", str(APP_A), env=env)
    assert out == "6 dead letter(s) replayed; 18 left in place, in order\n"
    assert await broker.count(app_queues[APP_B]) == 0

    unserved = f"6 kept: their app is not served: {UNSERVED} (6)\n"
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90053", "--dry-run", env=env)
    assert out == f"10 dead letter(s) would be replayed; 8 left in place, in order; {unserved}"
    out = await ok(amqp_url, names, "dlq", "replay", "--code", "90053", env=env)
    assert out == f"10 dead letter(s) replayed; 8 left in place, in order; {unserved}"
    assert await ids(broker, app_queues[APP_A]) == where(APP_A)
    assert await ids(broker, app_queues[APP_B]) == where(APP_B, 90053)
    # A letter naming no app goes where every replay went before apps: RECALL_QUEUE.
    assert await ids(broker, names.queue) == where(None, 90053)
    kept = [(m, a) for m, a, c in letters if a == UNSERVED or c == 90049]
    out = await ok(amqp_url, names, "dlq", "list", "--json", env=env)
    assert [(d["message_id"], d["sdkappid"]) for d in listed(out)] == kept

    # With an apps file an old letter's app is unknown: --app never matches it (m-00007 stays).
    purge = ("dlq", "purge", "--code", "90049", "--app", str(APP_B), "--yes")
    out = await ok(amqp_url, names, *purge, env=env)
    assert out == "1 dead letter(s) purged; 7 left in place, in order\n"
    assert await ids(broker, names.dead) == [m for m, _ in kept if m != "m-00005"]


async def test_a_fleet_of_ones_old_letters_are_its_apps(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    await broker.declare()
    apps = [APP_A, None, APP_B, None, APP_A, APP_B]
    original = await fill(broker, names.dead, [of_app(i, a) for i, a in enumerate(apps)])
    env = {"TIM_SDKAPPID": str(APP_A)}  # no RECALL_APPS_FILE: the fleet of one serves APP_A

    def where(*wanted: int | None) -> list[str]:
        return [m for m, a in zip(original, apps, strict=True) if a in wanted]

    out = await ok(amqp_url, names, "dlq", "list", "--json", "--app", str(APP_A), env=env)
    assert [d["message_id"] for d in listed(out)] == where(APP_A, None)
    out = await ok(amqp_url, names, "dlq", "list", "--json", "--app", str(APP_B), env=env)
    assert [d["message_id"] for d in listed(out)] == where(APP_B)
    unserved = f"2 kept: their app is not served: {APP_B} (2)\n"
    out = await ok(amqp_url, names, "dlq", "replay", "--app", str(APP_B), env=env)
    assert out == f"0 dead letter(s) replayed; 6 left in place, in order; {unserved}"
    out = await ok(amqp_url, names, "dlq", "replay", env=env)
    assert out == f"4 dead letter(s) replayed; 2 left in place, in order; {unserved}"
    assert await ids(broker, names.queue) == where(APP_A, None)
    assert await ids(broker, names.dead) == where(APP_B)
