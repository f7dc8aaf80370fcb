"""Failures on demand: the next calls failed, an outage window, added latency."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace


@dataclass
class Fault:
    """How to fail a revoke call: an ErrorCode, a bare HTTP status, or a hang (then 504)."""

    remaining: int  # calls still to fail (0 for an outage: it lasts until its end instead)
    task_id: str | None = None  # only calls for this TaskId; None: any call
    code: int | None = None
    http_status: int | None = None
    hang: float | None = None
    sdkappid: int | None = None  # only calls to this app; None: to any app


class Faults:
    """The failures planned for the next revoke calls, the outage, and the added latency."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._planned: list[Fault] = []
        self._outage: Fault | None = None
        self._outage_until = 0.0
        self.latency = 0.0

    def plan(self, fault: Fault) -> None:
        """Fail the next fault.remaining revoke calls so; with no kind given, ErrorCode 91000."""
        if sum(x is not None for x in (fault.code, fault.http_status, fault.hang)) > 1:
            raise ValueError("give at most one of code, http_status, hang")
        if fault.remaining < 0 or (fault.hang is not None and fault.hang < 0):
            raise ValueError("n and hang must not be negative")
        if fault.code is None and fault.http_status is None and fault.hang is None:
            fault = replace(fault, code=91000)
        if fault.remaining:
            with self._lock:
                self._planned.append(fault)

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds`, after the call has been processed."""
        self.latency = max(0.0, seconds)

    def outage(self, seconds: float, *, http_status: int = 502, hang: float | None = None) -> None:
        """For `seconds`, answer every revoke call with `http_status` (or hang, then 504)."""
        with self._lock:
            self._outage = Fault(
                0, http_status=None if hang is not None else http_status, hang=hang
            )
            self._outage_until = time.monotonic() + seconds

    def clear(self) -> None:
        """Drop pending failures, any outage and the added latency."""
        with self._lock:
            self._planned.clear()
            self._outage = None
            self.latency = 0.0

    def take(self, arrived: float, task_id: str | None, sdkappid: int | None) -> Fault | None:
        """The fault for a revoke call to an app that arrived at `arrived`, counted as used."""
        with self._lock:
            if self._outage is not None and arrived < self._outage_until:
                return self._outage
            for fault in self._planned:
                if fault.task_id in (None, task_id) and fault.sdkappid in (None, sdkappid):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._planned.remove(fault)
                    return fault
        return None
