"""One backoff for every wait that grows: broker connects, settle steps, probes, API retries."""

from __future__ import annotations

import random
from dataclasses import dataclass

_MAX_DOUBLINGS = 60  # far past any max_s; keeps 2**n a float for a probe that runs for days


@dataclass(frozen=True)
class Backoff:
    """Waits that double from `initial_s` up to `max_s`, with optional jitter.

    `jitter_s` adds up to that many seconds before the cap (tenacity's `wait_exponential_jitter`,
    for API retries); `spread` scales the capped wait by a factor in 1 ± spread, so that
    replicas halted by one shared fault do not probe in step.
    """

    initial_s: float
    max_s: float
    jitter_s: float = 0.0
    spread: float = 0.0

    def base_s(self, attempt: int) -> float:
        """The wait after try number `attempt` (from 1), before any jitter."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))

    def wait_s(self, attempt: int) -> float:
        """The wait after try number `attempt` (from 1), jittered."""
        wait = self.base_s(attempt)
        if self.jitter_s:
            wait = min(self.max_s, wait + random.uniform(0, self.jitter_s))
        if self.spread:
            wait *= random.uniform(1 - self.spread, 1 + self.spread)
        return max(0.0, wait)
