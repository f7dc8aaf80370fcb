"""1000 generated message bodies through one worker: every invalid one dead-lettered 90001 `local`
byte for byte with no call, every valid one recalled with its body passed through, the worker
alive throughout.

How the bodies are generated: Hypothesis runs a collecting function `@given` a body strategy
with `max_examples=1000` (generate phase only, `derandomize=True`, no database), so the 1000
bodies are the same on every run and come from Hypothesis's own generation (its boundary bias,
not `.example()`). Each draft says whether it is valid *by construction* (the oracle is the
README's contract, not the product's parser): the only rule applied after building is the
documented size limit, so a valid-shaped body over `RECALL_MAX_BODY_BYTES` counts as invalid.
Then all bodies are published to one queue, consumed by one `python -m consumer run` worker at
a 5 ms interval against a sandbox enforcing 5 ms: one worker lifetime, not 1000.

Nesting depths are kept out of the band where the product's own limits decide (201 to 999):
valid bodies nest at most 200 deep, invalid ones at least 1000 (past any JSON parser's limit).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer.sandbox import SandboxConfig
from schemas.events import H_ATTEMPTS, H_ERROR_CODE, H_ERROR_SOURCE
from tests.support.broker import Names
from tests.support.faults import (
    FaultBroker,
    RecordingSandbox,
    events_named,
    ledger,
    min_gap,
    publish_all,
    report,
    request_for,
    stop,
    wait_until,
)
from tests.support.workers import SpawnWorker, WorkerFactory

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EXAMPLES = 1000
INTERVAL_S = 0.005
MAX_BODY = 65536  # RECALL_MAX_BODY_BYTES's default
PLACEHOLDER = "@@ PLACEHOLDER @@"  # has spaces: never part of a TaskId
KNOWN_OPI = {
    "PushFlag",
    "Title",
    "Desc",
    "Ext",
    "AndroidInfo",
    "ApnsInfo",
    "HarmonyInfo",
    "MultiLanguageContent",
    "BadgeAddNum",
    "BadgeSetNum",
    "PushTemplateId",
    "PushTemplateParam",
}
MODEL_FIELDS = ("AndroidInfo", "ApnsInfo", "HarmonyInfo")  # objects whose null fields are dropped
VALID_KINDS = {"offline_push_info", "online_only", "deep", "big"}
INVALID_KINDS = {
    "random_bytes",
    "blank",
    "bad_utf8",
    "not_an_object",
    "huge_string",
    "no_task_id",
    "task_id_wrong_type",
    "task_id_bad_string",
    "task_id_too_long",
    "extra_top_level_field",
    "offline_push_info_wrong_type",
    "field_wrong_type",
    "not_json_constant",
    "lone_surrogate",
    "deep_array",
    "deep_inside",
    "truncated",
    "trailing_garbage",
    "oversize",
}


@pytest.fixture
def sandbox() -> RecordingSandbox:
    """This module's sandbox: 5 ms between calls, and it keeps the bodies it received."""
    return RecordingSandbox(SandboxConfig(min_interval=INTERVAL_S))


# ---- drafts: a body to build once its TaskId is known ------------------------------------------

Build = Callable[[str | None], bytes]


@dataclass(frozen=True)
class Draft:
    label: str
    valid: bool  # by construction, before the size limit
    build: Build  # TaskId (None when the body names no real task) -> body
    needs_task: bool = True  # the body names a task created in the sandbox
    online_only: bool = False
    suffix: str = "x"  # the TaskId's generated part
    doc: Callable[[str], dict[str, Any]] | None = None  # valid ones: the request as a document


TEXT = st.text(max_size=24)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)
# Printable ASCII without space, as the contract says; a "g0001-" prefix makes it unique and
# keeps its head from decoding as a start time.
SUFFIX = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=122)


@st.composite
def formats(draw: st.DrawFn) -> Callable[[dict[str, Any]], bytes]:
    """How a producer might serialise: ASCII or UTF-8, compact or indented, key order, padding."""
    ensure_ascii = draw(st.booleans())
    indent = draw(st.sampled_from([None, None, 0, 2]))
    reverse = draw(st.booleans())
    pad = draw(st.sampled_from(["", "", " ", "\n", " \r\n\t"]))

    def encode(doc: dict[str, Any]) -> bytes:
        ordered = dict(reversed(doc.items())) if reverse else doc
        text = json.dumps(ordered, ensure_ascii=ensure_ascii, indent=indent)
        return (pad + text + pad).encode()

    return encode


