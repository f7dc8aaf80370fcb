"""Logging set-up: one stream on stderr, JSON lines (console on a TTY), every line scrubbed.

structlog's events and the standard library's records (aiormq, aio_pika, asyncio, uvicorn,
httpx, warnings, uncaught exceptions) all end in one root handler whose `ProcessorFormatter`
gives them the same shape (event, level, logger, timestamp, exception) and passes them through
the same `ScrubSecrets`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from consumer.core.redact import Redactor

# httpx logs every request URL at INFO, and the URL carries the UserSig; httpcore's DEBUG lines
# describe the same traffic. Never below WARNING, whatever the level.
QUIET_LIBRARIES = ("httpx", "httpcore")
LOGGER = "tim_recall.logging"  # the logger of the events this module writes itself


class ScrubSecrets:
    """A structlog processor: no SecretKey, UserSig or `usersig=` value leaves in any event."""

    def __init__(self, redactor: Redactor) -> None:
        self._redact = redactor

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        """Scrub every string value, nested ones included."""
        redact, scrubbed = self._redact, {}
        for key, value in event_dict.items():  # the top level inline: most values are plain
            kind = type(value)
            if kind is str:
                scrubbed[key] = redact(value)
            elif value is None or kind is int or kind is float or kind is bool:
                scrubbed[key] = value
            else:
                scrubbed[key] = self._scrub(value)
        return scrubbed

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, MutableMapping):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            # A plain list back, whatever the sequence type: namedtuples cannot be rebuilt
            # from a generator, and a log line needs no more than the values.
            return [self._scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self._redact(f"{type(value).__name__}: {value}")
        # Anything else is rendered by its repr (as the JSON renderer would): scrub that, as a
        # URL object or a connection's repr can carry a password.
        return self._redact(repr(value))


def _context() -> list[Processor]:
    """Fields every line gets, whether structlog or a library wrote it."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def line_processors(redactor: Redactor, *, console: bool) -> list[Processor]:
    """What every line goes through last: tracebacks to an `exception` field, scrubbed, rendered."""
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    # A library record's exc_info becomes a string field here, never text after the line.
    return [structlog.processors.format_exc_info, ScrubSecrets(redactor), renderer]


def line_formatter(last: list[Processor]) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of the one handler, for the standard library's records: their shared
    fields, then the `last` processors every line goes through."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_context(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
    )


class _OneStreamHandler(logging.StreamHandler[TextIO]):
    """The root handler: a record it cannot format becomes an event, not a printed traceback."""

    _failing = threading.local()

    def __init__(self, stream: TextIO, redactor: Redactor, *, json_lines: bool) -> None:
        super().__init__(stream)
        self.json_lines = json_lines
        # One chain for both paths: a record through the formatter, an event through it as is.
        self._last = line_processors(redactor, console=not json_lines)
        self.setFormatter(line_formatter(self._last))

    def write_event(self, name: str, method: str, event_dict: EventDict) -> None:
        """One structlog event, through the same last processors as a record, as one line."""
        try:
            line: Any = event_dict
            for processor in self._last:
                line = processor(None, method, line)
            self.acquire()
            try:
                self.stream.write(f"{line}{self.terminator}")
                self.flush()
            finally:
                self.release()
        except Exception:  # as logging.Handler.emit: never raise into the caller
            record = logging.LogRecord(
                name, logging.ERROR, "", 0, str(event_dict.get("event")), None, None
            )
            record.levelname = method.upper()
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if getattr(self._failing, "active", False):
            return  # the event about the failure failed too: drop it rather than loop
        self._failing.active = True
        try:
            structlog.get_logger(LOGGER).error(
                "log_record_unformattable",
                record_logger=record.name,
                record_level=record.levelname,
                template=str(record.msg)[:500],
                error=f"{type(error).__name__}: {error}" if error else None,
            )
        finally:
            self._failing.active = False


