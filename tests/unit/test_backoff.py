"""consumer/core/backoff.py: doubling, the cap, and the two kinds of jitter stay in bounds."""

from __future__ import annotations

import pytest

from consumer.core.backoff import Backoff


def test_waits_double_up_to_the_cap() -> None:
    backoff = Backoff(0.25, 4.0)
    assert [backoff.wait_s(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_probe_that_runs_for_days_does_not_overflow() -> None:
    assert Backoff(1.0, 300.0).wait_s(100_000) == 300.0


@pytest.mark.parametrize("attempt", [1, 2, 5, 9])
def test_additive_jitter_stays_under_the_cap(attempt: int) -> None:
    backoff = Backoff(1.0, 30.0, jitter_s=1.0)
    for _ in range(200):
        wait = backoff.wait_s(attempt)
        assert backoff.base_s(attempt) <= wait <= min(30.0, backoff.base_s(attempt) + 1.0)


@pytest.mark.parametrize("attempt", [1, 3, 12])
def test_spread_scales_the_capped_wait(attempt: int) -> None:
    backoff = Backoff(2.0, 60.0, spread=0.2)
    waits = {backoff.wait_s(attempt) for _ in range(200)}
    base = backoff.base_s(attempt)
    assert all(0.8 * base <= w <= 1.2 * base for w in waits)
    assert len(waits) > 1  # jittered, so replicas do not probe in step
