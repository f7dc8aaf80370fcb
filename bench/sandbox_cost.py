"""What one revoke call costs the sandbox: CPU-ms per call of a sandbox in a process of its own.

A child process serves the sandbox (`serve_sandbox`, the rate limit lifted, `--apps` apps) and
makes the tasks (`Sandbox.create_task`); this process drives `-n` revoke calls at it over real
HTTP (httpx, keep-alive, `--concurrency` calls in flight, one UserSig per app as the worker's
UserSigCache keeps one) and the child reports the CPU it spent meanwhile: the client's own cost
is not counted. `python -m bench.sandbox_cost [--runs 5] [--apps 200] [--concurrency 8]`;
`--profile` prints the child's top functions and its CPU by package (cProfile on thread time,
which slows it about threefold: read the shares, and compare figures of runs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing
import pstats
import statistics
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import httpx

from consumer.core.usersig import make_usersig
from consumer.sandbox import Sandbox, SandboxConfig, serve_sandbox

REVOKE = "/v4/timpush/revoke"
OPI = {"Title": "recall", "Desc": "The other party has recalled a message."}
WARMUP_N = 300  # connections opened, code paths warm, before the CPU is counted


async def _serve(conn: Connection, apps: int, tasks: int, profile: str | None) -> None:
    sandbox = Sandbox(SandboxConfig(min_interval=0.000001))
    sandbox.add_apps(apps - 1)
    served = sandbox.apps()
    work: list[tuple[int, str]] = []
    for i in range(tasks):  # the apps in turn, as a fleet of one worker per app calls them
        app = served[i % apps]
        work.append((app.sdkappid, sandbox.create_task(sdkappid=app.sdkappid)))
    loop = asyncio.get_running_loop()
    async with serve_sandbox(sandbox) as url:
        conn.send((url, {a.sdkappid: a.secret_key for a in served}, work))
        assert await loop.run_in_executor(None, conn.recv) == "start"
        profiler = cProfile.Profile(time.thread_time) if profile is not None else None
        if profiler is not None:
            profiler.enable()  # this thread's: the event loop's
        cpu0 = time.process_time()
        assert await loop.run_in_executor(None, conn.recv) == "stop"
        cpu = time.process_time() - cpu0
        report = ""
        if profiler is not None:
            profiler.disable()
            report = _profile_report(profiler)
            if profile:
                profiler.dump_stats(profile)
        codes = Counter(call.code for call in sandbox.revoke_calls())
        conn.send((cpu, dict(codes), report))


def _package(filename: str) -> str:
    """Where a profiled function lives: a project file, a library, a stdlib module, or C."""
    if filename == "~":
        return "~ (C: sockets, select, zlib, hmac, ...)"
    for marker in ("/consumer/", "/bench/"):
        if marker in filename:
            return marker.strip("/") + "/" + filename.split(marker, 1)[1]
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python3." in filename:  # the stdlib: its package (asyncio, json) or module
        return filename.split("/lib/python3.", 1)[1].split("/")[1].removesuffix(".py")
    return filename  # <frozen ...>, <string>


def _profile_report(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    own: Counter[str] = Counter()
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tottime, *_) in raw.items():
        own[_package(filename)] += tottime
    total = sum(own.values())
    lines = [f"{t / total:6.1%}  {name}" for name, t in own.most_common(15)]
    return out.getvalue() + "CPU by where the code lives:\n" + "\n".join(lines)


def _child(conn: Connection, apps: int, tasks: int, profile: str | None) -> None:
    asyncio.run(_serve(conn, apps, tasks, profile))


async def _drive(
    url: str, sigs: dict[int, str], work: list[tuple[int, str]], concurrency: int
) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    todo = work[::-1]

    async def caller(client: httpx.AsyncClient) -> None:
        while todo:
            sdkappid, task_id = todo.pop()
            params = {
                "usersig": sigs[sdkappid],
                "identifier": "administrator",
                "sdkappid": str(sdkappid),
                "random": str(len(todo)),
                "contenttype": "json",
            }
            body = {"TaskId": task_id, "OfflinePushInfo": OPI}
            response = await client.post(REVOKE, params=params, json=body)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(caller(client) for _ in range(concurrency)))


def run_once(n: int, apps: int, concurrency: int, profile: str | None = None) -> dict[str, Any]:
    """A sandbox of its own, WARMUP_N calls, then `n` measured: CPU-ms per call and the codes."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, apps, WARMUP_N + n, profile), daemon=True)
    proc.start()
    try:
        url, keys, work = parent.recv()
        now = int(time.time())
        sigs = {i: make_usersig(i, "administrator", key, 86400, now) for i, key in keys.items()}
        asyncio.run(_drive(url, sigs, work[:WARMUP_N], concurrency))
        parent.send("start")
        started = time.monotonic()
        asyncio.run(_drive(url, sigs, work[WARMUP_N:], concurrency))
        seconds = time.monotonic() - started
        parent.send("stop")
        cpu, codes, report = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return {
        "cpu_ms_per_call": round(cpu * 1000 / n, 4),
        "calls_per_s": round(n / seconds, 1),
        "codes": codes,
        "profile": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=4000, help="measured calls per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--apps", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument(
        "--profile", nargs="?", const="", default=None, metavar="FILE", help="(and dump to FILE)"
    )
    args = parser.parse_args()
    print(f"n={args.n} apps={args.apps} concurrency={args.concurrency}", flush=True)
    figures = []
    for _ in range(args.runs):
        result = run_once(args.n, args.apps, args.concurrency, args.profile)
        figures.append(result["cpu_ms_per_call"])
        print(
            f"cpu_ms_per_call={result['cpu_ms_per_call']} calls_per_s={result['calls_per_s']}"
            f" codes={result['codes']}",
            flush=True,
        )
        if result["profile"]:
            print(result["profile"])
    print(f"median cpu_ms_per_call={statistics.median(figures):.4f} over {args.runs} run(s)")


if __name__ == "__main__":
    main()
