"""Fencing: a replica whose broker has gone silent stops calling before the broker gives its
queue to another replica, so a stalled network never makes two callers on one quota."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aio_pika.abc import AbstractConnection

from consumer.core.errors import ConfigurationError

# RabbitMQ checks every `heartbeat / 2` s whether it sent anything and sends a heartbeat if not,
# so a healthy idle link is silent for up to about one `heartbeat`. It checks every `heartbeat`
# whether it received anything and closes the connection after two checks in a row saw nothing:
# between 2 and 3 heartbeats after the link went quiet; only then does single active consumer
# hand the queue on. Between those two, we stop calling (seen here with heartbeat 4: the standby
# took over 10 s after the stall).
FENCE_FRACTION = 1.5
HANDOVER_FRACTION = 2.0  # the broker hands the queue on no sooner than this many heartbeats
# A healthy idle link is silent for up to about one heartbeat: a fence shorter than this (with
# room for a late heartbeat) would trip on a link that works, and release every request.
MIN_FENCE_FRACTION = 1.25


class UnworkableHeartbeat(ConfigurationError):
    """A heartbeat the fence cannot work with; the text says why and what would do."""


def fence_after_s(heartbeat_s: float, connect_timeout_s: float = 0.0) -> float:
    """How long the broker may be silent before this replica stops calling.

    1.5 heartbeats, and no later than a call started then can reach the server (it may need a
    new connection: `connect_timeout_s`) before the broker hands the queue on (2 heartbeats).
    Raises UnworkableHeartbeat when that leaves less than a healthy link's silence: with no
    heartbeats (0) nothing ever proves the broker still there, and every request would be
    released to the tail once a second, forever.
    """
    if heartbeat_s <= 0:
        raise UnworkableHeartbeat(
            "heartbeat 0 turns heartbeats off, and the fence (no call once the broker is silent) "
            "needs them; remove heartbeat=0 or set one of at least "
            f"{min_heartbeat_s(connect_timeout_s):g} s"
        )
    fence = min(heartbeat_s * FENCE_FRACTION, heartbeat_s * HANDOVER_FRACTION - connect_timeout_s)
    if fence < heartbeat_s * MIN_FENCE_FRACTION:
        raise UnworkableHeartbeat(
            f"heartbeat {heartbeat_s:g} s is too short for a {connect_timeout_s:g} s connect "
            "timeout: a call started just before the fence could reach Tencent after the broker "
            f"handed the queue to another replica; use a heartbeat of at least "
            f"{min_heartbeat_s(connect_timeout_s):g} s (or a shorter TIM_CONNECT_TIMEOUT_S)"
        )
    return fence


def min_heartbeat_s(connect_timeout_s: float) -> float:
    """The shortest heartbeat the fence works with for `connect_timeout_s`, whole seconds."""
    return float(max(1, math.ceil(connect_timeout_s / (HANDOVER_FRACTION - MIN_FENCE_FRACTION))))


def silent_for(connection: AbstractConnection, now: float) -> float:
    """Seconds since the last frame arrived from the broker (0 when unknown).

    aiormq keeps that time for its own heartbeat check, under a private name; a unit test pins
    the name, so an upgrade that renames it fails there rather than silently unfencing us.
    """
    transport = getattr(connection, "transport", None)
    amqp = getattr(transport, "connection", None)
    last = getattr(amqp, "_Connection__last_frame_time", None)
    return max(0.0, now - last) if isinstance(last, float) else 0.0


def with_heartbeat(url: str, heartbeat_s: int) -> str:
    """`url` asking for `heartbeat_s` heartbeats, unless it names its own `heartbeat`."""
    parts = urlsplit(url)
    if "heartbeat" in dict(parse_qsl(parts.query)):
        return url
    query = f"{parts.query}&heartbeat={heartbeat_s}" if parts.query else f"heartbeat={heartbeat_s}"
    return urlunsplit(parts._replace(query=query))


def heartbeat_of(url: str, default: float = 60.0) -> float:
    """The heartbeat a URL asks for (aiormq's default when it names none)."""
    try:
        return float(dict(parse_qsl(urlsplit(url).query)).get("heartbeat", default))
    except ValueError:
        return default
