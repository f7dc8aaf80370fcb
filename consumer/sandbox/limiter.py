"""The API's rate limit, judged on arrival: 90051 for a call too soon after the one before."""

from __future__ import annotations

import threading

from schemas.api import meaning


class ArrivalLimiter:
    """Remembers the last arrival; a call closer to it than the minimum interval is refused."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._last_arrival: float | None = None

    def arrive(self, arrived: float, min_interval: float) -> tuple[int, str] | None:
        """Count an arrival; 90051 when it came less than `min_interval` after the last one."""
        # Strict on purpose: every call that passed auth is an arrival, including ones answered
        # 90051 and faulted ones, so a client sending faster than the limit keeps being refused
        # until it really slows down. Tencent does not document which calls count; a worker that
        # survives this survives any laxer counting.
        with self._lock:
            last, self._last_arrival = self._last_arrival, arrived
        if last is not None and arrived - last < min_interval:
            return 90051, meaning(90051)
        return None

    def forget(self) -> None:
        """Forget the last arrival: the next call is never too soon."""
        with self._lock:
            self._last_arrival = None
