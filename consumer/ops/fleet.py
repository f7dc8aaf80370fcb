"""`tim-recall apps`: each app of the fleet as the broker and the results stream see it.

Per app: its queue's backlog and consumers (a passive declare), the replica that last took it
over and whether it is halted and why (the lane records replicas append to the results
stream), and what it settled in the window. Nothing here needs an app's key: an operator can
run it anywhere the apps file and the broker are reachable.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
from pydantic import ValidationError

from consumer.core.apps import app_queues
from consumer.core.broker import QueueMissing, broker_errors, connect_any
from consumer.core.settings import Settings
from consumer.core.stream import LANE_TYPE, read_stream
from consumer.ops.reports import table
from schemas.events import LaneEvent, ResultEvent

HEADERS = (
    "app",
    "queue",
    "backlog",
    "consumers",
    "served by",
    "state",
    "since",
    "recalled",
    "dead-lettered",
    "reason",
)


@dataclass
class AppStatus:
    """One app as the broker and the stream see it."""

    sdkappid: int
    queue: str
    backlog: int | None = None  # None: its queue does not exist (no worker declared it yet)
    consumers: int | None = None
    replica: str | None = None
    state: str | None = None  # the last lane record's: active, halted, resumed, stopped
    since: datetime | None = None
    reason: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        doc = asdict(self)
        doc["since"] = self.since.isoformat() if self.since else None
        doc["outcomes"] = dict(self.outcomes)
        return doc

    def row(self) -> list[object]:
        """Its row in the table."""
        since = self.since.strftime("%Y-%m-%d %H:%M:%S") if self.since else None
        backlog = "queue missing" if self.backlog is None else self.backlog
        return [
            self.sdkappid,
            self.queue,
            backlog,
            self.consumers,
            self.replica,
            self.state,
            since,
            self.outcomes.get("recalled", 0),
            self.outcomes.get("dead_lettered", 0),
            (self.reason or "")[:60],
        ]


async def fleet_status(settings: Settings, window: timedelta) -> list[AppStatus]:
    """Every app of the settings' fleet, with what the broker and the stream say of it."""
    apps = {sdkappid: AppStatus(sdkappid, queue) for sdkappid, queue in app_queues(settings)}
    default_app = settings.sdkappid if settings.apps_file is None else None
    connection, url = await connect_any(settings.amqp_url.get_secret_value())
    try:
        async with broker_errors(url):
            for status in apps.values():
                await _count(connection, status)
            since = datetime.now(UTC) - window
            stream = settings.results_stream
            try:
                async for message in read_stream(connection, stream, since):
                    _note(apps, message.type, message.body, default_app)
            except QueueMissing:
                raise QueueMissing(stream, "results stream") from None
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return sorted(apps.values(), key=lambda s: s.sdkappid)


async def _count(connection: Any, status: AppStatus) -> None:
    # A passive declare of a missing queue closes its channel: one channel each.
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(status.queue, passive=True)
        result = declared.declaration_result
        status.backlog = int(result.message_count or 0)
        status.consumers = int(result.consumer_count or 0)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return
    finally:
        if not channel.is_closed:
            await channel.close()


def _note(apps: dict[int, AppStatus], kind: str | None, body: bytes, default: int | None) -> None:
    with contextlib.suppress(ValidationError, ValueError):
        if kind == LANE_TYPE:
            lane = LaneEvent.model_validate_json(body)
            status = apps.get(lane.sdkappid)
            if lane.state == "called":  # a call's time, for takeovers: not a lane's state
                return
            if status is not None and (status.since is None or lane.at >= status.since):
                status.replica, status.state = lane.replica, lane.state
                status.since, status.reason = lane.at, lane.reason
            return
        event = ResultEvent.model_validate_json(body)
        app = event.sdkappid if event.sdkappid is not None else default
        if app in apps:
            apps[app].outcomes[event.outcome] += 1


def render(statuses: list[AppStatus], *, as_json: bool, window: str) -> str:
    """The table (or JSON lines) `tim-recall apps` prints."""
    if as_json:
        return "\n".join(json.dumps(s.as_dict()) for s in statuses)
    halted = sum(1 for s in statuses if s.state == "halted")
    footer = (
        f"{len(statuses)} app(s); settled counts over the last {window}; {halted} halted "
        "(replica and state: the last lane record on the results stream)"
    )
    return table(HEADERS, [s.row() for s in statuses]) + "\n" + footer
