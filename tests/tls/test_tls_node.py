"""The TLS node itself: the right CA connects, an unrelated CA fails certificate verification."""

from __future__ import annotations

import ssl

import aio_pika
import pytest

from tests.support.tls import TlsNode

pytestmark = pytest.mark.tls


def chain(error: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@pytest.mark.parametrize("client_cert", [False, True], ids=["ca-only", "client-cert"])
async def test_the_right_ca_connects(tls_node: TlsNode, client_cert: bool) -> None:
    connection = await aio_pika.connect(tls_node.url(client_cert=client_cert), timeout=15)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"over tls"), queue.name)
        message = await queue.get(timeout=5)
        assert message is not None
        assert message.body == b"over tls"
    finally:
        await connection.close()


async def connect_and_close(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=15)
    await connection.close()


async def test_a_wrong_ca_fails_certificate_verification(tls_node: TlsNode) -> None:
    with pytest.raises(Exception) as caught:  # the type is checked in the chain below
        await connect_and_close(tls_node.wrong_ca_url)
    errors = chain(caught.value)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors), errors