class _EventLogger:
    """structlog's logger: each event goes to the root's one handler as it is, with no
    LogRecord and no second formatting pass on the way (half a log line's cost)."""

    def __init__(self, name: str) -> None:
        self.name = name  # the module that asked for it, as the standard library names it

    def msg(self, event_dict: EventDict, method: str = "info") -> None:
        """Write the event through the handler in place now (`configure_logging` replaces it)."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, _OneStreamHandler):
                handler.write_event(self.name, method, event_dict)
                return
        # Our handler was taken away: the standard library has the event's name only (its
        # fields would go unscrubbed), as it had every event before `configure_logging`.
        level = logging.getLevelNamesMapping().get(method.upper(), logging.INFO)
        logging.getLogger(self.name).log(level, str(event_dict.get("event")))

    def debug(self, event_dict: EventDict) -> None:
        """As `msg`."""
        self.msg(event_dict, "debug")

    def info(self, event_dict: EventDict) -> None:
        """As `msg`."""
        self.msg(event_dict, "info")

    def warning(self, event_dict: EventDict) -> None:
        """As `msg`."""
        self.msg(event_dict, "warning")

    def error(self, event_dict: EventDict) -> None:
        """As `msg`."""
        self.msg(event_dict, "error")

    def critical(self, event_dict: EventDict) -> None:
        """As `msg`."""
        self.msg(event_dict, "critical")

    warn = warning
    exception = error
    fatal = critical


class _EventLoggerFactory:
    """Names a logger as structlog's stdlib factory would: the caller's module unless given."""

    def __init__(self) -> None:
        self._names = structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])

    def __call__(self, *args: Any) -> _EventLogger:
        return _EventLogger(self._names(*args).name)


def _as_event(logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
    # The last processor: the event dict itself is what `_EventLogger` receives.
    return (event_dict,), {}


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    # A crash (a bug: expected failures are handled by the CLI) as one event, not a traceback.
    structlog.get_logger(LOGGER).critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as the default hook: a thread's SystemExit is silent
    structlog.get_logger(LOGGER).critical(
        "uncaught_exception",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    # "Exception ignored in: …": a __del__, a callback or a generator's close that raised.
    structlog.get_logger(LOGGER).error(
        "unraisable_exception",
        where=unraisable.err_msg or "Exception ignored in",
        object=repr(unraisable.object),
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )


def _replace_handlers(root: logging.Logger, handler: logging.Handler) -> None:
    """Ours replaces any earlier one of ours, and any plain handler on stderr (basicConfig's)."""
    for old in list(root.handlers):
        plain = type(old) is logging.StreamHandler and old.stream in (
            sys.stderr,
            sys.__stderr__,
            sys.stdout,
            sys.__stdout__,
        )
        if isinstance(old, _OneStreamHandler) or plain:
            root.removeHandler(old)
    root.addHandler(handler)


def configure_logging(
    redactor: Redactor,
    *,
    log_format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Send structlog and every library's logging to one scrubbed stream (stderr by default).

    Idempotent: a second call replaces the first's handler and settings.
    """
    out = sys.stderr if stream is None else stream
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    threshold = logging.getLevelNamesMapping()[level.upper()]

    handler = _OneStreamHandler(out, redactor, json_lines=not console)
    # On the handler too: a library logger with its own lower level still stops here.
    handler.setLevel(threshold)
    root = logging.getLogger()
    _replace_handlers(root, handler)
    root.setLevel(threshold)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, threshold))
    logging.captureWarnings(True)  # warnings.warn(...) as records of "py.warnings"
    # No line shows a record's file and line: skip the stack walk that finds them on every
    # record (the logging HOWTO's own optimisation), a third of a line's cost.
    logging._srcfile = None
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable

    structlog.configure(
        processors=[
            *_context(),
            structlog.processors.format_exc_info,  # while the exception is still current
            _as_event,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_EventLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def json_lines() -> bool:
    """True once `configure_logging` writes JSON lines: a message for the operator (the CLI's
    one line before exiting) must then be an event too, or the stream is no longer JSON."""
    return any(
        isinstance(h, _OneStreamHandler) and h.json_lines for h in logging.getLogger().handlers
    )
