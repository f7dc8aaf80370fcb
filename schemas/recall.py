"""The recall request upstream systems publish: the API's own request packet."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

# Tencent documents some of these as numbers in one place and strings in another: accept either
# and send back exactly what the producer gave.
IntOrStr = StrictInt | StrictStr

MAX_BODY_BYTES = 64 * 1024
TASK_ID_MAX_LENGTH = 128


class _PassThrough(BaseModel):
    """Tencent adds fields over time: unknown ones are kept and sent on untouched."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class AndroidOptions(_PassThrough):
    """Android vendor channel options of an offline push."""

    Sound: StrictStr | None = None
    PushStyle: IntOrStr | None = None
    HuaWeiChannelID: StrictStr | None = None
    HuaWeiImportance: StrictStr | None = None
    HuaWeiCategory: StrictStr | None = None
    HuaWeiImage: StrictStr | None = None
    HonorImportance: StrictStr | None = None
    HonorImage: StrictStr | None = None
    XiaoMiChannelID: StrictStr | None = None
    OPPOChannelID: StrictStr | None = None
    OPPOCategory: StrictStr | None = None
    OPPONotifyLevel: IntOrStr | None = None
    VIVOClassification: IntOrStr | None = None
    VIVOCategory: StrictStr | None = None
    VIVONotifyType: IntOrStr | None = None
    GoogleChannelID: StrictStr | None = None
    GooglePriority: StrictStr | None = None
    GoogleImage: StrictStr | None = None
    MeiZuNoticeMsgType: IntOrStr | None = None
    ExtAsHuaweiIntentParam: IntOrStr | None = None


class ApnsOptions(_PassThrough):
    """APNs options of an offline push."""

    Sound: StrictStr | None = None
    BadgeMode: StrictInt | None = None
    Title: StrictStr | None = None
    SubTitle: StrictStr | None = None
    Image: StrictStr | None = None
    MutableContent: StrictInt | None = None
    InterruptionLevel: StrictStr | None = None
    ContentAvailable: StrictInt | None = None
    IsVoipPush: StrictInt | None = None


class HarmonyOptions(_PassThrough):
    """HarmonyOS options of an offline push."""

    Title: StrictStr | None = None
    Category: StrictStr | None = None
    Image: StrictStr | None = None
    Sound: StrictStr | None = None
    SoundDuration: StrictInt | None = None


class LanguageContent(_PassThrough):
    """One language's title and text of an offline push."""

    Language: StrictStr | None = None
    Title: StrictStr | None = None
    Desc: StrictStr | None = None


class OfflinePushInfo(_PassThrough):
    """The notification that overwrites one already shown offline."""

    PushFlag: Annotated[StrictInt, Field(ge=0, le=1)] | None = None  # 0 push, 1 no offline push
    Title: StrictStr | None = None
    Desc: StrictStr | None = None
    Ext: StrictStr | None = Field(default=None, description="A JSON string, passed to the app.")
    AndroidInfo: AndroidOptions | None = None
    ApnsInfo: ApnsOptions | None = None
    HarmonyInfo: HarmonyOptions | None = None
    MultiLanguageContent: list[LanguageContent] | None = None
    BadgeAddNum: StrictInt | None = None
    BadgeSetNum: StrictInt | None = None
    PushTemplateId: IntOrStr | None = None
    PushTemplateParam: Any = None

    def is_empty(self) -> bool:
        """True when it carries no value at all: only nulls, empty objects and empty lists."""
        return _carries_nothing(self)


def _carries_nothing(value: Any) -> bool:
    # Unknown fields count like known ones: {"NewField": "x"} is an overwrite. "" and 0 are
    # values the producer chose. Iterative, so no nesting depth can overflow the stack.
    pending = [value]
    while pending:
        item = pending.pop()
        if item is None:
            continue
        if isinstance(item, BaseModel):
            pending.extend(v for _, v in item)  # declared fields and pass-through extras
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        else:
            return False
    return True


TaskIdStr = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TASK_ID_MAX_LENGTH,
        pattern=r"^[!-~]+$",
        description="The TaskId returned by v4/timpush/push (printable ASCII, no spaces).",
        examples=["660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e"],
    ),
]


