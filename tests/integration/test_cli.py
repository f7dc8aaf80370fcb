"""The command line as operators and newcomers use it: exit codes, one-line errors, output."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from tests.integration.conftest import Broker, Names

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
