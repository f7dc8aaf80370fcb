"""A dead letter as an operator sees it: described whatever it holds, matched by code, TaskId
and app.

Pure: nothing here talks to the broker. A hostile body (100,000 nested brackets, invalid UTF-8) or
malformed headers (an `x-death` that is not a list of tables) come back as unknowns, never as an
exception that would stop a tool halfway through a queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiormq.abc import DeliveredMessage

from schemas.events import (
    H_ATTEMPTS,
    H_DEAD_LETTERED_AT,
    H_ERROR_CODE,
    H_ERROR_INFO,
    H_ERROR_SOURCE,
    H_SDKAPPID,
)

MAX_TASK_ID_CHARS = 256
MAX_INFO_CHARS = 1000
MAX_TEXT_CHARS = 200


class Letter(Protocol):
    """What `describe` reads from a message."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Any: ...

    @property
    def message_id(self) -> str | None: ...


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as an operator sees it."""

    task_id: str | None
    code: int | None
    info: str
    source: str  # api, local, or "broker:<reason>" when RabbitMQ dead-lettered it itself
    attempts: int
    when: datetime | None
    message_id: str | None
    sdkappid: int | None = None  # None: a dead letter written before they named their app

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "code": self.code,
            "info": self.info,
            "source": self.source,
            "attempts": self.attempts,
            "when": self.when.isoformat() if self.when else None,
            "message_id": self.message_id,
            "sdkappid": self.sdkappid,
        }


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """A header value as bounded text: strings and bytes, or a scalar; anything else is ''."""
    text: str
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    elif isinstance(value, bool | int | float | datetime):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return ""
    return text[:limit]


def _int(value: Any) -> int | None:
    """An integer header, also when sent as a short decimal string; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bytes | bytearray | str) and 0 < len(value) <= 20:
        text = value.decode("ascii", "replace") if not isinstance(value, str) else value
        text = text.strip()
        if text.removeprefix("-").isdigit():
            return int(text)
    return None


def _app(value: Any) -> int | None:
    """An SDKAppID header (an int, or its decimal text); anything else, zero or less is None."""
    app = _int(value)
    return app if app is not None and app > 0 else None


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    seconds = _int(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def task_id_of(body: Any) -> str | None:
    """The TaskId of a JSON object body; None for anything else (never raises).

    Only a body that starts like an object is parsed; nesting too deep for the parser (a body of
    100,000 brackets inside one), invalid UTF-8 or a number too long all come back None.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        return None
    if not bytes(body[:64]).lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
        return None
    try:
        doc = json.loads(bytes(body))
    except Exception:  # ValueError, UnicodeDecodeError, RecursionError: a hostile body
        return None
    task_id = doc.get("TaskId") if isinstance(doc, dict) else None
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_ID_CHARS:
        return task_id
    return None


def describe(message: Letter) -> DeadLetter:
    """What a dead letter says about itself (ours, or dead-lettered by the broker); never raises.

    Whatever the body and headers hold, the answer is a DeadLetter: what cannot be read is
    unknown (None, '' or 0), never an exception.
    """
    try:
        return _describe(message)
    except Exception:  # a message that defeats even the checks below must not stop a tool
        return DeadLetter(None, None, "(unreadable dead letter)", "unknown", 0, None, None)


def _describe(message: Letter) -> DeadLetter:
    raw_headers = message.headers
    headers: Mapping[str, Any] = raw_headers if isinstance(raw_headers, Mapping) else {}
    code = _int(headers.get(H_ERROR_CODE))
    source = _text(headers.get(H_ERROR_SOURCE))
    info = _text(headers.get(H_ERROR_INFO), MAX_INFO_CHARS)
    at = _when(headers.get(H_DEAD_LETTERED_AT))
    deaths = headers.get("x-death")
    if code is None and (isinstance(deaths, list | tuple) or "x-first-death-reason" in headers):
        death = deaths[0] if isinstance(deaths, list | tuple) and deaths else None
        death = death if isinstance(death, Mapping) else {}
        reason = _text(death.get("reason")) or _text(headers.get("x-first-death-reason"))
        queue = _text(death.get("queue")) or _text(headers.get("x-first-death-queue"))
        source = f"broker:{reason or 'unknown'}"
        info = f"dead-lettered by RabbitMQ from {queue or '?'} ({reason or 'no reason given'})"
        at = _when(death.get("time")) or at
    message_id = message.message_id
    return DeadLetter(
        task_id=task_id_of(message.body),
        code=code,
        info=info,
        source=source or "unknown",
        attempts=max(0, _int(headers.get(H_ATTEMPTS)) or 0),
        when=at,
        message_id=message_id[:MAX_TEXT_CHARS] if isinstance(message_id, str) else None,
        sdkappid=_app(headers.get(H_SDKAPPID)),
    )


class _Raw:
    """A delivery as `describe` reads it, without building an aio-pika message."""

    __slots__ = ("_delivered",)

    def __init__(self, delivered: DeliveredMessage) -> None:
        self._delivered = delivered

    @property
    def body(self) -> bytes:
        return self._delivered.body

    @property
    def headers(self) -> Any:
        return self._delivered.header.properties.headers

    @property
    def message_id(self) -> str | None:
        return self._delivered.header.properties.message_id


def describe_delivery(delivered: DeliveredMessage) -> DeadLetter:
    """`describe` for a raw delivery."""
    return describe(_Raw(delivered))


def for_app(named: int | None, app: int, unnamed: int | None) -> bool:
    """Whether a dead letter or event naming `named` is for `app`; one naming none was written
    before they named their app, when the fleet was one app: `unnamed` (None: unknown)."""
    return named == app if named is not None else unnamed == app


def matcher(
    code: int | None,
    task_id: str | None,
    app: int | None = None,
    *,
    unnamed_app: int | None = None,
) -> Callable[[DeadLetter], bool]:
    """A filter on code, TaskId and app (None matches anything); a letter naming no app is
    `unnamed_app`'s (see `for_app`)."""

    def match(letter: DeadLetter) -> bool:
        return (
            (code is None or letter.code == code)
            and (task_id is None or letter.task_id == task_id)
            and (app is None or for_app(letter.sdkappid, app, unnamed_app))
        )

    return match
