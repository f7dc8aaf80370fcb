"""Where a takeover's first call goes (consumer/core/takeover.py), as a table."""

from __future__ import annotations

import pytest

from consumer.core.stream import next_call_of, result_message
from consumer.core.takeover import CLOCK_MARGIN_S, FirstCall, first_call
from schemas.events import H_NEXT_CALL_MS
from tests.unit.test_memory import event

T = 1.0  # the interval
M = CLOCK_MARGIN_S
R = 1000.0  # when the first delivery was received (our clock)


@pytest.mark.parametrize(
    ("redelivered", "current", "last_told", "next_call", "expected"),
    [
        # fresh: one interval (and the clocks' margin) after the last told settle
        (False, True, R - 0.3, R + 0.7, FirstCall("after_last_told", R - 0.3 + T + M)),
        # fresh, the app idle for long: at once
        (False, True, R - 60, R - 59, FirstCall("after_last_told", R - 60 + T + M)),
        # fresh, nothing ever told for the app: at once
        (False, True, None, None, FirstCall("after_last_told", float("-inf"))),
        # redelivered well before the replica before us could call again: it was not called
        (True, True, R - 0.3, R + 0.7, FirstCall("after_last_told", R - 0.3 + T + M)),
        # redelivered within the clocks' margin of its next slot: it may have been called
        (True, True, R - 0.95, R + M / 2, FirstCall("from_receipt", R + T)),
        # redelivered after its next slot: it may have been called just now
        (True, True, R - 1.5, R - 0.5, FirstCall("from_receipt", R + T)),
        # redelivered, no slot told (an older replica, or its record lost): the safe rule
        (True, True, R - 0.3, None, FirstCall("from_receipt", R + T)),
        # the memory is behind: nothing known, one interval from the receipt either way
        (False, False, R - 60, R - 59, FirstCall("from_receipt", R + T)),
        (True, False, R - 0.3, R + 0.7, FirstCall("from_receipt", R + T)),
    ],
    ids=[
        "fresh",
        "fresh-idle-app",
        "fresh-never-told",
        "redelivered-before-next-slot",
        "redelivered-within-margin",
        "redelivered-after-next-slot",
        "redelivered-no-slot-told",
        "fresh-memory-behind",
        "redelivered-memory-behind",
    ],
)
def test_first_call(
    redelivered: bool,
    current: bool,
    last_told: float | None,
    next_call: float | None,
    expected: FirstCall,
) -> None:
    got = first_call(
        redelivered=redelivered,
        received=R,
        memory_current=current,
        last_told=last_told,
        next_call=next_call,
        interval_s=T,
    )
    assert (got.rule, got.at) == (expected.rule, pytest.approx(expected.at))


def test_the_first_call_is_never_sooner_than_an_interval_after_any_call_it_cannot_rule_out() -> (
    None
):
    # Whatever the redelivery's timing, the call comes an interval after the last told settle
    # (the last call known), and an interval after the receipt unless no call could be made.
    for received in [R + dt / 100 for dt in range(-100, 200)]:
        got = first_call(
            redelivered=True,
            received=received,
            memory_current=True,
            last_told=R - 1.0,
            next_call=R,
            interval_s=T,
        )
        assert got.at >= R - 1.0 + T
        if received >= R - M:
            assert got.at >= received + T


def test_the_next_slot_travels_as_an_integer_header_and_reads_back() -> None:
    message = result_message(event(), "me", next_call=1_800_000_001.25)
    assert message.headers == {H_NEXT_CALL_MS: 1_800_000_001_250}
    assert next_call_of(message.headers) == pytest.approx(1_800_000_001.25)
    assert result_message(event()).headers in ({}, None)
    for junk in (None, {}, {H_NEXT_CALL_MS: "soon"}, {H_NEXT_CALL_MS: True}):
        assert next_call_of(junk) is None
