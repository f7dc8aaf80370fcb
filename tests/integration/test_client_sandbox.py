"""The revoke client against the sandbox over real HTTP: every answer becomes a typed result."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from consumer.core.client import RevokeClient, make_http_client
from consumer.core.policy import HALT_CODES, PERMANENT_CODES, QUOTA_CODES, TRANSIENT_CODES
from consumer.core.results import ApiAnswer, FailureKind, TransportFailure
from consumer.core.usersig import UserSigCache
from consumer.sandbox import Sandbox, SandboxConfig
from schemas.recall import RecallRequest
from tests.support.broker import OVERWRITE, Broker, wait_until
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.integration

USERSIG_TOKEN = re.compile(r"e[AFJN][A-Za-z0-9*\-_]{40,}")


@pytest.fixture
def sandbox() -> Sandbox:
    # The client alone does no pacing: here the sandbox does not limit either.
    return Sandbox(SandboxConfig(min_interval=0.0))


@pytest.fixture
async def client(sandbox: Sandbox, sandbox_url: str) -> AsyncIterator[RevokeClient]:
    sigs = UserSigCache(sandbox.config.sdkappid, "administrator", sandbox.config.secret_key)
    async with make_http_client(1.0, 0.5) as http:
        yield RevokeClient(http, sandbox_url, sandbox.config.sdkappid, "administrator", sigs)


def request(task_id: str, overwrite: bool = True) -> RecallRequest:
    body = {"TaskId": task_id, **({"OfflinePushInfo": OVERWRITE} if overwrite else {})}
    return RecallRequest.model_validate(body)


async def test_success_then_90050(client: RevokeClient, sandbox: Sandbox) -> None:
    task_id = sandbox.create_task()
    assert await client.revoke(request(task_id)) == ApiAnswer(0, "")
    answer = await client.revoke(request(task_id))
    assert isinstance(answer, ApiAnswer)
    assert answer.code == 90050
    (first, second) = sandbox.revoke_calls()
    assert first.random != second.random  # a fresh `random` per call
    assert first.body == {"TaskId": task_id, "OfflinePushInfo": OVERWRITE}


async def test_codes_from_the_task_records(client: RevokeClient, sandbox: Sandbox) -> None:
    backdated = sandbox.create_task()
    sandbox.backdate(backdated, 25 * 3600)
    roaming = sandbox.create_task(online_only=False)
    results = [
        await client.revoke(request("no-such-task")),
        await client.revoke(request(backdated)),
        await client.revoke(request(roaming, overwrite=False)),
    ]
    assert [r.code for r in results if isinstance(r, ApiAnswer)] == [90049, 90052, 90053]


EVERY_CODE = sorted(
    QUOTA_CODES | TRANSIENT_CODES | PERMANENT_CODES | HALT_CODES | {70001, 70050, 70052, 12345}
)


@pytest.mark.parametrize("code", EVERY_CODE)
async def test_every_error_code_comes_back_typed(
    client: RevokeClient, sandbox: Sandbox, code: int
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1, task_id=task_id, code=code)
    answer = await client.revoke(request(task_id))
    assert isinstance(answer, ApiAnswer)
    assert answer.code == code
    assert not sandbox.is_recalled(task_id)


async def test_real_signature_and_identity_errors(sandbox: Sandbox, sandbox_url: str) -> None:
    cases = [("administrator", "wrong-key", 70003), ("someone", sandbox.config.secret_key, 90009)]
    for identifier, key, code in cases:
        sigs = UserSigCache(sandbox.config.sdkappid, identifier, key)
        async with make_http_client(1.0, 1.0) as http:
            client = RevokeClient(http, sandbox_url, sandbox.config.sdkappid, identifier, sigs)
            answer = await client.revoke(request(sandbox.create_task()))
        assert answer == ApiAnswer(code, answer.info if isinstance(answer, ApiAnswer) else "")


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ({"http_status": 502}, FailureKind.HTTP_STATUS, 502),
        ({"http_status": 200}, FailureKind.BAD_BODY, None),  # a proxy's HTML page with a 200
        ({"hang": 2.0}, FailureKind.TIMEOUT, None),
    ],
    ids=["502", "not-json", "timeout"],
)
async def test_transport_failures_come_back_typed(
    client: RevokeClient,
    sandbox: Sandbox,
    fault: dict[str, float],
    kind: FailureKind,
    status: int | None,
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1, task_id=task_id, **fault)  # type: ignore[arg-type]
    failure = await client.revoke(request(task_id))
    assert isinstance(failure, TransportFailure)
    assert (failure.kind, failure.http_status) == (kind, status)
    assert "usersig" not in failure.detail.lower()


class Moments:
    """A CallObserver that writes down what it is told, on the sandbox's clock."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.received: list[float] = []

    def request_sent(self) -> None:
        self.sent.append(time.monotonic())

    def answer_received(self) -> None:
        self.received.append(time.monotonic())


