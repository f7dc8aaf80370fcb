"""The TLS tests' node: a RabbitMQ node of the host's install with a TLS listener and a test CA
made for the session by scripts/tls-node.sh, up for the session only. Fails (never skips) when it
cannot start: CI must not pass without it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tls import TlsNode, free_ports

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tls-node.sh"
# Where the node's directory goes: user rabbitmq runs the node and must reach it (pytest's own
# tmp_path is under a 0700 directory of root's).
BASE = Path(os.environ.get("TEST_TLS_BASE", "/var/lib/tim-recall"))


def searchable(directory: Path) -> None:
    """Make `directory` and its missing parents mode 0755 whatever the umask: user rabbitmq must
    pass through them (an existing directory is left as it is; the script says when it cannot)."""
    for path in reversed((directory, *directory.parents)):
        if not path.exists():
            path.mkdir(exist_ok=True)
            path.chmod(0o755)


@pytest.fixture(scope="session")
def tls_node() -> Iterator[TlsNode]:
    """A TLS node for the session, with its own name and free ports (two test runs at once never
    share one); stopped and its directory removed afterwards."""
    searchable(BASE)
    directory = Path(tempfile.mkdtemp(prefix="tls-node-", dir=BASE))
    plain, tls, dist = free_ports(3)
    env = {
        **os.environ,
        "TLS_NODE_NAME": f"rabbit-tls-{os.getpid()}@localhost",
        "TLS_NODE_PLAIN_PORT": str(plain),
        "TLS_NODE_PORT": str(tls),
        "TLS_NODE_DIST_PORT": str(dist),
    }
    started = subprocess.run(
        [str(SCRIPT), "up", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        if started.returncode != 0:
            lines = started.stderr.strip().splitlines() or ["(no output)"]
            pytest.fail(f"the TLS node did not start: {lines[-1]}\n{started.stderr[-2000:]}")
        yield TlsNode(directory, tls)
    finally:
        subprocess.run(
            [str(SCRIPT), "down", str(directory)],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
