"""The command line as operators and newcomers use it: exit codes, one-line errors, output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
from pathlib import Path

import pytest

from consumer.core.stream import result_message
from tests.integration.test_producer import APP, UNKNOWN_APP, serving_app
from tests.support.broker import Broker, Names
from tests.support.events import event
from tests.unit.test_broker_errors import CERT_PEM, KEY_PEM

pytestmark = pytest.mark.integration


async def cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int | None, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        *args,
        env={**clean, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=90)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "TIM_SDKAPPID"),
        ({"TIM_SDKAPPID": "abc"}, "TIM_SDKAPPID"),
        ({"TIM_SDKAPPID": "1400000000"}, "TIM_SECRET_KEY"),
        ({"TIM_SDKAPPID": "1", "TIM_SECRET_KEY": "k", "TIM_REGION": "mars"}, "TIM_REGION"),
        (
            {"TIM_SDKAPPID": "1", "TIM_SECRET_KEY": "k", "RECALL_INTERVAL_S": "0"},
            "RECALL_INTERVAL_S",
        ),
        (
            {"TIM_SDKAPPID": "1", "TIM_SECRET_KEY": "k", "RECALL_DEFAULT_OFFLINE_PUSH_INFO": "{"},
            "RECALL_DEFAULT_OFFLINE_PUSH_INFO",
        ),
        ({"TIM_SDKAPPID": "1", "TIM_SECRET_KEY_FILE": "/nonexistent/key"}, "TIM_SECRET_KEY_FILE"),
    ],
)
async def test_bad_settings_exit_2_with_one_line_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    code, _, err = await cli("run", env=env)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert variable in lines[0]
    assert "Traceback" not in err


async def test_publish_confirms_and_fails_loudly_on_a_missing_queue(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    code, _, err = await cli("publish", "--task-id", "abc_1", env=env)
    assert code == 1
    assert names.queue in err
    await broker.declare()
    code, _, err = await cli(
        "publish",
        "--task-id",
        "abc_1",
        "--title",
        "T",
        "--desc",
        "D",
        "--correlation-id",
        "ops-1",
        env=env,
    )
    assert code == 0, err
    (message,) = await broker.take(names.queue)
    assert json.loads(message.body) == {
        "TaskId": "abc_1",
        "OfflinePushInfo": {"Title": "T", "Desc": "D"},
    }
    assert message.correlation_id == "ops-1"
    assert message.message_id


async def test_publish_file_is_all_or_nothing(amqp_url: str, broker: Broker, names: Names) -> None:
    await broker.declare()
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    good = b'{"TaskId": "a_1"}\n{"TaskId": "a_2", "OfflinePushInfo": {"Title": "t"}}\n'
    code, _, err = await cli("publish", "--file", "-", env=env, stdin=good + b'{"TaskID": "x"}\n')
    assert code == 2
    assert "line 3" in err
    assert await broker.count(names.queue) == 0
    code, printed, err = await cli("publish", "--file", "-", env=env, stdin=good)
    assert code == 0, err
    assert "2 request(s) published" in printed
    assert await broker.count(names.queue) == 2


async def test_schema_commands_print_json_schemas() -> None:
    code, out, _ = await cli("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["TaskId"]
    code, out, _ = await cli("schema", "--event")
    assert code == 0
    assert "correlation_id" in json.loads(out)["properties"]


@pytest.mark.slow
async def test_demo_meets_every_path_and_exits_0(amqp_url: str) -> None:
    code, out, err = await cli("demo", env={"RECALL_AMQP_URL": amqp_url})
    assert code == 0, out + err
    assert "all outcomes as expected" in out
    # After its table, one request sent as `publish --wait` sends it, and its outcome row.
    waited = out.split("--wait\n", 1)[1]
    assert "recalled" in waited.splitlines()[2]
    for label in (
        "plain recall",
        "91000, then success",
        "90051, then success",
        "90049",
        "90050",
        "90052",
        "90053",
        "invalid message",
    ):
        assert label in out or label.isdigit()
    for code_seen in ("90049", "90050", "90052", "90053", "90001"):
        assert code_seen in out


# Issue 10, point 7: every expected failure of every command is one line naming its cause,
# exit 2 for configuration (and bad arguments), 1 for the rest, and never a traceback.

TOOLS: dict[str, tuple[str, ...]] = {
    "dlq list": ("dlq", "list"),
    "dlq replay": ("dlq", "replay", "--code", "90053"),
    "dlq purge": ("dlq", "purge", "--code", "90053", "--yes"),
    "results": ("results", "--since", "2h"),
    "publish": ("publish", "--task-id", "t_1"),
}


def one_line(code: int | None, out: str, err: str, expected_code: int) -> str:
    """The single stderr line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in out + err
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tim-recall: ")
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", TOOLS)
async def test_broker_down_is_one_line_and_exit_1(command: str) -> None:
    port = closed_port()
    env = {"RECALL_AMQP_URL": f"amqp://guest:s3cret@127.0.0.1:{port}/"}
    line = one_line(*await cli(*TOOLS[command], env=env), expected_code=1)
    assert line == f"tim-recall: cannot reach RabbitMQ at 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize("command", TOOLS)
