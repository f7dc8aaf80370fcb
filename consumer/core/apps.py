"""The Chat apps a fleet serves: from RECALL_APPS_FILE, or the single app of TIM_* (a fleet of one).

The file is YAML (JSON is YAML):

    apps:
      - sdkappid: 1400000001
        secret_key_file: /run/secrets/tim/1400000001   # required; the rules of TIM_SECRET_KEY_FILE
        identifier: administrator                      # optional
        region: singapore                              # optional, default china; or base_url
        interval_s: 1.0                                # optional, default RECALL_INTERVAL_S
        default_offline_push_info: {Title: ..., Desc: ...}   # optional, default the fleet's
        queue: timpush.recall                          # optional, default <RECALL_QUEUE>.<sdkappid>

A bad file is one line naming the entry and the field; it never half-applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumer.core.errors import ConfigurationError
from consumer.core.secret_key import SecretKeySource, UnusableKey, read_key_file
from consumer.core.settings import REGION_DOMAINS, Region, Settings, checked_base_url
from schemas.recall import OfflinePushInfo

MAX_FILE_BYTES = 4 * 1024 * 1024


class AppsFileError(ConfigurationError):
    """RECALL_APPS_FILE cannot be used; the text names the entry and the field, in one line."""


class AppEntry(BaseModel):
    """One app of the file, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sdkappid: int = Field(gt=0)
    secret_key_file: Path
    identifier: str = Field(default="administrator", min_length=1)
    region: Region = Region.CHINA
    base_url: str | None = None
    interval_s: float | None = Field(default=None, gt=0)
    default_offline_push_info: OfflinePushInfo | None = None
    queue: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return checked_base_url(value)


class AppsDocument(BaseModel):
    """The file: a list of apps under `apps`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apps: list[AppEntry]


@dataclass(frozen=True)
class App:
    """One app the fleet serves, resolved: where its API is, its key, its queue."""

    sdkappid: int
    identifier: str
    api_base_url: str
    keys: SecretKeySource
    queue: str
    interval_s: float
    default_offline_push_info: OfflinePushInfo | None

    @property
    def routing_key(self) -> str:
        """The routing key producers publish this app's requests with: the SDKAppID."""
        return str(self.sdkappid)

    def same_as(self, other: App) -> bool:
        """Whether nothing a lane was built from differs (the key file is re-read anyway)."""
        return (
            self.identifier,
            self.api_base_url,
            self.queue,
            self.interval_s,
            self.default_offline_push_info,
            self.keys.path,
        ) == (
            other.identifier,
            other.api_base_url,
            other.queue,
            other.interval_s,
            other.default_offline_push_info,
            other.keys.path,
        )


def single_app(settings: Settings) -> App:
    """The fleet of one that TIM_* describe: the queue named by RECALL_QUEUE, as always."""
    return App(
        sdkappid=settings.require_sdkappid(),
        identifier=settings.identifier,
        api_base_url=settings.api_base_url,
        keys=settings.secret_key_source(),
        queue=settings.queue,
        interval_s=settings.interval_s,
        default_offline_push_info=settings.default_offline_push_info,
    )


def load_apps(path: Path, settings: Settings) -> list[App]:
    """The apps of `path`; AppsFileError (one line, naming the entry and field) if unusable."""
    entries = read_entries(path)
    return [_resolve(entry, index, settings, path) for index, entry in enumerate(entries)]


def app_queues(settings: Settings) -> list[tuple[int, str]]:
    """Each app's SDKAppID and queue, without reading any key (for operators' commands)."""
    if settings.apps_file is None:
        return [(settings.require_sdkappid(), settings.queue)]
    return [
        (e.sdkappid, e.queue or f"{settings.queue}.{e.sdkappid}")
        for e in read_entries(settings.apps_file)
    ]


def read_entries(path: Path) -> list[AppEntry]:
    """The entries of the file at `path`, checked (keys not read)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AppsFileError(f"RECALL_APPS_FILE {path}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise AppsFileError(f"RECALL_APPS_FILE {path}: more than {MAX_FILE_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise AppsFileError(f"RECALL_APPS_FILE {path}: not YAML{at}") from None
    return parse_apps(doc, path)


def parse_apps(doc: Any, path: Path | str = "RECALL_APPS_FILE") -> list[AppEntry]:
    """The entries of a parsed document, checked; AppsFileError naming the entry and field."""
    if not isinstance(doc, Mapping):
        raise AppsFileError(f"{path}: must be a mapping with an `apps` list")
    try:
        entries = AppsDocument.model_validate(doc).apps
    except ValidationError as exc:
        raise AppsFileError(f"{path}: {_describe(exc, doc)}") from None
    seen: dict[int, int] = {}
    for index, entry in enumerate(entries):
        if entry.sdkappid in seen:
            raise AppsFileError(
                f"{path}: apps[{index}] (sdkappid {entry.sdkappid}): the same sdkappid as "
                f"apps[{seen[entry.sdkappid]}]"
            )
        seen[entry.sdkappid] = index
    return entries


def _describe(exc: ValidationError, doc: Mapping[str, Any]) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = list(err["loc"])
    if len(loc) >= 2 and loc[0] == "apps" and isinstance(loc[1], int):
        index = loc[1]
        apps = doc.get("apps")
        entry = apps[index] if isinstance(apps, Sequence) and index < len(apps) else None
        appid = entry.get("sdkappid") if isinstance(entry, Mapping) else None
        named = f"apps[{index}]" + (f" (sdkappid {appid})" if appid is not None else "")
        field = ".".join(str(p) for p in loc[2:]) or "entry"
        return f"{named}: {field}: {err['msg']}"
    return f"{'.'.join(str(p) for p in loc) or 'document'}: {err['msg']}"


def _resolve(entry: AppEntry, index: int, settings: Settings, path: Path) -> App:
    named = f"RECALL_APPS_FILE {path}: apps[{index}] (sdkappid {entry.sdkappid})"
    try:
        key = read_key_file(entry.secret_key_file)
    except UnusableKey as exc:  # the reason only, never the content
        raise AppsFileError(f"{named}: secret_key_file is unusable: {exc.reason}") from None
    return App(
        sdkappid=entry.sdkappid,
        identifier=entry.identifier,
        api_base_url=entry.base_url or f"https://{REGION_DOMAINS[entry.region]}",
        keys=SecretKeySource(key, entry.secret_key_file),
        queue=entry.queue or f"{settings.queue}.{entry.sdkappid}",
        interval_s=entry.interval_s or settings.interval_s,
        default_offline_push_info=entry.default_offline_push_info
        or settings.default_offline_push_info,
    )
