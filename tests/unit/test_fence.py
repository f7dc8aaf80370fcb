"""consumer/core/fence.py: the heartbeat in the URL, and how long the broker has been silent."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiormq
import pytest

from consumer.core.fence import fence_after_s, heartbeat_of, silent_for, with_heartbeat
from consumer.core.settings import load_settings
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
    assert config.fence_s == fence_after_s(4)  # the shortest heartbeat decides
