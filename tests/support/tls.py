"""The TLS node the TLS tests start: what a client needs to reach it, and free ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path


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
