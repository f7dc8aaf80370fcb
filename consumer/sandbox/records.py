"""What the sandbox serves and records: its config, its apps, the API paths, one call as seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REVOKE_PATH = "/v4/timpush/revoke"
PUSH_PATH = "/v4/timpush/push"
U32 = 0xFFFFFFFF  # the largest `random`; the TaskId's start field is this wide


@dataclass(frozen=True)
class SandboxApp:
    """One Chat app the sandbox serves: its SDKAppID, SecretKey, admins and rate limit."""

    sdkappid: int
    secret_key: str
    admins: frozenset[str]
    min_interval: float  # this app's calls closer than this on arrival get 90051


@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox's first (default) app and the API's limits."""

    sdkappid: int = 1400000000
    secret_key: str = "sandbox-secret-key-0123456789abcdef"  # noqa: S105 - a public sandbox key
    admins: frozenset[str] = frozenset({"administrator"})
    min_interval: float = 1.0  # the default app's (and added apps', unless given): 90051 if closer
    recall_window: float = 86400.0  # a task can be recalled this long after its start

    def app(self) -> SandboxApp:
        """The default app this config describes."""
        return SandboxApp(self.sdkappid, self.secret_key, self.admins, self.min_interval)


@dataclass(frozen=True)
class CallRecord:
    """One API call as the sandbox saw it."""

    arrived: float  # time.monotonic() on arrival, before any added latency
    wall: float  # time.time() on arrival
    path: str
    task_id: str | None  # the body's TaskId (revoke) or the new TaskId (push)
    code: int | None  # None when the answer was a bare HTTP error or a hang
    http_status: int
    random: int | None
    offline_push_info: bool
    body: dict[str, Any] | None = None  # the JSON body as received (revoke)
    sdkappid: int | None = None  # the query's sdkappid when it is a number, known app or not
