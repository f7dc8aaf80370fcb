"""Many apps: 200 in one process, 3 replicas sharing them on RabbitMQ 4, one app flooded.

Every app is served by the multi-app sandbox in this process at the real 1 call/s (each app its
own limiter), from an apps file the scenario writes (one key file per app); requests are
published to the fleet's exchange with the SDKAppID as routing key, as producers do. Figures
come from the sandbox's own records (arrivals on this process's monotonic clock): per app
`utilization` (the interval times the calls, over the time from the first to the last), 90051
answers, pauses around a kill.

`python -m bench.apps` runs them alone and prints the JSON (`--only one_process` etc.).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from bench import stats
from bench.procs import ROOT, WORKER_ROOT, Child, free_port, poll
from bench.stage import body, publish_windowed
from consumer.sandbox import CallRecord, Sandbox, SandboxApp, SandboxConfig, serve_sandbox

RABBITMQ4_URL = "amqp://guest:guest@127.0.0.1:5680/"
RABBITMQ3_URL = "amqp://guest:guest@127.0.0.1:5672/"
APPS = 200
INTERVAL_S = 1.0
WINDOW = 500  # publishes in flight at once


@dataclass
class AppsStage:
    """A sandbox serving `apps`, their apps file and queues, and the workers spawned."""

    sandbox: Sandbox
    apps: list[SandboxApp]
    url: str
    amqp_url: str
    prefix: str
    exchange: str
    workdir: Path
    connection: AbstractConnection
    children: list[Child] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)  # message_id -> wall clock
    task_ids: set[str] = field(default_factory=set)  # every TaskId published

    @property
    def apps_file(self) -> Path:
        return self.workdir / f"{self.prefix}-apps.json"

    def write_apps(self, wrong_key: set[int] | None = None) -> None:
        """The apps file, one key file per app (a wrong one for `wrong_key`)."""
        entries = []
        for app in self.apps:
            key = self.workdir / f"{self.prefix}-{app.sdkappid}.key"
            wrong = wrong_key is not None and app.sdkappid in wrong_key
            key.write_text(("0" * 64 if wrong else app.secret_key) + "\n")
            entries.append(
                {"sdkappid": app.sdkappid, "secret_key_file": str(key), "base_url": self.url}
            )
        self.apps_file.write_text(json.dumps({"apps": entries}))

    async def worker(
        self, replica: str, log_level: str = "warning", interval_s: float = INTERVAL_S
    ) -> Child:
        """`python -m consumer run` for the whole apps file, as replica `replica`."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
        env.update(
            {
                "RECALL_APPS_FILE": str(self.apps_file),
                "RECALL_QUEUE": self.prefix,
                "RECALL_EXCHANGE": self.exchange,
                "RECALL_REPLICA_ID": replica,
                "RECALL_AMQP_URL": self.amqp_url,
                "RECALL_INTERVAL_S": repr(interval_s),
                "RECALL_HTTP_HOST": "127.0.0.1",
                "RECALL_HTTP_PORT": str(port),
                "RECALL_LOG_FORMAT": "json",
                "RECALL_LOG_LEVEL": log_level,
            }
        )
        log_path = self.workdir / f"{self.prefix}-{replica}-{len(self.children)}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumer",
                "run",
                env=env,
                cwd=WORKER_ROOT,
                stdout=log,
                stderr=log,
            )
        child = Child(replica, process, log_path, port)
        self.children.append(child)
        return child

    async def publish(self, requests: Sequence[tuple[int, bytes]]) -> None:
        """Publish (app, body) pairs to the exchange by SDKAppID, WINDOW confirms in flight."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(self.exchange, ensure=False)

        def send(app: int, raw: bytes) -> Callable[[], Awaitable[Any]]:
            message_id = uuid.uuid4().hex
            message = aio_pika.Message(
                raw,
                message_id=message_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            self.sent[message_id] = time.time()
            return lambda: exchange.publish(message, str(app), mandatory=True)

        await publish_windowed((send(app, raw) for app, raw in requests), WINDOW)
        await channel.close()

    def calls(self, app: int | None = None) -> list[CallRecord]:
        """Revoke calls the sandbox saw (for one app), in arrival order."""
        return self.sandbox.revoke_calls(app)


@contextlib.asynccontextmanager
async def apps_stage(
    workdir: Path, amqp_url: str, n: int = APPS, interval_s: float = INTERVAL_S
) -> AsyncIterator[AppsStage]:
    """A sandbox of `n` apps, fresh names, a connection; workers killed and queues deleted after."""
    sandbox = Sandbox(SandboxConfig(min_interval=interval_s))
    apps = [sandbox.config.app(), *sandbox.add_apps(n - 1)]
    prefix = f"bench-apps-{uuid.uuid4().hex[:10]}"
    async with serve_sandbox(sandbox) as url:
        connection = await aio_pika.connect(amqp_url)
        st = AppsStage(sandbox, apps, url, amqp_url, prefix, f"{prefix}-ex", workdir, connection)
        try:
            yield st
        finally:
            for child in st.children:
                if child.alive:
                    child.process.kill()
                await child.process.wait()
                await child.close()
            await _delete(connection, st)
            await connection.close()


async def _delete(connection: AbstractConnection, st: AppsStage) -> None:
    names = [f"{st.prefix}.{a.sdkappid}" for a in st.apps] + [
        f"{st.prefix}.dead",
        f"{st.prefix}.results",
    ]
    channel = await connection.channel()
    for name in names:
        with contextlib.suppress(Exception):
            await channel.queue_delete(name)
        if channel.is_closed:
            channel = await connection.channel()
    with contextlib.suppress(Exception):
        await channel.exchange_delete(st.exchange)


def utilization(calls: list[CallRecord]) -> float | None:
    """The interval times the calls after the first, over the first-to-last time."""
    if len(calls) < 2:
        return None
    span = calls[-1].arrived - calls[0].arrived
    return INTERVAL_S * (len(calls) - 1) / span if span > 0 else None


def backlog_requests(
    st: AppsStage, per_app: int, apps: Sequence[SandboxApp]
) -> list[tuple[int, bytes]]:
    """`per_app` requests for each app, interleaved app by app (as a busy platform sends them)."""
    requests = []
    for _ in range(per_app):
        for app in apps:
            task_id = st.sandbox.create_task(sdkappid=app.sdkappid)
            st.task_ids.add(task_id)
            requests.append((app.sdkappid, body(task_id)))
    return requests


async def one_process(
    workdir: Path, amqp_url: str = RABBITMQ3_URL, per_app: int = 40
) -> dict[str, Any]:
    """200 apps in one worker process, each with a backlog; one app with a wrong key."""
    async with apps_stage(workdir, amqp_url) as st:
        wrong = st.apps[-1].sdkappid
        st.write_apps(wrong_key={wrong})
        worker = await st.worker("replica-0", log_level="info")
        await worker.ready(timeout=60)
        rss_idle = worker.rss_mb()
        requests = backlog_requests(st, per_app, st.apps)
        cpu0, lag0 = worker.cpu_s(), await _lag_buckets(worker)
        await st.publish(requests)
        served = [a for a in st.apps if a.sdkappid != wrong]
        target = per_app * len(served)
        await poll(
            lambda: sum(c.code == 0 for c in st.calls()) >= target, 120, "every backlog drained"
        )
        cpu = worker.cpu_s() - cpu0
        lag = _minus(await _lag_buckets(worker), lag0)
        rss = worker.rss_mb()
        halted = (await worker.http().get("/apps")).json()["apps"]
    per_app_util = [u for a in served if (u := utilization(st.calls(a.sdkappid))) is not None]
    worst = min(served, key=lambda a: utilization(st.calls(a.sdkappid)) or 1.0)
    arrivals = [c.arrived for c in st.calls(worst.sdkappid)]
    worst_gaps_ms = [round((b - a - INTERVAL_S) * 1000, 1) for a, b in itertools.pairwise(arrivals)]
    calls = st.calls()
    recalled = sum(c.code == 0 for c in calls)
    return {
        "apps": len(st.apps),
        "requests_per_app": per_app,
        "utilization_min": round(min(per_app_util), 4),
        "utilization_median": round(statistics.median(per_app_util), 4),
        "worst_app_gaps_over_interval_ms": worst_gaps_ms,
        "loop_lag_p99_ms": _quantile_ms(lag, 0.99),
        "loop_lag_max_ms": _quantile_ms(lag, 1.0),
        "too_frequent": sum(c.code == 90051 for c in calls),
        "cpu_ms_per_recall": round(cpu * 1000 / max(recalled, 1), 3),
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb": round(rss, 1),
        "wrong_key_app_halted": any(
            a["sdkappid"] == wrong and a["state"] == "halted" for a in halted
        ),
        "wrong_key_app_calls": len(st.calls(wrong)),
    }


async def _active(child: Child, within_s: float = 3.0) -> set[int]:
    """The apps a replica had a delivery for in the last `within_s` (the broker tells no one
    when it gives a queue to another consumer: a lane's last delivery is the sign)."""
    apps = (await child.http().get("/apps")).json()["apps"]
    return {
        a["sdkappid"]
        for a in apps
        if a["state"] == "active"
        and a["since_last_delivery_s"] is not None
        and a["since_last_delivery_s"] <= within_s
    }


async def replicas(
    workdir: Path, amqp_url: str = RABBITMQ4_URL, n_replicas: int = 3, per_app: int = 40
) -> dict[str, Any]:
    """3 replicas x 200 apps: the spread, a kill -9 of one and its return."""
    async with apps_stage(workdir, amqp_url) as st:
        st.write_apps()
        names = [f"replica-{i}" for i in range(n_replicas)]
        workers = [await st.worker(name) for name in names]
        for w in workers:
            await w.ready(timeout=60)
        await asyncio.sleep(1.0)  # every replica subscribed to every app before any request
        await st.publish(backlog_requests(st, per_app, st.apps))
        await poll(lambda: len(st.calls()) >= 3 * len(st.apps), 60, "every app under way")
        spread = {w.name: await _active(w) for w in workers}
        victim = workers[0]
        victim_apps = spread[victim.name]
        killed_at = victim.kill()
        await victim.process.wait()
        await asyncio.sleep(8.0)
        back = await st.worker(names[0])
        await back.ready(timeout=60)
        rejoined_at = time.monotonic()
        await asyncio.sleep(8.0)
        spread_after = {w.name: await _active(w) for w in [back, *workers[1:]]}
        published = set(st.task_ids)
        await poll(lambda: _recalled(st) >= published, 240, "every request recalled")
        calls = st.calls()
    pauses, worst = [], []
    for app in victim_apps:
        arrivals = [c.arrived for c in st.calls(app)]
        before = [t for t in arrivals if t <= killed_at]
        after = [t for t in arrivals if t > killed_at]
        if before and after:
            pauses.append(after[0] - before[-1])
            # (pause, its last call to the kill, the kill to its next call)
            worst.append((after[0] - before[-1], killed_at - before[-1], after[0] - killed_at))
    worst.sort(reverse=True)
    counts = [len(v) for v in spread.values()]
    return {
        "apps": len(st.apps),
        "replicas": n_replicas,
        "per_replica": {k: len(v) for k, v in spread.items()},
        "per_replica_max_over_even": round(max(counts) / (len(st.apps) / n_replicas), 3),
        "kill": {
            "apps_moved": len(victim_apps),
            "pause_s_max": round(max(pauses), 3) if pauses else None,
            "pause_s_median": round(statistics.median(pauses), 3) if pauses else None,
            "pauses_over_2s": sum(p > 2.0 for p in pauses),
            # the longest 5: [pause, last call to the kill, kill to the next call]
            "longest": [[round(x, 3) for x in w] for w in worst[:5]],
            "too_frequent": sum(
                c.code == 90051 and killed_at < c.arrived < rejoined_at for c in calls
            ),
            "lost": len(published - _recalled(st)),
            # Calls for a request already recalled: the killed replica's calls it never told
            # (answered 90050 and counted as recalled: that chain's own call did it).
            "called_again": sum(c.code == 90050 for c in calls),
        },
        "rejoin": {
            "per_replica": {k: len(v) for k, v in spread_after.items()},
            "too_frequent": sum(c.code == 90051 and c.arrived >= rejoined_at for c in calls),
        },
        "too_frequent": sum(c.code == 90051 for c in calls),
        "min_gap_s": round(min(stats.min_gap(st.calls(a.sdkappid)) or 9 for a in st.apps), 4),
    }


def _recalled(st: AppsStage) -> set[str]:
    # 90050 counts as recalled for a redelivered request whose earlier call may have done it.
    return {c.task_id for c in st.calls() if c.code in (0, 90050) and c.task_id is not None}


async def flood(
    workdir: Path, amqp_url: str = RABBITMQ3_URL, flood_n: int = 10_000, probes: int = 60
) -> dict[str, Any]:
    """One app flooded with 10,000 requests while the others are idle: the idle apps' requests,
    one at a time, from publish to arrival at the API."""
    async with apps_stage(workdir, amqp_url) as st:
        st.write_apps()
        worker = await st.worker("replica-0")
        await worker.ready(timeout=60)
        flooded, others = st.apps[0], st.apps[1:]
        await st.publish(
            [
                (flooded.sdkappid, body(st.sandbox.create_task(sdkappid=flooded.sdkappid)))
                for _ in range(flood_n)
            ]
        )
        latencies: list[float] = []
        for i in range(probes):
            app = others[i % len(others)]
            task_id = st.sandbox.create_task(sdkappid=app.sdkappid)
            expected = 1 + i // len(others)  # its calls so far, this one included
            sent = time.monotonic()
            await st.publish([(app.sdkappid, body(task_id))])
            await poll(
                lambda a=app.sdkappid, n=expected: len(st.calls(a)) >= n,
                10,
                "the idle app's call",
                every=0.002,
            )
            call = st.calls(app.sdkappid)[-1]
            latencies.append((call.arrived - sent) * 1000)
            await asyncio.sleep(0.05)
        flooded_calls = len(st.calls(flooded.sdkappid))
    return {
        "flooded_app_backlog": flood_n,
        "idle_requests": probes,
        "idle_p50_ms": round(stats.percentile(latencies, 50), 1),
        "idle_p99_ms": round(stats.percentile(latencies, 99), 1),
        "flooded_app_calls_meanwhile": flooded_calls,
    }


LIFTED_S = 0.000001


async def lanes(
    workdir: Path, amqp_url: str = RABBITMQ3_URL, n_apps: int = 50, per_app: int = 120
) -> dict[str, Any]:
    """Limits lifted, many lanes in one process at INFO: recalls/s, CPU, the loop's lag."""
    async with apps_stage(workdir, amqp_url, n_apps, interval_s=LIFTED_S) as st:
        st.write_apps()
        worker = await st.worker("replica-0", log_level="info", interval_s=LIFTED_S)
        await worker.ready(timeout=60)
        await st.publish(backlog_requests(st, 5, st.apps))  # warm: takeovers, connections
        await poll(lambda: len(st.calls()) >= 5 * n_apps, 60, "the warm-up")
        lag0 = await _lag_buckets(worker)
        cpu0, started = worker.cpu_s(), time.monotonic()
        first = len(st.calls())
        await st.publish(backlog_requests(st, per_app, st.apps))
        total = first + per_app * n_apps
        await poll(lambda: len(st.calls()) >= total, 300, "every call", every=0.05)
        seconds = time.monotonic() - started
        cpu = worker.cpu_s() - cpu0
        lag = _minus(await _lag_buckets(worker), lag0)
        calls = st.calls()[first:]
    n = per_app * n_apps
    return {
        "apps": n_apps,
        "requests": n,
        "recalls_per_s": round(n / seconds, 1),
        "cpu_ms_per_recall": round(cpu * 1000 / n, 3),
        "cpu_share": round(cpu / seconds, 2),
        "loop_lag_p99_ms": _quantile_ms(lag, 0.99),
        "codes": stats.codes(calls),
    }


async def _lag_buckets(worker: Child) -> dict[float, float]:
    """The loop-lag histogram's cumulative bucket counts, by upper bound (s)."""
    text = (await worker.http().get("/metrics")).text
    buckets = {}
    for line in text.splitlines():
        if line.startswith("tim_recall_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def _minus(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def _quantile_ms(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile, in ms (None: no samples)."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le * 1000
    return None


async def run(workdir: Path, only: str | None = None) -> dict[str, Any]:
    """Every scenario (or `only` one), their figures under `apps`."""
    results: dict[str, Any] = {}
    if only in (None, "one_process"):
        results["one_process"] = await one_process(workdir)
    if only in (None, "flood"):
        results["flood"] = await flood(workdir)
    if only in (None, "replicas"):
        results["replicas"] = await replicas(workdir)
    if only in (None, "lanes"):
        results["lanes"] = await lanes(workdir)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["one_process", "replicas", "flood", "lanes"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tim-recall-apps-"))
    figures = asyncio.run(run(workdir, args.only))
    json.dump(figures, sys.stdout, indent=2)
    print(f"\nlogs in {workdir} ({ROOT})")


if __name__ == "__main__":
    main()
