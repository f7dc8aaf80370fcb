"""A command run from a test or its fixtures: its output, and no process left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence


async def run_command(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> tuple[int | None, str]:
    """Run `argv`, its stderr merged into its stdout; (exit code, output). TimeoutError after
    `timeout` s, the process killed and reaped first."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(errors="replace")
