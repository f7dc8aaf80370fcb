"""The 1 call/s pacer: spaces calls so that the server never sees two closer than the interval.

Two rules, chosen by `RECALL_PACING`:

``finish``: the next call starts one interval T after the previous one *finished*. A call
arrives somewhere between its send and its answer, so two arrivals are always >= T apart, but
each call gives away a whole round trip.

``send`` (on paper). Call i is sent at s_i, arrives at a_i = s_i + u_i (u: the trip up, our own
work before the bytes leave included) and is answered at e_i = a_i + d_i (d: the server's work
after its arrival stamp and the trip down), so its round trip is r_i = e_i - s_i = u_i + d_i. We
never learn u_i or d_i, only r_i. Assume the link has floors U <= u and D <= d, and let F be the
pacer's estimate of U + D (assumed never above the true U + D: see below). Sending call i + 1 at

    s_{i+1} = s_i + T + (r_i - F) + m        (= e_i + T - F + m; m: the margin)

gives a_{i+1} - a_i = s_{i+1} + u_{i+1} - (e_i - d_i) = T + m + (u_{i+1} + d_i - F) >= T + m,
whatever split of each r_i into u_i + d_i, because u_{i+1} + d_i >= U + D >= F. Every delay (a busy
event loop, a slow server, jitter) only makes u or d longer, so only makes the gap wider.

The estimate: F is the smallest round trip x1 among recent answered calls lowered by its distance
to the next smallest x2 (F = 2 x1 - x2, Robson and Whitlock's end point: the smallest of a few
samples is above the true floor by about that much, and a slow outlier does not move it); with
fewer than two samples there is no estimate and the finish rule applies. Samples older than
`floor_age_s` age out, so a route that got longer is followed. A round trip below the estimate
means the link (or a load that slowed every call so far: a cold start on a busy machine) is
changing and F may be too high: the next call goes by the finish rule. The rule is never later
than the finish rule: the saving is max(0, F - m).

When the assumption breaks:
- the floor estimate above the true floor (too few samples, a route that just got shorter, a load
  that slowed every sample and then went): the gap shrinks by the excess beyond the margin, for
  one call (its answer is below the estimate, so the next goes by the finish rule). A 90051 to
  our own paced call doubles the margin (plus its base) at once; each later answered call
  relaxes it by a tenth of the base, so a rate that was too high falls fast and climbs back
  slowly (AIMD on the rate);
- a call with no answer (a timeout, a cancel, a transport failure: its arrival is unknown, it may
  even come after our give-up) or a gateway's answer: the finish rule for the next call, and no
  sample;
- a slow first connection (TLS handshake) is one high sample: it is not the smallest, so unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

FLOOR_SAMPLES = 64  # round trips kept for the floor estimate
RELAX_SHARE = 0.1  # of the base margin, given back per answered call after a widening


class PacingRule(StrEnum):
    """Where the next call is placed: after the previous send (link-aware) or its answer."""

    SEND = "send"
    FINISH = "finish"


class Slot:
    """One call's turn; the caller reports what came back so the pacer can place the next."""

    def __init__(self, pacer: Pacer, sent: float) -> None:
        self.sent = sent
        self.answered_at: float | None = None
        self.finished = False
        self.rejected = False  # answered 90051
        self._pacer = pacer

    def answered(self) -> None:
        """The server's own answer came back now (an ErrorCode was read)."""
        if self.answered_at is None:
            self.answered_at = self._pacer.now()

    def too_frequent(self) -> None:
        """The server answered 90051 to this paced call: widen the margin at once."""
        self.rejected = True
        self._pacer.widen(self)


