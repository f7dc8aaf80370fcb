"""scripts/cluster.sh and scripts/tls-node.sh never run a RabbitMQ tool as user rabbitmq from the
caller's working directory: CI runs from a fresh clone under a 0700 directory (`mktemp -d`) that
user cannot enter, where Erlang's code server fails on "." and prints eacces reports on stdout,
into the JSON the cluster tests parse (the cluster never formed).

The first two tests put stand-ins for runuser, id and chown first on PATH: no root, no RabbitMQ,
no node. The stand-in runuser records its working directory and, for rabbitmq-server, plays the
node by accepting one connection on its port. The last one runs the real rabbitmqctl (`version`,
no node needed) through cluster.sh from a 0700 directory, where RabbitMQ is installed and we are
root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "cluster.sh"
TLS_NODE = ROOT / "scripts" / "tls-node.sh"
RABBITMQCTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")

FAKE_RUNUSER = """#!{python}
import json, os, socket, sys

argv = sys.argv[1:]
command = argv[argv.index("--") + 1 :]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"cwd": os.getcwd(), "argv": command}}) + "\\n")
if command[-1].endswith("rabbitmq-server"):
    # The node: up once its port answers; one connection (the script's check) and it is done.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(os.environ["FAKE_LISTEN_PORT"])))
        s.listen()
        s.settimeout(30)
        try:
            s.accept()[0].close()
        except TimeoutError:
            pass
    sys.exit(0)
if command[0] == "env":
    command = command[1:]
    while "=" in command[0]:
        command = command[1:]
if command[0] == "test":
    os.execvp("test", command)
sys.exit(0)  # rabbitmqctl: succeeds, says nothing
"""
FAKE_ID = '#!/bin/sh\nif [ "$1" = -u ]; then echo 0; fi\n'
NO_OP = "#!/bin/sh\nexit 0\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment with the stand-ins first on PATH, the caller's 0700 working directory)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {
        "runuser": FAKE_RUNUSER.format(python=sys.executable),
        "id": FAKE_ID,
        "chown": NO_OP,
        "rabbitmq-server": NO_OP,
        "openssl": NO_OP,
    }.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    caller = tmp_path / "caller"
    caller.mkdir(mode=0o700)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "FAKE_LOG": str(tmp_path / "runuser.log"),
    }
    return env, caller


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["FAKE_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def assert_never_from(caller: Path, recorded: list[dict[str, Any]], node_dir: Path) -> None:
    """rabbitmq-server from its node's directory, every other command from /."""
    assert any(c["argv"][-1].endswith("rabbitmq-server") for c in recorded), recorded
    for call in recorded:
        server = call["argv"][-1].endswith("rabbitmq-server")
        want = str(node_dir) if server else "/"
        assert call["cwd"] == want, f"{call['argv']} ran in {call['cwd']}, not {want}"
        assert call["cwd"] != str(caller)


def test_cluster_sh_runs_rabbitmq_tools_from_fixed_directories(
    fakes: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, caller = fakes
    base = free_port() - 1  # c1's AMQP port is base + 1
    cluster_dir = tmp_path / "cluster"
    (cluster_dir / "c1").mkdir(parents=True)
    env |= {
        "CLUSTER_DIR": str(cluster_dir),
        "CLUSTER_BASE_PORT": str(base),
        "FAKE_LISTEN_PORT": str(base + 1),
    }
    run([str(CLUSTER), "start", "c1"], env, caller)
    run([str(CLUSTER), "ctl", "c1", "list_queues"], env, caller)
    recorded = calls(env)
    assert any("list_queues" in c["argv"] for c in recorded), recorded
    assert_never_from(caller, recorded, cluster_dir / "c1")


def test_tls_node_sh_runs_rabbitmq_tools_from_fixed_directories(
    fakes: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, caller = fakes
    directory = tmp_path / "tls"
    directory.mkdir()
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"):
        (directory / name).write_text("stand-in\n")
    (directory / "wrong-ca.pem").write_text("stand-in\n")  # certificates() sees them made
    plain, tls, dist = free_port(), free_port(), free_port()
    env |= {
        "TLS_NODE_PLAIN_PORT": str(plain),
        "TLS_NODE_PORT": str(tls),
        "TLS_NODE_DIST_PORT": str(dist),
        "FAKE_LISTEN_PORT": str(tls),
    }
    up = run([str(TLS_NODE), "up", str(directory)], env, caller)
    assert up.stdout.strip().startswith(f"amqps://guest:guest@localhost:{tls}/")
    assert_never_from(caller, calls(env), directory / "node")


@pytest.mark.skipif(
    os.geteuid() != 0 or not RABBITMQCTL.exists() or shutil.which("runuser") is None,
    reason="needs root and the host's RabbitMQ install (user rabbitmq, rabbitmqctl)",
)
def test_rabbitmqctl_through_cluster_sh_from_a_directory_rabbitmq_cannot_enter(
    tmp_path: Path,
) -> None:
    caller = tmp_path / "caller"
    caller.mkdir(mode=0o700)
    done = subprocess.run(
        [str(CLUSTER), "ctl", "c1", "version"],
        env={**os.environ, "CLUSTER_DIR": str(tmp_path / "cluster")},
        cwd=caller,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "eacces" not in done.stdout + done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", done.stdout.strip()), done.stdout
