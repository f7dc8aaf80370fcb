"""While halted: probe the API with backoff until our configuration works again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from consumer.core.backoff import Backoff
from consumer.core.client import RevokeClient
from consumer.core.pacing import Pacer, sleep_unless_set
from consumer.core.policy import probe_passed
from consumer.core.results import result_code

# A TaskId no push ever had: a working configuration gets 90049 for it, a broken one the error
# that halted us. Auth is checked before the body, so the probe recalls nothing.
PROBE_BODY = b'{"TaskId":"tim-recall-configuration-probe"}'


class HaltProbe:
    """Probes with exponential backoff; calls `resume` once an answer is not a HALT."""

    def __init__(self, client: RevokeClient, pacer: Pacer, initial_s: float, max_s: float) -> None:
        self._client = client
        self._pacer = pacer
        # Jitter, so that replicas halted by one shared fault do not probe in step.
        self._backoff = Backoff(initial_s, max_s, spread=0.2)
        self._task: asyncio.Task[None] | None = None
        self._log = structlog.get_logger()

    def start(self, resume: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Begin probing in the background (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(resume, stopping), name="halt-probe")

    def cancel(self) -> None:
        """Stop probing (the worker is closing)."""
        if self._task is not None:
            self._task.cancel()

    def running(self) -> bool:
        """Whether the probe task is alive (a halted worker needs it to ever resume)."""
        return self._task is not None and not self._task.done()

    async def _run(self, resume: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            await sleep_unless_set(stopping, self._backoff.wait_s(attempt))
            if stopping.is_set():
                return
            next_probe_s = self._backoff.base_s(attempt + 1)
            try:
                if await self._probe_once(next_probe_s):
                    await resume()
                    return
            except Exception:  # a probe must never die unseen; it probes on
                self._log.exception("halt_probe_error", next_probe_s=next_probe_s)

    async def _probe_once(self, next_probe_s: float) -> bool:
        async with self._pacer.slot() as slot:
            self._client.renew_usersig()  # picks up a fixed key file
            result = await self._client.post(PROBE_BODY, slot)
            if result_code(result) is not None:  # the server's own answer
                slot.answered()
        code = result_code(result)
        if probe_passed(result):
            self._log.info("halt_probe_passed", code=code)
            return True
        self._log.warning("halt_probe_failed", code=code, next_probe_s=next_probe_s)
        return False
