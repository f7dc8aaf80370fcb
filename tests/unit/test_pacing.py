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


async def test_push_back_delays_and_never_shortens(fake: FakeTime, pacer: Pacer) -> None:
    now = fake.t
    pacer.call_finished()
    pacer.push_back(60)
    pacer.push_back(0.1)
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

from consumer.core.pacing import PacingRule  # noqa: E402

MARGIN = 0.005


def send_pacer(fake: FakeTime, margin: float = MARGIN, floor_age_s: float = 300.0) -> Pacer:
    return Pacer(
        INTERVAL,
        clock=fake.clock,
        sleep=fake.sleep,
        rule=PacingRule.SEND,
        margin_s=margin,
        floor_age_s=floor_age_s,
    )


async def answered_call(fake: FakeTime, pacer: Pacer, up: float, down: float) -> float:
    """One call whose trip up takes `up` and trip down `down`; returns its arrival time."""
    await pacer.wait_turn()
    async with pacer.slot() as slot:
        arrived = fake.t + up
        fake.t = arrived + down
        slot.answered()
    return arrived


# The link: floors U, D (unknown to the pacer) and per-call extras on top, any split at all.
trips = st.tuples(
    st.floats(0.0, 0.2), st.floats(0.0, 0.2), st.floats(0.0, 0.05), st.floats(0.0, 0.05)
)


@settings(max_examples=300, deadline=None)
@given(
    floors=st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 0.2)),
    extras=st.lists(st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.05)), min_size=3, max_size=30),
    data=st.data(),
)
def test_send_rule_arrivals_never_closer_than_interval_once_the_floor_was_seen(
    floors: tuple[float, float], extras: list[tuple[float, float]], data: st.DataObject
) -> None:
    # The assumption on paper: the floors U + D were realized by some earlier call. Then for every
    # split of each round trip into up + down, the arrival gap is >= the interval.
    up_floor, down_floor = floors
    seen = data.draw(st.integers(0, 1), label="which of the first two calls sees both floors")
    extras = list(extras)
    extras[seen] = (0.0, 0.0)

    async def run() -> list[float]:
        fake = FakeTime()
        pacer = send_pacer(fake)
        return [
            await answered_call(fake, pacer, up_floor + x_up, down_floor + x_down)
            for x_up, x_down in extras
        ]

    arrivals = asyncio.run(run())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= INTERVAL - EPS


