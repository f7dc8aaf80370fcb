"""The revoke API's response and its error codes."""

from __future__ import annotations

from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(IntEnum):
    """Error codes of `v4/timpush/revoke` and the common REST codes that matter to it."""

    OK = 0
    # API-specific
    INVALID_JSON = 90001
    NOT_ADMIN = 90009
    TASK_ID_ILLEGAL = 90049
    ALREADY_RECALLED = 90050
    RECALL_TOO_FREQUENT = 90051
    WINDOW_PASSED = 90052
    NEEDS_OFFLINE_PUSH_INFO = 90053
    INTERNAL_ERROR = 91000
    # common
    HTTP_PARSE_ERROR = 60002
    JSON_PARSE_ERROR = 60003
    IDENTIFIER_OR_SIG_WRONG = 60004
    IDENTIFIER_OR_SIG_WRONG_2 = 60005
    SDKAPPID_INVALID = 60006
    FREQUENCY_LIMIT = 60007
    SERVICE_TIMEOUT = 60008
    IDENTIFIER_NOT_ADMIN = 60010
    FREQUENCY_LIMIT_2 = 60011
    SDKAPPID_MISSING = 60012
    SDKAPPID_DISABLED = 60016
    FREQUENCY_LIMIT_3 = 60018
    FREQUENCY_LIMIT_4 = 60019
    PACKAGE_EXPIRED = 60020
    IP_NOT_ALLOWED = 60021
    USERSIG_EXPIRED = 70001
    USERSIG_EMPTY = 70002
    USERSIG_INVALID = 70003
    USERSIG_UNPARSABLE = 70005
    KEY_NOT_OF_APP = 70009
    IDENTIFIER_MISMATCH = 70013
    SDKAPPID_MISMATCH = 70014
    KEY_NOT_FOUND = 70016
    SDKAPPID_NOT_FOUND = 70020
    TOO_MANY_SIG_FAILURES = 70050
    USERSIG_NO_LONGER_VALID = 70052
    INTERNAL_TIMEOUT = 70169
    INTERNAL_ERROR_2 = 70500


MEANINGS: dict[int, str] = {
    0: "OK",
    90001: "request body is not valid JSON",
    90009: "the identifier is not an app admin",
    90049: "TaskId is illegal or has no push record",
    90050: "repeated recall: this task was already recalled",
    90051: "recall too frequent: more than 1 call per second",
    90052: "the 24-hour recall window has passed",
    90053: "the push kept roaming/unread messages and the recall lacks OfflinePushInfo",
    91000: "internal service error",
    60002: "HTTP parse error",
    60003: "JSON parse error",
    60004: "identifier or UserSig wrong in the request",
    60005: "identifier or UserSig wrong in the request",
    60006: "SDKAppID invalid",
    60007: "request frequency limit",
    60008: "service timeout",
    60010: "identifier must be an app admin",
    60011: "request frequency limit",
    60012: "SDKAppID missing",
    60016: "SDKAppID disabled",
    60018: "request frequency limit",
    60019: "request frequency limit",
    60020: "package expired or not purchased",
    60021: "caller IP not allowed",
    70001: "UserSig expired",
    70002: "UserSig empty",
    70003: "UserSig invalid",
    70005: "UserSig cannot be parsed",
    70009: "the key does not belong to this SDKAppID",
    70013: "identifier differs from the one signed into the UserSig",
    70014: "SDKAppID differs from the one signed into the UserSig",
    70016: "key not found: wrong region domain",
    70020: "SDKAppID not found: wrong region domain",
    70050: "too many failed UserSig checks: wait a minute",
    70052: "UserSig no longer valid",
    70169: "internal timeout",
    70500: "internal error",
}


def meaning(code: int) -> str:
    """Say what an ErrorCode means, or that it is unknown."""
    return MEANINGS.get(code, f"unknown error code {code}")


class RevokeResponse(BaseModel):
    """The JSON body the API answers with; extra fields are tolerated."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    action_status: str = Field(alias="ActionStatus")
    error_code: int = Field(alias="ErrorCode")
    error_info: str = Field(default="", alias="ErrorInfo")
