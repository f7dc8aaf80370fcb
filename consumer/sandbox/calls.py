"""The record of every API call in arrival order, and waiting until it shows something."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
from collections.abc import Callable

from consumer.sandbox.records import REVOKE_PATH, CallRecord


class CallLog:
    """Every call the sandbox answered, sorted by arrival, and the waiters to wake on each."""

    def __init__(self, lock: threading.RLock) -> None:
        self.calls: list[CallRecord] = []
        self._lock = lock
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def record(self, call: CallRecord) -> None:
        """Add a call in its arrival place and wake every waiter, in whichever loop it waits."""
        with self._lock:
            # Concurrent calls finish reading their bodies in any order: keep arrival order.
            # Most come in order: appended, where insort would put them (after equal stamps).
            if not self.calls or self.calls[-1].arrived <= call.arrived:
                self.calls.append(call)
            else:
                bisect.insort(self.calls, call, key=lambda c: c.arrived)
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that waiter's loop has closed
                loop.call_soon_threadsafe(event.set)

    def snapshot(self) -> list[CallRecord]:
        """A copy of every call recorded so far, in arrival order."""
        with self._lock:
            return list(self.calls)

    def revoke_calls(self, sdkappid: int | None = None) -> list[CallRecord]:
        """Only the revoke calls (to one app, when given), in arrival order."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.path == REVOKE_PATH and (sdkappid is None or c.sdkappid == sdkappid)
            ]

    async def until(self, predicate: Callable[[list[CallRecord]], bool], within: float) -> None:
        """Return once predicate(calls) is true; TimeoutError after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            self._waiters.append(waiter)
        try:
            while True:
                event.clear()  # before the check: a call recorded after it sets it again
                calls = self.snapshot()
                if predicate(calls):
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(_timeout_message(within, calls))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def clear(self) -> None:
        """Forget every call (waiters keep waiting)."""
        with self._lock:
            self.calls.clear()


def _timeout_message(timeout: float, calls: list[CallRecord]) -> str:
    lines = [f"sandbox condition still false after {timeout:g}s; {len(calls)} call(s) seen"]
    start = calls[0].arrived if calls else 0.0
    lines += [
        f"  +{c.arrived - start:.3f}s {c.path} task={c.task_id} code={c.code} http={c.http_status}"
        for c in calls[-10:]
    ]
    return "\n".join(lines)
