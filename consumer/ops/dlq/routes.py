"""Which app a dead letter (or a results event) naming none was for, and where a replay goes,
from the settings' fleet."""

from __future__ import annotations

from collections.abc import Callable

from consumer.core.settings import Settings
from consumer.ops.dlq.letter import DeadLetter
from consumer.ops.lanes import fleet_apps

# Where a replayed dead letter goes: a queue, or None to keep it in the dead-letter queue.
Route = Callable[[DeadLetter], str | None]


def unnamed_app(settings: Settings) -> int | None:
    """The app of a dead letter or event that names none: everything written before they named
    their app was for the fleet of one (TIM_SDKAPPID); None when RECALL_APPS_FILE is set."""
    return settings.sdkappid if settings.apps_file is None else None


def replay_route(settings: Settings) -> Route:
    """Where `dlq replay` sends a dead letter: its app's queue when the fleet serves its app,
    RECALL_QUEUE when it names none (as before apps), None (kept) when its app is not served.
    Reads RECALL_APPS_FILE (AppsFileError if unusable)."""
    fallback = settings.queue
    if settings.apps_file is None and settings.sdkappid is None:
        # A fleet of one whose app the tool is not told (replay never needed TIM_*): its dead
        # letters all came from its one queue, RECALL_QUEUE, so they all go back there.
        return lambda _: fallback
    if settings.apps_file is None:
        # The fleet of one's queue is RECALL_QUEUE (core/apps.py `single_app`); naming it reads
        # no key.
        queues = {settings.sdkappid: settings.queue}
    else:
        queues = {app.sdkappid: app.queue for app in fleet_apps(settings)}

    def route(letter: DeadLetter) -> str | None:
        if letter.sdkappid is None:
            return fallback
        return queues.get(letter.sdkappid)

    return route
