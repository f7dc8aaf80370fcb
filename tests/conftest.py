"""Shared test set-up: tests that need RabbitMQ fail loudly when it is not there.

The tiers: every test that needs a broker (it asks for `amqp_url`, directly or through another
fixture, or starts its own nodes) is marked `broker` here, so `make unit` (`-m "not broker"`) runs
everything else, the sandbox's own tests included, with no RabbitMQ at all.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aio_pika
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need RabbitMQ `broker`: the tier marker `make unit` leaves out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if (
            "amqp_url" in fixtures
            or item.get_closest_marker("cluster")
            or (item.get_closest_marker("tls"))
        ):
            item.add_marker(pytest.mark.broker)


def broker_address() -> tuple[str, int]:
    """Where the tests' RabbitMQ listens."""
    return os.environ.get("TEST_AMQP_HOST", "127.0.0.1"), int(
        os.environ.get("TEST_AMQP_PORT", "5672")
    )


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker URL; fails (not skips) when nothing listens: CI must not pass without it."""
    host, port = broker_address()
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not answering on {host}:{port} ({exc}); run `make broker`")
    return f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture(scope="session")
def broker_version(amqp_url: str) -> tuple[int, ...]:
    """The tests' RabbitMQ version, e.g. (3, 10, 8) or (4, 0, 5), from a connection's
    server_properties: for tests whose expectations differ by version (delivery limit and
    counting, x-death, defaults). `make test` runs on 3.10, `make test-rabbitmq4` on 4.0."""

    async def read() -> str:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        try:
            properties = connection.transport.connection.server_properties
            return str(properties.get("version", "0"))
        finally:
            await connection.close()

    text = asyncio.run(read())
    return tuple(
        int(part) for part in text.split("+")[0].split("-")[0].split(".") if part.isdigit()
    )