async def test_the_call_is_timed_at_the_socket(client: RevokeClient, sandbox: Sandbox) -> None:
    # Twice: on a new connection, then on the kept-alive one.
    for _ in range(2):
        moments = Moments()
        before = time.monotonic()
        await client.revoke(request(sandbox.create_task()), moments)
        after = time.monotonic()
        assert len(moments.sent) == len(moments.received) == 1
        (sent,), (received,) = moments.sent, moments.received
        arrived = sandbox.revoke_calls()[-1].arrived
        assert before <= sent <= received <= after
        assert arrived <= received  # counted before its answer was read


async def test_a_timed_out_call_has_no_answer_moment(
    client: RevokeClient, sandbox: Sandbox
) -> None:
    task_id = sandbox.create_task()
    sandbox.fail_next(1, task_id=task_id, hang=2.0)
    moments = Moments()
    failure = await client.revoke(request(task_id), moments)
    assert isinstance(failure, TransportFailure)
    assert len(moments.sent) == 1
    assert moments.received == []


async def test_connection_refused_never_arrived(sandbox: Sandbox) -> None:
    sigs = UserSigCache(sandbox.config.sdkappid, "administrator", sandbox.config.secret_key)
    async with make_http_client(0.5, 0.5) as http:
        client = RevokeClient(
            http, "http://127.0.0.1:9", sandbox.config.sdkappid, "administrator", sigs
        )
        failure = await client.revoke(request("t"))
    assert isinstance(failure, TransportFailure)
    assert failure.kind is FailureKind.CONNECT
    assert not failure.may_have_arrived


async def test_no_usersig_or_secret_key_in_any_log_event(
    broker: Broker, sandbox: Sandbox, run_worker: WorkerFactory, tmp_path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(sandbox.config.secret_key)
    ok, slow, unknown = sandbox.create_task(), sandbox.create_task(), "no-such-task"
    sandbox.fail_next(1, task_id=slow, hang=1.0)
    with capture_logs() as events:
        async with run_worker(
            secret_key_value=None, secret_key_file=key_file, read_timeout_s=0.3, interval_s=0.05
        ) as running:
            for task_id in (ok, slow, unknown):
                await broker.publish({"TaskId": task_id, "OfflinePushInfo": OVERWRITE})
            await running.wait_settled(3)
            key_file.write_text("wrong-key-" + "x" * 20)
            next(iter(running.worker.lanes.values())).client.renew_usersig()
            await broker.publish({"TaskId": sandbox.create_task(), "OfflinePushInfo": OVERWRITE})
            await wait_until(lambda: running.worker.halted, 10, "a halt")
    names = {e["event"] for e in events}
    assert {
        "request_recalled",
        "retry_scheduled",
        "request_dead_lettered",
        "worker_halted",
    } <= names
    text = repr(events)
    assert sandbox.config.secret_key not in text
    assert "wrong-key-" not in text
    assert not USERSIG_TOKEN.search(text)
    assert "usersig=" not in text.lower()
