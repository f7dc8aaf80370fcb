"""The app's SecretKey: checked for a plausible form, re-read from its file, never lost.

A key file mounted from a Kubernetes Secret can be seen mid-update: empty, truncated, or missing
for a moment. Such a read is "unusable" and the last good key stays in use; the file is read
again at the next renewal or probe, and a new good key (a rotation) is picked up.

What counts as unusable (the `reason` of `secret_key_file_unusable`):
- `missing`, `not_a_file`, `unreadable`: the file cannot be read;
- `empty`: nothing but whitespace;
- `not_utf8`, `not_printable`: bytes a key never holds (a partial write of a multi-byte
  character, control characters, anything outside printable ASCII);
- `whitespace_inside`: a space or line break between two parts (two writes interleaved);
- `too_long`: more than 4096 bytes (not a key);
- `not_key_form`: the last good key had Tencent's form (64 hex digits) and this one does not,
  e.g. the first half of a new key.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog

from consumer.core.errors import ConfigurationError

MAX_KEY_BYTES = 4096
_TENCENT_FORM = re.compile(r"[0-9a-fA-F]{64}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


class UnusableKey(ConfigurationError):
    """A key (or key file) that cannot be used; `reason` is one word, never the content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_key(text: str, last_good: str | None = None) -> str:
    """The key `text` holds (stripped), or UnusableKey saying why it is implausible."""
    key = text.strip()
    if not key:
        raise UnusableKey("empty")
    if any(c.isspace() for c in key):
        raise UnusableKey("whitespace_inside")
    if not _PRINTABLE.fullmatch(key):
        raise UnusableKey("not_printable")
    if (
        last_good is not None
        and _TENCENT_FORM.fullmatch(last_good)
        and not _TENCENT_FORM.fullmatch(key)
    ):
        raise UnusableKey("not_key_form")
    return key


def read_key_file(path: Path, last_good: str | None = None) -> str:
    """The key in `path`, or UnusableKey with the reason (the content is never in it)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise UnusableKey("missing") from None
    except IsADirectoryError:
        raise UnusableKey("not_a_file") from None
    except OSError:
        raise UnusableKey("unreadable") from None
    if len(raw) > MAX_KEY_BYTES:
        raise UnusableKey("too_long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnusableKey("not_utf8") from None
    return check_key(text, last_good)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class SecretKeySource:
    """A callable giving the key: re-reads the file each time, the last good key if unusable.

    It never raises once built: the first key is given by the caller (read at start, where a
    bad key must fail fast). An unusable read is logged once per reason and file version.
    """

    def __init__(self, first_key: str, path: Path | None = None) -> None:
        self._key = first_key
        self._path = path
        self._problem: tuple[str, tuple[int, int, int] | None] | None = None
        self.unusable_reads = 0  # for a metric
        # Not bound here: a source may be made before logging is configured (the apps file is
        # read first), and binding would fix the configuration of that moment.
        self._log = structlog.get_logger()
        self._where = {"path": str(path) if path else None}

    def __call__(self) -> str:
        """The key to sign with now."""
        if self._path is None:
            return self._key
        try:
            key = read_key_file(self._path, self._key)
        except UnusableKey as exc:
            self.unusable_reads += 1
            problem = (exc.reason, _signature(self._path))
            if problem != self._problem:
                self._problem = problem
                self._log.warning(
                    "secret_key_file_unusable",
                    reason=exc.reason,
                    keeping="last_good_key",
                    **self._where,
                )
            return self._key
        if self._problem is not None:
            self._problem = None
            self._log.info("secret_key_file_usable", **self._where)
        if key != self._key:
            self._key = key
            self._log.info("secret_key_changed", **self._where)
        return key

    @property
    def path(self) -> Path | None:
        """The key file re-read at each renewal, None for a key given as a value."""
        return self._path

    def __repr__(self) -> str:
        return f"SecretKeySource(path={self._path!r})"
