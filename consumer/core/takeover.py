"""Where a lane's first call goes when it takes an app over: a pure decision, tested as a table.

The replica before us may have called for the app just before it went, and the server counts
its calls and ours against one limit. What we know of it comes from the results stream: the
last settle it told for the app (`last_told`, after that call's answer) and the next slot its
pacer had placed then (`next_call`; its calls for the app, told or not, come no earlier).

- A fresh delivery: the replica before us acked everything it took, after telling it, so its
  last call was answered before `last_told`: our first call goes one interval after that.
- A redelivery received before `next_call` (less the clocks' margin): the replica before us
  held it but could not have called for it yet. The same rule as a fresh delivery.
- Any other redelivery: it may have been called at any moment until the broker gave it to us,
  so one interval from its receipt. Also whenever the memory is behind (nothing known).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Another replica's times are its clock's: a takeover allows this much disagreement.
CLOCK_MARGIN_S = 0.1

Rule = Literal["after_last_told", "from_receipt"]


@dataclass(frozen=True)
class FirstCall:
    """The takeover's first call: by which rule, and no earlier than `at` (our unix seconds)."""

    rule: Rule
    at: float


def first_call(
    *,
    redelivered: bool,
    received: float,
    memory_current: bool,
    last_told: float | None,
    next_call: float | None,
    interval_s: float,
    margin_s: float = CLOCK_MARGIN_S,
) -> FirstCall:
    """When a lane that just took an app over may call first (see the module docstring)."""
    from_receipt = FirstCall("from_receipt", received + interval_s)
    if not memory_current:
        return from_receipt
    if redelivered and (next_call is None or received >= next_call - margin_s):
        return from_receipt
    after = (last_told if last_told is not None else float("-inf")) + interval_s + margin_s
    return FirstCall("after_last_told", after)
