"""What the API checks in a request before it looks at tasks: query, UserSig, admin, JSON body."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from consumer.core.usersig import UserSigError, UserSigVerifier
from consumer.sandbox.records import U32, SandboxApp
from schemas.api import meaning

_DIGITS = re.compile(r"[0-9]{1,20}")


def check_request(
    q: Mapping[str, str],
    app: SandboxApp | None,
    clock: Callable[[], float],
    not_admin: int,
    usersigs: UserSigVerifier,
) -> tuple[int, str] | None:
    """Query `q`, UserSig and admin checks against `app` (None: not served); None if all pass."""
    # In the server's order: `app` is looked up from the query's sdkappid before any check, but
    # a missing contenttype or sdkappid is still answered before an unknown app.
    if q.get("contenttype") != "json":
        return 60002, "contenttype must be json"
    appid = q.get("sdkappid", "")
    if not appid:
        return 60012, meaning(60012)
    if app is None or not _DIGITS.fullmatch(appid) or int(appid) != app.sdkappid:
        return 60006, meaning(60006)
    identifier, usersig = q.get("identifier", ""), q.get("usersig", "")
    if not identifier:
        return 60004, "identifier missing"
    if not usersig:
        return 70002, meaning(70002)
    rnd = q.get("random", "")
    if not _DIGITS.fullmatch(rnd) or int(rnd) > U32:
        return 60002, "random must be an integer from 0 to 4294967295"
    try:
        usersigs.verify(usersig, app.sdkappid, identifier, app.secret_key, now=clock())
    except UserSigError as exc:
        return exc.code, exc.reason
    if identifier not in app.admins:
        return not_admin, meaning(not_admin)
    return None


def query_params(query_string: bytes) -> dict[str, str]:
    """A raw query string as its parameters, as Starlette reads it: blanks kept, the last wins."""
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


def random_param(q: Mapping[str, str]) -> int | None:
    """The query's `random` as a number, or None when it is not one."""
    return _number_param(q, "random")


def sdkappid_param(q: Mapping[str, str]) -> int | None:
    """The query's `sdkappid` as a number, or None when it is not one."""
    return _number_param(q, "sdkappid")


def _number_param(q: Mapping[str, str], name: str) -> int | None:
    value = q.get(name, "")
    return int(value) if _DIGITS.fullmatch(value) else None


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