async def test_send_rule_gains_the_round_trip_the_finish_rule_gives_away(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    arrivals = [await answered_call(fake, pacer, 0.15, 0.15) for _ in range(10)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps[0] == pytest.approx(INTERVAL + 0.3)  # no floor yet: the finish rule
    assert gaps[-1] == pytest.approx(INTERVAL + MARGIN)  # a steady link: interval + margin


async def test_finish_rule_is_todays_rule(fake: FakeTime) -> None:
    pacer = Pacer(INTERVAL, clock=fake.clock, sleep=fake.sleep, rule=PacingRule.FINISH)
    arrivals = [await answered_call(fake, pacer, 0.15, 0.15) for _ in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps == pytest.approx([INTERVAL + 0.3] * 4)


async def test_a_call_with_no_answer_falls_back_to_the_safe_rule(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await answered_call(fake, pacer, 0.15, 0.15)
    await pacer.wait_turn()
    async with pacer.slot():
        fake.t += 2.0  # a timeout: no answer, the arrival is unknown
    assert pacer.delay() == pytest.approx(INTERVAL)


async def test_a_cancelled_call_falls_back_to_the_safe_rule(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await answered_call(fake, pacer, 0.15, 0.15)
    await pacer.wait_turn()

    async def cancelled_call() -> None:
        async with pacer.slot():
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
        await answered_call(fake, pacer, 0.15, 0.15)
    await pacer.wait_turn()
    async with pacer.slot() as slot:
        fake.t += 0.3
        slot.answered()
        slot.too_frequent()
    widened = 2 * MARGIN + MARGIN
    assert pacer.margin_s == pytest.approx(widened)
    assert pacer.delay() == pytest.approx(INTERVAL - 0.3 + widened)  # the next call already
    margins = []
    for _ in range(40):
        await answered_call(fake, pacer, 0.15, 0.15)
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
        await answered_call(fake, pacer, 0.15, 0.15)
    async with pacer.slot() as slot:
        fake.t += 0.3
        slot.answered()
    before = pacer.delay()
    slot.too_frequent()
    assert pacer.delay() == pytest.approx(before + 2 * MARGIN)


async def test_the_margin_never_grows_past_the_interval(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(20):
        async with pacer.slot() as slot:
            fake.t += 0.1
            slot.answered()
            slot.too_frequent()
    assert pacer.margin_s == INTERVAL


async def test_the_floor_ages_out_so_a_longer_route_is_followed(fake: FakeTime) -> None:
    pacer = send_pacer(fake, floor_age_s=60.0)
    for _ in range(5):
        await answered_call(fake, pacer, 0.025, 0.025)
    assert pacer.floor() == pytest.approx(0.05)
    for _ in range(3):  # the route changed: 300 ms now, the old floor still counts
        await answered_call(fake, pacer, 0.15, 0.15)
    floor = pacer.floor()
    assert floor is not None
    assert floor < 0.05
    fake.t += 61  # the old samples age out
    for _ in range(3):
        await answered_call(fake, pacer, 0.15, 0.15)
    assert pacer.floor() == pytest.approx(0.3)
    arrivals = [await answered_call(fake, pacer, 0.15, 0.15) for _ in range(2)]
    assert arrivals[1] - arrivals[0] == pytest.approx(INTERVAL + MARGIN)


async def test_after_the_floor_aged_out_the_safe_rule_applies_again(fake: FakeTime) -> None:
    pacer = send_pacer(fake, floor_age_s=60.0)
    for _ in range(5):
        await answered_call(fake, pacer, 0.15, 0.15)
    fake.t += 120  # idle: what we knew of the link is stale
    assert pacer.floor() is None
    arrivals = [await answered_call(fake, pacer, 0.15, 0.15) for _ in range(2)]
    assert arrivals[1] - arrivals[0] == pytest.approx(INTERVAL + 0.3)


async def test_a_shorter_route_is_followed_at_its_first_answer(fake: FakeTime) -> None:
    pacer = send_pacer(fake)
    for _ in range(5):
        await answered_call(fake, pacer, 0.15, 0.15)
    await answered_call(fake, pacer, 0.025, 0.025)
    floor = pacer.floor()
    assert floor is not None
    assert floor <= 0.05


def test_the_floor_is_the_smallest_round_trip_lowered_by_its_distance_to_the_next(
    fake: FakeTime,
) -> None:
    pacer = send_pacer(fake)
    for rtt in (0.32, 0.30, 2.5):  # a slow outlier (a TLS handshake) does not move it
        pacer._samples.append((fake.t, rtt))
    assert pacer.floor() == pytest.approx(2 * 0.30 - 0.32)


async def test_never_later_than_the_finish_rule_on_a_short_link(fake: FakeTime) -> None:
    pacer = send_pacer(fake, margin=0.01)
    arrivals = [await answered_call(fake, pacer, 0.002, 0.002) for _ in range(6)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert gaps == pytest.approx([INTERVAL + 0.004] * 5)  # the margin would cost more


async def test_a_round_trip_below_the_estimate_sends_the_next_call_by_the_safe_rule(
    fake: FakeTime,
) -> None:
    # A cold start on a busy machine: every call so far was slow, then the load goes. The estimate
    # was too high for the call in between; the one after it goes by the finish rule.
    pacer = send_pacer(fake)
    for rtt in (0.5, 0.45, 0.46):
        await answered_call(fake, pacer, rtt / 2, rtt / 2)
    await answered_call(fake, pacer, 0.05, 0.05)
    assert pacer.delay() == pytest.approx(INTERVAL)
    await answered_call(fake, pacer, 0.05, 0.05)  # no longer below: the send rule again
    assert pacer.delay() == pytest.approx(INTERVAL - 0.1 + MARGIN)
