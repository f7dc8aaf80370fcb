"""Run an ASGI app with uvicorn inside the current event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM and SIGINT to the program that runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` while the block runs; yields the base URL (port 0 picks a free port)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = _SignalFreeServer(config)
    task = asyncio.create_task(server.serve(), name=f"uvicorn:{host}:{port}")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start (e.g. port in use)
                raise RuntimeError(f"HTTP server on {host}:{port} stopped before starting")
            await asyncio.sleep(0.01)
        bound = port
        for srv in server.servers:
            for sock in srv.sockets:
                bound = sock.getsockname()[1]
                break
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
