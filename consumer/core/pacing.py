"""The 1 call/s pacer: spaces calls so that the server never sees two closer than the interval.

Two rules, chosen by `RECALL_PACING`:

``finish`` (the default): the next call starts one interval T after the previous one's answer
came back. A call arrives somewhere between its send and its answer, so two arrivals are always
>= T apart whatever the link and the load; but each call gives away a whole round trip.

``send``: the next call starts one interval after the latest moment the previous call can have
arrived, as far as the round trips seen so far tell.

Notation. Call i leaves our socket at s_i (its last byte handed to the kernel, from httpx's trace
events: core/client.py), is counted by the server at a_i = s_i + u_i, and its answer's headers
are read from our socket at e_i = a_i + d_i. We never see the way up u_i or the way down d_i (the
server's work after counting, the trip back, our own wake-up), only the round trip
r_i = e_i - s_i = u_i + d_i. The pacer lets call i + 1 go at p_{i+1}; it leaves at
s_{i+1} >= p_{i+1} (building the request, a new connection's TLS handshake: only ever later). So

    a_{i+1} - a_i = s_{i+1} + u_{i+1} - (e_i - d_i) >= p_{i+1} - e_i + (u_{i+1} + d_i).

The finish rule takes p_{i+1} = e_i + T and needs nothing more than u, d >= 0. The send rule takes

    p_{i+1} = e_i + T - F + m        (= s_i + T + (r_i - F) + m; m: the margin)

and the gap is >= T + m whenever u_{i+1} + d_i >= F: F must not exceed the link's floor L = U + D
(U, D: the smallest trip up and down there is), for a trip up of one call and a trip down of
another may both be at their floors.

What is assumed: a bound j on the jitter each way (`RECALL_PACING_JITTER_S`, default ±10 ms),
so every trip lies within 2j above its direction's floor and every round trip r in [L, L + 4j].
Then every round trip seen bounds the floor from below, L >= r - 4j, and the pacer takes

    F = R - 4j,   R = the second largest of {r_k : r_k <= x1 + 4j},   x1 = min r_k

over the recent answered calls. For every split of the measured round trips into a trip up and a
trip down (any split at all, as long as the round trips lie in the band), U + D >= R - 4j = F,
hence u_{i+1} + d_i >= F and the gap is >= T + m. F <= x1 always. The largest round trip would
do as well (the lowest floor no round trip contradicts), but a round trip inflated by load that
still stays under x1 + 4j would raise F by as much, up to x1 - L, with nothing to show for it:
taking the second largest, one such round trip alone moves nothing. A round trip beyond x1 + 4j
cannot be inside the band: it is load on top of the link (a slow server, a busy machine, a queue
on the way) and is not used; when more than a quarter of the recent ones are beyond, the bound
does not describe this link (wider jitter, a longer route): no F, the finish rule. A round trip
alone (the first after start, or after the estimate was dropped) cannot be told from load, which
may be any amount: the call after it goes by the finish rule, and F needs two round trips within
4j of each other (MIN_SAMPLES).
The benchmark's first calls, made while other workers were starting next to the sandbox, were
stamped up to half a second late by the busy sandbox; allowed even twice the band (F = r - 8j),
such a lone round trip brought the next arrival 0.42 s closer than the interval (0.25 s over
loopback).

What the margin is for: the bound holds for the link, but two round trips inflated by load can
still raise F. The margin (`RECALL_PACING_MARGIN_S`) covers small inflations; a 90051 to our own
paced call doubles it (plus its base) at once, and each later answered call gives back a tenth
of the base (additive increase and multiplicative decrease of the rate). That is also why the
round trip is timed at the socket, not around the await: our own work (building the request,
parsing the answer, a busy event loop) is the largest inflation. On a busy machine (the sandbox
shares it, so its stamps and the link's deliveries come late at times), with the largest round
trip in place of the second, F stood 9.5 ms above the link's floor for 16 calls of one run, and
one of eighteen benchmark runs over 50 to 300 ms had a 90051 (5.5 ms short).

The cost, with ±10 ms each way and T = 1 s: a call starts T + (r_i - L) + (L - F) + m after the
previous one. With the jitter uniform each way, r_i - L averages 2j = 20 ms: no rule safe for
every split does better than T + 20 ms, 0.980 of the limit. L - F = (L + 4j) - R is how far
below the top of the band the second largest round trip still is: about 3.8 j / sqrt(n) after
n of them, 12 ms after 10, 6 ms after 40, 4.7 ms after 64 (FLOOR_SAMPLES). With m = 2 ms: 0.973
in steady state, 0.970 with the worker's own time from the pacer's go to the request's last byte
(3.5 ms measured: a timer's lateness, httpx); over a backlog of 40 less, for the floor is learned
meanwhile and the second call goes by the finish rule (0.96 to 0.97 measured).
bench/pacing_model.py runs this rule, and two others, over many seeded backlogs: the smallest
round trip seen taken as the floor (a later one is smaller: a 90051 in 57 % of backlogs of 40 at
a 2 ms margin, none from 20 ms on, 0.965), and the excess capped at 2j (0.976, but it trusts the
split: a call held ahead of the counter within the band arrives early unseen).

Why not the bound each way as well: a trip up is then at most U + 2j, so a_i <= s_i + U + 2j and
s_{i+1} = s_i + T + 2j would do whenever r_i is long (16.7 ms instead of 20 on average). But a call
held up on its way to the counter (a queue in front of it) would then bring the next arrival
closer by as much, with nothing to show for it. Here a call held up anywhere only delays the next
one (its answer comes later); what can hurt is an estimate too high, and a round trip below it
shows that (below).

When the assumption breaks:
- a round trip below F contradicts it (a route that got shorter, or an inflated one raised F): the
  round trips known so far are dropped and the next call goes by the finish rule. The call placed
  before we knew may have arrived short by up to F - L - m;
- a route that got longer: its round trips lie beyond x1 + 4j, unused, so F stays where it was (too
  low: safe); at a quarter of the recent ones, the finish rule, until the old ones age out
  (`floor_age_s`, or FLOOR_SAMPLES answers later) and F follows the new route;
- a call with no answer (a timeout, a cancel, a transport failure, a gateway's own error): its
  arrival is unknown: the finish rule, counted from our give-up (a request still on its way up
  after the read timeout is beyond any rule), and no sample;
- no socket times for a call (a transport that reports no trace events): no sample;
- the finish rule whenever it is earlier: the send rule is never later than it.

What no check here catches: a load that inflates every round trip seen so far (a worker just
started or taking over, next to a busy server: its few round trips all well above the link's
floor, all within the band of each other) and then eases. F then stands above the floor by as
much, and the next call arrives that much short before any round trip shows it. The fault suite
met it (tests/faults/test_handover.py under three CPU burners: a 90051 in 4 of 14 rolling restarts,
a call 33 ms short after three round trips 75 ms or more above the floor; none of 14 with the
finish rule), which is why the finish rule is the default (settings.py).
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
MIN_SAMPLES = 2  # a round trip alone cannot be told from load: it takes a second one to agree
RELAX_SHARE = 0.1  # of the base margin, given back per answered call after a widening


class PacingRule(StrEnum):
    """Where the next call is placed: after the previous send (link-aware) or its answer."""

    SEND = "send"
    FINISH = "finish"


class Slot:
    """One call's turn; the caller reports what came back so the pacer can place the next.

    The client reports the socket's two moments (`request_sent`, `answer_received`: the
    CallObserver of core/client.py); the caller says whether the answer was the server's own
    (`answered`) and whether it was a 90051 (`too_frequent`).
    """

    def __init__(self, pacer: Pacer, started: float) -> None:
        self.started = started  # when the pacer let the call go
        self.sent: float | None = None  # the request's last byte handed to the socket
        self.received: float | None = None  # the answer's headers read from the socket
        self.answered_at: float | None = None
        self.finished = False
        self.rejected = False  # answered 90051
        self._sends = 0
        self._pacer = pacer

    def request_sent(self) -> None:
        """The whole request was handed to the socket just now."""
        self._sends += 1
        self.sent = self._pacer.now()

    def answer_received(self) -> None:
        """The answer's headers were read from the socket just now."""
        if self.received is None:
            self.received = self._pacer.now()

    def answered(self) -> None:
        """The server's own answer came back (an ErrorCode was read): at the socket if known."""
        if self.answered_at is None:
            self.answered_at = self.received if self.received is not None else self._pacer.now()

    def too_frequent(self) -> None:
        """The server answered 90051 to this paced call: widen the margin at once."""
        self.rejected = True
        self._pacer.widen(self)

    def round_trip(self) -> float | None:
        """The call's round trip as the socket saw it; None unless both ends were seen once."""
        if self._sends != 1 or self.sent is None or self.received is None:
            return None
        if self.received < self.sent:  # an answer before the request was all out: no trip
            return None
        return self.received - self.sent


