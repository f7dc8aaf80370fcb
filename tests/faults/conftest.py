"""Fixtures of the fault suite: a broker helper whose teardown survives a broker restart."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.support.broker import Names
from tests.support.faults import FaultBroker


@pytest.fixture
async def broker(
    amqp_url: str,
    names: Names,
) -> AsyncIterator[FaultBroker]:
    """Like the integration `broker`, but its teardown reconnects when the connection died."""
    helper = FaultBroker(await aio_pika.connect(amqp_url), names, amqp_url)
    try:
        yield helper
    finally:
        if helper.connection.is_closed:
            with contextlib.suppress(Exception):
                await helper.reconnect(timeout=30)
        await helper.delete(names.queue, names.dead, names.results)
        with contextlib.suppress(Exception):
            await helper.connection.close()
