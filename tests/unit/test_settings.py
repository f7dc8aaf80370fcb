"""consumer/core/settings.py: the environment, read once, with errors naming their variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.core.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("TIM_", "RECALL_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.queue == "timpush.recall"
    assert s.dead_letter_queue == "timpush.recall.dead"
    assert s.results_stream == "timpush.recall.results"
    assert s.identifier == "administrator"
    assert s.region == "china"
    assert s.api_base_url == "https://console.tim.qq.com"
    assert s.http_port == 9464
    assert s.interval_s == 1.0
    assert s.default_offline_push_info is None


@pytest.mark.parametrize(
    ("region", "domain"),
    [
        ("china", "console.tim.qq.com"),
        ("singapore", "adminapisgp.im.qcloud.com"),
        ("seoul", "adminapikr.im.qcloud.com"),
        ("tokyo", "adminapijpn.im.qcloud.com"),
        ("frankfurt", "adminapiger.im.qcloud.com"),
        ("silicon_valley", "adminapiusa.im.qcloud.com"),
        ("jakarta", "adminapiidn.im.qcloud.com"),
        ("riyadh", "adminapiksa.im.qcloud.com"),
        ("mumbai", "adminapiind.im.qcloud.com"),
    ],
)
def test_region_domains(monkeypatch: pytest.MonkeyPatch, region: str, domain: str) -> None:
    monkeypatch.setenv("TIM_REGION", region)
    assert load_settings().api_base_url == f"https://{domain}"


def test_base_url_overrides_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIM_REGION", "tokyo")
    monkeypatch.setenv("TIM_BASE_URL", "http://127.0.0.1:8080/")
    assert load_settings().api_base_url == "http://127.0.0.1:8080"


def test_pacing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.pacing, s.pacing_margin_s, s.pacing_jitter_s) == ("finish", 0.002, 0.01)
    monkeypatch.setenv("RECALL_PACING", "send")
    monkeypatch.setenv("RECALL_PACING_MARGIN_S", "0.005")
    monkeypatch.setenv("RECALL_PACING_JITTER_S", "0.03")
    s = load_settings()
    assert (s.pacing, s.pacing_margin_s, s.pacing_jitter_s) == ("send", 0.005, 0.03)


def test_queue_renames_the_derived_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALL_QUEUE", "q")
    s = load_settings()
    assert (s.dead_letter_queue, s.results_stream) == ("q.dead", "q.results")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIM_REGION", "mars"),
        ("TIM_SDKAPPID", "abc"),
        ("TIM_BASE_URL", "ftp://example.com"),
        ("RECALL_DEFAULT_OFFLINE_PUSH_INFO", "{not json"),
        ("RECALL_DEFAULT_OFFLINE_PUSH_INFO", '{"PushFlag": 2}'),
        ("RECALL_INTERVAL_S", "0"),
        ("RECALL_HTTP_PORT", "70000"),
        ("RECALL_PACING", "fast"),
        ("RECALL_PACING_MARGIN_S", "-0.001"),
        ("RECALL_PACING_JITTER_S", "2"),
    ],
)
def test_invalid_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(name)


def test_default_offline_push_info_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALL_DEFAULT_OFFLINE_PUSH_INFO", '{"Title": "t", "New": 1}')
    info = load_settings().default_offline_push_info
    assert info is not None
    assert info.model_dump(exclude_unset=True) == {"Title": "t", "New": 1}


def test_secret_key_from_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIM_SECRET_KEY", "key-from-env")
    assert load_settings().secret_key() == "key-from-env"


def test_secret_key_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("key-from-file\n")
    monkeypatch.setenv("TIM_SECRET_KEY_FILE", str(path))
    assert load_settings().secret_key() == "key-from-file"


@pytest.mark.parametrize(
    ("value", "file_text", "names"),
    [
        (None, None, ("TIM_SECRET_KEY", "TIM_SECRET_KEY_FILE")),
        ("key-from-env", "key-from-file", ("TIM_SECRET_KEY", "TIM_SECRET_KEY_FILE")),
        (None, "MISSING", ("TIM_SECRET_KEY_FILE",)),
        ("  ", None, ("TIM_SECRET_KEY",)),
    ],
    ids=["missing", "both", "unreadable-file", "blank"],
)
def test_secret_key_errors(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    value: str | None,
    file_text: str | None,
    names: tuple[str, ...],
) -> None:
    if value is not None:
        monkeypatch.setenv("TIM_SECRET_KEY", value)
    if file_text is not None:
        path = tmp_path / "key"
        if file_text != "MISSING":
            path.write_text(file_text)
        monkeypatch.setenv("TIM_SECRET_KEY_FILE", str(path))
    settings = load_settings()
    with pytest.raises(SettingsError) as caught:
        settings.secret_key()
    for name in names:
        assert name in str(caught.value)


def test_empty_key_file_error_names_the_file_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    monkeypatch.setenv("TIM_SECRET_KEY_FILE", str(path))
    with pytest.raises(SettingsError, match="TIM_SECRET_KEY_FILE"):
        load_settings().secret_key()


def test_require_sdkappid(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="TIM_SDKAPPID"):
        load_settings().require_sdkappid()
    monkeypatch.setenv("TIM_SDKAPPID", "1400000000")
    assert load_settings().require_sdkappid() == 1400000000
