"""consumer/core/broker.py: every way a connection fails becomes one line in the error tree."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiormq
import pytest

from consumer.core.broker import (
    LOGIN_REFUSED,
    QueueMissing,
    connect,
    connect_any,
    describe_broker_error,
    safe_url,
    where,
)
from consumer.core.errors import BrokerUnavailable, ConfigurationError, TimRecallError
from consumer.core.settings import SettingsError

URL = "amqps://recall:s3cret-pw@rabbit.example:5671/prod"
# A self-signed certificate for localhost (EC P-256, valid until 2126): a broker's certificate
# that no default trust store knows.
KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmg1RHxDCtfe0rhRT
4LSCr2vgDa8APuwPRTTZqK6K85yhRANCAAT6kwUg5NPH+88fUXSLII/yUaMixz01
HnTrZnxRNALGOUAA9pyCMok4E+WB7tD95XLosj3hRmVIObBk4n+1c3zk
-----END PRIVATE KEY-----
"""
CERT_PEM = """-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUIAjKTh/JkU+jNrP6uYr9eVON528wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNjIyNDAyN1oYDzIxMjYxMTAy
MjI0MDI3WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAT6kwUg5NPH+88fUXSLII/yUaMixz01HnTrZnxRNALGOUAA9pyCMok4
E+WB7tD95XLosj3hRmVIObBk4n+1c3zko2kwZzAdBgNVHQ4EFgQU/GyEwrvRS3vJ
2SVDCzWEFM9UhNQwHwYDVR0jBBgwFoAU/GyEwrvRS3vJ2SVDCzWEFM9UhNQwDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIhALs8It03ArFjNLu6GRE8RhR5eTWEPLYtbRDC8uBsiJiFAiAY48PejhHr
BRLpasvWX2ELhx7BOJN9rIKcfViIF7Jnvw==
-----END CERTIFICATE-----
"""


def wrapped(outer: BaseException, inner: BaseException, how: str) -> BaseException:
    """`outer` carrying `inner` the way aiormq and asyncio do: as cause, context or argument."""
    if how == "cause":
        outer.__cause__ = inner
    elif how == "context":
        outer.__context__ = inner
    else:
        outer.args = (*outer.args, inner)
    return outer


def cert_error(message: str = "self-signed certificate in certificate chain") -> ssl.SSLError:
    return ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} (_ssl.c:1006)"
    )


def tls_error() -> ssl.SSLError:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    error.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    return error


Case = tuple[Callable[[], BaseException], type[TimRecallError], str]
CASES: dict[str, Case] = {
    "login refused": (
        lambda: aiormq.exceptions.ProbableAuthenticationError(
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
        ),
        ConfigurationError,
        LOGIN_REFUSED,
    ),
    "closed at login": (
        lambda: aiormq.exceptions.ProbableAuthenticationError("connection reset"),
        ConfigurationError,
        "closed the connection at login",
    ),
    "certificate, directly": (
        cert_error,
        ConfigurationError,
        "TLS certificate verification failed: self-signed certificate in certificate chain",
    ),
    "certificate, as cause": (
        lambda: wrapped(
            aiormq.exceptions.AMQPConnectionError(1, "certificate verify failed"),
            cert_error("unable to get local issuer certificate"),
            "cause",
        ),
        ConfigurationError,
        "TLS certificate verification failed: unable to get local issuer certificate",
    ),
    "certificate, as context of an OSError": (
        lambda: wrapped(OSError("handshake"), cert_error("certificate has expired"), "context"),
        ConfigurationError,
        "TLS certificate verification failed: certificate has expired",
    ),
    "certificate, among args": (
        lambda: wrapped(aiormq.exceptions.AMQPConnectionError(), cert_error(), "args"),
        ConfigurationError,
        "TLS certificate verification failed: self-signed certificate in certificate chain",
    ),
    "other TLS failure": (
        lambda: wrapped(aiormq.exceptions.AMQPConnectionError(1, "ssl"), tls_error(), "cause"),
        BrokerUnavailable,
        "cannot reach RabbitMQ at rabbit.example:5671: TLS failed: wrong version number",
    ),
    "refused": (
        lambda: wrapped(
            aiormq.exceptions.AMQPConnectionError(111, "Connect call failed"),
            ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 5671)"),
            "cause",
        ),
        BrokerUnavailable,
        "cannot reach RabbitMQ at rabbit.example:5671: connection refused",
    ),
    "DNS": (
        lambda: wrapped(
            aiormq.exceptions.AMQPConnectionError(-2, "Name or service not known"),
            socket.gaierror(-2, "Name or service not known"),
            "cause",
        ),
        BrokerUnavailable,
        "cannot resolve the host (Name or service not known)",
    ),
    "timeout": (TimeoutError, BrokerUnavailable, "timed out"),
    "reset": (
        lambda: ConnectionResetError(104, "Connection reset by peer"),
        BrokerUnavailable,
        "connection reset by the server",
    ),
    "not an AMQP server": (
        lambda: wrapped(
            aiormq.exceptions.AMQPConnectionError("Server connection unexpectedly closed"),
            asyncio.IncompleteReadError(b"HTTP/1.1 400", 8),
            "cause",
        ),
        BrokerUnavailable,
        "the server closed the connection during the AMQP handshake",
    ),
    "closed by the broker": (
        lambda: aiormq.exceptions.ConnectionClosed(
            320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        ),
        BrokerUnavailable,
        "CONNECTION_FORCED",
    ),
    "plain AMQPConnectionError": (
        aiormq.exceptions.AMQPConnectionError,
        BrokerUnavailable,
        "cannot reach RabbitMQ at rabbit.example:5671: AMQPConnectionError",
    ),
    "virtual host refused": (
        lambda: aiormq.exceptions.InvalidFrameError(
            "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x7f>"
        ),
        ConfigurationError,
        "refused to open virtual host 'prod'",
    ),
    "queue missing": (
        lambda: aiormq.exceptions.ChannelNotFoundEntity(
            "NOT_FOUND - no queue 'timpush.recall.dead' in vhost 'prod'"
        ),
        QueueMissing,
        "queue 'timpush.recall.dead' does not exist; start the worker once to declare it",
    ),
    "access refused": (
        lambda: aiormq.exceptions.ChannelAccessRefused(
            "ACCESS_REFUSED - access to queue 'q' in vhost 'prod' refused for user 'recall'"
        ),
        ConfigurationError,
        "access to queue 'q'",
    ),
    "ours already": (lambda: SettingsError("RECALL_QUEUE: empty"), SettingsError, "RECALL_QUEUE"),
}


