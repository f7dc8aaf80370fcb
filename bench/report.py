"""The machine, the targets, the printed table and results.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumer.ops.reports import table

Check = Callable[[Any], bool]

# key, target as printed, check (None: reported without a target)
ROWS: list[tuple[str, str, Check | None]] = [
    ("pacing.utilization", ">= 0.97", lambda v: v >= 0.97),
    ("pacing.too_frequent", "0", lambda v: v == 0),
    ("pacing.min_gap_s", ">= 1.0", lambda v: v >= 1.0),
    ("pacing.calls", "", None),
    ("idle_latency_ms.p50", "<= 10", lambda v: v <= 10),
    ("idle_latency_ms.p99", "", None),
    ("idle_latency_ms.first_after_start_ms", "", None),
    ("overhead.copies_per_request", "0", lambda v: v == 0),
    ("overhead.cpu_s_per_1000", "<= 1.0", lambda v: v <= 1.0),
    ("overhead.recalls_per_s", "", None),
    ("overhead.producer_and_sandbox_cpu_s_per_1000", "", None),
    ("overhead.broker_cpu_s_per_1000", "", None),
    ("overhead.floor.amqp.cpu_ms_per_message", "", None),
    ("overhead.floor.amqp_echo.cpu_ms_per_message", "", None),
    ("overhead.floor.amqp_echo_http.cpu_ms_per_message", "", None),
    ("overhead.lanes_recalls_per_s", ">= 500", lambda v: v >= 500),
    ("overhead.loop_lag_p99_ms", "", None),
    ("apps.one_process.apps", "200", lambda v: v >= 200),
    ("apps.one_process.utilization_min", ">= 0.98", lambda v: v >= 0.98),
    ("apps.one_process.too_frequent", "0", lambda v: v == 0),
    ("apps.one_process.cpu_ms_per_recall", "", None),
    ("apps.one_process.rss_mb", "", None),
    ("apps.flood.idle_p99_ms", "<= 50", lambda v: v <= 50),
    ("apps.replicas.per_replica_max_over_even", "<= 1.25", lambda v: v <= 1.25),
    ("apps.replicas.kill.pause_s_max", "<= 2", lambda v: v <= 2),
    ("apps.replicas.kill.too_frequent", "0", lambda v: v == 0),
    ("apps.replicas.kill.lost", "0", lambda v: v == 0),
    ("apps.replicas.rejoin.too_frequent", "0", lambda v: v == 0),
    ("backlog.recalls_per_s", "", None),
    ("backlog.cpu_s_per_1000", "", None),
    ("backlog.sandbox_cpu_s_per_1000", "", None),
    ("memory.rss_mb_idle", "<= 80", lambda v: v <= 80),
    ("memory.rss_mb_after_5000", "<= 80", lambda v: v <= 80),
    ("memory.rss_mb_after", "<= 80", lambda v: v <= 80),
    ("memory.growth_kb_per_1000_after_5000", "flat (<= 100)", lambda v: v <= 100),
    ("memory.rss_mb_projected_86400", "<= 80", lambda v: v <= 80),
    ("failover.takeover_s", "<= 3", lambda v: v <= 3),
    ("failover.too_frequent", "0", lambda v: v == 0),
    ("failover.min_gap_s", ">= 1.0", lambda v: v >= 1.0),
    ("failover.recalled", "30", lambda v: v == 30),
    ("cluster.leader.pause_s", "<= 3", lambda v: v <= 3),
    ("cluster.leader.pause_s_max", "", None),
    ("cluster.leader.settled", "", None),
    ("cluster.leader.calls", "", None),
    ("cluster.leader.too_frequent", "0", lambda v: v == 0),
    ("cluster.leader.lost", "0", lambda v: v == 0),
    ("cluster.leader.results_missing", "0", lambda v: v == 0),
    ("cluster.connected.pause_s", "<= 3", lambda v: v <= 3),
    ("cluster.connected.pause_s_max", "", None),
    ("cluster.connected.settled", "", None),
    ("cluster.connected.calls", "", None),
    ("cluster.connected.too_frequent", "0", lambda v: v == 0),
    ("cluster.connected.lost", "0", lambda v: v == 0),
    ("cluster.connected.results_missing", "0", lambda v: v == 0),
    ("waste.calls_per_request", "", None),
    ("waste.calls", "", None),
    ("waste.minimum_calls", "", None),
    ("waste.requests", "", None),
    ("baseline.pacing.utilization", "", None),
    ("baseline.pacing.too_frequent", "", None),
    ("baseline.pacing.min_gap_s", "", None),
    ("baseline.pacing.recalled", "", None),
    ("baseline.failover.takeover_s", "", None),
    ("baseline.failover.first_call_after_kill_s", "", None),
    ("baseline.failover.too_frequent", "", None),
    ("baseline.failover.min_gap_s", "", None),
    ("baseline.failover.recalled", "", None),
]


def _link_rows(link: str, least: float) -> list[tuple[str, str, Check | None]]:
    """bench/link.py's figures for one link: the `send` rule's against the targets (the median
    of the rounds; 90051s and the smallest gap over all of them), the `finish` rule's beside."""
    return [
        (f"link.{link}.utilization", f">= {least}", lambda v: v >= least),
        (f"link.{link}.utilization_min", "", None),
        (f"link.{link}.steady_utilization", "", None),
        (f"link.{link}.too_frequent", "0", lambda v: v == 0),
        (f"link.{link}.min_gap_s", ">= 1.0", lambda v: v >= 1.0),
        (f"link.{link}.finish.utilization", "", None),
        (f"link.{link}.finish.too_frequent", "", None),
    ]


ROWS += _link_rows("loopback", 0.99)
for _link in ("50ms", "150ms", "300ms"):
    ROWS += _link_rows(_link, 0.97)
# bench/pacing_model.py: the same links as arithmetic (reported, no targets: see its docstring)
for _link in ("50ms", "150ms", "300ms"):
    ROWS += [
        (f"pacing_model.cold_40.{_link}.send.utilization", "", None),
        (f"pacing_model.backlog_200.{_link}.send.utilization", "", None),
    ]
ROWS += [
    ("pacing_model.cold_40.300ms.per_way_cap.utilization", "", None),
    ("pacing_model.held_ahead.300ms.per_way_cap.backlogs_with_90051", "", None),
    ("pacing_model.cold_40.300ms.min-floor+10ms.backlogs_with_90051", "", None),
    ("pacing_model.eased.150ms.send.backlogs_with_90051", "", None),
    ("pacing_model.eased.150ms.finish.backlogs_with_90051", "", None),
]


def _rabbitmq_version() -> str | None:
    try:
        done = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "rabbitmq": _rabbitmq_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def lookup(results: dict[str, Any], key: str) -> Any:
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def render(results: dict[str, Any]) -> str:
    """The table: key, value, target, met."""
    rows = []
    for key, target, check in ROWS:
        value = lookup(results, key)
        if check is None:
            met = ""
        elif value is None:
            met = "n/a"
        else:
            met = "yes" if check(value) else "NO"
        rows.append([key, "null" if value is None else value, target or "-", met])
    return table(["key", "value", "target", "met"], rows)


def write(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
