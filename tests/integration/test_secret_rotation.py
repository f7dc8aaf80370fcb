"""Wrong key, then an empty key file, then the right key: the worker resumes by itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from consumer.sandbox import Sandbox
from tests.support.broker import OVERWRITE, Broker, Names, wait_until
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration


async def test_a_rotation_seen_mid_write_resumes_without_a_restart(
    broker: Broker, names: Names, sandbox: Sandbox, run_worker: WorkerFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text("not-the-right-key-at-all")
    task_id = sandbox.create_task()
    with capture_logs() as captured:
        async with run_worker(secret_key_value=None, secret_key_file=key_file) as running:
            await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
            await wait_until(lambda: running.worker.halted, 10, "the worker to halt")
            key_file.write_text("")  # the Secret is being rewritten
            await wait_until(
                lambda: any(e["event"] == "secret_key_file_unusable" for e in captured),
                10,
                "a probe to read the empty file",
            )
            probes_before = len(sandbox.revoke_calls())
            await sandbox.wait_for(lambda calls: len(calls) >= probes_before + 2, timeout=10)
            assert running.worker.halted  # still the wrong key, and the probes go on
            assert running.worker.liveness() == {"halt_probe": True}
            key_file.write_text(sandbox.config.secret_key + "\n")  # the rotation is complete
            await running.wait_settled(1, timeout=15)
    assert running.settled[0].outcome == "recalled"
    assert sandbox.is_recalled(task_id)
    assert await broker.count(names.dead) == 0
    unusable = [e for e in captured if e["event"] == "secret_key_file_unusable"]
    assert [e["reason"] for e in unusable] == ["empty"]  # once, however many probes read it
    assert {"secret_key_file_usable", "secret_key_changed"} <= {e["event"] for e in captured}
    assert not any(e["event"] == "halt_probe_error" for e in captured)
    assert sandbox.config.secret_key not in repr(captured)