class RecallRequest(BaseModel):
    """A recall request: exactly the body of `v4/timpush/revoke`."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        title="RecallRequest",
        json_schema_extra={
            "examples": [
                {
                    "TaskId": "660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e",
                    "OfflinePushInfo": {
                        "Title": "recall title",
                        "Desc": "The other party has recalled a message.",
                    },
                }
            ]
        },
    )

    task_id: TaskIdStr = Field(alias="TaskId")
    # The producer's own overwrite. One with no value in it ({} or all nulls) is none at all:
    # it has nothing to overwrite with, and must not shadow the default overwrite.
    offline_push_info: OfflinePushInfo | None = Field(default=None, alias="OfflinePushInfo")
    # The worker's default overwrite, sent when the producer gave none. Kept apart so that
    # `offline_push_info` keeps saying what the producer asked for (the results event's
    # has_offline_push_info); never read from a body.
    _default_overwrite: OfflinePushInfo | None = PrivateAttr(default=None)
    # The body as sent, made once: parse_request makes it to check it can be sent at all,
    # and the call sends those very bytes (the model is frozen).
    _api_bytes: bytes | None = PrivateAttr(default=None)

    @field_validator("offline_push_info", mode="after")
    @classmethod
    def _empty_is_absent(cls, value: OfflinePushInfo | None) -> OfflinePushInfo | None:
        return None if value is not None and value.is_empty() else value

    @property
    def sent_offline_push_info(self) -> OfflinePushInfo | None:
        """The overwrite the call carries: the producer's own, else the default added."""
        if self.offline_push_info is not None:
            return self.offline_push_info
        return self._default_overwrite

    def api_body(self) -> dict[str, Any]:
        """The JSON body to send: no nulls, no unset fields, unknown pass-through fields kept."""
        body = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
        if self.offline_push_info is None and self._default_overwrite is not None:
            body["OfflinePushInfo"] = self._default_overwrite.model_dump(
                mode="json", by_alias=True, exclude_none=True, exclude_unset=True
            )
        return body

    def api_bytes(self) -> bytes:
        """The body exactly as sent: compact UTF-8 JSON of `api_body()` (made once)."""
        if self._api_bytes is None:
            body = json.dumps(self.api_body(), ensure_ascii=False, separators=(",", ":"))
            self._api_bytes = body.encode()
        return self._api_bytes

    def with_default_overwrite(self, info: OfflinePushInfo) -> RecallRequest:
        """This request sending `info` as its overwrite when it carries none of its own.

        `offline_push_info` stays None on the copy: the default is the worker's, not the
        producer's. An empty `info` is no default.
        """
        if self.offline_push_info is not None or info.is_empty():
            return self
        copy = self.model_copy()
        copy._default_overwrite = info
        copy._api_bytes = None  # another body
        return copy


class InvalidRequest(Exception):
    """A message body that is not a valid RecallRequest; `info` says why, in one line."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field (not part of RecallRequest)")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _no_constants(name: str) -> None:
    # NaN and Infinity are not JSON; Python would accept them and the API would get nulls.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(literal: str) -> float:
    # 1e400 is valid JSON but no double: Python makes it inf, which would be sent as null.
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"number {literal[:20]} is out of range")
    return value


def parse_request(body: bytes, max_bytes: int = MAX_BODY_BYTES) -> RecallRequest:
    """Turn a message body into a RecallRequest, or raise InvalidRequest saying why."""
    if len(body) > max_bytes:
        raise InvalidRequest(f"body is {len(body)} bytes, more than the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest(f"body is JSON {type(doc).__name__}, not an object")
    try:
        request = RecallRequest.model_validate(doc)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
    except RecursionError:
        raise InvalidRequest("body is nested too deeply") from None
    try:
        # Valid JSON that cannot be sent on (nesting past the serializer's depth, a lone UTF-16
        # surrogate escape) is refused here, not found out at the API call.
        request.api_bytes()
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"body cannot be sent on: {type(exc).__name__}") from None
    return request


def request_json_schema() -> dict[str, Any]:
    """The JSON Schema producers validate against before publishing."""
    return RecallRequest.model_json_schema(mode="validation")
