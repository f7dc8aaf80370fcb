"""Figures from the sandbox's call records (arrival times on the server's monotonic clock)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from consumer.sandbox import CallRecord

TOO_FREQUENT = 90051


def gaps(calls: Sequence[CallRecord]) -> list[float]:
    """Gaps between consecutive arrivals."""
    return [b.arrived - a.arrived for a, b in itertools.pairwise(calls)]


def min_gap(calls: Sequence[CallRecord]) -> float | None:
    """The smallest gap between consecutive arrivals, rounded to 0.1 ms; None under two calls."""
    found = gaps(calls)
    return round(min(found), 4) if found else None


def too_frequent(calls: Sequence[CallRecord]) -> int:
    """Calls answered 90051."""
    return sum(c.code == TOO_FREQUENT for c in calls)


def rate(calls: Sequence[CallRecord]) -> float | None:
    """Calls per second from the first arrival to the last: n calls span n - 1 intervals."""
    if len(calls) < 2:
        return None
    return (len(calls) - 1) / (calls[-1].arrived - calls[0].arrived)


def utilization(calls: Sequence[CallRecord], limit_per_s: float) -> float | None:
    """Successful calls per second over the span of all calls, as a share of the limit.

    n successes at exactly the limit span n - 1 intervals, so (n - 1) / span reads 1.0 for a
    perfect run (n / span would read 60/59 = 1.017 for 60 calls).
    """
    ok = sum(c.code == 0 for c in calls)
    if ok < 2:
        return None
    return round((ok - 1) / (calls[-1].arrived - calls[0].arrived) / limit_per_s, 4)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile, interpolated between the closest ranks (inclusive method)."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(p) - 1]


def codes(calls: Sequence[CallRecord]) -> dict[str, int]:
    """How many calls got each answer (an HTTP status when there was no ErrorCode)."""
    counts: dict[str, int] = {}
    for c in calls:
        key = str(c.code) if c.code is not None else f"http_{c.http_status}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
