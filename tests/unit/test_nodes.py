"""consumer/core/nodes.py: a list of brokers, tried in order, errors told apart."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.core.nodes import NoNodeReachable, connect_first, node_of, split_urls


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        ("amqp://u:p@a:5672/", ["amqp://u:p@a:5672/"]),
        ("amqp://u:p@a/, amqp://u:p@b:5673/ ,", ["amqp://u:p@a/", "amqp://u:p@b:5673/"]),
    ],
)
def test_split_urls(value: str, urls: list[str]) -> None:
    assert split_urls(value) == urls


@pytest.mark.parametrize(
    ("url", "node"),
    [
        ("amqp://guest:secret@rabbit-1:5680/vhost", "rabbit-1:5680"),
        ("amqp://guest:secret@rabbit-1/", "rabbit-1:5672"),
        ("amqps://u:p@mq.example/?cafile=/ca", "mq.example:5671"),
    ],
)
def test_node_of_never_shows_credentials(url: str, node: str) -> None:
    assert node_of(url) == node
    assert "secret" not in node_of(url)


class Refused(OSError):
    pass


class Login(Exception):
    pass


async def test_connect_first_goes_through_the_list_from_start() -> None:
    tried: list[str] = []

    async def connect(url: str) -> Any:
        tried.append(url)
        if url != "c":
            raise Refused(f"refused by {url}")
        return "connection"

    assert await connect_first(["a", "b", "c"], connect, start=1) == ("connection", 2)
    assert tried == ["b", "c"]
    tried.clear()
    assert await connect_first(["a", "b", "c"], connect, start=3) == ("connection", 2)
    assert tried == ["a", "b", "c"]


async def test_no_node_reachable_names_each_failure() -> None:
    async def connect(url: str) -> Any:
        raise Refused(f"refused by {url}")

    with pytest.raises(NoNodeReachable) as caught:
        await connect_first(["amqp://u:p@a:1/", "amqp://u:p@b:2/"], connect)
    assert [f.node for f in caught.value.failures] == ["a:1", "b:2"]


async def test_a_configuration_error_is_raised_at_once() -> None:
    tried: list[str] = []

    async def connect(url: str) -> Any:
        tried.append(url)
        raise Login("ACCESS_REFUSED")

    with pytest.raises(Login):
        await connect_first(["a", "b"], connect, retry_on=(OSError,))
    assert tried == ["a"]
