"""consumer/core/fence.py: the heartbeat in the URL, and how long the broker has been silent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import aiormq
import pytest

from consumer.core.fence import fence_after_s, heartbeat_of, silent_for, with_heartbeat
from consumer.core.settings import SettingsError, load_settings
from consumer.ops.app import worker_config


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@h:5672/", "amqp://u:p@h:5672/?heartbeat=10"),
        ("amqp://u:p@h/vhost?name=x", "amqp://u:p@h/vhost?name=x&heartbeat=10"),
        ("amqp://u:p@h/?heartbeat=3", "amqp://u:p@h/?heartbeat=3"),  # the URL's own wins
        (
            "amqps://u:p%40x@h:5671/?cafile=/ca.pem",
            "amqps://u:p%40x@h:5671/?cafile=/ca.pem&heartbeat=10",
        ),
    ],
)
def test_with_heartbeat(url: str, expected: str) -> None:
    assert with_heartbeat(url, 10) == expected
    assert heartbeat_of(expected) == float(expected.rsplit("heartbeat=", 1)[1])


def test_the_fence_falls_before_the_broker_gives_the_queue_away() -> None:
    # A healthy idle link is silent for up to one heartbeat; the broker closes a silent one
    # two to three heartbeats after it went quiet.
    for heartbeat in (2.0, 10.0, 60.0):
        assert heartbeat < fence_after_s(heartbeat) < 2 * heartbeat


async def test_silence_is_read_from_aiormq() -> None:
    # Pins the private name aiormq keeps its last-frame time under: if an upgrade renames it,
    # this fails instead of the worker silently never fencing.
    connection = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    now = asyncio.get_running_loop().time()
    holder = SimpleNamespace(transport=SimpleNamespace(connection=connection))
    assert 0.0 <= silent_for(holder, now) < 1.0  # type: ignore[arg-type]
    assert silent_for(holder, now + 30) == pytest.approx(30, abs=1)  # type: ignore[arg-type]
    assert silent_for(SimpleNamespace(), now) == 0.0  # type: ignore[arg-type]


def test_every_node_of_a_list_gets_the_heartbeat() -> None:
    settings = load_settings(amqp_url="amqp://u:p@a/,amqp://u:p@b/?heartbeat=4", heartbeat_s=10)
    config = worker_config(settings)
    assert config.amqp_url == "amqp://u:p@a/?heartbeat=10,amqp://u:p@b/?heartbeat=4"
    # The shortest heartbeat decides, and a call started at the fence must reach the server
    # (within TIM_CONNECT_TIMEOUT_S, 3 s) before the broker hands the queue on (8 s).
    assert config.fence_s == fence_after_s(4, 3.0) == 5.0


@pytest.mark.parametrize(
    ("url", "heartbeat_s", "connect_timeout_s", "named"),
    [
        ("amqp://u:p@h/?heartbeat=0", 10, 3.0, "RECALL_AMQP_URL"),  # copied from client examples
        ("amqp://u:p@h/", 1, 3.0, "RECALL_HEARTBEAT_S"),
        ("amqp://u:p@a/,amqp://u:p@b/?heartbeat=2", 10, 3.0, "RECALL_AMQP_URL"),
    ],
)
def test_a_heartbeat_the_fence_cannot_work_with_is_refused_naming_it(
    url: str, heartbeat_s: int, connect_timeout_s: float, named: str
) -> None:
    settings = load_settings(
        amqp_url=url, heartbeat_s=heartbeat_s, connect_timeout_s=connect_timeout_s
    )
    with pytest.raises(SettingsError, match=named) as caught:
        worker_config(settings)
    assert "at least 4 s" in str(caught.value)
    assert "p@" not in str(caught.value)  # never the URL's password


@pytest.mark.parametrize(
    ("heartbeat_s", "connect_timeout_s", "fence_s"),
    [(60, 3.0, 90.0), (10, 3.0, 15.0), (4, 3.0, 5.0), (4, 1.0, 6.0), (2, 0.5, 3.0)],
)
def test_the_fence_stays_between_a_healthy_silence_and_the_handover(
    heartbeat_s: float, connect_timeout_s: float, fence_s: float
) -> None:
    assert fence_after_s(heartbeat_s, connect_timeout_s) == fence_s
    assert heartbeat_s * 1.25 <= fence_s <= heartbeat_s * 2 - connect_timeout_s


def test_the_release_loop_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))} | {
        "TIM_SDKAPPID": "1400000000",
        "TIM_SECRET_KEY": "k" * 32,
        "RECALL_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/?heartbeat=0",
        "RECALL_HTTP_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "heartbeat" in done.stderr + done.stdout
