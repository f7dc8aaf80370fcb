"""Run an ASGI app with uvicorn inside the current event loop (health endpoints, the sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

import structlog
import uvicorn
from starlette.types import ASGIApp


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; a busy port raises OSError here, not SystemExit in uvicorn."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    # proto must say TCP: asyncio only sets TCP_NODELAY on such sockets, and without it every
    # answer waits ~40 ms for a delayed ACK (Nagle), which would skew latency and pacing.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket) -> str:
    """The http:// URL a client on this machine uses to reach `sock`."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside someone else's process: no signal handlers, prompt exit."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGINT/SIGTERM belong to the host (the worker, pytest)

    async def main_loop(self) -> None:
        # uvicorn's loop, except that it wakes as soon as `stop` is set instead of within 0.1 s.
        counter = 0
        while not await self.on_tick(counter):
            counter += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)


def _report_stop(task: asyncio.Task[None], server: _EmbeddedServer) -> None:
    """An HTTP server that stops unasked is logged once, with why: its probes go dark next."""
    if server.should_exit or task.cancelled():
        return
    error = task.exception()
    structlog.get_logger().error(
        "http_server_stopped",
        task=task.get_name(),
        error=type(error).__name__ if error else None,
        exc_info=error,
    )


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    before_exit: Callable[[], None] | None = None,
    http: Literal["h11", "httptools"] = "h11",
) -> AsyncIterator[str]:
    """Serve `app` while the block runs; yields the base URL (port 0 picks a free port)."""
    sock = bind(host, port)
    # h11 unless asked: uvicorn's "auto" would switch to httptools wherever it is installed.
    # The sandbox asks for httptools, a compiled parser: half of uvicorn's CPU per request.
    config = uvicorn.Config(
        app,
        http=http,
        log_level="warning",
        log_config=None,  # in-process: leave the host's logging set-up alone
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http:{host}:{port}")
    task.add_done_callback(lambda done: _report_stop(done, server))
    try:
        while not server.started:  # uvicorn offers no event for this
            if task.done():
                task.result()
                raise RuntimeError(f"HTTP server on {host}:{port} stopped while starting")
            await asyncio.sleep(0.005)
        yield base_url(sock)
    finally:
        if before_exit is not None:
            before_exit()
        server.should_exit = True
        server.stop.set()
        if not task.done():
            await task
        sock.close()