@pytest.mark.parametrize("name", CASES)
def test_each_failure_becomes_one_line_of_the_error_tree(name: str) -> None:
    make, kind, text = CASES[name]
    error = describe_broker_error(make(), URL)
    assert isinstance(error, kind)
    message = str(error)
    assert text in message
    assert "\n" not in message
    assert "s3cret" not in message
    assert message.strip() not in {"", type(error).__name__}


def test_a_reason_that_quotes_the_password_is_scrubbed() -> None:
    error = describe_broker_error(ConnectionResetError(104, "reset at s3cret-pw"), URL)
    assert "s3cret" not in str(error)


def test_without_a_url_the_message_still_reads() -> None:
    error = describe_broker_error(ConnectionRefusedError(111, "refused"))
    assert str(error) == "cannot reach RabbitMQ: connection refused"


def test_safe_url_and_where() -> None:
    assert safe_url(URL) == "amqps://recall@rabbit.example:5671/prod"
    assert safe_url("amqp://u:p@h:abc/") == "<RECALL_AMQP_URL, unparseable>"
    assert where(URL) == "rabbit.example:5671"
    assert where("amqp://guest:guest@localhost/") == "localhost:5672"
    assert where("amqps://guest:guest@localhost/") == "localhost:5671"


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_to_a_closed_port_is_broker_unavailable(closed_port: int) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        await connect(f"amqp://guest:s3cret@127.0.0.1:{closed_port}/")
    assert (
        str(raised.value) == f"cannot reach RabbitMQ at 127.0.0.1:{closed_port}: connection refused"
    )


async def test_connect_any_names_every_node(closed_port: int) -> None:
    urls = f"amqp://guest:s3cret@127.0.0.1:{closed_port}/, amqp://guest:s3cret@127.0.0.1:1/"
    with pytest.raises(BrokerUnavailable) as raised:
        await connect_any(urls)
    message = str(raised.value)
    assert f"127.0.0.1:{closed_port}: connection refused" in message
    assert "127.0.0.1:1: connection refused" in message
    assert "s3cret" not in message


async def test_an_invalid_url_is_configuration() -> None:
    with pytest.raises(ConfigurationError, match="RECALL_AMQP_URL is not a valid URL"):
        await connect("amqp://guest:s3cret@127.0.0.1:port/")


async def _serve(tls: ssl.SSLContext | None) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # silent until the client goes away
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def tls_port(tmp_path: Path) -> AsyncIterator[int]:
    (tmp_path / "key.pem").write_text(KEY_PEM)
    (tmp_path / "cert.pem").write_text(CERT_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    async for port in _serve(context):
        yield port


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    async for port in _serve(None):
        yield port


async def test_a_certificate_no_one_trusts_is_configuration(tls_port: int) -> None:
    with pytest.raises(ConfigurationError) as raised:
        await connect(f"amqps://guest:s3cret@localhost:{tls_port}/", timeout=5)
    message = str(raised.value)
    assert message.startswith("TLS certificate verification failed: self-signed certificate")
    assert f"localhost:{tls_port}" in message
    assert "s3cret" not in message


async def test_a_broker_that_never_answers_times_out(silent_port: int) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        await connect(f"amqp://guest:s3cret@127.0.0.1:{silent_port}/", timeout=0.3)
    assert str(raised.value) == (
        f"cannot reach RabbitMQ at 127.0.0.1:{silent_port}: timed out waiting for an answer"
    )
