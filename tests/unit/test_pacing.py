"""consumer/pacing.py: the pacer, on a fake clock whose sleep advances it."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from consumer.pacing import Pacer

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
