"""Child processes of the bench: the worker (`python -m consumer run`) and the baseline.

Every child is spawned through a `Fleet`, which kills whatever is still running when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from consumer.sandbox import Sandbox

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # children run from here: `-m bench.baseline`
# Workers run from here: another checkout (a worktree of an older commit) measures that
# commit's worker under the same scenario (`python -m consumer` imports from its cwd first).
WORKER_ROOT = Path(os.environ.get("BENCH_WORKER_ROOT") or ROOT)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def poll(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, every: float = 0.05
) -> None:
    """Call `check()` (sync or async) until true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Child:
    """One spawned process, its combined stdout/stderr log, and (for a worker) its HTTP port."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None
    killed_at: float | None = None  # time.monotonic() right before SIGKILL
    # One keep-alive client for its endpoints: a client made per poll cost the benchmark's own
    # process 27 ms of CPU each time, which it then charged to the sandbox beside it.
    _http: httpx.AsyncClient | None = None

    def http(self) -> httpx.AsyncClient:
        """The client for this child's HTTP endpoints (closed with `close`)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{self.port}", timeout=2.0, trust_env=False
            )
        return self._http

    async def close(self) -> None:
        """Close the endpoints' client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def rss_mb(self) -> float:
        """Resident set size from /proc/<pid>/status (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{self.name}: no VmRSS")

    def cpu_s(self) -> float:
        """User + system CPU seconds so far, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the process wrote (log events, baseline call lines)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    found.append(doc)
        return found

    def task_ids(self) -> set[str]:
        """TaskIds named in any of its events."""
        return {e["task_id"] for e in self.events() if isinstance(e.get("task_id"), str)}

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _check_running(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")

    async def ready(self, timeout: float = 20.0) -> None:
        """A worker: /readyz answers 200. The baseline: it printed that it is consuming."""

        async def worker_ready() -> bool:
            self._check_running()
            try:
                answer = await self.http().get("/readyz")
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        def baseline_ready() -> bool:
            self._check_running()
            return any(e.get("event") == "consuming" for e in self.events())

        check = worker_ready if self.port is not None else baseline_ready
        await poll(check, timeout, f"{self.name} to be ready")

    async def settled(self) -> int:
        """Requests a worker settled, from its /metrics."""
        return int(await self.metric("tim_recall_requests_settled_total"))

    async def metric(self, name: str) -> float:
        """The sum of a worker's series `name` (every label set), from its /metrics; 0 if none."""
        text = (await self.http().get("/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def kill(self) -> float:
        """SIGKILL now; returns (and remembers) the monotonic time just before the signal."""
        self.killed_at = time.monotonic()
        self.process.send_signal(signal.SIGKILL)
        return self.killed_at


class Fleet:
    """Spawns children into `workdir`; on exit kills those still running and reaps them all."""

    def __init__(self, workdir: Path, sandbox: Sandbox, sandbox_url: str, queue: str) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self._sandbox = sandbox
        self._url = sandbox_url
        self._queue = queue

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIM_", "RECALL_"))}
        env.update(
            {
                "TIM_SDKAPPID": str(self._sandbox.config.sdkappid),
                "TIM_SECRET_KEY": self._sandbox.config.secret_key,
                "TIM_BASE_URL": self._url,
                "RECALL_AMQP_URL": AMQP_URL,
                "RECALL_QUEUE": self._queue,
            }
        )
        env.update(extra)
        return env

    async def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int | None
    ) -> Child:
        log_path = self.workdir / f"{self._queue}-{name}.log"
        cwd = WORKER_ROOT if argv[:2] == ["-m", "consumer"] else ROOT
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *argv, env=self._env(env), cwd=cwd, stdout=log, stderr=log
            )
        child = Child(name, process, log_path, port)
        self.children.append(child)
        return child

    async def worker(self, name: str, interval_s: float, log_level: str = "warning") -> Child:
        """`python -m consumer run` on the fleet's queue, against the sandbox."""
        port = free_port()
        env = {
            "RECALL_INTERVAL_S": repr(interval_s),
            "RECALL_HTTP_HOST": "127.0.0.1",
            "RECALL_HTTP_PORT": str(port),
            "RECALL_LOG_FORMAT": "json",
            "RECALL_LOG_LEVEL": log_level,
        }
        return await self._spawn(name, ["-m", "consumer", "run"], env, port)

    async def baseline(self, name: str) -> Child:
        """`python -m bench.baseline`, the obvious consumer, on the fleet's queue."""
        return await self._spawn(name, ["-m", "bench.baseline"], {}, None)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in self.children:
            if child.alive:
                child.process.kill()
        for child in self.children:
            await child.process.wait()
            await child.close()
