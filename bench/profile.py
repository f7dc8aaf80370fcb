"""Where a recall's CPU goes: the worker of bench/e2e.py sampled by py-spy, as tables.

`python -m bench.profile --label after` runs the end-to-end scenario, attaches py-spy to the
worker process for its measured part, and writes `bench/out/profile_<label>.md` (or, with
BENCH_UPDATE=1, `bench/profile_<label>.md`): the top 20 frames by own time, and the share of the
worker's busy samples in each part of the path. With BENCH_WORKER_ROOT set to a worktree of an
older commit it profiles that commit's worker (the `before` table).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import e2e, outputs

PARTS = (  # (label, marks of its frames): a sample counts for the first part its stack shows
    ("logging (structlog, logging, JSON lines)", ("structlog", "logging/", "observability")),
    (
        "HTTP client (httpx, httpcore, h11, transport.py)",
        ("httpx", "httpcore", "h11/", "anyio", "client.py", "transport.py"),
    ),
    ("AMQP (aio-pika, aiormq, pamqp)", ("aio_pika", "aiormq", "pamqp")),
    ("settling (settle.py, stream.py)", ("settle.py", "stream.py")),
    ("reading a delivery (envelope, identity)", ("envelope.py", "identity.py")),
    ("the request (parse, prepare, pydantic)", ("verdict.py", "prepare.py", "pydantic")),
    ("metrics (prometheus-client)", ("prometheus_client", "observer.py", "metrics.py")),
    ("the memory follower", ("follower.py", "memory.py")),
    ("retries and pacing (tenacity, pacing)", ("tenacity", "recaller.py", "pacing.py")),
    ("the event loop itself", ("asyncio/", "uvloop", "runners.py", "selectors")),
)


def _frame(raw: str) -> str:
    return re.sub(r" \(/.*?/(site-packages|lib/python3\.\d+)/", " (", raw)


def summarize(raw_path: Path, label: str) -> str:
    """The Markdown tables of one py-spy raw profile."""
    own: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        frames = stack.split(";")
        total += n
        own[_frame(frames[-1])] += n
        part = next(
            (name for name, marks in PARTS for f in reversed(frames) if any(m in f for m in marks)),
            "other",
        )
        parts[part] += n
    rows = [f"# Worker profile: {label}", "", f"{total} samples of the worker's busy time.", ""]
    rows += ["| own time | frame |", "| --- | --- |"]
    rows += [f"| {n / total:.1%} | `{frame[:120]}` |" for frame, n in own.most_common(20)]
    rows += [
        "",
        "| share | part of the path (the first of this list its stack passes through) |",
        "| --- | --- |",
    ]
    rows += [f"| {n / total:.1%} | {name} |" for name, n in parts.most_common()]
    return "\n".join(rows) + "\n"


async def _profiled(raw: Path, seconds: float) -> dict[str, object]:
    task = asyncio.create_task(e2e.end_to_end(Path(tempfile.mkdtemp(prefix="tim-recall-prof-"))))
    pid = None
    for _ in range(120):
        await asyncio.sleep(0.5)
        found = subprocess.run(
            ["pgrep", "-f", "-n", "consumer run"], capture_output=True, text=True, check=False
        ).stdout.split()
        if found:
            pid = found[0]
            break
    if pid is None:
        raise SystemExit("no worker process to profile")
    await asyncio.sleep(6.0)  # past the warm-up
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", pid, "--duration", str(int(seconds)), "--rate", "250",
        "--format", "raw", "--nonblocking", "-o", str(raw),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await process.wait()
    return await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    raw = Path(tempfile.mkdtemp(prefix="tim-recall-prof-")) / "worker.raw"
    figures = asyncio.run(_profiled(raw, args.seconds))
    text = summarize(raw, args.label)
    text += f"\nThe run's figures (bench/e2e.py): {figures}\n"
    out = outputs.output_dir() / f"profile_{args.label}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
