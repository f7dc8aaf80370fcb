"""consumer/core/redact.py and the ScrubSecrets log processor of consumer/ops/observability.py."""

from __future__ import annotations

import base64
import zlib
from collections import namedtuple
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.core import redact
from consumer.core.redact import REDACTED, Redactor
from consumer.core.usersig import make_usersig
from consumer.ops.observability import ScrubSecrets

SECRET = "secret-key-123456"
SIG = make_usersig(1400000000, "administrator", SECRET, 86400, 1_712_112_711)
URL = f"https://console.tim.qq.com/v4/timpush/revoke?usersig={SIG}&identifier=administrator"


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (f"key is {SECRET}!", SECRET, "key is "),
        ("GET /x?usersig=abc123&identifier=admin", "abc123", "&identifier=admin"),
        ("GET /x?UserSig=abc123 next", "abc123", " next"),
        (f"sig was {SIG} end", SIG, " end"),
        (f"sig was '{SIG}'", SIG, "sig was '"),
        (URL, SIG, "identifier=administrator"),
    ],
    ids=["secret", "query", "query-case", "token", "quoted-token", "url"],
)
def test_redactor_scrubs(text: str, gone: str, kept: str) -> None:
    scrubbed = Redactor((SECRET,))(text)
    assert gone not in scrubbed
    assert REDACTED in scrubbed
    assert kept in scrubbed


@pytest.mark.parametrize("level", [1, 6, 9, 0])
def test_usersig_token_of_any_zlib_level_is_scrubbed(level: int) -> None:
    # The server accepts any zlib level; each gives another second character ("eA", "eJ", "eN").
    packed = zlib.compress(b'{"TLS.ver":"2.0","TLS.identifier":"administrator"}' * 2, level)
    token = base64.b64encode(packed).decode().translate(str.maketrans("+/=", "*-_"))
    scrubbed = Redactor()(f"sig {token} end")
    assert token not in scrubbed
    assert scrubbed == f"sig {REDACTED} end"


@pytest.mark.parametrize(
    "text",
    [
        "TaskId 660cc447_537ed82a_200000cd7ee17f5_84035729_bc614e",
        "TaskId e60cc447_537ed82a_200000cd7ee17f5_84035729_bc614e_000001",
        "ErrorCode 70001",
        "",
    ],
)
def test_redactor_leaves_ordinary_text_alone(text: str) -> None:
    assert Redactor((SECRET,))(text) == text


def test_with_secret_adds_a_secret() -> None:
    redact = Redactor().with_secret("another-secret")
    assert redact("x another-secret y") == f"x {REDACTED} y"


def scrub() -> ScrubSecrets:
    return ScrubSecrets(Redactor((SECRET,)))


def test_log_events_are_scrubbed_nested_and_exceptions() -> None:
    with capture_logs(processors=[scrub()]) as logs:
        structlog.get_logger().error(
            f"call failed with {SECRET}",
            url=URL,
            nested={"a": [f"k={SECRET}", {"b": (SIG, 3)}], "n": 1},
            error=ValueError(f"boom {URL}"),
        )
    (event,) = logs
    text = repr(event)
    assert SECRET not in text
    assert SIG not in text
    assert event["nested"]["n"] == 1
    assert list(event["nested"]["a"][1]["b"]) == [REDACTED, 3]
    assert event["error"].startswith("ValueError: boom")
    assert event["log_level"] == "error"


def test_namedtuple_value_is_scrubbed_without_error() -> None:
    pair = namedtuple("pair", "host key")
    event: Any = scrub()(None, "info", {"event": "x", "peer": pair("h", SECRET)})
    assert SECRET not in repr(event)
    assert list(event["peer"]) == ["h", REDACTED]


_PIECES = st.sampled_from(
    [
        "usersig=",
        "UserSig=",
        "&",
        "@",
        ":",
        "//",
        "amqp://u:p",
        "eJ",
        "eA",
        "x",
        "=",
        " ",
        "a1b2",
        "eN" + "zA" * 20,
    ]
)


@settings(max_examples=400)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=12)), max_size=30).map("".join))
def test_the_quick_checks_skip_only_what_cannot_match(text: str) -> None:
    # The redactor runs a pattern only where it can match; every pattern on every text
    # must give the same result.
    expected = redact._USERSIG_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    expected = redact._URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", expected)
    expected = redact._USERSIG_TOKEN.sub(REDACTED, expected)
    assert Redactor()(text) == expected
