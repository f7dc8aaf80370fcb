"""The apps a worker serves, and one app's lane parts, from the settings."""

from __future__ import annotations

import httpx

from consumer.core.apps import App, load_apps, single_app
from consumer.core.client import RevokeClient
from consumer.core.pacing import Pacer
from consumer.core.settings import Settings
from consumer.core.usersig import UserSigCache
from consumer.core.worker import AppLane


def fleet_apps(settings: Settings) -> list[App]:
    """The apps to serve: RECALL_APPS_FILE's, or the one app of TIM_* (SettingsError,
    AppsFileError: one line naming what to fix)."""
    if settings.apps_file is not None:
        return load_apps(settings.apps_file, settings)
    return [single_app(settings)]


def app_lane(app: App, settings: Settings, http: httpx.AsyncClient) -> AppLane:
    """One app's lane parts: its client (key, UserSig cache, API address) and its pacer."""
    usersigs = UserSigCache(
        app.sdkappid,
        app.identifier,
        app.keys,
        expire=settings.usersig_expire_s,
        renew_before=max(60, settings.usersig_expire_s // 10),
    )
    client = RevokeClient(http, app.api_base_url, app.sdkappid, app.identifier, usersigs)
    pacer = Pacer(
        app.interval_s,
        rule=settings.pacing,
        margin_s=settings.pacing_margin_s,
        jitter_s=settings.pacing_jitter_s,
    )
    return AppLane(
        app.sdkappid,
        client,
        pacer,
        queue=app.queue,
        default_offline_push_info=app.default_offline_push_info,
    )
