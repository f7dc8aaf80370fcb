"""The 1 call/s pacer: spaces calls so that the server never sees two closer than the interval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Decides when the next call may start.

    The server counts calls as they arrive. A call arrives somewhere between the moment we send
    it and the moment its answer comes back, so the next call starts one interval after the
    previous one *finished*: whatever the jitter or a slow first connection, the two arrivals are
    at least one interval apart. The cost is one round trip per call, which is why the interval is
    not padded further.
    """

    def __init__(
        self, interval_s: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._not_before = float("-inf")

    def hold(self) -> None:
        """No call before one interval from now: at start, and on taking over from a replica."""
        self._not_before = max(self._not_before, self._clock() + self.interval_s)

    def delay(self) -> float:
        """Seconds until the next call may start (0 when it may start now)."""
        return max(0.0, self._not_before - self._clock())

    async def wait_turn(self) -> float:
        """Wait for the next free slot; returns how long it waited."""
        waited = 0.0
        while (wait := self.delay()) > 0:
            await self._sleep(wait)
            waited += wait
        return waited

    def call_finished(self) -> None:
        """Record that a call just finished (answered, failed or timed out)."""
        self._not_before = max(self._not_before, self._clock() + self.interval_s)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for the next slot, hold it for one call, and record the call's end.

        The end is recorded even when the call is cancelled (the broker closed our channel
        mid-call): it may have arrived all the same.
        """
        await self.wait_turn()
        try:
            yield
        finally:
            self.call_finished()

    def push_back(self, seconds: float) -> None:
        """No call before `seconds` from now (a retry's minimum wait, a lockout)."""
        self._not_before = max(self._not_before, self._clock() + seconds)


async def sleep_unless_set(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile (shutdown ends every wait)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