async def test_a_wrong_password_is_one_line_and_exit_2(amqp_url: str, command: str) -> None:
    env = {"RECALL_AMQP_URL": amqp_url.replace("guest:guest", "guest:wrong-pw")}
    line = one_line(*await cli(*TOOLS[command], env=env), expected_code=2)
    assert line == "tim-recall: RabbitMQ refused the user or password in RECALL_AMQP_URL"


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("dlq list", "dead-letter queue '{queue}.dead' does not exist"),
        ("dlq replay", "dead-letter queue '{queue}.dead' does not exist"),
        ("dlq purge", "dead-letter queue '{queue}.dead' does not exist"),
        ("results", "results stream '{queue}.results' does not exist"),
        ("publish", "queue '{queue}' missing or refusing"),
    ],
)
async def test_a_missing_queue_is_one_line_and_exit_1(
    amqp_url: str, names: Names, command: str, missing: str
) -> None:
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    line = one_line(*await cli(*TOOLS[command], env=env), expected_code=1)
    assert missing.format(queue=names.queue) in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("dlq", "list", "--limit", "0"), "--limit"),
        (("dlq", "list", "--bogus"), "--bogus"),
        (("dlq", "replay", "--code", "abc"), "--code"),
        (("dlq", "purge", "--code", "90053"), "--yes"),
        (("dlq", "purge", "--yes"), "--code"),
        (("dlq", "list", "--app", "0"), "--app"),
        (("dlq", "replay", "--app", "x"), "--app"),
        (("dlq", "frobnicate"), "frobnicate"),
        (("results", "--since", "5 weeks"), "--since"),
        (("results", "--app", "-1"), "--app"),
        (("publish",), "--task-id"),
        (("publish", "--task-id", "t_1", "--file", "-"), "--file"),
        (("publish", "--task-id", "t_1", "--exchange", "x"), "--exchange"),
        (("publish", "--task-id", "t_1", "--app", "0"), "--app"),
        (("schema", "--bogus"), "--bogus"),
        (("run", "--bogus"), "--bogus"),
        (("demo", "--bogus"), "--bogus"),
        (("sandbox", "--port", "x"), "--port"),
        (("frobnicate",), "frobnicate"),
    ],
)
async def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], named: str) -> None:
    line = one_line(*await cli(*args), expected_code=2)
    assert named in line


async def test_demo_with_the_broker_down_is_one_line_and_exit_1() -> None:
    port = closed_port()
    env = {"RECALL_AMQP_URL": f"amqp://guest:s3cret@127.0.0.1:{port}/"}
    line = one_line(*await cli("demo", env=env), expected_code=1)
    assert f"127.0.0.1:{port}: connection refused" in line


RUN_ENV = {"TIM_SDKAPPID": "1400000000", "TIM_SECRET_KEY": "k", "RECALL_HTTP_PORT": "0"}


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_run_with_a_wrong_password_exits_2_saying_so_last(
    amqp_url: str, names: Names, log_format: str
) -> None:
    env = {
        **RUN_ENV,
        "RECALL_QUEUE": names.queue,
        "RECALL_LOG_FORMAT": log_format,
        "RECALL_AMQP_URL": amqp_url.replace("guest:guest", "guest:wrong-pw"),
    }
    code, out, err = await cli("run", env=env)
    assert code == 2, err
    assert "Traceback" not in out + err
    assert "wrong-pw" not in err
    last = err.strip().splitlines()[-1]
    if log_format == "json":
        for line in err.strip().splitlines():  # the stream stays JSON to the end
            assert isinstance(json.loads(line), dict), line
        event = json.loads(last)
        assert event["event"] == "command_failed"
        assert event["error"] == "RabbitMQ refused the user or password in RECALL_AMQP_URL"
        assert event["exit_code"] == 2
    else:
        assert last == "tim-recall: RabbitMQ refused the user or password in RECALL_AMQP_URL"


async def _tls_server(tmp_path: Path) -> tuple[asyncio.Server, int]:
    (tmp_path / "key.pem").write_text(KEY_PEM)
    (tmp_path / "cert.pem").write_text(CERT_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=context)
    return server, int(server.sockets[0].getsockname()[1])


