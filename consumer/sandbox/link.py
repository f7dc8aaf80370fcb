"""A network link in front of the sandbox: a TCP proxy that delays each direction, with jitter.

The sandbox's own "added latency" delays only the answer, so its arrival stamps are the send
times. Behind this link the sandbox stamps a request when it has crossed the link, as Tencent
would: each chunk is held one way's delay plus a uniform jitter, and chunks leave in the order they
came (a later chunk never overtakes an earlier one: FIFO, like one TCP stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LinkConfig:
    """One way's delay and its jitter (uniform in ±jitter_s), the same for both directions."""

    one_way_s: float = 0.025
    jitter_s: float = 0.01
    seed: int | None = None

    @property
    def rtt_ms(self) -> int:
        """The nominal round trip, in ms."""
        return round(2000 * self.one_way_s)


class _Direction:
    """One direction of one connection: chunks delayed in order, then written."""

    def __init__(self, writer: asyncio.StreamWriter, config: LinkConfig, rng: random.Random):
        self._writer = writer
        self._config = config
        self._rng = rng
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._last_due = 0.0

    def put(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        jitter = self._rng.uniform(-self._config.jitter_s, self._config.jitter_s)
        due = max(loop.time() + max(0.0, self._config.one_way_s + jitter), self._last_due)
        self._last_due = due  # FIFO: never before the chunk ahead of it
        self._queue.put_nowait((due, data))

    async def deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:  # the other side closed: close ours after what was in flight
                self._writer.close()
                return
            self._writer.write(data)
            await self._writer.drain()


class SandboxLink:
    """Listens on loopback and forwards to `upstream` (host, port) through a delaying link."""

    def __init__(self, upstream: tuple[str, int], config: LinkConfig) -> None:
        self.upstream = upstream
        self.config = config
        self._rng = random.Random(config.seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Start listening; returns the link's base URL."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        up, down = (_Direction(w, self.config, self._rng) for w in (up_writer, writer))
        try:
            await asyncio.gather(
                self._pump(reader, up), self._pump(up_reader, down), up.deliver(), down.deliver()
            )
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, direction: _Direction) -> None:
        while data := await reader.read(65536):
            direction.put(data)
        direction.put(b"")


@contextlib.asynccontextmanager
async def sandbox_link(sandbox_url: str, config: LinkConfig) -> AsyncIterator[str]:
    """A link in front of the sandbox at `sandbox_url`; yields the URL to call through it."""
    parts = urlsplit(sandbox_url)
    link = SandboxLink((parts.hostname or "127.0.0.1", parts.port or 80), config)
    url = await link.start()
    try:
        yield url
    finally:
        await link.close()
