"""Shared test set-up: tests that need RabbitMQ fail loudly when it is not there."""

from __future__ import annotations

import os
import socket

import pytest


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