class Pacer:
    """Decides when the next call may start (see the module docstring for the two rules)."""

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rule: PacingRule = PacingRule.FINISH,
        margin_s: float = 0.01,
        floor_age_s: float = 300.0,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if margin_s < 0 or floor_age_s <= 0:
            raise ValueError("margin_s must be >= 0 and floor_age_s positive")
        self.interval_s = interval_s
        self.rule = rule
        self.base_margin_s = margin_s
        self.margin_s = margin_s
        self.floor_age_s = floor_age_s
        self._clock = clock
        self._sleep = sleep
        self._not_before = float("-inf")
        self._samples: deque[tuple[float, float]] = deque(maxlen=FLOOR_SAMPLES)  # (at, rtt)
        self._settling = False  # the last round trip fell below the floor estimate

    def now(self) -> float:
        """The pacer's clock."""
        return self._clock()

    def hold(self) -> None:
        """No call before one interval from now: at start, and on taking over from a replica."""
        self._not_before = max(self._not_before, self._clock() + self.interval_s)

    def delay(self) -> float:
        """Seconds until the next call may start under the active rule (0: now)."""
        return max(0.0, self._not_before - self._clock())

    async def wait_turn(self) -> float:
        """Wait for the next free slot; returns how long it waited."""
        waited = 0.0
        while (wait := self.delay()) > 0:
            await self._sleep(wait)
            waited += wait
        return waited

    def call_finished(self) -> None:
        """Record that a call just finished with no answer to go by: the safe rule."""
        self._not_before = max(self._not_before, self._clock() + self.interval_s)

    def push_back(self, seconds: float) -> None:
        """No call before `seconds` from now (a retry's minimum wait, a lockout)."""
        self._not_before = max(self._not_before, self._clock() + seconds)

    def floor(self) -> float | None:
        """The estimated floor of the round trip (s), or None with under two fresh samples."""
        now = self._clock()
        fresh = [rtt for at, rtt in self._samples if now - at <= self.floor_age_s]
        if len(fresh) < 2:
            return None
        # The smallest sample is above the true floor by about the distance to the next one
        # (Robson and Whitlock's end-point estimate); a slow outlier does not move it.
        low, next_low = sorted(fresh)[:2]
        return max(0.0, 2 * low - next_low)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for the next slot, hold it for one call, and place the next call at its end.

        The end is recorded even when the call is cancelled (the broker closed our channel
        mid-call): it may have arrived all the same, so the safe rule applies.
        """
        await self.wait_turn()
        slot = Slot(self, self._clock())
        try:
            yield slot
        finally:
            self._finish(slot)

    def _finish(self, slot: Slot) -> None:
        slot.finished = True
        if slot.answered_at is None:
            self.call_finished()
            return
        rtt = slot.answered_at - slot.sent
        before = self.floor()
        self._samples.append((slot.answered_at, rtt))
        # Below the estimate we had: the link (or a load that slowed every call so far) is
        # changing, and what we knew of it may be too high: one call by the safe rule.
        self._settling = before is not None and rtt < before
        self._not_before = max(self._not_before, self._next_start(slot.answered_at))
        if not slot.rejected and self.margin_s > self.base_margin_s:  # relax slowly
            relaxed = self.margin_s - RELAX_SHARE * self.base_margin_s
            self.margin_s = max(self.base_margin_s, relaxed)

    def _next_start(self, answered_at: float) -> float:
        floor = self.floor() if self.rule is PacingRule.SEND and not self._settling else None
        # Never later than the finish rule: on a short link the margin is worth more than the
        # round trip it saves.
        saved = max(0.0, floor - self.margin_s) if floor is not None else 0.0
        return answered_at + self.interval_s - saved

    def widen(self, slot: Slot) -> None:
        """A 90051 to `slot`'s call: double the margin (plus its base), capped at the interval."""
        self.margin_s = min(self.interval_s, 2 * self.margin_s + self.base_margin_s)
        if slot.finished and slot.answered_at is not None:  # reported after the slot ended
            self._not_before = max(self._not_before, self._next_start(slot.answered_at))


async def sleep_unless_set(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile (shutdown ends every wait)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
