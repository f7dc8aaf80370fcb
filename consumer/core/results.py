"""What one revoke call came to: an ErrorCode from the API, or a transport failure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class ApiAnswer:
    """The API answered with a JSON body; `code` is its ErrorCode."""

    code: int
    info: str


class FailureKind(StrEnum):
    """How a call failed below the API's own answer."""

    CONNECT = "connect"  # never reached the server: DNS, refused, connect timeout
    TIMEOUT = "timeout"  # sent, no answer in time: it may have taken effect
    NETWORK = "network"  # connection broke mid-call: it may have taken effect
    HTTP_STATUS = "http_status"  # an HTTP status other than 200
    BAD_BODY = "bad_body"  # a 200 whose body is not the expected JSON


@dataclass(frozen=True)
class TransportFailure:
    """The call failed before a readable answer; `detail` never carries the URL or a secret."""

    kind: FailureKind
    detail: str
    http_status: int | None = None

    @property
    def may_have_arrived(self) -> bool:
        """Whether the request may have reached Tencent and taken effect."""
        return self.kind is not FailureKind.CONNECT


ApiResult = ApiAnswer | TransportFailure


def result_code(result: ApiResult | None) -> int | None:
    """The ErrorCode of an answer; None for a transport failure or no call yet."""
    return result.code if isinstance(result, ApiAnswer) else None
