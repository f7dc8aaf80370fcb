"""consumer/core/secret_key.py: an unusable key file keeps the last good key, says why, never
what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.core.secret_key import SecretKeySource, UnusableKey, check_key, read_key_file
from consumer.core.settings import SettingsError, load_settings
from consumer.core.usersig import UserSigCache, verify_usersig

APP = 1400000000
GOOD = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
NEW = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def _names(captured: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("reason")) for e in captured]


def _leaks(captured: list[dict[str, Any]], *secrets: str) -> bool:
    text = repr(captured)
    return any(s in text for s in secrets)


def test_sequence_good_empty_half_written_unreadable_new(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(GOOD + "\n")
    source = SecretKeySource(read_key_file(path), path)
    sigs = UserSigCache(APP, "administrator", source, clock=lambda: 1_712_112_711.0)
    half = NEW[:20]
    with capture_logs() as captured:
        assert source() == GOOD
        path.write_text("  \n")  # emptied while the Secret is rewritten
        assert source() == GOOD
        assert source() == GOOD  # the same problem is logged once
        verify_usersig(sigs.renew(), APP, "administrator", GOOD, now=1_712_112_711)
        path.write_text(half)  # the first half of the new key
        assert source() == GOOD
        path.write_text(NEW[:32] + "\n" + NEW[32:])  # two writes interleaved
        assert source() == GOOD
        path.write_bytes(b"\xff\xfe" + GOOD.encode())
        assert source() == GOOD
        path.unlink()
        path.mkdir()  # unreadable, even for root
        assert source() == GOOD
        path.rmdir()  # missing
        assert source() == GOOD
        path.write_text(NEW)  # the rotation is complete
        assert source() == NEW
        verify_usersig(sigs.renew(), APP, "administrator", NEW, now=1_712_112_711)
    assert _names(captured) == [
        ("secret_key_file_unusable", "empty"),
        ("secret_key_file_unusable", "not_key_form"),
        ("secret_key_file_unusable", "whitespace_inside"),
        ("secret_key_file_unusable", "not_utf8"),
        ("secret_key_file_unusable", "not_a_file"),
        ("secret_key_file_unusable", "missing"),
        ("secret_key_file_usable", None),
        ("secret_key_changed", None),
    ]
    assert all(e["log_level"] == "warning" for e in captured[:6])
    assert not _leaks(captured, GOOD, NEW, half, NEW[:32], NEW[32:])
    assert source.unusable_reads == 8  # the renewal read the empty file too


def test_a_rewritten_file_with_the_same_problem_is_logged_again(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sandbox-key")
    source = SecretKeySource(read_key_file(path), path)
    with capture_logs() as captured:
        path.write_text("")
        source()
        source()
        path.write_text("   ")  # another version of the file, still empty
        source()
    assert _names(captured) == [("secret_key_file_unusable", "empty")] * 2


def test_a_key_from_the_environment_is_never_read_again() -> None:
    source = SecretKeySource("from-env")
    with capture_logs() as captured:
        assert source() == "from-env"
    assert captured == []
    assert "from-env" not in repr(source)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" \n\t", "empty"),
        ("abc def", "whitespace_inside"),
        ("abc\ndef", "whitespace_inside"),
        ("abc\x00def", "not_printable"),
        ("clé", "not_printable"),
    ],
)
def test_implausible_keys(text: str, reason: str) -> None:
    with pytest.raises(UnusableKey) as caught:
        check_key(text)
    assert caught.value.reason == reason
    assert text.strip() not in str(caught.value) or not text.strip()


def test_a_non_hex_key_is_fine_until_a_tencent_key_was_seen() -> None:
    assert check_key(" sandbox-secret-key \n") == "sandbox-secret-key"
    assert check_key(NEW[:40], last_good="sandbox-secret-key") == NEW[:40]
    with pytest.raises(UnusableKey, match="not_key_form"):
        check_key(NEW[:40], last_good=GOOD)


def test_a_huge_file_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("a" * 5000)
    with pytest.raises(UnusableKey, match="too_long"):
        read_key_file(path)


def test_the_first_read_still_fails_fast_with_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_text(GOOD[:32] + " " + GOOD[32:])
    monkeypatch.setenv("TIM_SECRET_KEY_FILE", str(path))
    with pytest.raises(SettingsError) as caught:
        load_settings().secret_key_source()
    assert str(caught.value) == "TIM_SECRET_KEY_FILE is unusable: whitespace_inside"
    path.write_text(GOOD)
    assert load_settings().secret_key_source()() == GOOD
