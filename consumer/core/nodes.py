"""Several brokers: RECALL_AMQP_URL as a comma-separated list, tried in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aio_pika.abc import AbstractConnection

from consumer.core.errors import BrokerUnavailable

Connect = Callable[[str], Awaitable[AbstractConnection]]


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated RECALL_AMQP_URL (one URL is a list of one)."""
    return [url.strip() for url in value.split(",") if url.strip()]


def node_of(url: str) -> str:
    """`host:port` of a broker URL: what logs and metric labels may show (no credentials)."""
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return f"{parts.hostname or '?'}:{port}"


@dataclass(frozen=True)
class NodeFailure:
    """One node that could not be connected to, and why (one line, no credentials)."""

    node: str
    reason: str


class NoNodeReachable(BrokerUnavailable):
    """No broker in the list could be reached this round."""

    def __init__(self, failures: Sequence[NodeFailure]) -> None:
        super().__init__("; ".join(f"{f.node}: {f.reason}" for f in failures))
        self.failures = list(failures)


async def connect_first(
    urls: Sequence[str],
    connect: Connect,
    *,
    start: int = 0,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
) -> tuple[AbstractConnection, int]:
    """Connect to the first node that answers, going through the list from `start`.

    Returns the connection and the index of its URL. An error outside `retry_on` (a refused
    login, a certificate that does not verify) is our configuration: it is raised at once.
    """
    failures: list[NodeFailure] = []
    for step in range(len(urls)):
        index = (start + step) % len(urls)
        try:
            return await connect(urls[index]), index
        except retry_on as exc:
            failures.append(NodeFailure(node_of(urls[index]), str(exc) or type(exc).__name__))
    raise NoNodeReachable(failures)
