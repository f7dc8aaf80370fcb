"""consumer/ops/dlq/routes.py: where `dlq replay` sends each dead letter (its app's queue, the old
queue for a letter naming no app, nowhere for an app not served), and the app of a dead letter
or results event that names none; no broker."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.core.apps import AppsFileError
from consumer.core.settings import load_settings
from consumer.ops.dlq import DeadLetter, replay_route, unnamed_app
from consumer.ops.reports import RESULTS_HEADERS, results_rows, table
from schemas.events import ResultEvent

KEY = "0123456789abcdef" * 4
SERVED, LEGACY, UNSERVED = 1400000001, 1400000002, 1400000009
LETTER = DeadLetter("t_1", 90053, "", "api", 1, None, "m-1")


def of(app: int | None) -> DeadLetter:
    return replace(LETTER, sdkappid=app)


def apps_file(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    path = tmp_path / "apps.yaml"
    entries = [
        {"sdkappid": SERVED, "secret_key_file": str(key)},
        {"sdkappid": LEGACY, "secret_key_file": str(key), "queue": "legacy.queue"},
    ]
    path.write_text(json.dumps({"apps": entries}))
    return path


def test_a_fleet_of_an_apps_file_replays_each_letter_to_its_apps_queue(tmp_path: Path) -> None:
    settings = load_settings(queue="q", apps_file=apps_file(tmp_path), sdkappid=None)
    route = replay_route(settings)
    assert route(of(SERVED)) == f"q.{SERVED}"  # <RECALL_QUEUE>.<sdkappid> by default
    assert route(of(LEGACY)) == "legacy.queue"
    assert route(of(UNSERVED)) is None  # kept
    assert route(of(None)) == "q"  # an old letter goes where it went before apps
    assert unnamed_app(settings) is None


def test_a_fleet_of_one_replays_to_recall_queue_without_reading_a_key(tmp_path: Path) -> None:
    no_key = {"secret_key_value": None, "secret_key_file": tmp_path / "absent"}
    settings = load_settings(queue="q", apps_file=None, sdkappid=SERVED, **no_key)
    route = replay_route(settings)
    assert [route(of(app)) for app in (SERVED, None, UNSERVED)] == ["q", "q", None]
    assert unnamed_app(settings) == SERVED
    # TIM_SDKAPPID unset (replay never needed it): the fleet of one's app is not known, and
    # every dead letter it wrote came from its one queue: all go back there, as before apps.
    settings = load_settings(queue="q", apps_file=None, sdkappid=None, **no_key)
    route = replay_route(settings)
    assert [route(of(app)) for app in (SERVED, UNSERVED, None)] == ["q", "q", "q"]
    assert unnamed_app(settings) is None


def test_an_unusable_apps_file_is_said_before_any_move(tmp_path: Path) -> None:
    settings = load_settings(queue="q", apps_file=tmp_path / "missing.yaml")
    with pytest.raises(AppsFileError, match="cannot be read"):
        replay_route(settings)


def test_the_results_table_shows_the_app() -> None:
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    events = [
        ResultEvent(
            sdkappid=app,
            task_id="t_1",
            outcome="recalled",
            error_code=0,
            source="api",
            attempts=1,
            first_seen=at,
            settled_at=at,
        )
        for app in (SERVED, None)
    ]
    lines = table(RESULTS_HEADERS, results_rows(events)).splitlines()
    assert lines[0].split()[-1] == "app"
    assert [line.split()[-1] for line in lines[2:]] == [str(SERVED), "-"]
