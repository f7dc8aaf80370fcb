"""consumer/ops/observability.py: one stream of JSON lines, library records included, all
scrubbed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog

from consumer.core.redact import REDACTED, Redactor
from consumer.core.serving import serve_app
from consumer.ops.observability import QUIET_LIBRARIES, configure_logging, json_lines

SECRET = "secret-key-123456"
PASSWORD = "amqp-pass-98765"
AMQP_URL = f"amqp://recall:{PASSWORD}@rabbit.internal:5672/"
USERSIG_URL = "https://console.tim.qq.com/v4/timpush/revoke?usersig=eJyrVkrOLFAsVrIyNDIwMDQxNTc3MzY0tjY2&identifier=admin"
SHAPE = {"event", "level", "logger", "timestamp"}

Configure = Callable[..., io.StringIO]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def configure() -> Iterator[Configure]:
    """`configure(**kw)` sets logging up into a string; the process's logging is restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    config = structlog.get_config()

    def setup(stream: io.StringIO | None = None, **kw: Any) -> io.StringIO:
        out = io.StringIO() if stream is None else stream
        configure_logging(Redactor((SECRET,)), stream=out, **{"log_format": "json", **kw})
        return out

    try:
        yield setup
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)
        sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
        logging.captureWarnings(False)
        structlog.configure(**config)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as one JSON object (fails on any other line)."""
    text = out.getvalue()
    assert text.endswith("\n")
    docs = []
    for line in text.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def _raise_with_secrets() -> None:
    raise ConnectionError(f"lost {AMQP_URL} with key {SECRET} after {USERSIG_URL}")


def test_a_library_exception_is_one_scrubbed_json_line(configure: Configure) -> None:
    out = configure()
    try:
        _raise_with_secrets()
    except ConnectionError:
        logging.getLogger("aiormq.connection").exception(
            "Unexpected connection close from %s (key %s)", AMQP_URL, SECRET
        )
    (doc,) = lines(out)
    assert doc.keys() >= SHAPE
    assert (doc["level"], doc["logger"]) == ("error", "aiormq.connection")
    assert doc["event"].startswith("Unexpected connection close from amqp://recall:")
    # The traceback is a field of the line, not text after it, and scrubbed like the message.
    assert "Traceback (most recent call last)" in doc["exception"]
    assert "_raise_with_secrets" in doc["exception"]
    last = doc["exception"].splitlines()[-1]
    assert last == (
        f"ConnectionError: lost amqp://recall:{REDACTED}@rabbit.internal:5672/ with key {REDACTED}"
        f" after {USERSIG_URL.replace('eJyrVkrOLFAsVrIyNDIwMDQxNTc3MzY0tjY2', REDACTED)}"
    )
    for secret in (SECRET, PASSWORD, "eJyrVkrOLFAsVrIyNDIwMDQxNTc3MzY0tjY2"):
        assert secret not in out.getvalue()
    assert REDACTED in doc["event"]


def test_an_asyncio_record_is_one_scrubbed_json_line(configure: Configure) -> None:
    out = configure()
    loop = asyncio.new_event_loop()
    try:
        try:
            _raise_with_secrets()
        except ConnectionError as exc:
            error = exc
        # What asyncio does with an exception nobody retrieved: a multi-line message + exc_info.
        loop.call_exception_handler(
            {"message": f"Task exception was never retrieved ({SECRET})", "exception": error}
        )
    finally:
        loop.close()
    (doc,) = lines(out)
    assert (doc["level"], doc["logger"]) == ("error", "asyncio")
    assert doc["event"].startswith("Task exception was never retrieved")
    assert "ConnectionError" in doc["exception"]
    assert SECRET not in out.getvalue()
    assert PASSWORD not in out.getvalue()


def test_structlog_events_and_library_records_have_one_shape(configure: Configure) -> None:
    out = configure()
    structlog.get_logger("consumer.worker").info("request_recalled", task_id="t1", url=AMQP_URL)
    logging.getLogger("aio_pika.robust_connection").warning("Connection attempt failed")
    ours, theirs = lines(out)
    assert ours.keys() >= SHAPE
    assert theirs.keys() >= SHAPE
    assert (ours["event"], ours["level"], ours["logger"]) == (
        "request_recalled",
        "info",
        "consumer.worker",
    )
    assert ours["task_id"] == "t1"
    assert PASSWORD not in ours["url"]
    assert (theirs["level"], theirs["logger"]) == ("warning", "aio_pika.robust_connection")


def test_an_exception_of_ours_is_a_scrubbed_field(configure: Configure) -> None:
    out = configure()
    try:
        _raise_with_secrets()
    except ConnectionError as exc:
        structlog.get_logger().error("settle_failed", error=exc, exc_info=True)
    (doc,) = lines(out)
    assert "ConnectionError" in doc["exception"]
    assert doc["error"].startswith("ConnectionError: lost amqp://recall:")
    assert SECRET not in out.getvalue()
    assert PASSWORD not in out.getvalue()


def test_any_object_in_an_event_is_scrubbed(configure: Configure) -> None:
    out = configure()

    class Connection:
        def __repr__(self) -> str:
            return f"<Connection {AMQP_URL}>"

    structlog.get_logger().info("broker_connected", connection=Connection(), n=3, ok=True)
    (doc,) = lines(out)
    assert doc["connection"] == f"<Connection amqp://recall:{REDACTED}@rabbit.internal:5672/>"
    assert (doc["n"], doc["ok"]) == (3, True)


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        ("warning", ["ours_warning", "theirs_warning", "httpx_warning"]),
        ("info", ["ours_info", "ours_warning", "theirs_info", "theirs_warning", "httpx_warning"]),
        (
            "debug",
            [
                *("ours_debug", "ours_info", "ours_warning"),
                *("theirs_debug", "theirs_info", "theirs_warning", "httpx_warning"),
            ],
        ),
    ],
)
def test_the_level_applies_to_both_and_httpx_stays_at_warning(
    configure: Configure, level: str, kept: list[str]
) -> None:
    out = configure(level=level)
    log = structlog.get_logger()
    library = logging.getLogger("aiormq.connection")
    log.debug("ours_debug")
    log.info("ours_info")
    log.warning("ours_warning")
    library.debug("theirs_debug")
    library.info("theirs_info")
    library.warning("theirs_warning")
    for name in QUIET_LIBRARIES:  # their INFO and DEBUG lines carry the UserSig URL
        logging.getLogger(name).info(f"HTTP Request: POST {USERSIG_URL}")
        logging.getLogger(name).debug(f"send_request_headers {USERSIG_URL}")
    logging.getLogger("httpx").warning("httpx_warning")
    assert [d["event"] for d in lines(out)] == kept


def test_configuring_again_does_not_stack_handlers(configure: Configure) -> None:
    first = configure()
    second = configure()
    logging.getLogger("aiormq").warning("once")
    structlog.get_logger().warning("once_too")
    assert first.getvalue() == ""
    assert [d["event"] for d in lines(second)] == ["once", "once_too"]


def test_a_record_that_cannot_be_formatted_is_an_event(configure: Configure) -> None:
    out = configure()
    record = logging.LogRecord(
        "aiormq.tools", logging.WARNING, __file__, 1, "two %s %s, one argument", (SECRET,), None
    )
    # Straight to our handler: pytest's own capture handler would raise on this record.
    (ours,) = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is out]
    ours.handle(record)
    (doc,) = lines(out)
    assert doc["event"] == "log_record_unformattable"
    assert doc["record_logger"] == "aiormq.tools"
    assert doc["error"].startswith("TypeError")
    assert SECRET not in out.getvalue()


class _Unprintable:
    def __repr__(self) -> str:
        raise TypeError(f"no repr for {SECRET}")


def test_an_event_that_cannot_be_rendered_is_an_event(configure: Configure) -> None:
    # structlog's events skip the standard library's records: their failures are told the same.
    out = configure()
    structlog.get_logger("consumer.core.lane").warning("odd_value", value=_Unprintable())
    (doc,) = lines(out)
    assert doc["event"] == "log_record_unformattable"
    assert (doc["record_logger"], doc["record_level"]) == ("consumer.core.lane", "WARNING")
    assert doc["template"] == "odd_value"
    assert doc["error"].startswith("TypeError")
    assert SECRET not in out.getvalue()


def test_an_event_with_our_handler_gone_still_reaches_the_standard_library(
    configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    configure()
    logging.getLogger().handlers[:] = [caplog.handler]
    structlog.get_logger("consumer.core.lane").error("broker_lost", secret=SECRET)
    (record,) = [r for r in caplog.records if r.name == "consumer.core.lane"]
    assert (record.levelname, record.getMessage()) == ("ERROR", "broker_lost")
    assert SECRET not in caplog.text


def test_warnings_and_uncaught_exceptions_are_json_lines(configure: Configure) -> None:
    out = configure()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated, see {USERSIG_URL}", DeprecationWarning, stacklevel=1)
    try:
        _raise_with_secrets()
    except ConnectionError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    warned, crashed = lines(out)
    assert (warned["logger"], warned["level"]) == ("py.warnings", "warning")
    assert "DeprecationWarning" in warned["event"]
    assert (crashed["event"], crashed["level"]) == ("uncaught_exception", "critical")
    assert "ConnectionError" in crashed["exception"]
    assert "eJyrVkrOLFAsVrIyNDIwMDQxNTc3MzY0tjY2" not in out.getvalue()
    assert PASSWORD not in out.getvalue()


def test_console_on_a_terminal_json_elsewhere(configure: Configure) -> None:
    terminal = configure(stream=_Terminal(), log_format="auto")
    logging.getLogger("aiormq").warning(f"to a person {SECRET}")
    text = terminal.getvalue()
    assert "to a person" in text
    assert SECRET not in text
    with pytest.raises(ValueError):
        json.loads(text)
    piped = configure(log_format="auto")
    logging.getLogger("aiormq").warning("to a machine")
    assert lines(piped)[0]["event"] == "to a machine"
    forced = configure(stream=_Terminal(), log_format="json")
    logging.getLogger("aiormq").warning("json even on a terminal")
    assert lines(forced)[0]["event"] == "json even on a terminal"


async def test_uvicorn_records_come_out_as_json_lines(configure: Configure) -> None:
    out = configure()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError(f"handler failed with {SECRET}")

    async with serve_app(app) as url, httpx.AsyncClient() as http:
        answer = await http.get(f"{url}/boom")
    assert answer.status_code == 500
    docs = [d for d in lines(out) if d["logger"].startswith("uvicorn")]
    assert docs, out.getvalue()
    assert any("RuntimeError" in d.get("exception", "") for d in docs)
    assert SECRET not in out.getvalue()


def test_json_lines_says_whether_the_stream_is_json(configure: Configure) -> None:
    configure(stream=_Terminal(), log_format="auto")
    assert not json_lines()
    configure(log_format="json")
    assert json_lines()
