"""Connecting to RabbitMQ, with every failure translated at the boundary into our error tree.

`connect()` makes one attempt and raises only TimRecallError subclasses: a refused login, a
certificate that does not verify or a virtual host that cannot be opened is a
`ConfigurationError` (a person must fix RECALL_AMQP_URL or the broker's certificate); a broker
that cannot be reached is `BrokerUnavailable`, whose text is one line naming host:port and the
cause. No message ever carries the password. `describe_broker_error()` is the translation itself,
pure, for errors that escape later (a channel closed because a queue does not exist, a connection
lost midway).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal, overload

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from yarl import URL

from consumer.core.errors import BrokerUnavailable, ConfigurationError, TimRecallError
from consumer.core.nodes import NoNodeReachable, connect_first, split_urls

CONNECT_TIMEOUT_S = 10.0  # one attempt: TCP, TLS and the AMQP handshake
LOGIN_REFUSED = "RabbitMQ refused the user or password in RECALL_AMQP_URL"
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_ ]+: [A-Z0-9_]+\]\s*|\s*\(_ssl\.c:\d+\)$")
_NO_QUEUE = re.compile(r"no queue '([^']*)'")
# What a broker operation raises when the broker refuses it or the connection is lost. Not
# BrokenPipeError: a reader of our stdout that went away is not the broker.
BROKER_FAILURES: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    ssl.SSLError,
    ConnectionResetError,
    ConnectionRefusedError,
    ConnectionAbortedError,
)


class QueueMissing(TimRecallError):
    """A queue tim-recall needs does not exist (yet): the worker declares them at start."""

    def __init__(self, queue: str | None, what: str = "queue") -> None:
        self.queue = queue
        name = repr(queue) if queue is not None else "the queue"
        super().__init__(
            f"{what} {name} does not exist; start the worker once to declare it "
            "(or check RECALL_QUEUE and RECALL_DEAD_LETTER_QUEUE)"
        )


def safe_url(url: str | URL) -> str:
    """The URL without its password (and without its query): for messages and logs."""
    try:
        parsed = URL(str(url))
        return str(parsed.with_password(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<RECALL_AMQP_URL, unparseable>"


def where(url: str | URL) -> str:
    """host:port of an AMQP URL (the scheme's default port when none is given)."""
    try:
        parsed = URL(str(url))
        port = parsed.explicit_port or _DEFAULT_PORTS.get(parsed.scheme, 5672)
        return f"{parsed.host or '?'}:{port}"
    except (ValueError, TypeError):
        return "?"


def _vhost(url: str | URL | None) -> str:
    if url is None:
        return "?"
    try:
        path = URL(str(url)).path
    except (ValueError, TypeError):
        return "?"
    return "/" if path in ("", "/") else path[1:]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and exceptions among its args (wrappers such as
    AMQPConnectionError carry the original there), each once, breadth first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += [a for a in current.args if isinstance(a, BaseException)]


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _ssl_reason(exc: ssl.SSLError) -> str:
    verify_message = getattr(exc, "verify_message", None)  # set by the ssl module, not always
    if isinstance(exc, ssl.SSLCertVerificationError) and verify_message:
        return str(verify_message)
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    text = _SSL_NOISE.sub("", text).strip()
    # "certificate verify failed: self-signed certificate" → keep the part after the colon.
    text = text.removeprefix("certificate verify failed: ")
    reason = getattr(exc, "reason", None)
    if reason and reason.lower().replace("_", " ") not in text.lower():
        text = f"{text} ({reason})" if text else str(reason)
    return text or type(exc).__name__


def _amqp_text(exc: BaseException) -> str:
    """The broker's own words from an aiormq exception ("NOT_FOUND - no queue 'x' ...")."""
    texts = [str(a) for a in exc.args if isinstance(a, str | int) and str(a)]
    text = texts[-1] if texts else ""
    return text or type(exc).__name__


def _cause_text(exc: BaseException) -> str:
    """Why a connection could not be made or went away, in a few words."""
    for e in _chain(exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host ({e.strerror or e})"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, asyncio.IncompleteReadError):
            return "the server closed the connection during the AMQP handshake"
        if isinstance(e, TimeoutError):
            return "timed out waiting for an answer"
        if isinstance(e, aiormq.exceptions.ConnectionClosed) and e.args:
            return f"connection closed by the broker ({_amqp_text(e)})"
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = str(exc).strip()
    if not text or text == type(exc).__name__:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _scrub(text: str, url: str | URL | None) -> str:
    """Never let a password out, however the text came to contain it."""
    if url is None:
        return text
    for one in split_urls(str(url)):
        try:
            password = URL(one).password
        except (ValueError, TypeError):
            continue
        if password:
            text = text.replace(password, "***")
    return text


def describe_broker_error(exc: BaseException, url: str | URL | None = None) -> TimRecallError:
    """The error tree's view of a failure talking to RabbitMQ (pure: nothing is raised).

    `url`, when given, names host:port and the virtual host in the message; its password never
    appears. Every result is one line.
    """
    if isinstance(exc, TimRecallError):
        return exc
    if (missing := _first(exc, aiormq.exceptions.ChannelNotFoundEntity)) is not None:
        match = _NO_QUEUE.search(_amqp_text(missing))
        return QueueMissing(match.group(1) if match else None)
    kind, text = _translate(exc, url)
    return kind(_scrub(" ".join(text.split()), url))  # one line, never the password


def _translate(exc: BaseException, url: str | URL | None) -> tuple[type[TimRecallError], str]:
    at = f" at {where(url)}" if url is not None else ""
    login = _first(exc, aiormq.exceptions.ProbableAuthenticationError) or _first(
        exc, aiormq.exceptions.AuthenticationError
    )
    if login is not None:
        text = _amqp_text(login)
        if "ACCESS_REFUSED" in text or isinstance(login, aiormq.exceptions.AuthenticationError):
            return ConfigurationError, LOGIN_REFUSED
        return ConfigurationError, (
            f"RabbitMQ{at} closed the connection at login, most likely the user or "
            f"password in RECALL_AMQP_URL ({text})"
        )
    cert = _first(exc, ssl.SSLCertVerificationError)
    if isinstance(cert, ssl.SSLError):
        return ConfigurationError, (
            f"TLS certificate verification failed: {_ssl_reason(cert)} (RabbitMQ{at}; check "
            "the host name and the CA, e.g. ?cafile= in RECALL_AMQP_URL)"
        )
    tls = _first(exc, ssl.SSLError)
    if isinstance(tls, ssl.SSLError):
        return BrokerUnavailable, f"cannot reach RabbitMQ{at}: TLS failed: {_ssl_reason(tls)}"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # The broker answered connection.open with connection.close: the virtual host.
        return ConfigurationError, (
            f"RabbitMQ{at} refused to open virtual host {_vhost(url)!r} named in "
            "RECALL_AMQP_URL (it does not exist, or the user may not use it)"
        )
    refused = _first(exc, aiormq.exceptions.ChannelAccessRefused) or _first(
        exc, aiormq.exceptions.ConnectionNotAllowed
    )
    if refused is not None:
        return ConfigurationError, (
            f"RabbitMQ refused the user in RECALL_AMQP_URL access: {_amqp_text(refused)}"
        )
    if isinstance(exc, aiormq.exceptions.ChannelClosed):
        return BrokerUnavailable, f"RabbitMQ{at} closed the channel: {_amqp_text(exc)}"
    return BrokerUnavailable, f"cannot reach RabbitMQ{at}: {_cause_text(exc)}"


@overload
async def connect(
    url: str, *, robust: Literal[True], **kwargs: Any
) -> AbstractRobustConnection: ...


@overload
async def connect(
    url: str, *, robust: Literal[False] = ..., **kwargs: Any
) -> AbstractConnection: ...


async def connect(url: str, *, robust: bool = False, **kwargs: Any) -> AbstractConnection:
    """One attempt to connect (robust: a connection that reconnects by itself afterwards).

    Raises ConfigurationError (login refused, certificate not verified, virtual host refused,
    an unparseable URL) or BrokerUnavailable (refused, DNS, timeout, reset, TLS, handshake),
    each one line without the password. `timeout` defaults to CONNECT_TIMEOUT_S.
    """
    kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
    try:
        URL(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"RECALL_AMQP_URL is not a valid URL ({exc})") from None
    try:
        connection: AbstractConnection
        if robust:
            connection = await aio_pika.connect_robust(url, **kwargs)
        else:
            connection = await aio_pika.connect(url, **kwargs)
        return connection
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise describe_broker_error(exc, url) from exc


async def connect_any(urls: str, **kwargs: Any) -> tuple[AbstractConnection, str]:
    """Connect to the first broker of RECALL_AMQP_URL (a comma-separated list) that answers;
    returns the connection and its URL. A ConfigurationError from any node is raised at once
    (it is ours to fix); when no node answers, one BrokerUnavailable names each node's cause."""
    nodes = split_urls(urls)
    if not nodes:
        raise ConfigurationError("RECALL_AMQP_URL is empty")

    async def one(url: str) -> AbstractConnection:
        connection: AbstractConnection = await connect(url, **kwargs)
        return connection

    try:
        connection, index = await connect_first(nodes, one, retry_on=(BrokerUnavailable,))
    except NoNodeReachable as exc:
        failures = [f.reason.removeprefix("cannot reach RabbitMQ at ") for f in exc.failures]
    else:
        return connection, nodes[index]
    if len(failures) == 1:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {failures[0]}")
    raise BrokerUnavailable(f"cannot reach any RabbitMQ node: {'; '.join(failures)}")


async def check(urls: str) -> None:
    """Connect once and close: raises what `connect_any` raises."""
    connection, _ = await connect_any(urls)
    await connection.close()


@contextlib.asynccontextmanager
async def broker_errors(url: str | None = None) -> AsyncIterator[None]:
    """Translate what escapes a broker operation (a channel closed, the connection lost) into
    the error tree, the same way `connect` does."""
    try:
        yield
    except TimRecallError:
        raise
    except BROKER_FAILURES as exc:
        raise describe_broker_error(exc, url) from exc
