"""consumer/core/pacing.py: the pacer, on a fake clock whose sleep advances it."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from consumer.core.pacing import Pacer

INTERVAL = 1.0
EPS = 1e-9


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def pacer(fake: FakeTime) -> Pacer:
    return Pacer(INTERVAL, clock=fake.clock, sleep=fake.sleep)


async def test_first_call_after_hold_waits_one_interval(fake: FakeTime, pacer: Pacer) -> None:
    start = fake.t
    pacer.hold()
    waited = await pacer.wait_turn()
    assert waited == pytest.approx(INTERVAL)
    assert fake.t >= start + INTERVAL - EPS


async def test_next_call_waits_a_full_interval_after_a_slow_call(
    fake: FakeTime, pacer: Pacer
) -> None:
    await pacer.wait_turn()
    started = fake.t
    fake.t = started + 0.7  # the call takes 0.7 s
    pacer.call_finished()
    await pacer.wait_turn()
    assert fake.t >= started + 0.7 + INTERVAL - EPS
    assert fake.t == pytest.approx(started + 0.7 + INTERVAL)


async def test_idle_longer_than_interval_does_not_sleep(fake: FakeTime, pacer: Pacer) -> None:
    pacer.call_finished()
    fake.t += INTERVAL + 5
    assert await pacer.wait_turn() == 0
    assert fake.sleeps == []


async def test_not_before_delays_and_never_shortens(fake: FakeTime, pacer: Pacer) -> None:
    now = fake.t
    pacer.call_finished()
    pacer.not_before(fake.t + 60)
    pacer.not_before(fake.t + 0.1)
    assert pacer.delay() == pytest.approx(60)
    await pacer.wait_turn()
    assert fake.t >= now + 60 - EPS


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Pacer(0)


async def test_backlog_arrival_windows_never_closer_than_interval(
    fake: FakeTime, pacer: Pacer
) -> None:
    rng = random.Random(20240403)
    pacer.hold()
    windows: list[tuple[float, float]] = []
    for _ in range(100):
        await pacer.wait_turn()
        start = fake.t
        fake.t += rng.uniform(0.0, 0.3)
        pacer.call_finished()
        windows.append((start, fake.t))
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(windows)]
    assert min(gaps) >= INTERVAL - EPS
    # and it does not dawdle: each call starts one interval after the previous finished
    assert max(gaps) == pytest.approx(INTERVAL)


async def test_a_call_cancelled_inside_its_slot_still_spaces_the_next(
    fake: FakeTime, pacer: Pacer
) -> None:
    # The broker closing our channel cancels the call mid-flight; it may have arrived anyway.
    async def call() -> None:
        async with pacer.slot():
            fake.t += 0.3
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call()
    assert pacer.delay() == pytest.approx(INTERVAL)


# --- the send rule: placing the next call from what is known about the link ----------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from consumer.core.pacing import FLOOR_SAMPLES, PacingRule, Slot  # noqa: E402

MARGIN = 0.002
JITTER = 0.01  # the bound each way: round trips spread over BAND at most
BAND = 4 * JITTER


def send_pacer(
    fake: FakeTime, margin: float = MARGIN, jitter: float = JITTER, floor_age_s: float = 300.0
) -> Pacer:
    return Pacer(
        INTERVAL,
        clock=fake.clock,
        sleep=fake.sleep,
        rule=PacingRule.SEND,
        margin_s=margin,
        jitter_s=jitter,
        floor_age_s=floor_age_s,
    )


class Call:
    """What one call did on the fake clock: when it left, arrived and was answered."""

    def __init__(self, let_go: float, sent: float, arrived: float, received: float) -> None:
        self.let_go, self.sent, self.arrived, self.received = let_go, sent, arrived, received

    @property
    def rtt(self) -> float:
        return self.received - self.sent


async def call(
    fake: FakeTime,
    pacer: Pacer,
    up: float,
    down: float,
    *,
    work: float = 0.0,
    after: float = 0.0,
    socket: bool = True,
    answer: bool = True,
    rejected: bool = False,
) -> Call:
    """One call: our `work` before the request is out, the trip `up` to the server's counter, the
    trip `down` until its answer is read from the socket, our `after` work; as the client and the
    recaller report them."""
    await pacer.wait_turn()
    async with pacer.slot() as slot:
        let_go = fake.t
        fake.t += work
        sent = fake.t
        if socket:
            slot.request_sent()
        fake.t += up
        arrived = fake.t
        fake.t += down
        received = fake.t
        if socket:
            slot.answer_received()
        fake.t += after
        if answer:
            slot.answered()
            if rejected:
                slot.too_frequent()
    return Call(let_go, sent, arrived, received)


def gaps(calls: list[Call]) -> list[float]:
    return [b.arrived - a.arrived for a, b in itertools.pairwise(calls)]


def worst_gaps(calls: list[Call], band: float = BAND) -> list[float]:
    """For each pair of calls, the smallest arrival gap over every split of the measured round
    trips into a trip up and a trip down consistent with them: each trip at least its direction's
    floor (U, D), each round trip in [L, L + band] with L = U + D, except round trips no such L
    allows (beyond the smallest + band: load on top of the link, any split at all).

    a_{i+1} - a_i = s_{i+1} + u_{i+1} - e_i + d_i is smallest with u_{i+1} = U and d_i = D, which
    every round trip allows (r >= L); L as low as the largest round trip in the band lets it be.
    """
    rtts = [c.rtt for c in calls]
    inside = [r for r in rtts if r <= min(rtts) + band + 1e-9]  # (float sums at its top)
    lowest_floor = max(0.0, max(inside) - band)
    return [b.sent - a.received + lowest_floor for a, b in itertools.pairwise(calls)]


# A link: floors up and down, and each call's trips somewhere in the band above them (or, for a
# call slowed by load, far beyond it); our own work on either side of the socket, any amount.
one_call = st.tuples(
    st.floats(0.0, 2 * JITTER),  # up, above its floor
    st.floats(0.0, 2 * JITTER),  # down, above its floor
    st.sampled_from(["link", "link", "link", "slow up", "slow down", "no answer", "no socket"]),
    st.floats(0.0, 0.05),  # our work before the socket
    st.floats(0.0, 0.05),  # our work after it
)


@settings(max_examples=400, deadline=None)
@given(
    floors=st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 0.2)),
    first=st.tuples(st.floats(0.0, 2 * JITTER), st.floats(0.0, 2 * JITTER)),
    link=st.lists(one_call, min_size=1, max_size=40),
    slow=st.floats(2 * BAND + 1e-6, 1.0),
)
def test_send_rule_arrivals_never_closer_than_interval_for_any_split_in_the_bound(
    floors: tuple[float, float],
    first: tuple[float, float],
    link: list[tuple[float, float, str, float, float]],
    slow: float,
) -> None:
    # The assumption: the round trips the pacer learns from lie in the band above the floor, or
    # beyond the smallest one seen + the band (load). The first is in the band: a slow one
    # beyond it is then always seen as load, however the rest goes.
    up_floor, down_floor = floors
    link = [(*first, "link", 0.0, 0.0), *link]

    async def run() -> list[Call]:
        fake = FakeTime()
        pacer = send_pacer(fake)
        calls = []
        for x_up, x_down, kind, work, after in link:
            up = up_floor + x_up + (slow if kind == "slow up" else 0.0)
            down = down_floor + x_down + (slow if kind == "slow down" else 0.0)
            calls.append(
                await call(
                    fake,
                    pacer,
                    up,
                    down,
                    work=work,
                    after=after,
                    socket=kind != "no socket",
                    answer=kind != "no answer",
                )
            )
        return calls

    calls = asyncio.run(run())
    assert min(gaps(calls)) >= INTERVAL - EPS


@settings(max_examples=400, deadline=None)
@given(
    floor=st.floats(0.0, 0.4),
    excess=st.lists(st.floats(0.0, BAND), min_size=2, max_size=70),
    work=st.lists(st.floats(0.0, 0.01), min_size=70, max_size=70),
)
def test_no_split_of_the_measured_round_trips_brings_two_arrivals_under_the_interval(
    floor: float, excess: list[float], work: list[float]
) -> None:
    # The pacer sees only round trips; the worst split of each is worked out after the run.
    async def run() -> list[Call]:
        fake = FakeTime()
        pacer = send_pacer(fake)
        return [
            await call(fake, pacer, floor + x, 0.0, work=w)
            for x, w in zip(excess, work, strict=False)
        ]

    calls = asyncio.run(run())
    assert min(worst_gaps(calls)) >= INTERVAL - EPS


async def test_the_worst_split_is_reached_and_costs_no_more_than_the_bound(fake: FakeTime) -> None:
    # A round trip at the top of the band, then one at its bottom: the arrivals are exactly
    # interval + margin apart when the first call's trip down and the next one's trip up are
    # both at their floors (the split the pacer must allow for).
    pacer = send_pacer(fake)
    top = BAND - 1e-6  # the top of the band (a hair below, so that float sums stay inside)
    await call(fake, pacer, 0.15, 0.15)
    await call(fake, pacer, 0.15, 0.15 + top)
    first = await call(fake, pacer, 0.15 + top, 0.15)  # its trip up took the whole band
    second = await call(fake, pacer, 0.15, 0.15)
    assert pacer.floor() == pytest.approx(0.3, abs=1e-5)
    assert second.arrived - first.arrived == pytest.approx(INTERVAL + MARGIN, abs=1e-5)


async def test_two_round_trips_place_the_next_call(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    first = await call(fake, pacer, 0.15, 0.15)
    assert pacer.floor() is None  # one alone cannot be told from load
    second = await call(fake, pacer, 0.15, 0.15)
    assert second.let_go - first.received == pytest.approx(INTERVAL)
    assert pacer.floor() == pytest.approx(0.3 - BAND)
    third = await call(fake, pacer, 0.15, 0.15)
    # the finish rule would give away 0.3 s; the bound leaves BAND of it
    assert third.sent - second.sent == pytest.approx(INTERVAL + BAND + MARGIN)


@pytest.mark.parametrize("load", [1.5 * BAND, 0.3])
async def test_a_slow_first_round_trip_is_not_taken_for_the_link(
    fake: FakeTime, load: float
) -> None:
    # The first call after start is held up before the server counts it (a busy server, a cold
    # cache): the second one disagrees by more than the band, so neither is trusted yet.
    pacer = send_pacer(fake)
    calls = [await call(fake, pacer, 0.15 + load, 0.15)]
    calls.append(await call(fake, pacer, 0.15, 0.15))
    assert pacer.floor() is None
    for _ in range(3):
        calls.append(await call(fake, pacer, 0.15, 0.15))
    finish_rule = [b.let_go - a.received for a, b in itertools.pairwise(calls[:4])]
    assert finish_rule == pytest.approx([INTERVAL] * 3)
    assert pacer.floor() == pytest.approx(0.3 - BAND)  # one in four beyond: load
    assert min(gaps(calls)) >= INTERVAL - EPS


async def test_the_floor_rises_as_the_band_fills(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    floors = []
    for excess in (0.0, 0.01, 0.03, 0.02, 0.038):
        await call(fake, pacer, 0.1 + excess, 0.1)
        floors.append(pacer.floor())
    assert floors[0] is None
    assert floors[1:] == pytest.approx([0.2 - BAND, 0.21 - BAND, 0.22 - BAND, 0.23 - BAND])
    assert all(f <= 0.2 for f in floors[1:] if f is not None)  # never above the smallest seen


async def test_one_round_trip_inflated_inside_the_band_does_not_raise_the_floor(
    fake: FakeTime,
) -> None:
    # Load on one call that keeps it under the smallest + the band: indistinguishable from the
    # link's own top, so it takes a second one like it to move the floor.
    pacer = send_pacer(fake)
    for _ in range(10):
        await call(fake, pacer, 0.1 + 0.01, 0.1)
    await call(fake, pacer, 0.1, 0.1)  # the floor itself: smallest = 0.2
    await call(fake, pacer, 0.1 + 0.035, 0.1 + 0.004)  # 0.039 above: inside, but inflated
    assert pacer.floor() == pytest.approx(0.21 - BAND)
    await call(fake, pacer, 0.1 + 0.035, 0.1 + 0.004)
    assert pacer.floor() == pytest.approx(0.239 - BAND)


async def test_a_round_trip_beyond_the_band_is_load_and_not_used(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(4):
        await call(fake, pacer, 0.1, 0.1)
    await call(fake, pacer, 0.1 + 0.3, 0.1)  # a stall somewhere: 0.3 s on top
    assert pacer.floor() == pytest.approx(0.2 - BAND)


async def test_a_link_wider_than_the_bound_goes_by_the_finish_rule(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for i in range(8):  # every other round trip beyond the band: the bound is wrong
        await call(fake, pacer, 0.1 + (0.1 if i % 2 else 0.0), 0.1)
    assert pacer.floor() is None
    before = await call(fake, pacer, 0.1, 0.1)
    after = await call(fake, pacer, 0.1, 0.1)
    assert after.let_go - before.received == pytest.approx(INTERVAL)


async def test_a_round_trip_below_the_floor_starts_over_with_the_finish_rule(
    fake: FakeTime,
) -> None:
    # The route got shorter (or the round trips so far were all slowed by a load that went).
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.25, 0.25)
    short = await call(fake, pacer, 0.05, 0.05)
    assert pacer.round_trips() == pytest.approx([0.1])  # what was known of the old route: gone
    nxt = await call(fake, pacer, 0.05, 0.05)
    assert nxt.let_go - short.received == pytest.approx(INTERVAL)  # the finish rule, once
    third = await call(fake, pacer, 0.05, 0.05)
    assert third.let_go - nxt.received == pytest.approx(INTERVAL - (0.1 - BAND) + MARGIN)


async def test_finish_rule_is_todays_rule(fake: FakeTime) -> None:
    pacer = Pacer(INTERVAL, clock=fake.clock, sleep=fake.sleep, rule=PacingRule.FINISH)
    calls = [await call(fake, pacer, 0.15, 0.15) for _ in range(5)]
    assert gaps(calls) == pytest.approx([INTERVAL + 0.3] * 4)


async def test_the_finish_rule_counts_from_the_answer_at_the_socket(fake: FakeTime) -> None:
    # Parsing the answer after it was read does not push the next call back.
    pacer = Pacer(INTERVAL, clock=fake.clock, sleep=fake.sleep, rule=PacingRule.FINISH)
    first = await call(fake, pacer, 0.15, 0.15, after=0.05)
    second = await call(fake, pacer, 0.15, 0.15)
    assert second.let_go - first.received == pytest.approx(INTERVAL)


async def test_our_own_work_is_not_taken_for_the_link(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    await call(fake, pacer, 0.15, 0.15, work=0.04, after=0.03)  # a busy loop on both sides
    assert pacer.round_trips() == pytest.approx([0.3])


async def test_a_call_without_socket_times_teaches_nothing(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    first = await call(fake, pacer, 0.15, 0.15, socket=False)
    assert pacer.round_trips() == []
    second = await call(fake, pacer, 0.15, 0.15)
    assert second.let_go - first.received == pytest.approx(INTERVAL)


async def test_a_request_sent_twice_teaches_nothing(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    async with pacer.slot() as slot:
        slot.request_sent()
        fake.t += 0.1
        slot.request_sent()  # which of the two was answered?
        fake.t += 0.3
        slot.answer_received()
        slot.answered()
    assert pacer.round_trips() == []
    assert pacer.delay() == pytest.approx(INTERVAL)


async def test_a_call_with_no_answer_falls_back_to_the_safe_rule(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    await pacer.wait_turn()
    async with pacer.slot() as slot:
        slot.request_sent()
        fake.t += 2.0  # a timeout: no answer, the arrival is unknown
    assert pacer.delay() == pytest.approx(INTERVAL)


async def test_a_gateways_answer_is_no_answer(fake: FakeTime) -> None:
    # A 502 is read at the socket too, but it is not the server's answer: the recaller does not
    # call answered(), and the arrival (if any) is unknown.
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    await call(fake, pacer, 0.15, 0.15, answer=False, after=0.01)
    assert pacer.delay() == pytest.approx(INTERVAL)
    assert len(pacer.round_trips()) == 5


async def test_a_cancelled_call_falls_back_to_the_safe_rule(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    await pacer.wait_turn()

    async def cancelled_call() -> None:
        async with pacer.slot() as slot:
            slot.request_sent()
            fake.t += 0.3
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cancelled_call()
    assert pacer.delay() == pytest.approx(INTERVAL)


async def test_too_frequent_widens_the_margin_at_once_and_it_relaxes_slowly(
    fake: FakeTime,
) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    await call(fake, pacer, 0.15, 0.15, rejected=True)
    widened = 2 * MARGIN + MARGIN
    assert pacer.margin_s == pytest.approx(widened)
    saved = 0.3 - BAND - widened
    assert pacer.delay() == pytest.approx(INTERVAL - saved)  # the next call already
    margins = []
    for _ in range(40):
        await call(fake, pacer, 0.15, 0.15)
        margins.append(pacer.margin_s)
    assert margins == sorted(margins, reverse=True)  # only ever relaxes, step by step
    assert margins[0] > margins[-1]
    assert margins[0] > MARGIN  # slowly: still wide after the next call
    assert margins[-1] == pytest.approx(MARGIN)  # and back to the base in the end


async def test_too_frequent_reported_after_the_slot_still_pushes_the_next_call(
    fake: FakeTime,
) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    async with pacer.slot() as slot:
        slot.request_sent()
        fake.t += 0.3
        slot.answer_received()
        slot.answered()
    before = pacer.delay()
    slot.too_frequent()
    assert pacer.delay() == pytest.approx(before + 2 * MARGIN)


async def test_the_margin_never_grows_past_the_interval(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(20):
        await call(fake, pacer, 0.05, 0.05, rejected=True)
    assert pacer.margin_s == INTERVAL
    assert pacer.saving() == 0.0


async def test_a_longer_route_is_followed_once_the_old_round_trips_age_out(
    fake: FakeTime,
) -> None:
    pacer = send_pacer(fake, floor_age_s=60.0)
    for _ in range(5):
        await call(fake, pacer, 0.025, 0.025)
    assert pacer.floor() == pytest.approx(0.05 - BAND)
    await call(fake, pacer, 0.15, 0.15)  # the route changed: 300 ms now, the old floor holds
    assert pacer.floor() == pytest.approx(0.05 - BAND)
    for _ in range(2):  # a quarter of the round trips beyond the band: the finish rule
        await call(fake, pacer, 0.15, 0.15)
    assert pacer.floor() is None
    fake.t += 61  # the old round trips age out
    for _ in range(3):
        await call(fake, pacer, 0.15, 0.15)
    assert pacer.floor() == pytest.approx(0.3 - BAND)
    calls = [await call(fake, pacer, 0.15, 0.15) for _ in range(2)]
    assert calls[1].sent - calls[0].sent == pytest.approx(INTERVAL + BAND + MARGIN)


async def test_the_floor_forgets_past_its_window(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(FLOOR_SAMPLES):
        await call(fake, pacer, 0.1, 0.1)
    for _ in range(2):
        await call(fake, pacer, 0.1 + BAND - 1e-6, 0.1)
    assert pacer.floor() == pytest.approx(0.2, abs=1e-5)
    for _ in range(FLOOR_SAMPLES):  # the top of the band is not seen again
        await call(fake, pacer, 0.1, 0.1)
    assert pacer.floor() == pytest.approx(0.2 - BAND)


async def test_after_the_floor_aged_out_the_safe_rule_applies_again(fake: FakeTime) -> None:
    pacer = send_pacer(fake, floor_age_s=60.0)
    for _ in range(5):
        await call(fake, pacer, 0.15, 0.15)
    fake.t += 120  # idle: what we knew of the link is stale
    assert pacer.floor() is None
    assert pacer.saving() == 0.0
    calls = [await call(fake, pacer, 0.15, 0.15) for _ in range(3)]
    assert gaps(calls) == pytest.approx([INTERVAL + 0.3, INTERVAL + BAND + MARGIN])


async def test_never_later_than_the_finish_rule_on_a_short_link(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    calls = [await call(fake, pacer, 0.002, 0.002) for _ in range(6)]
    assert gaps(calls) == pytest.approx([INTERVAL + 0.004] * 5)  # the bound would cost more


async def test_with_no_jitter_allowed_the_smallest_round_trip_is_the_floor(
    fake: FakeTime,
) -> None:
    pacer = send_pacer(fake, jitter=0.0)
    calls = [await call(fake, pacer, 0.15, 0.15) for _ in range(4)]
    assert pacer.floor() == pytest.approx(0.3)
    assert gaps(calls)[1:] == pytest.approx([INTERVAL + MARGIN] * 2)


def test_slot_round_trip_needs_both_socket_times(fake: FakeTime) -> None:
    slot = Slot(send_pacer(fake), fake.t)
    assert slot.round_trip() is None
    slot.request_sent()
    assert slot.round_trip() is None
    fake.t += 0.2
    slot.answer_received()
    assert slot.round_trip() == pytest.approx(0.2)
    slot.answered()
    assert slot.answered_at == pytest.approx(fake.t)
