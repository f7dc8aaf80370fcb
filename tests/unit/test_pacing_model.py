"""bench/pacing_model.py: the link as arithmetic drives the worker's own Pacer (seeded: exact)."""

from __future__ import annotations

import random

import pytest

from bench.pacing_model import BACKLOG, Link, figures, rules


def _drain(link: Link, rule: str, backlogs: int = 30) -> dict[str, float]:
    drain = rules(link)[rule]
    return figures([drain(BACKLOG, random.Random(seed)) for seed in range(backlogs)])


@pytest.mark.parametrize("rtt_s", [0.05, 0.3])
def test_the_workers_rules_never_meet_a_90051_on_the_link(rtt_s: float) -> None:
    send, finish = _drain(Link(rtt_s), "send"), _drain(Link(rtt_s), "finish")
    assert send["backlogs_with_90051"] == finish["backlogs_with_90051"] == 0
    assert send["utilization_min"] > finish["utilization"]  # the round trip won back


def test_the_smallest_round_trip_is_no_floor() -> None:
    assert _drain(Link(0.15), "min-floor+2ms")["backlogs_with_90051"] > 0.25


def test_the_per_way_cap_holds_on_the_link_but_not_with_a_queue_ahead_of_the_counter() -> None:
    assert _drain(Link(0.15), "per_way_cap")["backlogs_with_90051"] == 0
    held = Link(0.15, held_share=0.05, held_max_s=0.02)
    assert _drain(held, "per_way_cap")["backlogs_with_90051"] > 0
    assert _drain(held, "send")["backlogs_with_90051"] == 0


def test_a_load_that_eases_brings_send_a_90051_and_not_finish() -> None:
    # Why `finish` is the default (settings.py): the fault suite met this in a rolling restart.
    eased = Link(0.15, early_calls=3, early_held_s=0.08)
    assert _drain(eased, "send")["backlogs_with_90051"] > 0.5
    assert _drain(eased, "finish")["backlogs_with_90051"] == 0