def nested(depth: int, leaf: Any = 0) -> Any:
    """A value `depth` containers deep, lists and objects alternating."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


@st.composite
def valid_offline_push_info(draw: st.DrawFn) -> dict[str, Any]:
    known = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "Title": st.none() | TEXT,
                "Desc": st.none() | TEXT,
                "Ext": TEXT,
                "PushFlag": st.sampled_from([0, 1]),
                "BadgeAddNum": st.integers(),
                "BadgeSetNum": st.none() | st.integers(),
                "PushTemplateId": st.integers() | TEXT,
                "PushTemplateParam": JSON,
                "AndroidInfo": st.fixed_dictionaries(
                    {},
                    optional={
                        "Sound": TEXT,
                        "PushStyle": st.integers() | TEXT,
                        "HuaWeiChannelID": st.none() | TEXT,
                        "VendorAddedLater": JSON,
                    },
                ),
                "ApnsInfo": st.fixed_dictionaries(
                    {}, optional={"Sound": TEXT, "BadgeMode": st.integers(), "Title": TEXT}
                ),
                "MultiLanguageContent": st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"Language": TEXT, "Title": TEXT, "Desc": TEXT}
                    ),
                    max_size=3,
                ),
            },
        )
    )
    unknown = draw(st.dictionaries(TEXT.filter(lambda k: k not in KNOWN_OPI), JSON, max_size=3))
    return {**unknown, **known}


@st.composite
def valid_requests(draw: st.DrawFn) -> Draft:
    kind = draw(st.sampled_from(sorted(VALID_KINDS)))
    encode = draw(formats())
    suffix = draw(SUFFIX)
    online_only = False
    if kind == "offline_push_info":
        # One that carries a value: an empty overwrite is no overwrite (90053 for such a task;
        # tests/integration/test_empty_overwrite.py covers that path).
        opi = draw(valid_offline_push_info().filter(lambda o: not carries_nothing(o)))
    elif kind == "online_only":  # no overwrite needed: the task was online-only
        online_only = True
        opi = draw(st.sampled_from([None, {}, "absent"]))
    elif kind == "deep":
        key = draw(st.sampled_from(["PushTemplateParam", "VendorAddedLater"]))
        opi = {"Title": "t", key: nested(draw(st.integers(1, 200)))}
    else:  # a big Title, around and across the size limit
        target = draw(
            st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1]) | st.integers(40_000, 100_000)
        )

        def big(task_id: str | None) -> bytes:
            base = encode({"TaskId": task_id, "OfflinePushInfo": {"Title": ""}})
            title = "x" * max(0, target - len(base))
            return encode({"TaskId": task_id, "OfflinePushInfo": {"Title": title}})

        def big_doc(task_id: str) -> dict[str, Any]:
            return json.loads(big(task_id))

        return Draft("big", True, big, suffix=suffix, doc=big_doc)

    def doc(task_id: str) -> dict[str, Any]:
        request: dict[str, Any] = {"TaskId": task_id}
        if opi != "absent":
            request["OfflinePushInfo"] = opi
        return request

    return Draft(
        kind,
        True,
        lambda task_id: encode(doc(str(task_id))),
        online_only=online_only,
        suffix=suffix,
        doc=doc,
    )


def _raw(encode: Callable[[dict[str, Any]], bytes], doc: dict[str, Any], raw: bytes) -> bytes:
    """`doc` encoded, with the placeholder string (quotes included) replaced by raw bytes."""
    return encode(doc).replace(json.dumps(PLACEHOLDER).encode(), raw, 1)


def _not_json_object(data: bytes) -> bool:
    try:
        return not isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return True


@st.composite
def invalid_requests(draw: st.DrawFn) -> Draft:
    kind = draw(st.sampled_from(sorted(INVALID_KINDS)))
    encode = draw(formats())
    suffix = draw(SUFFIX)

    def fixed(body: bytes, needs_task: bool = False) -> Draft:
        return Draft(kind, False, lambda _: body, needs_task=needs_task, suffix=suffix)

    def with_task(make: Build) -> Draft:
        return Draft(kind, False, make, suffix=suffix)

    if kind == "random_bytes":
        return fixed(draw(st.binary(max_size=300).filter(_not_json_object)))
    if kind == "blank":
        return fixed(draw(st.sampled_from([b"", b" ", b"\n", b"{}", b"[]", b"null", b'""'])))
    if kind == "not_an_object":
        value = draw(JSON.filter(lambda v: not isinstance(v, dict)))
        return fixed(json.dumps(value).encode())
    if kind == "huge_string":
        return fixed(json.dumps("s" * draw(st.integers(1_000, 100_000))).encode())
    if kind == "no_task_id":
        doc = draw(st.dictionaries(TEXT.filter(lambda k: k != "TaskId"), JSON, max_size=4))
        return fixed(encode(doc))
    if kind == "task_id_wrong_type":
        value = draw(JSON.filter(lambda v: not isinstance(v, str)))
        return fixed(encode({"TaskId": value, "OfflinePushInfo": {"Title": "t"}}))
    if kind == "task_id_bad_string":
        bad = draw(
            st.sampled_from([" ", "\t", "\x00", "\x7f", "\n"])
            | st.characters(min_codepoint=0x80, exclude_categories=["Cs"])
        )
        at = draw(st.integers(0, len(suffix)))
        task_id = draw(st.sampled_from(["", suffix[:at] + bad + suffix[at:]]))
        return fixed(encode({"TaskId": task_id, "OfflinePushInfo": {"Title": "t"}}))
    if kind == "task_id_too_long":
        task_id = "T" * draw(st.sampled_from([129, 130]) | st.integers(129, 100_000))
        return fixed(encode({"TaskId": task_id, "OfflinePushInfo": {"Title": "t"}}))
    if kind == "extra_top_level_field":
        key = draw(
            st.sampled_from(["OfflinePushinfo", "offlinePushInfo", "TaskID", "taskId", "Extra"])
            | TEXT.filter(lambda k: k not in ("TaskId", "OfflinePushInfo"))
        )
        value = draw(JSON)
        return with_task(
            lambda t: encode({"TaskId": t, "OfflinePushInfo": {"Title": "t"}, key: value})
        )
    if kind == "offline_push_info_wrong_type":
        value = draw(JSON.filter(lambda v: v is not None and not isinstance(v, dict)))
        return with_task(lambda t: encode({"TaskId": t, "OfflinePushInfo": value}))
    if kind == "field_wrong_type":
        not_str = JSON.filter(lambda v: v is not None and not isinstance(v, str))
        field, value = draw(
            st.tuples(st.just("Title"), not_str)
            | st.tuples(st.just("Desc"), not_str)
            | st.tuples(st.just("PushFlag"), st.sampled_from([2, -1, "1", True, False, 1.0, 0.5]))
            | st.tuples(
                st.just("BadgeSetNum"),
                JSON.filter(lambda v: v is not None and (type(v) is not int)),
            )
            | st.tuples(
                st.sampled_from(["AndroidInfo", "ApnsInfo"]),
                JSON.filter(lambda v: v is not None and not isinstance(v, dict)),
            )
            | st.tuples(
                st.just("MultiLanguageContent"),
                JSON.filter(lambda v: v is not None and not isinstance(v, list)),
            )
        )
        return with_task(lambda t: encode({"TaskId": t, "OfflinePushInfo": {field: value}}))
    if kind == "not_json_constant":
        constant = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
        key = draw(st.sampled_from(["PushTemplateParam", "Title", "VendorAddedLater"]))
        return with_task(
            lambda t: _raw(encode, {"TaskId": t, "OfflinePushInfo": {key: PLACEHOLDER}}, constant)
        )
    if kind == "lone_surrogate":
        escape = f'"a\\u{draw(st.integers(0xD800, 0xDFFF)):04x}b"'.encode()
        return with_task(
            lambda t: _raw(encode, {"TaskId": t, "OfflinePushInfo": {"Title": PLACEHOLDER}}, escape)
        )
    if kind == "bad_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80"]))
        return with_task(
            lambda t: _raw(
                encode,
                {"TaskId": t, "OfflinePushInfo": {"Title": PLACEHOLDER}},
                b'"ok ' + bad + b' ok"',
            )
        )
    if kind == "deep_array":
        depth = draw(st.integers(1, 20_000))
        return fixed(b"[" * depth + b"]" * depth)
    if kind == "deep_inside":
        depth = draw(st.integers(1_000, 20_000))
        deep = b'{"n":' * depth + b"0" + b"}" * depth
        return with_task(
            lambda t: _raw(
                encode, {"TaskId": t, "OfflinePushInfo": {"PushTemplateParam": PLACEHOLDER}}, deep
            )
        )
    if kind == "truncated":
        cut = draw(st.floats(0.0, 1.0, exclude_max=True))

        def truncated(t: str | None) -> bytes:
            body = encode({"TaskId": t, "OfflinePushInfo": {"Title": "t"}}).strip()
            return body[: int(cut * (len(body) - 1))]  # a strict prefix: never the closing }

        return with_task(truncated)
    if kind == "trailing_garbage":
        garbage = draw(st.sampled_from([b"x", b"}", b",", b"{}", b"\x00", b'"']))
        return with_task(
            lambda t: encode({"TaskId": t, "OfflinePushInfo": {"Title": "t"}}) + garbage
        )
    # oversize: a valid-shaped request over the limit (the size rule alone makes it invalid)
    size = draw(st.sampled_from([MAX_BODY + 1]) | st.integers(MAX_BODY + 1, 100_000))
    return with_task(
        lambda t: json.dumps(
            {"TaskId": t, "OfflinePushInfo": {"Title": "y" * size}}, separators=(",", ":")
        ).encode()
    )


BODIES = st.one_of(valid_requests(), invalid_requests())


def generate_drafts(n: int) -> list[Draft]:
    """n drafts from Hypothesis, the same ones on every run (see the module docstring)."""
    drafts: list[Draft] = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(draft=BODIES)
    def collect(draft: Draft) -> None:
        drafts.append(draft)

    collect()
    return drafts


# ---- what the API should receive for a valid request -------------------------------------------


def carries_nothing(value: Any) -> bool:
    """Only nulls, empty objects and empty lists, at any depth: no overwrite at all."""
    if isinstance(value, dict):
        return all(carries_nothing(v) for v in value.values())
    if isinstance(value, list):
        return all(carries_nothing(v) for v in value)
    return value is None


def _drop_nulls(value: Any) -> Any:
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def expected_api_body(doc: dict[str, Any]) -> dict[str, Any]:
    """The request as the API should get it: nulls dropped from the request's own objects
    (the request, its OfflinePushInfo and the typed objects in it), everything else untouched."""
    body = _drop_nulls(doc)
    opi = body.get("OfflinePushInfo")
    if isinstance(opi, dict) and carries_nothing(opi):
        del body["OfflinePushInfo"]  # an empty overwrite is no overwrite: nothing is sent
    elif isinstance(opi, dict):
        opi = _drop_nulls(opi)
        for name in MODEL_FIELDS:
            if isinstance(opi.get(name), dict):
                opi[name] = _drop_nulls(opi[name])
        if isinstance(opi.get("MultiLanguageContent"), list):
            opi["MultiLanguageContent"] = [_drop_nulls(x) for x in opi["MultiLanguageContent"]]
        body["OfflinePushInfo"] = opi
    return body


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON documents, types included (1 is not 1.0 is not true)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


# ---- the test -----------------------------------------------------------------------------------


async def test_generated_bodies(
    broker: FaultBroker, names: Names, sandbox: RecordingSandbox, spawn_worker: SpawnWorker
) -> None:
    started = time.monotonic()
    drafts = generate_drafts(EXAMPLES)
    assert len(drafts) == EXAMPLES
    generated_in = time.monotonic() - started

    requests = []
    valid: dict[str, Draft] = {}  # message_id -> draft
    labels: Counter[str] = Counter()
    for i, draft in enumerate(drafts):
        task_id = f"g{i:04d}-{draft.suffix}" if draft.needs_task else None
        if task_id is not None:
            sandbox.add_task(task_id, online_only=draft.online_only)
        body = draft.build(task_id)
        request = request_for(task_id, body)
        requests.append(request)
        ok = draft.valid and len(body) <= MAX_BODY
        labels[
            f"{'valid' if draft.valid else 'invalid'}_{draft.label}"
            + ("" if ok == draft.valid else "_oversize")
        ] += 1
        if ok:
            valid[request.message_id] = draft

    # Every kind of body was generated, and the size limit was probed at its edge.
    kinds = {d.label for d in drafts}
    assert kinds >= VALID_KINDS | INVALID_KINDS, (VALID_KINDS | INVALID_KINDS) - kinds
    sizes = Counter(len(r.body) for r in requests)
    assert sizes[MAX_BODY] >= 1
    assert sizes[MAX_BODY + 1] >= 1

    worker = await spawn_worker()
    await worker.ready()
    published_at = time.monotonic()
    await publish_all(broker, requests)

    async def all_settled() -> bool:
        # The worker must stay alive throughout: a dead process fails the wait at once.
        assert worker.process.returncode is None, f"worker exited:\n{worker.log()[-3000:]}"
        return (
            await broker.count(names.queue) == 0
            and len(sandbox.recalled_task_ids()) >= len(valid)
            and await broker.count(names.dead) >= EXAMPLES - len(valid)
        )

    # Every request passes twice (stamped, then handled): generous for a loaded machine.
    await wait_until(all_settled, 120, "all 1000 requests settled")
    settled_in = time.monotonic() - published_at
    await stop(worker)  # still alive, and shuts down cleanly

    figures = await ledger(broker, sandbox, requests)
    by_message = {r.message_id: r for r in requests}
    invalid_ids = set(by_message) - set(valid)
    assert set(figures.recalled) == set(valid), "a valid request was not recalled"
    assert set(figures.dead) == invalid_ids, "an invalid request was not dead-lettered"
    for message_id in invalid_ids:
        headers = figures.dead[message_id].headers or {}
        assert (headers[H_ERROR_CODE], headers[H_ERROR_SOURCE], headers[H_ATTEMPTS]) == (
            90001,
            "local",
            0,
        ), (message_id, by_message[message_id].body[:200], headers)
    # No call for an invalid one: the API got exactly one call per valid request, all answered 0.
    assert figures.calls == len(valid)
    assert figures.codes == Counter({0: len(valid)})
    assert len(sandbox.received) == len(valid)
    # ... each carrying the request as the producer wrote it (nulls of its own fields dropped).
    received = {json.loads(r.body)["TaskId"]: json.loads(r.body) for r in sandbox.received}
    for message_id, draft in valid.items():
        task_id = by_message[message_id].task_id
        assert task_id is not None
        assert draft.doc is not None
        expected = expected_api_body(draft.doc(task_id))
        assert same_json(received[task_id], expected), (draft.label, received[task_id], expected)
    assert min_gap(sandbox) >= INTERVAL_S
    assert events_named(worker, "worker_stopped")
    report(
        "generated_bodies",
        examples=len(drafts),
        valid=len(valid),
        invalid=len(invalid_ids),
        generated_in_s=round(generated_in, 2),
        settled_in_s=round(settled_in, 2),
        labels=dict(sorted(labels.items())),
        ledger=figures.figures(),
    )


async def test_number_past_a_double_is_refused_or_sent_as_written(
    broker: FaultBroker, names: Names, sandbox: RecordingSandbox, run_worker: WorkerFactory
) -> None:
    # Found while writing the generated-bodies oracle. parse_request refuses NaN/Infinity
    # because "Python would accept them and the API would get nulls"; 1e400 does the same.
    task_id = sandbox.create_task()
    body = (
        b'{"TaskId":"' + task_id.encode() + b'","OfflinePushInfo":{"Title":"t",'
        b'"PushTemplateParam":{"amount":1e400}}}'
    )
    request = request_for(task_id, body)
    async with run_worker() as running:
        await publish_all(broker, [request])
        await running.wait_settled(1)
    figures = await ledger(broker, sandbox, [request])
    sent = [json.loads(r.body) for r in sandbox.received]
    report("number_past_a_double", sent=sent, dead=len(figures.dead))
    if figures.dead:  # refused like NaN: fine, and no call
        assert (figures.dead[request.message_id].headers or {})[H_ERROR_CODE] == 90001
        assert sent == []
    else:  # or passed through as written, never turned into null
        assert sent[0]["OfflinePushInfo"]["PushTemplateParam"]["amount"] is not None
