"""The worker: one session, one lane per app, the memory they share; what operators ask of it.

```
Session  (one connection: nodes, declare, consume/cancel per lane, fence, epoch)
   | a delivery, and whether it is still ours
   v
Lane     (one per app: pacer, key and UserSig, halt state, journal)
   read -> prepare -> pace -> call -> decide -> settle -> report
Shared:  the memory of recalls (by app, one ceiling) and its follower, the settler (results
         stream writer), the metrics, the HTTP pool.
```
Words, one meaning each: lineage (one request's chain of deliveries and copies), generation
(one copy of it), epoch (one connection), fence (no call once the broker has been silent),
journal (what this process knows of a settlement under way), release (a copy put back with no
call), told (its results event published), next slot (when a lane would call for its app
again: told with each settle, read by a takeover).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from consumer.core.client import RevokeClient
from consumer.core.follower import ResultsFollower
from consumer.core.lane import Lane, LaneConfig
from consumer.core.memory import RecallMemory
from consumer.core.metrics import Metrics
from consumer.core.nodes import Connect
from consumer.core.observer import Observer
from consumer.core.pacing import Pacer
from consumer.core.prepare import PrepareRules
from consumer.core.recaller import RetryRules
from consumer.core.session import Session, SessionConfig
from consumer.core.spread import priority
from consumer.core.topology import Topology
from schemas.events import ResultEvent
from schemas.recall import OfflinePushInfo

Clock = Callable[[], float]


@dataclass(frozen=True)
class WorkerConfig:
    """The parts of the settings the worker follows."""

    amqp_url: str
    topology: Topology  # the fleet's shared queues, and the queue of a fleet of one
    retry: RetryRules
    prepare: PrepareRules
    max_body_bytes: int = 64 * 1024
    halt_probe_initial_s: float = 5.0
    halt_probe_max_s: float = 300.0
    rebuild_budget_s: float = 60.0
    fence_s: float = 45.0  # no call once the broker has been silent this long (see fence.py)
    replica_id: str = "tim-recall"


@dataclass(frozen=True)
class AppLane:
    """What one app's lane is built from: its queue, its client and its pacer."""

    sdkappid: int
    client: RevokeClient
    pacer: Pacer
    queue: str | None = None  # None: the topology's (a fleet of one)
    default_offline_push_info: OfflinePushInfo | None = None  # None: the fleet's


