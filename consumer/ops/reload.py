"""RECALL_APPS_FILE re-read when it changes (a ConfigMap update) and on SIGHUP.

An app added starts serving, an app removed stops after its request in hand, an app whose
entry changed is rebuilt; a broken file keeps the last good one and says why, once per change.
A Kubernetes ConfigMap is updated by swapping a symlink: the file's identity (inode, size,
mtime) is what is watched, through the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING

import httpx
import structlog

from consumer.core.apps import App, AppsFileError, load_apps
from consumer.core.settings import Settings
from consumer.ops.lanes import app_lane

if TYPE_CHECKING:
    from consumer.core.worker import Worker

Identity = tuple[int, int, int] | None


def identity(path: os.PathLike[str] | str) -> Identity:
    """What changes when the file is rewritten or its symlink swapped (None: unreadable)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class AppsReloader:
    """Watches the apps file and applies each good version to the worker."""

    def __init__(
        self, worker: Worker, settings: Settings, http: httpx.AsyncClient, apps: list[App]
    ) -> None:
        self._worker = worker
        self._settings = settings
        self._http = http
        self._apps = {app.sdkappid: app for app in apps}
        self._seen: Identity = identity(settings.apps_file) if settings.apps_file else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = structlog.get_logger()

    def start(self) -> None:
        """Begin watching."""
        self._task = asyncio.create_task(self._watch(), name="apps-reload")

    def request(self) -> None:
        """Re-read now (SIGHUP)."""
        self._log.info("signal_received", signal="SIGHUP")
        self._wake.set()

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        path = self._settings.apps_file
        assert path is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.apps_reload_s)
            forced, now = self._wake.is_set(), identity(path)
            self._wake.clear()
            if forced or now != self._seen:
                self._seen = now
                try:
                    await self.reload()
                except Exception:  # the watcher must outlive any one bad reload
                    self._log.exception("apps_reload_failed")

    async def reload(self) -> None:
        """Read the file and serve what it says, or keep the last good apps and say why."""
        path = self._settings.apps_file
        assert path is not None
        try:
            apps = {app.sdkappid: app for app in load_apps(path, self._settings)}
        except AppsFileError as exc:
            self._log.error("apps_file_invalid", reason=str(exc), keeping=sorted(self._apps))
            return
        added = sorted(apps.keys() - self._apps.keys())
        removed = sorted(self._apps.keys() - apps.keys())
        changed = frozenset(
            a for a in apps.keys() & self._apps.keys() if not apps[a].same_as(self._apps[a])
        )
        lanes = [app_lane(app, self._settings, self._http) for app in apps.values()]
        await self._worker.serve_apps(lanes, changed)
        self._apps = apps
        self._log.info(
            "apps_reloaded",
            apps=len(apps),
            added=added,
            removed=removed,
            changed=sorted(changed),
        )
