"""The cluster tests' three-node RabbitMQ: its URLs and node names, and ways to kill, start and
ask (scripts/cluster.sh), and free loopback ports for it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.support.commands import run_command

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
NODES = ("c1", "c2", "c3")


class ClusterError(AssertionError):
    """A cluster.sh call failed."""


@dataclass(frozen=True)
class Cluster:
    """A running three-node cluster: URLs, node names, and ways to kill, start and ask."""

    env: dict[str, str]
    base_port: int  # c1's AMQP port is base_port + 1, …
    prefix: str  # node names: {prefix}c1@localhost, …

    @classmethod
    def on_free_ports(cls, tag: str) -> Cluster:
        """A cluster (not started yet) of its own for this process: free ports, node names and a
        directory named by `tag` ("test", "bench") and the pid, beside any other cluster."""
        amqp, dist = free_bases()
        pid = os.getpid()
        prefix = f"rabbit-{tag[0]}{pid}-"
        env = {
            **os.environ,
            "CLUSTER_DIR": f"/var/lib/tim-recall/cluster-{tag}-{pid}",
            "CLUSTER_BASE_PORT": str(amqp),
            "CLUSTER_BASE_DIST_PORT": str(dist),
            "CLUSTER_NODE_PREFIX": prefix,
        }
        return cls(env, amqp, prefix)

    def node(self, short: str) -> str:
        """`c1` -> the Erlang node name."""
        return f"{self.prefix}{short}@localhost"

    def short(self, node: str) -> str:
        """The Erlang node name -> `c1`."""
        return node.split("@", 1)[0].removeprefix(self.prefix)

    def port(self, short: str) -> int:
        return self.base_port + int(short.removeprefix("c"))

    def url(self, short: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port(short)}/"

    @property
    def urls(self) -> list[str]:
        """The three AMQP URLs, c1 first."""
        return [self.url(n) for n in NODES]

    @property
    def url_list(self) -> str:
        """The three URLs as one comma-separated RECALL_AMQP_URL."""
        return ",".join(self.urls)

    async def script(self, *args: str, timeout: float = 180.0) -> str:
        """Run `scripts/cluster.sh args` for this cluster; ClusterError with its output."""
        try:
            code, text = await run_command([str(SCRIPT), *args], env=self.env, timeout=timeout)
        except TimeoutError:
            raise ClusterError(f"cluster.sh {' '.join(args)} took more than {timeout} s") from None
        if code != 0:
            raise ClusterError(f"cluster.sh {' '.join(args)} failed: {text}")
        return text

    async def ctl(self, short: str, *args: str) -> str:
        """rabbitmqctl -n NODE args."""
        return await self.script("ctl", short, *args)

    async def kill(self, short: str) -> None:
        """kill -9 the node's Erlang VM (no goodbye to its peers or clients)."""
        await self.script("kill", short)

    async def start(self, short: str) -> None:
        """Start a killed node again and wait until it is booted (it rejoins by itself)."""
        await self.script("start", short)

    async def running(self) -> list[str]:
        """The nodes (short names) whose VM is alive."""
        alive = []
        for short in NODES:
            try:
                await self.script("pid", short)
                alive.append(short)
            except ClusterError:
                pass
        return alive

    async def leader(self, queue: str, timeout: float = 30.0) -> str:
        """The node (short name) that leads the quorum queue, asked of a live node; waits while
        there is none (an election after a kill)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for short in await self.running():
                try:
                    text = await self.ctl(
                        short, "list_queues", "-q", "--formatter", "json", "name", "leader"
                    )
                except ClusterError:
                    continue
                for row in json.loads(text or "[]"):
                    leader = row.get("leader")
                    if row.get("name") == queue and isinstance(leader, str) and "@" in leader:
                        short_leader = self.short(leader)
                        if short_leader in await self.running():
                            return short_leader
            if asyncio.get_running_loop().time() > deadline:
                raise ClusterError(f"no live leader for quorum queue {queue} in {timeout} s")
            await asyncio.sleep(0.5)

    async def heal(self) -> None:
        """Start every node that is not running (after a test killed one)."""
        for short in NODES:
            if short not in await self.running():
                await self.start(short)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_BASE = 20000


def ephemeral_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_bases() -> tuple[int, int]:
    """A base AMQP port and a base dist port with the three ports after each free.

    Below the kernel's ephemeral range: a node takes seconds to open its ports, and meanwhile
    every client connection of the suite (the RabbitMQ 4 tier runs beside it) is given an
    ephemeral port, which once took a port chosen free a moment before (eaddrinuse).
    """
    span = (ephemeral_floor() - LOWEST_BASE) // 2
    for _ in range(200):
        if span >= 1000:
            amqp = random.randrange(LOWEST_BASE, LOWEST_BASE + span - 10, 10)
            dist = amqp + span
        else:  # an unusual ephemeral range: as before, and hope
            amqp = random.randrange(41000, 49000, 10)
            dist = amqp + 10000
        if all(_free(amqp + i) and _free(dist + i) for i in (1, 2, 3)):
            return amqp, dist
    raise ClusterError("found no three free loopback ports for the cluster")