class Worker:
    """Takes recall requests, one at a time per app, and settles each exactly once."""

    def __init__(
        self,
        config: WorkerConfig,
        apps: Sequence[AppLane],
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        memory: RecallMemory | None = None,
        on_settled: Callable[[ResultEvent], None] | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.memory = memory if memory is not None else RecallMemory()  # an empty one is falsy
        if len(apps) == 1 and self.memory.default_app is None:
            # Events written before they named their app are the one app's.
            self.memory.default_app = apps[0].sdkappid
        metrics.watch_memory(self.memory)
        self.lanes: dict[int, Lane] = {}
        self._clock = clock
        self._stopping = asyncio.Event()
        self._observer = Observer(metrics, on_settled)
        self.session = Session(
            SessionConfig(
                amqp_url=config.amqp_url,
                topology=config.topology,
                fence_s=config.fence_s,
                rebuild_budget_s=config.rebuild_budget_s,
                replica_id=config.replica_id,
            ),
            self.lanes,
            ResultsFollower(
                self.memory,
                config.topology.results_stream,
                clock,
                incarnation=f"{config.replica_id}.{uuid.uuid4().hex[:8]}",
            ),
            metrics,
            stopping=self._stopping,
            settler_hooks=self._settler_hooks,
            connect=connect,
        )
        for app in apps:
            self.lanes[app.sdkappid] = self._lane(app)
        self._log = structlog.get_logger()

    def _lane(self, app: AppLane) -> Lane:
        config = self.config
        topology = config.topology
        if app.queue is not None and app.queue != topology.queue:
            topology = topology.for_app(app.queue, app.sdkappid)
        elif topology.exchange is not None:
            topology = replace(topology, routing_key=str(app.sdkappid))
        prepare = config.prepare
        if app.default_offline_push_info is not None:
            prepare = replace(prepare, default_offline_push_info=app.default_offline_push_info)
        lane_config = LaneConfig(
            sdkappid=app.sdkappid,
            topology=topology,
            retry=config.retry,
            prepare=prepare,
            max_body_bytes=config.max_body_bytes,
            halt_probe_initial_s=config.halt_probe_initial_s,
            halt_probe_max_s=config.halt_probe_max_s,
            takeover_budget_s=config.rebuild_budget_s,
            priority=priority(app.sdkappid, config.replica_id),
        )
        self._observer.serve(app.sdkappid)
        return Lane(
            lane_config,
            app.client,
            app.pacer,
            host=self.session,
            memory=self.memory.for_app(app.sdkappid),
            observer=self._observer,
            stopping=self._stopping,
            clock=self._clock,
        )

    def _settler_hooks(self) -> dict[str, Any]:
        return {
            "on_told": lambda event: self.memory.remember_event(event, self._clock()),
            "on_reply": lambda result: self.metrics.replies.labels(result).inc(),
            "on_copied": self.metrics.copies.inc,
        }

    # ---- what operators ask ----------------------------------------------------------------

    @property
    def halted(self) -> bool:
        """Every lane is halted: this replica serves nothing (one app: that app is halted)."""
        return bool(self.lanes) and all(lane.halted for lane in self.lanes.values())

    def readiness(self) -> dict[str, bool]:
        """Each readiness condition: connected, every lane not halted consuming, not every lane
        halted, and no delivery held longer than its retries and settling can take."""
        lanes = list(self.lanes.values())
        return {
            "connected": self.session.connected(),
            "consuming": all(lane.consumer_tag is not None for lane in lanes if not lane.halted),
            "not_halted": not self.halted,
            "progressing": all(lane.progressing() for lane in lanes),
        }

    def progress(self) -> dict[str, float | None]:
        """The longest a delivery in hand has been held, and the time since the last settle."""
        held = [s for lane in self.lanes.values() if (s := lane.in_hand_s()) is not None]
        since = [s for lane in self.lanes.values() if (s := lane.since_last_settle_s()) is not None]
        return {
            "in_hand_s": round(max(held), 3) if held else None,
            "since_last_settle_s": round(min(since), 3) if since else None,
        }

    def liveness(self) -> dict[str, bool]:
        """Each task the worker needs is alive: for a halted lane, the probe that resumes it."""
        return {"halt_probe": all(lane.probe_alive() for lane in self.lanes.values())}

    def apps(self) -> list[dict[str, Any]]:
        """Each app served here: active (it had a delivery since subscribing: AMQP says nothing
        when the broker gives the queue to another consumer, so the time since the last delivery
        says how recent that is) or standby, halted (and why), the delivery in hand."""
        return [
            {
                "sdkappid": lane.app,
                "queue": lane.config.topology.queue,
                "state": "halted" if lane.halted else "active" if lane.active else "standby",
                "halt_reason": lane.halt_reason,
                "consuming": lane.consumer_tag is not None,
                "in_hand_s": None if (s := lane.in_hand_s()) is None else round(s, 3),
                "since_last_delivery_s": None
                if lane.last_delivery is None
                else round(time.monotonic() - lane.last_delivery, 3),
                "priority": lane.config.priority,
            }
            for lane in sorted(self.lanes.values(), key=lambda lane: lane.app)
        ]

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking messages: no new call; a call in flight finishes and is settled."""
        self._stopping.set()

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Connect, declare, consume until `stop()`, reconnecting whenever the connection is
        lost; then close."""
        try:
            await self.session.run(started)
        finally:
            for lane in self.lanes.values():
                lane.close()
            self._log.info("worker_stopped")

    async def serve_apps(
        self, apps: Sequence[AppLane], changed: frozenset[int] = frozenset()
    ) -> None:
        """Serve exactly `apps` from now on: a new app starts serving, a removed one stops
        after its request in hand, a `changed` one does both."""
        wanted = {app.sdkappid: app for app in apps}
        for sdkappid in [a for a in self.lanes if a not in wanted or a in changed]:
            await self._retire(sdkappid)
        for sdkappid, app in wanted.items():
            if sdkappid in self.lanes:
                continue
            lane = self.lanes[sdkappid] = self._lane(app)
            await self.session.add(lane)
            self._log.info("app_added", sdkappid=sdkappid, queue=lane.config.topology.queue)

    async def _retire(self, sdkappid: int) -> None:
        lane = self.lanes[sdkappid]
        async with lane.busy:  # its request in hand is settled first
            await self.session.unsubscribe(lane)
            del self.lanes[sdkappid]
        self.session.announce(lane, "stopped", "removed from RECALL_APPS_FILE")
        lane.close()
        self._observer.forget(sdkappid)
        self._log.info("app_removed", sdkappid=sdkappid)
