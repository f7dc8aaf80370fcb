"""consumer/core/apps.py and spread.py: the apps file read as a table of good and bad entries,
and the spread of apps over replicas; no broker."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from consumer.core.apps import AppsFileError, load_apps, parse_apps
from consumer.core.settings import load_settings
from consumer.core.spread import owner, priority

KEY = "0123456789abcdef" * 4


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "apps.yaml"
    path.write_text(text)
    return path


def test_a_file_of_apps_resolves_defaults_regions_and_queues(
    tmp_path: Path, key_file: Path
) -> None:
    path = write(
        tmp_path,
        f"""
apps:
  - sdkappid: 1400000001
    secret_key_file: {key_file}
  - sdkappid: 1400000002
    secret_key_file: {key_file}
    identifier: ops
    region: singapore
    interval_s: 2.5
    queue: legacy.queue
  - {{"sdkappid": 1400000003, "secret_key_file": "{key_file}", "base_url": "http://api.test/"}}
""",
    )
    settings = load_settings(queue="timpush.recall", interval_s=1.0)
    first, second, third = load_apps(path, settings)
    assert (first.sdkappid, first.identifier, first.queue) == (
        1400000001,
        "administrator",
        "timpush.recall.1400000001",
    )
    assert first.api_base_url == "https://console.tim.qq.com"
    assert first.interval_s == 1.0
    assert first.keys() == KEY
    assert (second.identifier, second.queue, second.interval_s) == ("ops", "legacy.queue", 2.5)
    assert second.api_base_url == "https://adminapisgp.im.qcloud.com"
    assert third.api_base_url == "http://api.test"
    assert first.routing_key == "1400000001"


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "must be a mapping"),
        ({"apps": "x"}, "apps: Input should be a valid list"),
        ({"apps": [{"sdkappid": 1}]}, "apps[0] (sdkappid 1): secret_key_file: Field required"),
        (
            {"apps": [{"sdkappid": 5, "secret_key_file": "/k", "region": "mars"}]},
            "apps[0] (sdkappid 5): region: Input should be",
        ),
        (
            {"apps": [{"sdkappid": 5, "secret_key_file": "/k", "base_url": "ftp://x"}]},
            "apps[0] (sdkappid 5): base_url: Value error, must start with http",
        ),
        ({"apps": [{"sdkappid": -1, "secret_key_file": "/k"}]}, "apps[0] (sdkappid -1): sdkappid"),
        (
            {"apps": [{"sdkappid": 5, "secret_key_file": "/k", "colour": "red"}]},
            "apps[0] (sdkappid 5): colour: Extra inputs are not permitted",
        ),
        (
            {"apps": [{"sdkappid": 5, "secret_key_file": "/k"}] * 2},
            "apps[1] (sdkappid 5): the same sdkappid as apps[0]",
        ),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_entry_and_the_field(doc: Any, says: str) -> None:
    with pytest.raises(AppsFileError) as caught:
        parse_apps(doc, "apps.yaml")
    text = str(caught.value)
    assert says in text
    assert "\n" not in text


def test_a_key_file_that_cannot_be_used_names_the_entry_not_the_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    path = write(tmp_path, f"apps: [{{sdkappid: 7, secret_key_file: {empty}}}]")
    with pytest.raises(
        AppsFileError, match=r"apps\[0\] \(sdkappid 7\): secret_key_file is unusable: empty"
    ):
        load_apps(path, load_settings())


@pytest.mark.parametrize(
    ("text", "says"), [("apps: [", "not YAML at line"), ("", "must be a mapping")]
)
def test_a_file_that_is_not_yaml_says_where(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(AppsFileError, match=says):
        load_apps(write(tmp_path, text), load_settings())


def test_priorities_spread_apps_evenly_and_move_only_what_must_move() -> None:
    apps = list(range(1400000001, 1400000201))  # 200 apps
    replicas = ["tim-recall-0", "tim-recall-1", "tim-recall-2"]
    served = {r: [a for a in apps if owner(a, replicas) == r] for r in replicas}
    counts = [len(v) for v in served.values()]
    assert max(counts) <= statistics.fmean(counts) * 1.25  # within 25 % of even
    # A fourth replica takes about a quarter, and only from the others: nothing else moves.
    four = [*replicas, "tim-recall-3"]
    moved = [a for a in apps if owner(a, four) != owner(a, replicas)]
    assert all(owner(a, four) == "tim-recall-3" for a in moved)
    assert 30 <= len(moved) <= 70
    # One leaves: only its apps move.
    two = replicas[:2]
    assert all(owner(a, two) == owner(a, replicas) for a in served["tim-recall-0"])
    assert 0 <= priority(apps[0], "x") < 2**31
    assert priority(apps[0], "x") == priority(apps[0], "x")
