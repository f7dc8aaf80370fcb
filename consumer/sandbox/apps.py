"""The apps the sandbox serves, by SDKAppID, each with its own key, admins and rate limiter."""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from consumer.sandbox.limiter import ArrivalLimiter
from consumer.sandbox.records import SandboxApp

DEFAULT_ADMINS = frozenset({"administrator"})


def new_app(
    sdkappid: int,
    *,
    secret_key: str | None,
    admins: Collection[str],
    min_interval: float,
) -> SandboxApp:
    """A checked SandboxApp; a fresh random SecretKey when none is given."""
    if isinstance(sdkappid, bool) or not isinstance(sdkappid, int) or sdkappid <= 0:
        raise ValueError(f"sdkappid must be a positive integer, not {sdkappid!r}")
    # A str is a Collection[str] too: "admin" would make five one-letter admins.
    if isinstance(admins, str) or not admins or not all(isinstance(a, str) and a for a in admins):
        raise ValueError("admins must be a non-empty collection of identifiers")
    if secret_key == "":
        raise ValueError("secret_key must not be empty")
    if min_interval < 0:
        raise ValueError("min_interval must not be negative")
    # 64 hex digits, the shape of a Tencent SecretKey; a random one per app, so a worker that
    # signs for one app with another's key is refused.
    key = secrets.token_hex(32) if secret_key is None else secret_key
    return SandboxApp(sdkappid, key, frozenset(admins), min_interval)


@dataclass
class _Served:
    app: SandboxApp
    limiter: ArrivalLimiter


class AppRegistry:
    """The served apps in the order they were added, the default (the config's) first."""

    def __init__(self, default: SandboxApp, lock: threading.RLock) -> None:
        self._lock = lock
        self._default = default.sdkappid
        self._served = {default.sdkappid: _Served(default, ArrivalLimiter(lock))}

    def add(self, apps: Iterable[SandboxApp]) -> None:
        """Serve these apps too: all of them, or none when one SDKAppID is taken or repeated."""
        apps = list(apps)
        with self._lock:
            counts = Counter(a.sdkappid for a in apps)
            taken = sorted(i for i, n in counts.items() if n > 1 or i in self._served)
            if taken:
                raise ValueError(f"sdkappid already served: {', '.join(map(str, taken))}")
            for app in apps:
                self._served[app.sdkappid] = _Served(app, ArrivalLimiter(self._lock))

    def create(
        self,
        sdkappid: int,
        *,
        secret_key: str | None = None,
        admins: Collection[str] = DEFAULT_ADMINS,
        min_interval: float | None = None,
    ) -> SandboxApp:
        """Serve a new app (the default app's interval unless given); ValueError if taken."""
        with self._lock:
            interval = self._interval(min_interval)
            app = new_app(sdkappid, secret_key=secret_key, admins=admins, min_interval=interval)
            self.add([app])
        return app

    def create_many(
        self, n: int, *, first: int | None = None, min_interval: float | None = None
    ) -> list[SandboxApp]:
        """Serve n new apps, SDKAppIDs consecutive from `first` (default: past the highest)."""
        if n < 0:
            raise ValueError("n must not be negative")
        with self._lock:  # the highest SDKAppID cannot change before the apps are added
            start = max(self._served) + 1 if first is None else first
            interval = self._interval(min_interval)
            apps = [
                new_app(start + i, secret_key=None, admins=DEFAULT_ADMINS, min_interval=interval)
                for i in range(n)
            ]
            self.add(apps)
        return apps

    def _interval(self, min_interval: float | None) -> float:
        if min_interval is None:  # new apps are limited as the default app is
            return self._served[self._default].app.min_interval
        return min_interval

    def replace_default(self, app: SandboxApp) -> int:
        """Serve `app` as the default app instead; returns the SDKAppID it had before."""
        with self._lock:
            old = self._default
            if app.sdkappid != old and app.sdkappid in self._served:
                raise ValueError(f"sdkappid {app.sdkappid} is already served by another app")
            # The same app renamed or re-limited: it keeps its limiter's memory, as a config
            # change did when the sandbox served one app. It stays first in the listing.
            limiter = self._served[old].limiter
            rest = {i: s for i, s in self._served.items() if i != old}
            self._served = {app.sdkappid: _Served(app, limiter), **rest}
            self._default = app.sdkappid
            return old

    def get(self, sdkappid: int | None) -> SandboxApp | None:
        """The app with this SDKAppID, or None when the sandbox serves no such app."""
        with self._lock:
            served = self._served.get(sdkappid) if sdkappid is not None else None
            return served.app if served is not None else None

    def resolve(self, sdkappid: int | None) -> SandboxApp:
        """The app with this SDKAppID (None: the default app); ValueError when not served."""
        app = self.get(self._default if sdkappid is None else sdkappid)
        if app is None:
            raise ValueError(f"no app with sdkappid {sdkappid} is served")
        return app

    def apps(self) -> list[SandboxApp]:
        """Every served app, the default first, then in the order they were added."""
        with self._lock:
            return [s.app for s in self._served.values()]

    def arrive(self, sdkappid: int, arrived: float) -> tuple[int, str] | None:
        """Count an arrival at this app's own limiter; 90051 when too soon for this app."""
        with self._lock:
            served = self._served[sdkappid]
            return served.limiter.arrive(arrived, served.app.min_interval)

    def forget(self) -> None:
        """Forget every app's last arrival; the apps stay served."""
        with self._lock:
            for served in self._served.values():
                served.limiter.forget()
