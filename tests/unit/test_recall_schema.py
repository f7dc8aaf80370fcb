"""schemas/recall.py: parsing producer bodies, and the body sent to the API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.recall import (
    InvalidRequest,
    OfflinePushInfo,
    RecallRequest,
    parse_request,
    request_json_schema,
)

SAMPLE: dict[str, Any] = {
    "TaskId": "660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e",
    "OfflinePushInfo": {"Title": "recall title", "Desc": "The other party has recalled a message."},
}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_sample_parses_and_round_trips_exactly() -> None:
    request = parse_request(body(SAMPLE))
    assert request.task_id == SAMPLE["TaskId"]
    assert request.api_body() == SAMPLE
    assert json.loads(request.api_bytes()) == SAMPLE


def test_misspelt_top_level_field_is_refused_and_named() -> None:
    doc = {"TaskId": SAMPLE["TaskId"], "OfflinePushinfo": {"Title": "t"}}
    with pytest.raises(InvalidRequest) as caught:
        parse_request(body(doc))
    assert "OfflinePushinfo" in caught.value.info


@pytest.mark.parametrize(
    "info",
    [
        {"Title": "t", "NewField": "x"},
        {"NewObject": {"a": [1, {"b": "c"}], "n": 1.5, "flag": True}},
        {"AndroidInfo": {"Sound": "s", "NewVendorID": "v", "Nested": {"k": [1, 2]}}},
        {"ApnsInfo": {"BadgeMode": 1, "NewApns": {"x": "y"}}},
        {"MultiLanguageContent": [{"Language": "en", "Title": "t", "Extra": 7}]},
        {"PushTemplateParam": {"k": "v", "list": ["a", 1]}},
    ],
)
def test_unknown_fields_pass_through_untouched(info: dict[str, Any]) -> None:
    doc = {"TaskId": "t1", "OfflinePushInfo": info}
    assert parse_request(body(doc)).api_body() == doc


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-2e308"])
def test_numbers_that_cannot_be_sent_as_written_are_refused(constant: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"not a JSON value|out of range"):
        parse_request(b'{"TaskId": "t1", "OfflinePushInfo": {"X": ' + constant + b"}}")


def test_nulls_and_unset_fields_are_not_sent() -> None:
    doc = {"TaskId": "t1", "OfflinePushInfo": {"Title": None, "Desc": "d", "ApnsInfo": None}}
    sent = parse_request(body(doc)).api_body()
    assert sent == {"TaskId": "t1", "OfflinePushInfo": {"Desc": "d"}}
    assert parse_request(b'{"TaskId": "t1"}').api_body() == {"TaskId": "t1"}


@pytest.mark.parametrize(
    "doc",
    [
        {"TaskId": "t1", "OfflinePushInfo": {"PushFlag": 2}},
        {"TaskId": "t1", "OfflinePushInfo": {"PushFlag": True}},
        {"TaskId": "t1", "OfflinePushInfo": {"ApnsInfo": {"BadgeMode": "1"}}},
        {"TaskId": ""},
        {"TaskId": "x" * 129},
        {"TaskId": "660cc447 537ed82a"},
        {"TaskId": 660},
        {"TaskId": None},
        {"TaskId": ["t1"]},
        {},
        {"OfflinePushInfo": {"Title": "t"}},
        {"TaskId": "t1", "OfflinePushInfo": "not an object"},
        {"TaskId": "t1", "OfflinePushInfo": {"Title": 5}},
    ],
    ids=repr,
)
def test_invalid_requests_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(body(doc))
    assert caught.value.info


def test_task_id_of_128_chars_is_accepted() -> None:
    assert parse_request(body({"TaskId": "x" * 128})).task_id == "x" * 128


@pytest.mark.parametrize(
    ("raw", "max_bytes"),
    [
        (b'{"TaskId": "\xff\xfe"}', 65536),
        (b"", 65536),
        (b"not json", 65536),
        (b'{"TaskId": "t1"', 65536),
        (b'["TaskId", "t1"]', 65536),
        (b'"t1"', 65536),
        (b"42", 65536),
        (b"null", 65536),
        (b'{"TaskId": "t1"}' + b" " * 100, 100),
        (b"[" * 100_000, 1_000_000),
        (
            b'{"TaskId": "t1", "OfflinePushInfo": {"X": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            10**6,
        ),
    ],
    ids=[
        "not-utf8",
        "empty",
        "not-json",
        "truncated",
        "array",
        "string",
        "number",
        "null",
        "oversize",
        "deep-brackets",
        "deep-in-object",
    ],
)
def test_bad_bodies_give_invalid_request(raw: bytes, max_bytes: int) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(raw, max_bytes=max_bytes)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )


_bodies = (
    st.binary(max_size=300)
    | _json_values().map(body)
    | st.fixed_dictionaries(
        {"TaskId": st.text(max_size=10) | _json_values(), "OfflinePushInfo": _json_values()},
    ).map(body)
)


def _as_httpx_sends(doc: dict[str, Any]) -> bytes:
    # httpx's own encoding of `json=` bodies: strict JSON, UTF-8.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _parse_or_refuse(raw: bytes) -> RecallRequest | None:
    try:
        return parse_request(raw)
    except InvalidRequest as exc:
        info = exc.info
    assert isinstance(info, str)
    assert info
    return None


@settings(max_examples=300, deadline=None)
@given(_bodies)
def test_any_bytes_give_a_sendable_request_or_invalid_request(raw: bytes) -> None:
    request = _parse_or_refuse(raw)
    if request is not None:
        assert isinstance(request, RecallRequest)
        _as_httpx_sends(request.api_body())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"TaskId": "t1", "OfflinePushInfo": {"X": ' + b"[" * 300 + b"]" * 300 + b"}}",
        b'{"TaskId": "t1", "OfflinePushInfo": {"Title": "\\ud800"}}',
        b'{"TaskId": "t1", "OfflinePushInfo": {"X": "\\udfff"}}',
        b'{"TaskId": "t1", "OfflinePushInfo": {"X": NaN, "Y": -Infinity}}',
    ],
    ids=["nested-300", "lone-surrogate", "lone-surrogate-extra", "nan"],
)
def test_what_is_accepted_can_be_sent(raw: bytes) -> None:
    # Before a fix these were accepted and then blew up in model_dump or UTF-8 encoding.
    request = _parse_or_refuse(raw)
    if request is not None:
        _as_httpx_sends(request.api_body())


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        (None, {"Title": "default"}),
        ({"Title": "own"}, {"Title": "own"}),
        ({}, {"Title": "default"}),
        ({"Title": None, "Desc": None}, {"Title": "default"}),
    ],
)
def test_with_default_overwrite_only_when_none(
    own: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    doc: dict[str, Any] = {"TaskId": "t1"}
    if own is not None:
        doc["OfflinePushInfo"] = own
    request = parse_request(body(doc))
    result = request.with_default_overwrite(OfflinePushInfo(Title="default"))
    assert result.api_body() == {"TaskId": "t1", "OfflinePushInfo": expected}
    assert json.loads(result.api_bytes()) == result.api_body()
    assert result.sent_offline_push_info is not None
    # What the producer asked for is unchanged: the default is the worker's.
    assert result.offline_push_info == request.offline_push_info
    assert (result.offline_push_info is None) == (expected == {"Title": "default"})


# An overwrite that carries no value: the producer gave none.
EMPTY_OVERWRITES: list[dict[str, Any]] = [
    {},
    {"Title": None},
    {"PushFlag": None, "Title": None, "Desc": None, "Ext": None, "PushTemplateParam": None},
    {"NewField": None},
    {"AndroidInfo": {}},
    {"AndroidInfo": None, "ApnsInfo": {"Sound": None}, "HarmonyInfo": {}},
    {"MultiLanguageContent": []},
    {"MultiLanguageContent": [{"Language": None}, {}]},
    {"PushTemplateParam": {}},
    {"NewObject": {"a": None, "b": [None, {}]}},
]

# An overwrite with something in it, however little, and whatever the field.
NON_EMPTY_OVERWRITES: list[dict[str, Any]] = [
    {"Title": "t"},
    {"Title": ""},
    {"PushFlag": 0},
    {"PushFlag": 1},
    {"BadgeAddNum": 0},
    {"NewField": "x"},
    {"NewField": False},
    {"NewField": 0},
    {"Title": None, "NewObject": {"a": [None, 1]}},
    {"AndroidInfo": {"Sound": "s"}},
    {"ApnsInfo": {"NewApns": "y"}},
    {"MultiLanguageContent": [{}, {"Language": "en"}]},
    {"PushTemplateParam": "p"},
]


@pytest.mark.parametrize("info", EMPTY_OVERWRITES, ids=repr)
def test_an_empty_overwrite_is_no_overwrite(info: dict[str, Any]) -> None:
    request = parse_request(body({"TaskId": "t1", "OfflinePushInfo": info}))
    assert request.offline_push_info is None
    assert request.api_body() == {"TaskId": "t1"}
    assert OfflinePushInfo.model_validate(info).is_empty()
    defaulted = request.with_default_overwrite(OfflinePushInfo(Title="default"))
    assert defaulted.api_body() == {"TaskId": "t1", "OfflinePushInfo": {"Title": "default"}}


@pytest.mark.parametrize("info", NON_EMPTY_OVERWRITES, ids=repr)
def test_an_overwrite_with_any_value_is_kept_and_sent(info: dict[str, Any]) -> None:
    request = parse_request(body({"TaskId": "t1", "OfflinePushInfo": info}))
    assert request.offline_push_info is not None
    assert not request.offline_push_info.is_empty()
    defaulted = request.with_default_overwrite(OfflinePushInfo(Title="default"))
    sent = defaulted.api_body()["OfflinePushInfo"]
    assert sent == {k: v for k, v in info.items() if v is not None}


def test_an_empty_default_is_no_default() -> None:
    request = parse_request(body({"TaskId": "t1"}))
    for empty in (
        OfflinePushInfo(),
        OfflinePushInfo(Title=None),
        OfflinePushInfo.model_validate({"X": None}),
    ):
        assert request.with_default_overwrite(empty).api_body() == {"TaskId": "t1"}


def test_emptiness_of_a_deep_overwrite_has_no_recursion_limit() -> None:
    deep: Any = None
    for _ in range(5000):
        deep = {"a": [deep]}
    assert OfflinePushInfo.model_validate({"X": deep}).is_empty()
    deep_value: Any = "v"
    for _ in range(5000):
        deep_value = [deep_value]
    assert not OfflinePushInfo.model_validate({"X": deep_value}).is_empty()


def test_json_schema_forbids_extras_and_requires_task_id() -> None:
    schema = request_json_schema()
    assert schema["additionalProperties"] is False
    assert "TaskId" in schema["required"]
    assert set(schema["properties"]) == {"TaskId", "OfflinePushInfo"}


def test_json_schema_validates_the_sample() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = request_json_schema()
    jsonschema.validate(SAMPLE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**SAMPLE, "OfflinePushinfo": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"OfflinePushInfo": {}}, schema)
