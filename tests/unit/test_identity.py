"""consumer/core/identity.py: which chain a delivery belongs to, as a table; no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.identity import Chain, generation, lineage_of, resolve_chain

G = "gen"  # a message's generation (its digest)


@pytest.mark.parametrize(
    ("carried", "redelivered", "told", "expected"),
    [
        # A producer's message, first delivery: chain #0, never only acked.
        (None, False, set(), Chain("gen#0", told=False, continued=False)),
        # Its redelivery with nothing told: the same chain, and a call may have been made.
        (None, True, set(), Chain("gen#0", told=False, continued=True)),
        # Its redelivery after its event was told (the ack was lost): only the ack is owed.
        (None, True, {"gen#0"}, Chain("gen#0", told=True, continued=True)),
        # The same bytes published again (a producer's second publish, any replay tool), after
        # the first was told: a new chain, a new try.
        (None, False, {"gen#0"}, Chain("gen#1", told=False, continued=False)),
        (None, False, {"gen#0", "gen#1"}, Chain("gen#2", told=False, continued=False)),
        # The redelivery of the newest told chain of those bytes.
        (None, True, {"gen#0", "gen#1"}, Chain("gen#1", told=True, continued=True)),
        # A copy of ours continues its chain ...
        ("L#0", False, set(), Chain("L#0", told=False, continued=True)),
        ("L#0", True, set(), Chain("L#0", told=False, continued=True)),
        # ... and is only acked once its chain was told (elsewhere, by the original's redelivery).
        ("L#0", False, {"L#0"}, Chain("L#0", told=True, continued=True)),
        ("L#1", False, {"L#0"}, Chain("L#1", told=False, continued=True)),
    ],
)
def test_resolve_chain(
    carried: str | None, redelivered: bool, told: set[str], expected: Chain
) -> None:
    assert (
        resolve_chain(
            generation=G, carried=carried, redelivered=redelivered, was_told=told.__contains__
        )
        == expected
    )


def test_a_copy_made_before_the_original_was_redelivered_is_superseded() -> None:
    """The release copy is confirmed, the original's ack is lost, another replica settles the
    original's redelivery: the copy behind it finds its chain told. One live chain."""
    told: set[str] = set()
    original = resolve_chain(
        generation=G, carried=None, redelivered=False, was_told=told.__contains__
    )
    copy_lineage = original.lineage  # what the release copy carries
    redelivery = resolve_chain(
        generation=G, carried=None, redelivered=True, was_told=told.__contains__
    )
    assert redelivery.lineage == copy_lineage
    assert not redelivery.told
    told.add(redelivery.lineage)  # the other replica recalled it and told its event
    copy = resolve_chain(
        generation="copy", carried=copy_lineage, redelivered=False, was_told=told.__contains__
    )
    assert copy.told


def test_a_twins_copy_is_not_taken_for_the_first_twin() -> None:
    """The same bytes twice: the first told; the second released on shutdown. Its copy carries
    the second chain's lineage, so it is called, not acked."""
    told = {lineage_of(G, 0)}
    second = resolve_chain(
        generation=G, carried=None, redelivered=False, was_told=told.__contains__
    )
    assert second.lineage == lineage_of(G, 1)
    copy = resolve_chain(
        generation="other", carried=second.lineage, redelivered=False, was_told=told.__contains__
    )
    assert not copy.told


def test_generation_ignores_the_broker_counters_and_sorts_the_table() -> None:
    props = [("message_id", "m"), ("timestamp", datetime(2026, 1, 1, tzinfo=UTC))]
    a = generation(b"x", props, {"k": 1, "j": [1, "2"], "x-delivery-count": 3})
    b = generation(b"x", props, {"j": [1, "2"], "k": 1, "x-acquired-count": 9})
    assert a == b
    assert a != generation(b"x", props, {"k": 1, "j": ["1", 2]})
    assert a != generation(b"y", props, {"k": 1, "j": [1, "2"]})


amqp_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), amqp_values, max_size=6))
def test_generation_takes_any_header_value_and_is_deterministic(headers: dict[str, Any]) -> None:
    assert generation(b"b", [], headers) == generation(b"b", [], dict(reversed(headers.items())))


def test_generation_of_a_deep_table_does_not_recurse() -> None:
    deep: Any = Decimal(1)
    for _ in range(50_000):
        deep = {"d": deep}
    assert len(generation(b"", [], {"deep": deep})) == 32


def test_a_generation_is_the_same_in_every_version() -> None:
    # Replicas of two versions meet in a rolling deploy: one told a chain under a root the
    # other computes for the redelivery. These digests were made by the first version.
    props = (
        ("content_type", "application/json"),
        ("content_encoding", None),
        ("delivery_mode", 2),
        ("priority", None),
        ("correlation_id", "c-1"),
        ("reply_to", None),
        ("expiration", None),
        ("message_id", "m-1"),
        ("timestamp", datetime(2026, 12, 6, 14, 0, 0)),
        ("type", None),
        ("user_id", None),
        ("app_id", "cms"),
    )
    headers = {
        "x-delivery-count": 3,
        "b": b"\x00\xff",
        "list": [1, "2", None, [True, 2.5]],
        "map": {"z": 1, "a": {"n": Decimal("1.50")}},
        "s": "caf\u00e9\udc80",
        "i": -7,
        "f": 1.0,
        "none": None,
        "t": (1, 2),
        "mv": bytearray(b"ab"),
    }
    body = b'{"TaskId":"x"}'
    assert generation(body, props, headers) == "fc33b0289a3d2dd1e189daeeeb244fbc"
    assert generation(b"", [], {}) == "3bfc37c4aff9e9e46ef56af207839f80"