async def test_a_certificate_that_does_not_verify_is_configuration(tmp_path: Path) -> None:
    # Issue 10, point 5: a certificate failure is our configuration: exit 2, one line, its reason.
    server, port = await _tls_server(tmp_path)
    async with server:
        url = f"amqps://guest:s3cret@localhost:{port}/"
        line = one_line(*await cli("dlq", "list", env={"RECALL_AMQP_URL": url}), expected_code=2)
        assert line.startswith(
            "tim-recall: TLS certificate verification failed: self-signed certificate"
        )
        code, _, err = await cli(
            "run", env={**RUN_ENV, "RECALL_AMQP_URL": url, "RECALL_LOG_FORMAT": "console"}
        )
        assert code == 2, err
        assert "Traceback" not in err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith("tim-recall: TLS certificate verification failed: self-signed certificate")
        )


async def test_results_shows_an_event_published_twice_once(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    # A StreamWriter retry after a lost confirm stores the same event twice (core/stream.py)
    await broker.declare()
    twice, once = event(task_id="twice"), event(task_id="once")
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        for e in (twice, once, twice):
            await channel.default_exchange.publish(result_message(e), routing_key=names.results)
    finally:
        await channel.close()
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}
    code, out, err = await cli("results", "--since", "1h", "--json", env=env)
    assert code == 0, err
    assert [json.loads(line)["task_id"] for line in out.splitlines()] == ["twice", "once"]
    code, out, err = await cli("results", "--since", "1h", env=env)
    assert code == 0, err
    assert out.splitlines()[-1] == "2 event(s) since 1h, 1 published twice shown once"


async def test_results_for_one_app(amqp_url: str, broker: Broker, names: Names) -> None:
    await broker.declare()
    mine, other = 1400000001, 1400000002
    events = [
        event(task_id="mine").model_copy(update={"sdkappid": mine}),
        event(task_id="other").model_copy(update={"sdkappid": other}),
        event(task_id="old"),  # written before events named their app
    ]
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        for e in events:
            await channel.default_exchange.publish(result_message(e), routing_key=names.results)
    finally:
        await channel.close()
    env = {"RECALL_AMQP_URL": amqp_url, "RECALL_QUEUE": names.queue}

    async def shown(*args: str, **more: str) -> list[tuple[str, int | None]]:
        code, out, err = await cli("results", "--since", "1h", "--json", *args, env={**env, **more})
        assert code == 0, err
        return [(e["task_id"], e["sdkappid"]) for e in map(json.loads, out.splitlines())]

    everything = [("mine", mine), ("other", other), ("old", None)]
    assert await shown() == everything
    # A fleet of one (no RECALL_APPS_FILE): every old event was for its app, TIM_SDKAPPID.
    assert await shown("--app", str(mine), TIM_SDKAPPID=str(mine)) == [everything[0], everything[2]]
    assert await shown("--app", str(other), TIM_SDKAPPID=str(mine)) == [everything[1]]
    assert await shown("--app", str(mine)) == [everything[0]]  # the old event's app is unknown
    code, out, err = await cli("results", "--since", "1h", "--app", str(other), env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[-1] == "app"
    (row,) = lines[2:-1]
    assert row.split()[2] == "other"  # after the date and time it was settled
    assert row.split()[-1] == str(other)
    assert lines[-1] == "1 event(s) since 1h"


async def test_publish_for_an_app_is_routed_by_its_sdkappid_and_an_unknown_app_exits_1(
    amqp_url: str, broker: Broker, names: Names
) -> None:
    async with serving_app(broker) as exchange:
        env = {"RECALL_AMQP_URL": amqp_url, "RECALL_EXCHANGE": exchange}  # --exchange's default
        code, out, err = await cli("publish", "--task-id", "abc_1", "--app", str(APP), env=env)
        assert (code, err) == (0, "")
        assert out.splitlines()[-1] == (
            f"1 request(s) published for app {APP} to exchange {exchange!r}, confirmed by the "
            "broker"
        )
        (message,) = await broker.take(names.queue)
        assert (message.exchange, message.routing_key) == (exchange, str(APP))
        assert json.loads(message.body) == {"TaskId": "abc_1"}
        assert message.reply_to is None  # nothing waits for it
        no_such_app = (
            f"tim-recall: no such app: {UNKNOWN_APP} (no queue serves it on exchange "
            f"{exchange!r}; is the app in the worker's RECALL_APPS_FILE?)"
        )
        unknown = ("publish", "--task-id", "abc_2", "--app", str(UNKNOWN_APP))
        only_url = {"RECALL_AMQP_URL": amqp_url}
        for args in (unknown, (*unknown, "--wait")):
            line = one_line(*await cli(*args, "--exchange", exchange, env=only_url), 1)
            assert line == no_such_app
        assert await broker.count(names.queue) == 0
    line = one_line(*await cli("publish", "--task-id", "abc_3", "--app", str(APP), env=env), 1)
    assert f"exchange {exchange!r} does not exist; a worker declares it at start" in line