class Pacer:
    """Decides when the next call may start (see the module docstring for the two rules)."""

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rule: PacingRule = PacingRule.FINISH,
        margin_s: float = 0.002,
        jitter_s: float = 0.01,
        floor_age_s: float = 300.0,
    ):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if margin_s < 0 or jitter_s < 0 or floor_age_s <= 0:
            raise ValueError("margin_s and jitter_s must be >= 0, floor_age_s positive")
        self.interval_s = interval_s
        self.rule = rule
        self.base_margin_s = margin_s
        self.margin_s = margin_s
        self.band_s = 4 * jitter_s  # the spread of round trips the bound allows
        self.floor_age_s = floor_age_s
        self._clock = clock
        self._sleep = sleep
        self._not_before = float("-inf")
        self._samples: deque[tuple[float, float]] = deque(maxlen=FLOOR_SAMPLES)  # (at, rtt)

    def now(self) -> float:
        """The pacer's clock."""
        return self._clock()

    def hold(self) -> None:
        """No call before one interval from now: at start, and on taking over from a replica."""
        self.not_before(self._clock() + self.interval_s)

    def not_before(self, at: float) -> None:
        """No call before `at` on the pacer's clock (a takeover's first call)."""
        self._not_before = max(self._not_before, at)

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

    def round_trips(self) -> list[float]:
        """The recent round trips the floor is estimated from (oldest first)."""
        now = self._clock()
        return [rtt for at, rtt in self._samples if now - at <= self.floor_age_s]

    def floor(self) -> float | None:
        """The lowest floor of the round trip (s) no recent round trip contradicts; None with
        fewer than MIN_SAMPLES, or when more than a quarter of them lie beyond the bound."""
        recent = self.round_trips()
        if len(recent) < MIN_SAMPLES:
            return None
        top = min(recent) + self.band_s
        inside = sorted(rtt for rtt in recent if rtt <= top)
        if 4 * (len(recent) - len(inside)) > len(recent):
            return None  # the bound does not describe this link (any more)
        return inside[-2] - self.band_s  # the second largest: one inflated alone moves nothing

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
        if slot.answered_at is None:  # no answer: its arrival is unknown
            self.call_finished()
            return
        rtt = slot.round_trip()
        if rtt is not None:
            # Only the send rule places calls by the floor: the finish rule keeps the samples
            # (cheaply) and skips the estimate on every call.
            before = self.floor() if self.rule is PacingRule.SEND else None
            if before is not None and rtt < before:
                # Below the lowest floor the bound allowed: the route got shorter, or a round
                # trip inflated by load raised the estimate. Start again from this one (alone,
                # it places nothing: the next call goes by the finish rule).
                self._samples.clear()
            self._samples.append((slot.answered_at, rtt))
        self._not_before = max(self._not_before, self._next_start(slot.answered_at))
        if not slot.rejected and self.margin_s > self.base_margin_s:  # relax slowly
            relaxed = self.margin_s - RELAX_SHARE * self.base_margin_s
            self.margin_s = max(self.base_margin_s, relaxed)

    def saving(self) -> float:
        """How much earlier than the finish rule the next call may start (s, >= 0)."""
        if self.rule is not PacingRule.SEND:
            return 0.0
        floor = self.floor()
        # Never later than the finish rule: on a short link the margin is worth more than the
        # round trip it saves.
        return max(0.0, floor - self.margin_s) if floor is not None else 0.0

    def _next_start(self, answered_at: float) -> float:
        return answered_at + self.interval_s - self.saving()

    def widen(self, slot: Slot) -> None:
        """A 90051 to `slot`'s call: double the margin (plus its base), capped at the interval."""
        self.margin_s = min(self.interval_s, 2 * self.margin_s + self.base_margin_s)
        if slot.finished and slot.answered_at is not None:  # reported after the slot ended
            self._not_before = max(self._not_before, self._next_start(slot.answered_at))


async def sleep_unless_set(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile (shutdown ends every wait)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
