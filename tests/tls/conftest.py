"""The TLS tests' node: a RabbitMQ node of the host's install with a TLS listener and a test CA
made for the session by scripts/tls-node.sh, up for the session only. Fails (never skips) when it
cannot start: CI must not pass without it."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tls-node.sh"
# Where the node's directory goes: user rabbitmq runs the node and must reach it (pytest's own
# tmp_path is under a 0700 directory of root's).
BASE = Path(os.environ.get("TEST_TLS_BASE", "/var/lib/tim-recall"))


@dataclass(frozen=True)
class TlsNode:
    """A running TLS node and the files a client needs."""

    directory: Path
    port: int  # the TLS listener, on 127.0.0.1

    @property
    def cafile(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def wrong_cafile(self) -> Path:
        """An unrelated CA: verifying the node with it fails."""
        return self.directory / "wrong-ca.pem"

    @property
    def certfile(self) -> Path:
        """A client certificate signed by the node's CA (optional: the node does not need one)."""
        return self.directory / "client.pem"

    @property
    def keyfile(self) -> Path:
        return self.directory / "client.key"

    def url(self, cafile: Path | None = None, *, client_cert: bool = False) -> str:
        """amqps:// URL with aiormq's `cafile` (and `certfile`/`keyfile`) parameters. guest may
        log in from loopback only: `localhost` is both loopback and a name on the certificate."""
        query = f"cafile={cafile or self.cafile}"
        if client_cert:
            query += f"&certfile={self.certfile}&keyfile={self.keyfile}"
        return f"amqps://guest:guest@localhost:{self.port}/?{query}"

    @property
    def wrong_ca_url(self) -> str:
        """The node's URL with a CA that did not sign its certificate."""
        return self.url(self.wrong_cafile)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the kernel's picks, released at once)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="session")
def tls_node() -> Iterator[TlsNode]:
    """A TLS node for the session, with its own name and free ports (two test runs at once never
    share one); stopped and its directory removed afterwards."""
    BASE.mkdir(parents=True, exist_ok=True)
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
