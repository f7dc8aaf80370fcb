"""Where a benchmark run writes, and what it records about the code and machine it measured.

A plain `make bench` writes under bench/out/ (ignored by git), so measuring never dirties the
work tree; `make bench-update` (BENCH_UPDATE=1) writes the committed figures in bench/ itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def output_dir() -> Path:
    """bench/ when asked to update the committed figures, else bench/out/ (created)."""
    if os.environ.get("BENCH_UPDATE") == "1":
        return HERE
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    return out


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def source() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it (figures from a dirty
    tree are not the commit's)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "subject": _git("log", "-1", "--format=%s"),
        "dirty": None if status is None else bool(status),
    }
