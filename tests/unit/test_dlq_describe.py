"""consumer/ops/dlq/, the pure parts (letter.py, copies.py): a dead letter is described whatever it
holds, its app too; a replay is a new request; a copy for the tail is the message as it was."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiormq.abc import DeliveredMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from consumer.ops.dlq import (
    DeadLetter,
    describe,
    describe_delivery,
    matcher,
    replayed,
    requeued,
    task_id_of,
)
from consumer.ops.reports import DLQ_HEADERS, dead_letter_row, table
from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_FIRST_SEEN,
    H_LINEAGE,
    H_RELEASES,
    H_REPLAY,
    H_SDKAPPID,
)

OURS = {
    H_ERROR_CODE: 90001,
    H_ERROR_INFO: "body is not valid JSON",
    H_ERROR_SOURCE: "local",
    H_ATTEMPTS: 0,
    H_DEAD_LETTERED_AT: 1_790_000_000,
}
NESTED = b"[" * 100_000


@dataclass
class Letter:
    body: Any
    headers: Any = None
    message_id: Any = "m-1"


def test_our_dead_letter_is_read_as_written() -> None:
    letter = describe(Letter(b'{"TaskId": "t_1"}', OURS))
    assert letter == DeadLetter(
        task_id="t_1",
        code=90001,
        info="body is not valid JSON",
        source="local",
        attempts=0,
        when=datetime.fromtimestamp(1_790_000_000, UTC),
        message_id="m-1",
    )


@pytest.mark.parametrize(
    "body",
    [
        NESTED,
        b'{"TaskId": "t_1", "x": ' + NESTED + b"}",
        b"{" * 100_000,
        b'{"TaskId": "t_\xff\xfe"}',
        b"\xff\xfe\xfd" * 1000,
        b'{"TaskId": ' + b"9" * 60_000 + b"}",
        b'{"TaskId": "' + b"a" * 65_000 + b'"}',
        b'{"TaskId": ["t_1"]}',
        b"",
        b"null",
        b'"TaskId"',
    ],
    ids=[
        "100k brackets",
        "nested inside an object",
        "100k braces",
        "invalid UTF-8 in the TaskId",
        "invalid UTF-8",
        "a 60k-digit number",
        "a 65k TaskId",
        "a TaskId that is a list",
        "empty",
        "null",
        "a string",
    ],
)
def test_a_hostile_body_shows_the_task_id_as_unknown(body: bytes) -> None:
    letter = describe(Letter(body, OURS))
    assert letter.task_id is None
    assert letter.code == 90001  # the rest is still read


def test_a_64_kib_body_is_cheap() -> None:
    body = b'{"TaskId": "t_1", "OfflinePushInfo": {"Desc": "' + b"x" * 65_000 + b'"}}'
    hostile = b'{"a": ' + b"[" * 65_000
    started = time.perf_counter()
    for _ in range(100):
        assert describe(Letter(body, OURS)).task_id == "t_1"
        assert describe(Letter(hostile, OURS)).task_id is None
    assert time.perf_counter() - started < 2.0  # 10 ms per pair is far more than it needs


@pytest.mark.parametrize(
    "headers",
    [None, {}, [], "x-recall-error-code", {H_ERROR_CODE: None}],
    ids=["none", "empty", "a list", "a string", "null code"],
)
def test_missing_headers(headers: Any) -> None:
    letter = describe(Letter(b'{"TaskId": "t_1"}', headers, message_id=None))
    assert letter.task_id == "t_1"
    assert letter.code is None
    assert letter.source == "unknown"
    assert letter.attempts == 0
    assert letter.when is None
    assert letter.message_id is None


def test_wrong_typed_headers() -> None:
    headers = {
        H_ERROR_CODE: b"90053",
        H_ERROR_INFO: {"nested": ["not", "text"]},
        H_ERROR_SOURCE: 12,
        H_ATTEMPTS: True,
        H_DEAD_LETTERED_AT: 10**30,
    }
    letter = describe(Letter(b"{}", headers, message_id=12345))
    assert letter.code == 90053  # a decimal code sent as text is still the code
    assert letter.info == ""
    assert letter.source == "12"
    assert letter.attempts == 0  # a bool is not a count
    assert letter.when is None  # out of range
    assert letter.message_id is None
    assert describe(Letter(b"{}", {H_ERROR_CODE: True})).code is None
    assert describe(Letter(b"{}", {H_ERROR_CODE: "9" * 100})).code is None
    assert describe(Letter(b"{}", {H_ATTEMPTS: -3})).attempts == 0


def test_long_header_text_is_bounded() -> None:
    letter = describe(
        Letter(b"{}", {**OURS, H_ERROR_INFO: "i" * 100_000, H_ERROR_SOURCE: b"s" * 1000})
    )
    assert len(letter.info) == 1000
    assert len(letter.source) == 200


def test_a_broker_made_dead_letter() -> None:
    when = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    headers = {
        "x-death": [
            {"count": 1, "reason": "expired", "queue": "timpush.recall", "time": when},
            {"count": 20, "reason": "delivery_limit", "queue": "other", "time": when},
        ],
        "x-first-death-reason": "expired",
        "x-first-death-queue": "timpush.recall",
    }
    letter = describe(Letter(b'{"TaskId": "t_9"}', headers))
    assert letter.source == "broker:expired"
    assert letter.info == "dead-lettered by RabbitMQ from timpush.recall (expired)"
    assert letter.when == when
    assert letter.code is None
    assert letter.task_id == "t_9"


@pytest.mark.parametrize(
    "deaths",
    [[], [None], ["x"], [{"reason": ["a"], "queue": 5, "time": "yesterday"}], "x-death", 7],
    ids=["empty", "null entry", "string entry", "wrong types", "a string", "an int"],
)
def test_a_malformed_x_death(deaths: Any) -> None:
    letter = describe(Letter(b"{}", {"x-death": deaths, "x-first-death-reason": b"rejected"}))
    assert letter.source.startswith("broker:")
    assert "dead-lettered by RabbitMQ" in letter.info


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=512),
    headers=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from([H_ERROR_CODE, H_ERROR_INFO, H_ERROR_SOURCE, H_ATTEMPTS, "x-death"])
            | st.text(max_size=5),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers()
                | st.floats()
                | st.text(max_size=20)
                | st.binary(max_size=20)
                | st.datetimes(),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=10,
            ),
            max_size=6,
        ),
    ),
)
def test_describe_never_raises(body: bytes, headers: Any) -> None:
    letter = describe(Letter(body, headers))
    table(DLQ_HEADERS, [dead_letter_row(letter)])  # and it prints


def test_task_id_of_reads_only_objects() -> None:
    assert task_id_of(b'  \n{"TaskId": "t_1"}') == "t_1"
    assert task_id_of(b'["TaskId", "t_1"]') is None
    assert task_id_of("not bytes") is None


def test_a_table_row_is_one_line_whatever_the_task_id() -> None:
    letter = describe(Letter(b'{"TaskId": "a\\nb\\u0007c"}', OURS))
    assert letter.task_id == "a\nb\x07c"  # kept as it is, for --task-id and --json
    (line,) = table(DLQ_HEADERS, [dead_letter_row(letter)]).splitlines()[2:]
    assert "a?b?c" in line


def test_matcher() -> None:
    letter = describe(Letter(b'{"TaskId": "t_1"}', OURS))
    assert matcher(None, None)(letter)
    assert matcher(90001, "t_1")(letter)
    assert not matcher(90053, None)(letter)
    assert not matcher(None, "t_2")(letter)


APP = 1400000001
OTHER = 1400000002


@pytest.mark.parametrize(
    ("value", "app"),
    [
        (APP, APP),
        (str(APP), APP),
        (str(APP).encode(), APP),
        (f" {APP} ", APP),
        (float(APP), APP),
        ("missing", None),
        (None, None),
        ("abc", None),
        (b"\xff\xfe", None),
        ("14000000x1", None),
        ("9" * 100, None),
        (True, None),
        (0, None),
        (-APP, None),
        (1.5, None),
        ([APP], None),
        ({"sdkappid": APP}, None),
    ],
    ids=[
        "int",
        "text",
        "bytes",
        "text with spaces",
        "a whole float",
        "missing",
        "null",
        "letters",
        "invalid UTF-8",
        "digits and a letter",
        "100 digits",
        "a bool",
        "zero",
        "negative",
        "a fraction",
        "a list",
        "a table",
    ],
)
def test_a_dead_letter_names_its_app_or_none(value: Any, app: int | None) -> None:
    headers = dict(OURS) if value == "missing" else {**OURS, H_SDKAPPID: value}
    letter = describe(Letter(b'{"TaskId": "t_1"}', headers))
    assert letter.sdkappid == app
    assert (letter.task_id, letter.code) == ("t_1", 90001)  # the rest is read all the same
    assert letter.as_dict()["sdkappid"] == app
    (row,) = table(DLQ_HEADERS, [dead_letter_row(letter)]).splitlines()[2:]
    assert DLQ_HEADERS[-1] == "app"
    assert row.split()[-1] == (str(app) if app is not None else "-")


def test_the_app_filter_counts_a_letter_naming_none_as_the_fleet_of_ones() -> None:
    mine = describe(Letter(b'{"TaskId": "t_1"}', {**OURS, H_SDKAPPID: APP}))
    other = describe(Letter(b'{"TaskId": "t_2"}', {**OURS, H_SDKAPPID: OTHER}))
    old = describe(Letter(b'{"TaskId": "t_3"}', OURS))  # written before letters named their app
    assert old.sdkappid is None
    everything = [matcher(None, None), matcher(None, None, None, unnamed_app=APP)]
    for match in everything:  # no --app: every letter, old ones too
        assert [match(d) for d in (mine, other, old)] == [True, True, True]
    # A fleet of one (no apps file): its app is TIM_SDKAPPID, which every old letter was for.
    fleet_of_one = matcher(None, None, APP, unnamed_app=APP)
    assert [fleet_of_one(d) for d in (mine, other, old)] == [True, False, True]
    assert [matcher(None, None, OTHER, unnamed_app=APP)(d) for d in (mine, other, old)] == [
        False,
        True,
        False,
    ]
    # An apps file (unnamed_app None): an old letter's app is unknown, so no --app matches it.
    for app in (APP, OTHER):
        assert not matcher(None, None, app)(old)
    assert matcher(None, None, APP)(mine)
    # --app goes with --code and --task-id.
    assert matcher(90001, "t_1", APP)(mine)
    assert not matcher(90053, "t_1", APP)(mine)
    assert not matcher(90001, "t_2", APP, unnamed_app=APP)(mine)


def incoming(headers: dict[str, Any], **properties: Any) -> aio_pika.IncomingMessage:
    delivered = DeliveredMessage(
        delivery=Basic.Deliver(delivery_tag=7, redelivered=True),
        header=ContentHeader(properties=Basic.Properties(headers=headers, **properties)),
        body=b'{"TaskId": "t_1"}',
        channel=None,  # type: ignore[arg-type]
    )
    return aio_pika.IncomingMessage(delivered)


BROKER = {
    "x-death": [{"count": 1, "reason": "rejected", "queue": "q"}],
    "x-first-death-reason": "rejected",
    "x-first-death-queue": "q",
    "x-first-death-exchange": "",
    "x-last-death-reason": "rejected",
    "x-last-death-queue": "q",
    "x-last-death-exchange": "",
    "x-delivery-count": 4,
    "x-acquired-count": 6,
}
CHAIN = {H_LINEAGE: "3f2a", H_RELEASES: 2, H_ATTEMPTS: 3, H_FIRST_SEEN: 1_790_000_000}
PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c-1",
    "reply_to": "r",
    "expiration": "60000",
    "message_id": "m-1",
    "timestamp": datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
    "message_type": "t",
    "user_id": "someone-else",
    "app_id": "producer",
}


def test_a_replay_is_a_new_request_that_keeps_attempts_and_first_seen() -> None:
    dead = incoming({**OURS, **BROKER, **CHAIN, "x-custom": "kept"}, **PROPERTIES)
    message, again = replayed(dead), replayed(dead)
    headers = dict(message.headers)
    # A replay id of its own: no two replays are the same bytes (consumer/core/identity.py).
    assert len({headers.pop(H_REPLAY), (again.headers or {})[H_REPLAY]}) == 2
    assert headers == {H_ATTEMPTS: 3, H_FIRST_SEEN: 1_790_000_000, "x-custom": "kept"}
    assert message.body == b'{"TaskId": "t_1"}'
    assert message.message_id == "m-1"
    assert message.correlation_id == "c-1"
    assert message.user_id is None
    assert message.expiration is None


def test_a_copy_for_the_tail_keeps_everything_but_the_delivery_counters() -> None:
    headers = {**OURS, **BROKER, **CHAIN, "x-custom": "kept"}
    original = Basic.Properties(headers=headers, **PROPERTIES)
    copy = requeued(original)
    assert copy.headers == {
        k: v for k, v in headers.items() if k not in ("x-delivery-count", "x-acquired-count")
    }
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "message_type",
        "app_id",
    ):
        assert getattr(copy, name) == getattr(original, name), name
    assert copy.user_id is None  # the broker would refuse another user's id
    assert requeued(Basic.Properties()).delivery_mode == 2  # kept in a quorum queue anyway


def test_describe_reads_a_raw_delivery() -> None:
    delivered = DeliveredMessage(
        delivery=Basic.Deliver(delivery_tag=1),
        header=ContentHeader(properties=Basic.Properties(headers=OURS, message_id="m-9")),
        body=NESTED,
        channel=None,  # type: ignore[arg-type]
    )
    letter = describe_delivery(delivered)
    assert (letter.task_id, letter.code, letter.message_id) == (None, 90001, "m-9")
