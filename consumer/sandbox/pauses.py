"""Sleeps that the server's shutdown can cut short, so it never waits for a long hang."""

from __future__ import annotations

import asyncio


class Pauses:
    """The answers being held back (added latency, hangs), each a timer that can fire early."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if end() comes first."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, wake)
        self._pending.add(wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._pending.discard(wake)

    def end(self) -> None:
        """End every pause of the running event loop now."""
        loop = asyncio.get_running_loop()
        for wake in list(self._pending):
            if wake.get_loop() is loop:
                _wake(wake)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
